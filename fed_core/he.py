"""Homomorphic inference of CryptoCNN with CKKS (TenSEAL's context and keys, SEAL's evaluator).

The user (``HeClient``) makes the keys and keeps the secret key; the server (``HeServer``)
gets only the serialized public context (relinearization and rotation keys), evaluates
the network on ciphertexts and returns encrypted logits that only the user can decrypt.

Two packings:

* **One digit** (``encrypt_image`` / ``classify``): SIMD within one image. The client
  sends the im2col matrix as 7 ciphertexts, slot ``k*512 + c*64 + p`` holding pixel
  ``k`` of window ``p`` (repeated for each of the 8 channels ``c``), 8 kernel positions
  ``k`` per ciphertext. The convolution is then 7 plaintext products and 3 rotations,
  and leaves the 512 conv outputs repeated 8 times across the slots, which is what the
  hybrid diagonal method needs for fc1 (512 -> 128): 128 diagonals in baby-step
  giant-step form, 22 rotations instead of the 512 of TenSEAL's ``mm``. fc2 uses the
  same method. About 0.2 s per digit on 2 cores (TenSEAL's tutorial: ~2.9 s).
* **Batch** (``encrypt_batch`` / ``classify_batch``): one image per slot, so slot j of
  ciphertext i holds pixel i of image j and every layer is plaintext-scalar
  multiply-adds across ciphertexts: no rotations, 4096 images per pass.

Parameters: N = 8192, primes 40 + 5 x 27 + 40 bits (215 <= 218 for 128-bit security),
one 27-bit level per multiplication depth (conv, square, fc1, square, fc2). The 40-bit
outer primes leave room for |values| < 2^12 at the last level; logits are far smaller.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal
import torch

from fed_core.models import CryptoCNN

Ciphertext = seal.Ciphertext
BABY_STEPS = 16  # baby steps of the diagonal method; 16 x 8 for fc1's 128 diagonals


@dataclass(frozen=True)
class HeParams:
    poly_modulus_degree: int = 8192
    scale_bits: int = 27
    outer_bits: int = 40
    depth: int = 5  # conv, square, fc1, square, fc2

    @property
    def coeff_mod_bit_sizes(self) -> list[int]:
        return [self.outer_bits] + [self.scale_bits] * self.depth + [self.outer_bits]

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def scale(self) -> float:
        return 2.0**self.scale_bits


@dataclass(frozen=True)
class Geometry:
    """CryptoCNN's shapes, as the single-image packing uses them."""

    kernel: int
    stride: int
    side: int  # conv output side (windows per row)
    channels: int
    hidden: int
    classes: int

    @classmethod
    def of(cls, model: CryptoCNN) -> Geometry:
        channels = model.conv.out_channels
        return cls(
            kernel=model.conv.kernel_size[0],
            stride=model.conv.stride[0],
            side=math.isqrt(model.fc1.in_features // channels),
            channels=channels,
            hidden=model.fc1.out_features,
            classes=model.fc2.out_features,
        )

    @property
    def windows(self) -> int:
        return self.side * self.side

    @property
    def block(self) -> int:
        """Slots of one copy of the conv output (channel-major, like torch's flatten)."""
        return self.channels * self.windows

    @property
    def padded_classes(self) -> int:
        return 1 << (self.classes - 1).bit_length()

    def positions_per_ciphertext(self, slots: int) -> int:
        return slots // self.block

    def input_ciphertexts(self, slots: int) -> int:
        return math.ceil(self.kernel**2 / self.positions_per_ciphertext(slots))


# CryptoCNN's default shapes; the client needs them to pack before it knows the model.
DEFAULT_GEOMETRY = Geometry(kernel=7, stride=3, side=8, channels=8, hidden=128, classes=10)


def fold_steps(period: int, block: int) -> list[int]:
    """Rotations that add up the period/block blocks of a vector: period/2, ..., block."""
    steps = []
    while period > block:
        period //= 2
        steps.append(period)
    return steps


def rotation_steps(geometry: Geometry, slots: int) -> list[int]:
    giant = [BABY_STEPS] if geometry.hidden > BABY_STEPS else []
    return sorted(
        {1, *giant}
        | set(fold_steps(slots, geometry.block))
        | set(fold_steps(geometry.block, geometry.hidden))
        | set(fold_steps(geometry.hidden, geometry.padded_classes))
    )


def seal_to_bytes(obj) -> bytes:
    """SEAL objects (via sealapi) serialize only to a file path, so go through a temp file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "seal.bin")
        obj.save(path)
        return Path(path).read_bytes()


def seal_from_bytes(obj, context, data: bytes):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "seal.bin"
        path.write_bytes(data)
        obj.load(context, str(path))
    return obj


def im2col(image: np.ndarray, geometry: Geometry) -> np.ndarray:
    """[28, 28] -> [windows, kernel*kernel]."""
    k, s = geometry.kernel, geometry.stride
    patches = torch.as_tensor(image).unfold(0, k, s).unfold(1, k, s)
    return patches.reshape(geometry.windows, k * k).double().numpy()


def pack_by_kernel_position(blocks: list[np.ndarray], geometry: Geometry, slots: int) -> list[np.ndarray]:
    """Lay block k (one per kernel position) at (k mod per_ct) * block in slot vector k // per_ct."""
    per_ct = geometry.positions_per_ciphertext(slots)
    vectors = []
    for first in range(0, len(blocks), per_ct):
        vector = np.zeros(slots)
        for offset, block in enumerate(blocks[first : first + per_ct]):
            vector[offset * geometry.block : (offset + 1) * geometry.block] = block
        vectors.append(vector)
    return vectors


def pack_image(image: np.ndarray, geometry: Geometry, slots: int) -> list[np.ndarray]:
    """Slot vectors of the single-image layout: pixel k of window p at k'*block + c*windows + p."""
    columns = im2col(image, geometry)  # [windows, k*k]
    blocks = [np.tile(columns[:, k], geometry.channels) for k in range(columns.shape[1])]
    return pack_by_kernel_position(blocks, geometry, slots)


def conv_weight_vectors(weight: np.ndarray, geometry: Geometry, slots: int) -> list[np.ndarray]:
    """The matching plaintexts: w[c, k] at k'*block + c*windows + p."""
    flat = weight.reshape(geometry.channels, -1)  # [C, k*k]
    blocks = [np.repeat(flat[:, k], geometry.windows) for k in range(flat.shape[1])]
    return pack_by_kernel_position(blocks, geometry, slots)


def bsgs_diagonals(matrix: np.ndarray, slots: int) -> list[list[np.ndarray]]:
    """Diagonals of an [out, in] matrix (out divides in) for the hybrid diagonal method.

    Diagonal i holds W[k mod out, (k + i) mod in] at slot k (repeated with period in), so
    that sum_i diag_i * rot(x, i), folded from period in to out, is W x. Grouped as
    [giant][baby] and pre-rotated by the giant step, so only x is rotated by baby steps.
    """
    n_out, n_in = matrix.shape
    k = np.arange(n_in)
    baby = min(BABY_STEPS, n_out)
    grouped = []
    for giant in range(n_out // baby):
        row = []
        for b in range(baby):
            i = giant * baby + b
            diagonal = np.tile(matrix[k % n_out, (k + i) % n_in], slots // n_in)
            row.append(np.roll(diagonal, giant * baby))  # undo the later giant rotation
        grouped.append(row)
    return grouped


@dataclass(frozen=True)
class PublicContext:
    """What the server receives: CKKS parameters, relinearization and rotation keys."""

    tenseal: bytes  # TenSEAL context without the secret key
    galois_keys: bytes  # rotation keys for exactly the steps the packing uses

    @property
    def size(self) -> int:
        return len(self.tenseal) + len(self.galois_keys)


class HeClient:
    """The user's side: creates the keys once, encrypts digits, decrypts logits."""

    def __init__(self, params: HeParams = HeParams(), rotations: bool = True) -> None:
        """``rotations=False`` skips the rotation keys, which only one-digit inference needs."""
        start = time.perf_counter()
        self.params = params
        # Symmetric encryption: the user holds the secret key anyway.
        self.context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            params.poly_modulus_degree,
            coeff_mod_bit_sizes=params.coeff_mod_bit_sizes,
            encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        )
        self.context.global_scale = params.scale
        seal_context = self.context.seal_context().data
        secret_key = self.context.secret_key().data
        galois = b""
        if rotations:
            steps = rotation_steps(DEFAULT_GEOMETRY, params.slots)
            # sealapi takes Galois elements; rotating left by s is the element 3^s mod 2N.
            elements = [pow(3, s, 2 * params.poly_modulus_degree) for s in steps]
            keygen = seal.KeyGenerator(seal_context, secret_key)
            galois = seal_to_bytes(keygen.create_galois_keys(elements))
        self.public_context = PublicContext(
            tenseal=self.context.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False),
            galois_keys=galois,
        )
        self.encoder = seal.CKKSEncoder(seal_context)
        self.encryptor = seal.Encryptor(seal_context, secret_key)
        self.decryptor = self.context.decryptor().data
        self.seal_context = seal_context
        self.keygen_seconds = time.perf_counter() - start

    @property
    def secret_context_size(self) -> int:
        secret = self.context.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False)
        return len(secret)

    def encrypt_image(self, image: np.ndarray) -> list[bytes]:
        """Normalised [28, 28] image -> serialized ciphertexts (seeded: half the size)."""
        vectors = pack_image(image, DEFAULT_GEOMETRY, self.params.slots)
        return [seal_to_bytes(self.encryptor.encrypt_symmetric(self._encode(v))) for v in vectors]

    def decrypt_logits(self, data: bytes, classes: int = DEFAULT_GEOMETRY.classes) -> np.ndarray:
        ciphertext = seal_from_bytes(Ciphertext(), self.seal_context, data)
        return self._decrypt(ciphertext)[:classes]

    def encrypt_batch(self, images: np.ndarray) -> list[Ciphertext]:
        """Normalised [n <= slots, 28, 28] images -> one ciphertext per pixel, image j in slot j."""
        if len(images) > self.params.slots:
            raise ValueError(f"At most {self.params.slots} images per batch.")
        pixels = images.reshape(len(images), -1).T.astype(np.float64)
        return [self._encrypt(self._encode(pixel)) for pixel in pixels]

    def decrypt_batch(self, ciphertexts: list[Ciphertext], count: int) -> np.ndarray:
        """Per-class ciphertexts -> logits [count, classes]."""
        return np.stack([self._decrypt(ct)[:count] for ct in ciphertexts], axis=1)

    def _encode(self, values: np.ndarray) -> seal.Plaintext:
        plain = seal.Plaintext()
        self.encoder.encode(values.tolist(), self.params.scale, plain)
        return plain

    def _encrypt(self, plain: seal.Plaintext) -> Ciphertext:
        ciphertext = Ciphertext()
        self.encryptor.encrypt_symmetric(plain, ciphertext)
        return ciphertext

    def _decrypt(self, ciphertext: Ciphertext) -> np.ndarray:
        plain = seal.Plaintext()
        self.decryptor.decrypt(ciphertext, plain)
        return np.array(self.encoder.decode_double(plain))


