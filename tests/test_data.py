import shutil

import pytest
import torch

from fed_core.data import SHIPPED_ROOT, MnistFileError, load_from_root


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
