"""MNIST as uint8 tensors in memory, loaded from the copy shipped in ``assets/mnist``.

The whole set (60k + 10k images) is 55 MB as uint8, so it is kept in memory and
batches are cut from it by indexing: no per-item PIL work on the hot path.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fed_core.vocabulary import UserError

SHIPPED_ROOT = Path(__file__).resolve().parents[2] / "assets" / "mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# The usual MNIST normalisation; the drawn digits and the encrypted models use it too.
MEAN, STD = 0.1307, 0.3081


class MnistFileError(UserError, RuntimeError):
    """A data file is missing, corrupted or not an IDX file; the message names the file and the fix."""


@dataclass(frozen=True)
class Mnist:
    train_images: torch.Tensor  # uint8 [60000, 28, 28]
    train_labels: torch.Tensor  # int64 [60000]
    test_images: torch.Tensor  # uint8 [10000, 28, 28]
    test_labels: torch.Tensor  # int64 [10000]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28], normalised like training."""
    return ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1)


def read_checksums(root: Path) -> dict[str, str]:
    sums_path = root / "SHA256SUMS"
    if not sums_path.exists():
        raise MnistFileError(
            f"{sums_path} is missing. Restore it with `git checkout -- {sums_path.name}` "
            "in the project's assets/mnist folder."
        )
    sums = {}
    for line in sums_path.read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            sums[name.lstrip("*")] = digest
    return sums


def _fix_hint(path: Path) -> str:
    if path.parent == SHIPPED_ROOT:
        return f"Restore it with `git checkout -- assets/mnist/{path.name}`."
    return f"Delete it and copy it again, or point to the shipped copy in {SHIPPED_ROOT}."


def verify_file(path: Path, expected_sha256: str) -> None:
    if not path.exists():
        raise MnistFileError(f"MNIST file {path} is missing. {_fix_hint(path)}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected_sha256:
        raise MnistFileError(
            f"MNIST file {path} is corrupted (SHA-256 {digest[:12]}..., expected "
            f"{expected_sha256[:12]}...). {_fix_hint(path)}"
        )


def read_idx(path: Path) -> np.ndarray:
    """Parse a gzipped IDX file (the format MNIST is distributed in)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte data
        raise MnistFileError(f"{path} is not an unsigned-byte IDX file (magic {magic:#x}).")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_from_root(root: Path) -> Mnist:
    sums = read_checksums(root)
    arrays = {}
    for key, name in FILES.items():
        path = root / name
        verify_file(path, sums.get(name, ""))
        arrays[key] = torch.from_numpy(read_idx(path).copy())
    return Mnist(
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"].long(),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].long(),
    )


def download_with_torchvision(root: Path, mirrors: Sequence[str] | None = None) -> Mnist:
    """Fallback for a data root without the files: torchvision's downloader (checks its own MD5 sums).

    ``mirrors`` replaces torchvision's list of MNIST mirrors (base URLs ending in "/").
    """
    from torchvision.datasets import MNIST

    # Same class name, so the files land where torchvision's own MNIST looks for them (root/MNIST/raw).
    source = type("MNIST", (MNIST,), {"mirrors": list(mirrors)}) if mirrors else MNIST
    train = source(str(root), train=True, download=True)
    test = source(str(root), train=False, download=True)
    return Mnist(train.data, train.targets.long(), test.data, test.targets.long())


_CACHE: dict[Path, Mnist] = {}


def load_mnist(root: Path | str | None = None, download: bool = False, mirrors: Sequence[str] | None = None) -> Mnist:
    """Load and verify MNIST from ``root`` (default: the shipped copy), cached per process.

    With ``download=True`` and a root that holds no checksummed copy, fall back to
    torchvision's downloader (from ``mirrors`` if given). The shipped copy never downloads.
    """
    root = Path(root).resolve() if root else SHIPPED_ROOT
    if root not in _CACHE:
        if download and root != SHIPPED_ROOT and not (root / "SHA256SUMS").exists():
            _CACHE[root] = download_with_torchvision(root, mirrors)
        else:
            _CACHE[root] = load_from_root(root)
    return _CACHE[root]