class HeServer:
    """The server's side: the model in plaintext, the user's public keys, no secret key."""

    def __init__(self, model: CryptoCNN, public_context: PublicContext) -> None:
        start = time.perf_counter()
        self.context = ts.context_from(public_context.tenseal)
        self.seal_context = self.context.seal_context().data
        self.scale = self.context.global_scale
        self.encoder = seal.CKKSEncoder(self.seal_context)
        self.slots = self.encoder.slot_count()
        self.evaluator = seal.Evaluator(self.seal_context)
        self.relin_keys = self.context.relin_keys().data
        self.galois_keys = (
            seal_from_bytes(seal.GaloisKeys(), self.seal_context, public_context.galois_keys)
            if public_context.galois_keys
            else None
        )
        self.levels = self._parms_ids()
        self.geometry = Geometry.of(model)
        self.weights = {name: p.detach().double().numpy() for name, p in model.named_parameters()}
        # One-digit inference needs the model packed as plaintexts (~0.15 s); batches do not.
        self.packed = self._pack_model() if self.galois_keys else None
        self.setup_seconds = time.perf_counter() - start

    # --- one digit ---------------------------------------------------------------------

    def classify(self, encrypted_image: list[bytes]) -> bytes:
        """Serialized input ciphertexts -> serialized ciphertext with the logits in slots 0..9."""
        if self.galois_keys is None:
            raise ValueError("One-digit inference needs the rotation keys in the public context.")
        packed, g = self.packed, self.geometry
        if len(encrypted_image) != len(packed["conv"]):
            raise ValueError(f"Expected {len(packed['conv'])} ciphertexts, got {len(encrypted_image)}.")
        inputs = [seal_from_bytes(Ciphertext(), self.seal_context, data) for data in encrypted_image]
        x = self._sum(self._mul(ct, pt) for ct, pt in zip(inputs, packed["conv"]))
        self._fold(x, self.slots, g.block)
        x = self._square(self._finish_linear(x, packed["conv_bias"]))
        x = self._square(self._matvec(x, packed["fc1"], g.block, g.hidden, packed["fc1_bias"]))
        x = self._matvec(x, packed["fc2"], g.hidden, g.padded_classes, packed["fc2_bias"])
        return seal_to_bytes(x)

    def _pack_model(self) -> dict:
        g, w, slots = self.geometry, self.weights, self.slots
        fc2 = np.zeros((g.padded_classes, g.hidden))
        fc2[: g.classes] = w["fc2.weight"]
        fc2_bias = np.zeros(slots)
        fc2_bias[: g.classes] = w["fc2.bias"]
        return {
            "conv": [self._plain(v, level=0) for v in conv_weight_vectors(w["conv.weight"], g, slots)],
            "conv_bias": np.tile(np.repeat(w["conv.bias"], g.windows), slots // g.block),
            "fc1": [[self._plain(d, level=2) for d in row] for row in bsgs_diagonals(w["fc1.weight"], slots)],
            "fc1_bias": np.tile(w["fc1.bias"], slots // g.hidden),
            "fc2": [[self._plain(d, level=4) for d in row] for row in bsgs_diagonals(fc2, slots)],
            "fc2_bias": fc2_bias,
        }

    def _matvec(
        self,
        x: Ciphertext,
        diagonals: list[list[seal.Plaintext]],
        n_in: int,
        n_out: int,
        bias: np.ndarray,
    ) -> Ciphertext:
        """Hybrid diagonal method, baby-step giant-step: W x for x repeated with period n_in."""
        baby = len(diagonals[0])
        rotated = [x]
        for _ in range(baby - 1):
            rotated.append(self._rotate(rotated[-1], 1))
        result = None
        for row in reversed(diagonals):  # Horner: every giant rotation is by `baby`
            inner = self._sum(self._mul(r, d) for r, d in zip(rotated, row))
            if result is not None:
                self.evaluator.add_inplace(inner, self._rotate(result, baby))
            result = inner
        self._fold(result, n_in, n_out)
        return self._finish_linear(result, bias)

    def _fold(self, x: Ciphertext, period: int, block: int) -> None:
        for step in fold_steps(period, block):
            self.evaluator.add_inplace(x, self._rotate(x, step))

    def _rotate(self, x: Ciphertext, step: int) -> Ciphertext:
        out = Ciphertext()
        self.evaluator.rotate_vector(x, step, self.galois_keys, out)
        return out

    def _plain(self, values: np.ndarray, level: int) -> seal.Plaintext:
        plain = seal.Plaintext()
        self.encoder.encode(values.tolist(), self.levels[level], self.scale, plain)
        return plain

    # --- batch -------------------------------------------------------------------------

    def classify_batch(
        self, pixels: list[Ciphertext], progress: Callable[[float], None] | None = None
    ) -> list[Ciphertext]:
        """One ciphertext per pixel (image j in slot j) -> one ciphertext per class."""
        w = self.weights
        layers = [
            (
                conv_matrix(w["conv.weight"], self.geometry),
                np.repeat(w["conv.bias"], self.geometry.windows),
            ),
            (w["fc1.weight"], w["fc1.bias"]),
            (w["fc2.weight"], w["fc2.bias"]),
        ]
        total_rows = sum(len(matrix) for matrix, _ in layers)
        done = 0
        x = pixels
        for index, (matrix, bias) in enumerate(layers):
            outputs = []
            for row, b in zip(matrix, bias):
                outputs.append(self._scalar_linear(x, row, b))
                done += 1
                if progress:
                    progress(done / total_rows)
            x = outputs if index == len(layers) - 1 else [self._square(ct) for ct in outputs]
        return x

    def _scalar_linear(self, inputs: list[Ciphertext], row: np.ndarray, bias: float) -> Ciphertext:
        terms = (self._mul(inputs[i], self._scalar(row[i], inputs[i])) for i in np.flatnonzero(row))
        return self._finish_linear(self._sum(terms), float(bias))

    def _scalar(self, value: float, like: Ciphertext) -> seal.Plaintext:
        plain = seal.Plaintext()
        self.encoder.encode(float(value), like.parms_id(), self.scale, plain)
        return plain

    # --- shared steps ------------------------------------------------------------------

    def _mul(self, x: Ciphertext, plain: seal.Plaintext) -> Ciphertext:
        out = Ciphertext()
        self.evaluator.multiply_plain(x, plain, out)
        return out

    def _sum(self, terms: Iterable[Ciphertext]) -> Ciphertext:
        """Add up products as they are made: holding 512 of them at once would take 270 MB."""
        terms = iter(terms)
        total = next(terms)
        for term in terms:
            self.evaluator.add_inplace(total, term)
        return total

    def _finish_linear(self, x: Ciphertext, bias: np.ndarray | float) -> Ciphertext:
        """Rescale after a plaintext product, then add the bias (slots or one scalar) at the new scale."""
        self.evaluator.rescale_to_next_inplace(x)
        plain = seal.Plaintext()
        values = bias.tolist() if isinstance(bias, np.ndarray) else bias
        self.encoder.encode(values, x.parms_id(), x.scale, plain)
        self.evaluator.add_plain_inplace(x, plain)
        return x

    def _square(self, x: Ciphertext) -> Ciphertext:
        self.evaluator.square_inplace(x)
        self.evaluator.relinearize_inplace(x, self.relin_keys)
        self.evaluator.rescale_to_next_inplace(x)
        return x

    def _parms_ids(self) -> list:
        ids, data = [], self.seal_context.first_context_data()
        while data is not None:
            ids.append(data.parms_id())
            data = data.next_context_data()
        return ids


def conv_matrix(weight: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The convolution as a dense [C*windows, 28*28] matrix (zero outside each window)."""
    side = (geometry.side - 1) * geometry.stride + geometry.kernel
    basis = torch.eye(side * side, dtype=torch.float64).reshape(-1, 1, side, side)
    kernel = torch.as_tensor(weight, dtype=torch.float64)
    return torch.nn.functional.conv2d(basis, kernel, stride=geometry.stride).flatten(1).T.numpy()
