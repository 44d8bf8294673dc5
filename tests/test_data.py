import functools
import hashlib
import http.server
import shutil
import threading

import pytest
import torch
from torchvision.datasets import MNIST

from fed_core.data.mnist import SHIPPED_ROOT, MnistFileError, load_from_root, load_mnist


def test_shipped_copy_is_the_real_mnist(mnist):
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.train_images.dtype == torch.uint8
    assert mnist.test_images.shape == (10000, 28, 28)
    assert torch.bincount(mnist.test_labels).tolist()[:3] == [980, 1135, 1032]


@pytest.fixture
def copy_of_mnist(tmp_path):
    for item in SHIPPED_ROOT.iterdir():
        shutil.copy(item, tmp_path / item.name)
    return tmp_path


def test_corrupted_file_is_named_with_the_fix(copy_of_mnist):
    path = copy_of_mnist / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(MnistFileError, match=r"t10k-labels-idx1-ubyte\.gz is corrupted"):
        load_from_root(copy_of_mnist)


def test_missing_file_is_named(copy_of_mnist):
    (copy_of_mnist / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(MnistFileError, match=r"train-images-idx3-ubyte\.gz is missing"):
        load_from_root(copy_of_mnist)


def test_missing_checksums_are_named(copy_of_mnist):
    (copy_of_mnist / "SHA256SUMS").unlink()
    with pytest.raises(MnistFileError, match="SHA256SUMS is missing"):
        load_from_root(copy_of_mnist)


@pytest.fixture
def loopback_mirror():
    """An HTTP server on 127.0.0.1 serving the shipped gzip files, standing in for an MNIST mirror."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(SHIPPED_ROOT))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *args: None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


def test_torchvision_fallback_downloads_into_an_empty_root(tmp_path, loopback_mirror, mnist, monkeypatch):
    # The shipped files hold the same images as the original mirrors' but were gzipped again, so their
    # MD5 sums differ from the ones torchvision checks: give it the served files' sums.
    served = [(name, hashlib.md5((SHIPPED_ROOT / name).read_bytes()).hexdigest()) for name, _ in MNIST.resources]
    monkeypatch.setattr(MNIST, "resources", served)
    downloaded = load_mnist(tmp_path, download=True, mirrors=[loopback_mirror])
    assert (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").exists()
    assert torch.equal(downloaded.train_images, mnist.train_images)
    assert torch.equal(downloaded.test_labels, mnist.test_labels)


def test_without_download_an_empty_root_is_an_error_naming_the_fix(tmp_path):
    with pytest.raises(MnistFileError, match="SHA256SUMS is missing"):
        load_mnist(tmp_path)
