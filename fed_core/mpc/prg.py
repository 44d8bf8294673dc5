"""Cryptographic randomness for secret sharing: a ChaCha20 keystream read as ring elements.

Every share, mask and Beaver triple of :mod:`fed_core.mpc.protocol` comes from a ``Prg``. A
non-cryptographic generator (torch's or numpy's Mersenne Twister) must not be used: its
state follows from 624 consecutive outputs, so a party holding that many of its own
shares could predict every later mask and unmask the other party's data.

ChaCha20 (from ``cryptography``, i.e. OpenSSL) with a fresh 32-byte key from ``secrets``
is indistinguishable from uniform without the key. The keystream is written straight into
the tensor's memory: about 5 GB/s on the development machine, so drawing is never the
bottleneck. Two ``Prg`` built from the same key yield the same stream, which lets the
dealer and a compute party draw identical values without sending them.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

KEY_BYTES = 32
# The keystream is XORed onto zeros in chunks: bounded memory, no page faults after the first use.
_CHUNK = 1 << 20
_ZEROS = memoryview(bytes(_CHUNK))


class Prg:
    """A keyed stream of uniform 64-bit ring elements (torch int64, wrapping)."""

    def __init__(self, key: bytes | None = None) -> None:
        """``key`` shares the stream with whoever holds it; without one, a fresh random key is drawn."""
        self.key = secrets.token_bytes(KEY_BYTES) if key is None else key
        if len(self.key) != KEY_BYTES:
            raise ValueError(f"A Prg key has {KEY_BYTES} bytes, got {len(self.key)}.")
        # Each key is used for one stream only, so a fixed nonce (and counter 0) is safe.
        self._stream = Cipher(algorithms.ChaCha20(self.key, bytes(16)), mode=None).encryptor()

    def ring(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        """The next ``prod(shape)`` elements of the stream, uniform over Z_(2^64)."""
        out = torch.empty(tuple(shape), dtype=torch.int64)
        view = memoryview(out.numpy().reshape(-1).view(np.uint8))
        for start in range(0, len(view), _CHUNK):
            part = view[start : start + _CHUNK]
            self._stream.update_into(_ZEROS[: len(part)], part)
        return out
