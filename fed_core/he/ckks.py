"""Homomorphic inference of CryptoCNN with CKKS (TenSEAL's context and keys, SEAL's evaluator).

The user (``HeClient``) makes the keys and keeps the secret key; the server (``HeServer``)
gets only the serialized public context (relinearization and rotation keys), evaluates
the network on ciphertexts and returns encrypted logits that only the user can decrypt.

Two packings, each with its own parameters (``DIGIT_PARAMS``, ``BATCH_PARAMS``):

* **One digit** (``encrypt_image`` / ``classify``): one ciphertext holds the image's
  im2col matrix (pixel k of window p at slot ``k*64 + p``). Every linear layer is a sum of
  plaintext diagonals times rotations of its input, in baby-step giant-step form, then
  a few doubling folds (``layer_shapes``):

  - conv: 8 diagonals, rotations by multiples of 64, and a fold over the 8 copies of the
    512 outputs, which leaves them repeated with period 512 (7 rotations);
  - fc1 (512 -> 128): the 4096 slots hold 8 copies of the input, so 16 diagonals make all
    65,536 products; copy r computes rows 16r..16r+15 and a fold of stride 16 sums each
    row into slot ``512r + c`` (11 rotations instead of the 512 of TenSEAL's ``mm``);
  - fc2 (128 -> 10): no folds, so that the reply holds the 10 logits and nothing else. A
    fold sums a product into its slot but also leaves partial sums of the weights times
    the hidden values in every slot it passes (1,390 of them could be decrypted), and
    masking them afterwards would cost a level this modulus has no room for. Instead each
    of 136 diagonals is zero outside the logit slots (``logit_slots``): it picks, for every
    logit, the hidden value that the input turned by its rotation brings there. Every
    product, and every sum of them (baby steps turn the input by multiples of 512, giant
    steps turn the sums by 1), is then zero outside the logit slots up to CKKS noise (23
    rotations instead of 12, all on the last prime).

* **Batch** (``encrypt_batch`` / ``classify_batch``): ciphertext i holds pixel i of 8,192
  images, two per slot (real and imaginary part), so every layer is plaintext-scalar
  multiply-adds across ciphertexts, and a square keeps the two images apart with one
  conjugation (``HeServer._square_pair``).

Costs. Key switching (rotations, relinearization) costs ~k(k+1) NTTs and a plaintext
product ~k for k primes, so each plan (``HeParams``) has as few primes as its precision
allows. Key switching and rescaling add noise of ~2^11 whatever the scale, and a vector
of weights encoded at scale 2^w is off by ~26/2^w per slot, so the plans keep scales
high where that noise lands on small values.
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

from fed_core.models import CryptoCNN, im2col

Ciphertext = seal.Ciphertext
STEPS = ("conv", "square", "fc1", "square", "fc2")  # CryptoCNN as CKKS sees it
PAIR_SQUARE_BITS = 2  # the batch square multiplies by constants encoded exactly at scale 4


@dataclass(frozen=True)
class HeParams:
    """Packing, ring degree and a scale plan; the primes follow from the plan.

    Pixels are encrypted at scale 2^input_bits and the conv, fc1 and fc2 weights are
    encoded at 2^weight_bits[i]. A plaintext product adds its weight bits to the scale, a
    square doubles it, and after step i of ``STEPS`` the ciphertext is rescaled to
    2^rescale_bits[i] (None: not there) by dropping a prime of the difference in bits.
    The last prime holds the logits with headroom_bits to spare; the special prime is
    used by key switching only.
    """

    packing: str = "image"  # "image": one digit per ciphertext; "batch": two images per slot
    poly_modulus_degree: int = 8192
    input_bits: int = 24
    weight_bits: tuple[int, int, int] = (22, 22, 22)  # conv, fc1, fc2
    rescale_bits: tuple[int | None, ...] = (28, None, 28, 26, None)
    headroom_bits: int = 10
    special_bits: int = 60

    def scale_plan(self) -> list[tuple[int, int | None]]:
        """(scale bits after step i, bits of the prime its rescale drops or None) for each step."""
        weights = iter(self.weight_bits)
        square_extra = PAIR_SQUARE_BITS if self.packing == "batch" else 0
        scale, plan = self.input_bits, []
        for step, target in zip(STEPS, self.rescale_bits):
            scale = 2 * scale + square_extra if step == "square" else scale + next(weights)
            plan.append((scale, None if target is None else scale - target))
            scale = scale if target is None else target
        return plan

    @property
    def coeff_mod_bit_sizes(self) -> list[int]:
        plan = self.scale_plan()
        final_scale = plan[-1][0] if self.rescale_bits[-1] is None else self.rescale_bits[-1]
        dropped = [bits for _, bits in plan if bits is not None]
        # SEAL drops the last data prime first.
        return [final_scale + self.headroom_bits, *reversed(dropped), self.special_bits]

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def images_per_pass(self) -> int:
        return 2 * self.slots if self.packing == "batch" else 1

    @property
    def input_scale(self) -> float:
        return 2.0**self.input_bits


# One digit: data primes of 58, 30, 50 and 18 bits and a 60-bit special prime (216 bits).
# The conv and fc1 rescale to 2^28 before their giant and fold rotations; fc1 turns its
# input by baby steps while it is still at 2^56. The second square is rescaled to 2^26, so
# that fc2's 136 products and 23 rotations all run on the last prime (2^48, 10 bits to
# spare): half the time of fc2 at two primes with a rescale per giant group, and 9 MB of
# plaintext diagonals instead of 18. Max logit error ~0.004.
DIGIT_PARAMS = HeParams()
# Batch: scalar weights encode with an error of only 0.5/2^bits and nothing rotates, so
# three data primes do (56, 56, 53 + 52 = 217 bits): the 90,000 plaintext products of a
# pass run on small ciphertexts. Max logit error ~0.006.
BATCH_PARAMS = HeParams(
    packing="batch",
    input_bits=22,
    weight_bits=(16, 16, 19),
    rescale_bits=(None, 25, None, 28, None),
    headroom_bits=9,
    special_bits=52,  # key switching only acts at scales >= 2^38, where 2^4 below the largest prime is plenty
)


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
    def positions(self) -> int:
        """Kernel positions: the im2col columns."""
        return self.kernel * self.kernel

    @property
    def block(self) -> int:
        """Slots of one copy of the conv output (channel-major, like torch's flatten)."""
        return self.channels * self.windows

    def copies(self, slots: int) -> int:
        """Copies of the conv output in the slots, each computing its share of fc1's rows."""
        return slots // self.block

    def rows_per_copy(self, slots: int) -> int:
        """fc1 rows computed by each copy of its input: also fc1's number of diagonals."""
        return self.hidden * self.block // slots

    def check_fits(self, slots: int) -> None:
        """The single-image packing needs every kernel position and every fc1 product in the slots."""
        groups = slots // self.windows
        fits = (
            groups >= self.positions
            and groups % self.channels == 0
            and self.rows_per_copy(slots) * slots == self.hidden * self.block
        )
        if not fits:
            raise ValueError(f"CryptoCNN shapes {self} do not fit the single-image packing in {slots} slots.")


# CryptoCNN's default shapes; the client needs them to pack before it knows the model.
DEFAULT_GEOMETRY = Geometry(kernel=7, stride=3, side=8, channels=8, hidden=128, classes=10)


def fold_steps(period: int, block: int) -> list[int]:
    """Rotations that add up the period/block blocks of a vector: period/2, ..., block."""
    steps = []
    while period > block:
        period //= 2
        steps.append(period)
    return steps


def baby_steps(diagonals: int) -> int:
    """Baby steps of a baby-step giant-step sum: about sqrt(diagonals), a power of two.

    Rounded down: baby rotations act on the layer's input at its level, giant rotations on
    products that a rescale may already have made smaller.
    """
    return 1 << int(math.log2(diagonals) / 2)


@dataclass(frozen=True)
class LayerShape:
    """A linear layer of the single-image packing: sum_d diag_d * rot(x, rotation(d)), then folds.

    Diagonal d = g*baby + b turns x by b*step + g*giant_step: the baby rotations act on the
    input, the giant ones (in Horner form) on sums of products.
    """

    diagonals: int
    step: int
    folds: list[int]
    baby: int
    giant_step: int

    @classmethod
    def consecutive(cls, diagonals: int, step: int, folds: list[int]) -> LayerShape:
        """Diagonal d turns x by d*step: about sqrt(diagonals) baby steps, giant steps of baby*step."""
        baby = baby_steps(diagonals)
        return cls(diagonals, step, folds, baby, baby * step)

    def rotation(self, diagonal: int) -> int:
        return diagonal % self.baby * self.step + diagonal // self.baby * self.giant_step

    @property
    def rotations(self) -> set[int]:
        baby = {self.step} if self.baby > 1 else set()
        giant = {self.giant_step} if self.diagonals > self.baby else set()
        return baby | giant | set(self.folds)


def layer_shapes(geometry: Geometry, slots: int) -> dict[str, LayerShape]:
    """conv, fc1 and fc2 in the single-image packing (see the module docstring).

    fc2 turns its input by every offset from a hidden value's slot to a logit's slot
    (``logit_slots``): a multiple of the block plus 0 .. rows - 1 + (classes - 1) // copies.
    """
    rows, copies = geometry.rows_per_copy(slots), geometry.copies(slots)
    giants = rows + (geometry.classes - 1) // copies
    return {
        "conv": LayerShape.consecutive(geometry.channels, geometry.windows, fold_steps(slots, geometry.block)),
        "fc1": LayerShape.consecutive(rows, 1, fold_steps(geometry.block, rows)),
        "fc2": LayerShape(copies * giants, geometry.block, [], baby=copies, giant_step=1),
    }


def rotation_steps(geometry: Geometry, slots: int) -> list[int]:
    """Every rotation the single-image packing makes (all powers of two for CryptoCNN)."""
    return sorted(set().union(*(shape.rotations for shape in layer_shapes(geometry, slots).values())))


def galois_elements(params: HeParams) -> list[int]:
    """The Galois automorphisms a packing needs keys for."""
    two_n = 2 * params.poly_modulus_degree
    if params.packing == "batch":
        return [two_n - 1]  # complex conjugation
    # Rotating left by s is the automorphism 3^s mod 2N.
    return [pow(3, step, two_n) for step in rotation_steps(DEFAULT_GEOMETRY, params.slots)]


def hidden_slots(geometry: Geometry, slots: int) -> np.ndarray:
    """Where fc1 leaves hidden value m: slot (m // d) * block + m % d, d = rows per copy."""
    rows = geometry.rows_per_copy(slots)
    m = np.arange(geometry.hidden)
    return m // rows * geometry.block + m % rows


def logit_slots(geometry: Geometry, slots: int) -> np.ndarray:
    """Where the single-image packing leaves logit j: slot (j mod copies) * block - j // copies.

    For CryptoCNN: logits 0-7 at 0, 512, ..., 3584, logits 8 and 9 at 4095 and 511. Starts
    of blocks, like the hidden values' rows, so that few offsets (fc2's diagonals) lead from
    the hidden slots to them.
    """
    copies, j = geometry.copies(slots), np.arange(geometry.classes)
    return (j % copies * geometry.block - j // copies) % slots


# sealapi serializes only to a file path; a RAM-backed folder makes that a memory copy
# (a temporary folder on disk costs ~4 ms to create and remove).
SCRATCH_DIR = "/dev/shm" if Path("/dev/shm").is_dir() else None


def seal_to_bytes(obj) -> bytes:
    """Serialize a SEAL object (SEAL compresses it; a seeded ciphertext stores c1 as its seed)."""
    with tempfile.TemporaryDirectory(dir=SCRATCH_DIR) as tmp:
        path = str(Path(tmp) / "seal.bin")
        obj.save(path)
        return Path(path).read_bytes()


def seal_from_bytes(obj, context, data: bytes):
    with tempfile.TemporaryDirectory(dir=SCRATCH_DIR) as tmp:
        path = Path(tmp) / "seal.bin"
        path.write_bytes(data)
        obj.load(context, str(path))
    return obj


# --- the single-image packing, as slot vectors -------------------------------------------


def pack_image(image: np.ndarray, geometry: Geometry, slots: int) -> np.ndarray:
    """The one slot vector the client encrypts: pixel k of window p at slot k*windows + p."""
    columns = im2col(torch.as_tensor(image)[None, None], geometry.kernel, geometry.stride)[0].double().numpy()
    vector = np.zeros(slots)
    vector[: columns.size] = columns.T.ravel()
    return vector


def conv_diagonals(weight: np.ndarray, geometry: Geometry, slots: int) -> list[np.ndarray]:
    """Diagonal m multiplies the image rotated by m*windows.

    Slot ``windows*j + p`` of diagonal m holds w[j mod C, (j + m) mod groups] (0 past the
    last kernel position): after the fold over the copies (j -> j + C*q), output (c, p)
    has met each kernel position k = c + C*q + m once.
    """
    groups = slots // geometry.windows
    flat = np.zeros((geometry.channels, groups))
    flat[:, : geometry.positions] = weight.reshape(geometry.channels, -1)
    j = np.arange(groups)
    return [
        np.repeat(flat[j % geometry.channels, (j + m) % groups], geometry.windows) for m in range(geometry.channels)
    ]


def fc1_diagonals(matrix: np.ndarray, slots: int) -> list[np.ndarray]:
    """Diagonals of an [out, in] matrix for an input repeated with period in: slot s meets input s + i.

    Copy r (slots r*in .. r*in + in - 1) computes rows r*d .. r*d + d - 1 for d diagonals:
    slot r*in + o works for row r*d + (o mod d), and a fold of stride d adds the in/d
    windows of row r*d + c into slot r*in + c.
    """
    n_out, n_in = matrix.shape
    rows = n_out * n_in // slots
    s = np.arange(slots)
    row = s // n_in * rows + s % n_in % rows
    return [matrix[row, (s % n_in + i) % n_in] for i in range(rows)]


def fc2_diagonals(
    matrix: np.ndarray, inputs: np.ndarray, outputs: np.ndarray, shape: LayerShape, slots: int
) -> list[np.ndarray]:
    """Diagonal d holds W[i, m] in logit i's slot if the input turned by rotation(d) brings hidden value m there.

    Zero in every other slot: whatever else the input holds never reaches the result.
    """
    diagonal_of = np.full(slots, -1)
    for d in range(shape.diagonals):
        diagonal_of[shape.rotation(d) % slots] = d
    chosen = diagonal_of[(inputs[None, :] - outputs[:, None]) % slots]  # [output, input]
    if (chosen < 0).any():
        raise ValueError("fc2's diagonals do not reach every logit slot from every hidden slot.")
    diagonals = np.zeros((shape.diagonals, slots))
    diagonals[chosen, outputs[:, None]] = matrix
    return list(diagonals)


def giant_groups(diagonals: list[np.ndarray], shape: LayerShape) -> list[list[np.ndarray]]:
    """Group diagonals [giant][baby], pre-rotated so that only the input turns by baby steps.

    sum_d diag_d * rot(x, rotation(d)) = sum_g rot(sum_b diag'_{g,b} * rot(x, b*step), g*giant_step)
    with diag'_{g,b} = rot(diag_{g*baby+b}, -g*giant_step).
    """
    baby = shape.baby
    return [
        [np.roll(diagonal, first // baby * shape.giant_step) for diagonal in diagonals[first : first + baby]]
        for first in range(0, len(diagonals), baby)
    ]


# --- the batch packing -----------------------------------------------------------------------


def unit_j(slots: int) -> np.ndarray:
    """J = X^(N/2) in the slots: a square root of -1 in each (i in even slots, -i in odd).

    Under SEAL's slot order (slot j evaluates at the root of unity to the power 3^j) the
    constant i is no short polynomial, but J is a monomial: multiplying by it is exact.
    The batch packing pairs two images per slot as a + J b.
    """
    return 1j * (-1.0) ** np.arange(slots)


# --- client and server -----------------------------------------------------------------------


@dataclass(frozen=True)
class PublicContext:
    """What the server receives: CKKS parameters, relinearization and Galois keys, the plan."""

    tenseal: bytes  # TenSEAL context without the secret key
    galois_keys: bytes  # keys for exactly the rotations (or conjugation) the packing uses
    params: HeParams  # the packing and scale plan: the server encodes the weights to match

    @property
    def size(self) -> int:
        return len(self.tenseal) + len(self.galois_keys)


class HeClient:
    """The user's side: creates the keys once, encrypts digits or batches, decrypts logits."""

    def __init__(self, params: HeParams = DIGIT_PARAMS) -> None:
        start = time.perf_counter()
        self.params = params
        # Symmetric encryption: the user holds the secret key anyway.
        self.context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            params.poly_modulus_degree,
            coeff_mod_bit_sizes=params.coeff_mod_bit_sizes,
            encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        )
        self.context.global_scale = params.input_scale
        self.seal_context = self.context.seal_context().data
        secret_key = self.context.secret_key().data
        keygen = seal.KeyGenerator(self.seal_context, secret_key)
        self.public_context = PublicContext(
            tenseal=self.context.serialize(save_public_key=False, save_secret_key=False, save_galois_keys=False),
            galois_keys=seal_to_bytes(keygen.create_galois_keys(galois_elements(params))),
            params=params,
        )
        self.encoder = seal.CKKSEncoder(self.seal_context)
        self.encryptor = seal.Encryptor(self.seal_context, secret_key)
        self.decryptor = self.context.decryptor().data
        self.keygen_seconds = time.perf_counter() - start

    @property
    def secret_context_size(self) -> int:
        secret = self.context.serialize(save_public_key=False, save_secret_key=True, save_galois_keys=False)
        return len(secret)

    def encrypt_image(self, image: np.ndarray) -> list[bytes]:
        """Normalised [28, 28] image -> serialized ciphertexts (one; seeded: half the size)."""
        self._require("image")
        vector = pack_image(image, DEFAULT_GEOMETRY, self.params.slots)
        return [seal_to_bytes(self.encryptor.encrypt_symmetric(self._encode(vector)))]

    def decrypt_slots(self, data: bytes) -> np.ndarray:
        """Every slot of a serialized ciphertext, complex: all that the server's reply tells the user."""
        return self._decrypt(seal_from_bytes(Ciphertext(), self.seal_context, data))

    def decrypt_logits(self, data: bytes) -> np.ndarray:
        return self.decrypt_slots(data).real[logit_slots(DEFAULT_GEOMETRY, self.params.slots)]

    def encrypt_batch(self, images: np.ndarray) -> list[bytes]:
        """Normalised [n, 28, 28] images -> one serialized ciphertext per pixel (seeded).

        Slot j holds images j and j + slots as a + J b (``unit_j``).
        """
        self._require("batch")
        slots = self.params.slots
        if len(images) > 2 * slots:
            raise ValueError(f"At most {2 * slots} images per batch.")
        pixels = np.zeros((images[0].size, 2 * slots))
        pixels[:, : len(images)] = images.reshape(len(images), -1).T
        j = unit_j(slots)
        return [
            seal_to_bytes(self.encryptor.encrypt_symmetric(self._encode(pixel[:slots] + j * pixel[slots:])))
            for pixel in pixels
        ]

    def decrypt_batch(self, ciphertexts: list[bytes], count: int) -> np.ndarray:
        """Serialized per-class ciphertexts -> logits [count, classes]."""
        j = unit_j(self.params.slots)
        columns = []
        for data in ciphertexts:
            values = self._decrypt(seal_from_bytes(Ciphertext(), self.seal_context, data))
            columns.append(np.concatenate([values.real, (values / j).real])[:count])
        return np.stack(columns, axis=1)

    def _require(self, packing: str) -> None:
        if self.params.packing != packing:
            raise ValueError(f"These keys are for the {self.params.packing!r} packing, not {packing!r}.")

    def _encode(self, values: np.ndarray) -> seal.Plaintext:
        plain = seal.Plaintext()
        self.encoder.encode(values.tolist(), self.params.input_scale, plain)
        return plain

    def _decrypt(self, ciphertext: Ciphertext) -> np.ndarray:
        plain = seal.Plaintext()
        self.decryptor.decrypt(ciphertext, plain)
        return np.array(self.encoder.decode_complex(plain))


@dataclass(frozen=True)
class Stage:
    """One step of ``STEPS`` on the server: where its input is, and whether it rescales."""

    level: int  # level of the ciphertext entering the step: its plaintexts are encoded there
    rescale: bool
    scale: float  # exact scale after the step (and its rescale): the bias is encoded at it


@dataclass
class LinearLayer:
    """A linear layer of the single-image packing, as the server runs it."""

    groups: list[list[seal.Plaintext]]  # diagonals [giant][baby]
    shape: LayerShape
    bias: seal.Plaintext


class HeServer:
    """The server's side: the model in plaintext, the user's public keys, no secret key."""

    def __init__(self, model: CryptoCNN, public_context: PublicContext) -> None:
        start = time.perf_counter()
        self.context = ts.context_from(public_context.tenseal)
        self.seal_context = self.context.seal_context().data
        self.params = public_context.params
        self.encoder = seal.CKKSEncoder(self.seal_context)
        self.slots = self.encoder.slot_count()
        self.evaluator = seal.Evaluator(self.seal_context)
        self.relin_keys = self.context.relin_keys().data
        self.galois_keys = seal_from_bytes(seal.GaloisKeys(), self.seal_context, public_context.galois_keys)
        self.levels = self._levels()
        self.stages = self._stages()
        self.geometry = Geometry.of(model)
        self.weights = {name: p.detach().double().numpy() for name, p in model.named_parameters()}
        if self.params.packing == "image":
            self.layers = self._pack_model()  # the model as plaintext diagonals, ~0.1 s
        else:
            self.unit_j = unit_j(self.slots)
            self.pair_constants = self._pair_constants()
        self.setup_seconds = time.perf_counter() - start

    # --- one digit ---------------------------------------------------------------------

    def classify(self, encrypted_image: list[bytes]) -> bytes:
        """Serialized input ciphertext -> serialized ciphertext with logit j in logit_slots()[j], 0 elsewhere."""
        self._require("image")
        if len(encrypted_image) != 1:
            raise ValueError(f"Expected 1 ciphertext, got {len(encrypted_image)}.")
        x = seal_from_bytes(Ciphertext(), self.seal_context, encrypted_image[0])
        for step, stage in zip(STEPS, self.stages):
            x = self._square(x, stage) if step == "square" else self._linear(x, self.layers[step], stage)
        return seal_to_bytes(x)

    def _pack_model(self) -> dict[str, LinearLayer]:
        g, w, slots = self.geometry, self.weights, self.slots
        if g != DEFAULT_GEOMETRY:  # the client packs the image before it knows the model
            raise ValueError(f"The one-digit packing is laid out for {DEFAULT_GEOMETRY}, not {g}.")
        g.check_fits(slots)
        shapes = layer_shapes(g, slots)
        hidden = hidden_slots(g, slots)
        diagonals = {
            "conv": conv_diagonals(w["conv.weight"], g, slots),
            "fc1": fc1_diagonals(w["fc1.weight"], slots),
            "fc2": fc2_diagonals(w["fc2.weight"], hidden, logit_slots(g, slots), shapes["fc2"], slots),
        }
        biases = {"conv": np.tile(np.repeat(w["conv.bias"], g.windows), slots // g.block)}
        biases["fc1"], biases["fc2"] = np.zeros(slots), np.zeros(slots)
        biases["fc1"][hidden] = w["fc1.bias"]
        biases["fc2"][logit_slots(g, slots)] = w["fc2.bias"]
        layers = {}
        for step, stage, weight_scale in self._linear_stages():
            groups = giant_groups(diagonals[step], shapes[step])
            layers[step] = LinearLayer(
                groups=[[self._plain(d, stage.level, weight_scale) for d in row] for row in groups],
                shape=shapes[step],
                bias=self._plain(biases[step], stage.level + stage.rescale, stage.scale),
            )
        return layers

    def _linear(self, x: Ciphertext, layer: LinearLayer, stage: Stage) -> Ciphertext:
        """Baby-step giant-step sum of diagonals times rotations of x, then folds and bias.

        Each giant group's products are rescaled (if the plan says so) before they are
        rotated, so the giant and fold rotations run on a smaller ciphertext.
        """
        shape = layer.shape
        rotated = [x]
        for _ in range(shape.baby - 1):
            rotated.append(self._rotate(rotated[-1], shape.step))
        result = None
        for row in reversed(layer.groups):  # Horner: every giant rotation is by giant_step
            inner = self._sum(self._mul(r, d) for r, d in zip(rotated, row))
            if stage.rescale:
                self.evaluator.rescale_to_next_inplace(inner)
            if result is not None:
                self.evaluator.add_inplace(inner, self._rotate(result, shape.giant_step))
            result = inner
        for fold in layer.shape.folds:
            self.evaluator.add_inplace(result, self._rotate(result, fold))
        self.evaluator.add_plain_inplace(result, layer.bias)
        return result

    def _rotate(self, x: Ciphertext, step: int) -> Ciphertext:
        out = Ciphertext()
        self.evaluator.rotate_vector(x, step, self.galois_keys, out)
        return out

    def _plain(self, values: np.ndarray, level: int, scale: float) -> seal.Plaintext:
        plain = seal.Plaintext()
        self.encoder.encode(values.tolist(), self.levels[level], scale, plain)
        return plain

    # --- batch -------------------------------------------------------------------------

    def classify_batch(self, pixels: list[bytes], progress: Callable[[float], None] | None = None) -> list[bytes]:
        """Serialized ciphertexts, one per pixel (two images per slot) -> one per class.

        A layer's outputs are squared as they are made, so they wait at the next level down.
        """
        self._require("batch")
        w, g = self.weights, self.geometry
        layers = {
            "conv": (conv_matrix(w["conv.weight"], g), np.repeat(w["conv.bias"], g.windows)),
            "fc1": (w["fc1.weight"], w["fc1.bias"]),
            "fc2": (w["fc2.weight"], w["fc2.bias"]),
        }
        squares = {step: stage for step, after, stage in zip(STEPS, STEPS[1:], self.stages[1:]) if after == "square"}
        total_rows = sum(len(matrix) for matrix, _ in layers.values())
        done, x = 0, [seal_from_bytes(Ciphertext(), self.seal_context, data) for data in pixels]
        for step, stage, weight_scale in self._linear_stages():
            matrix, biases = layers[step]
            # Both images of a slot get the bias, b + J b; the conv's repeat for every window.
            level = stage.level + stage.rescale
            bias_plains = {b: self._plain(b * (1 + self.unit_j), level, stage.scale) for b in np.unique(biases)}
            outputs = []
            for row, bias in zip(matrix, biases):
                output = self._scalar_linear(x, row, bias_plains[bias], stage, weight_scale)
                outputs.append(self._square(output, squares[step]) if step in squares else output)
                done += 1
                if progress:
                    progress(done / total_rows)
            x = outputs
        return [seal_to_bytes(ct) for ct in x]

    def _scalar_linear(
        self, inputs: list[Ciphertext], row: np.ndarray, bias: seal.Plaintext, stage: Stage, weight_scale: float
    ) -> Ciphertext:
        # A weight that rounds to 0 at this scale would make a transparent product, which SEAL refuses.
        used = np.flatnonzero(np.round(row * weight_scale))
        plain, product, total = seal.Plaintext(), Ciphertext(), None
        for i in used:
            self.encoder.encode(float(row[i]), self.levels[stage.level], weight_scale, plain)
            if total is None:
                total = self._mul(inputs[i], plain)
            else:
                self.evaluator.multiply_plain(inputs[i], plain, product)
                self.evaluator.add_inplace(total, product)
        if stage.rescale:
            self.evaluator.rescale_to_next_inplace(total)
        self.evaluator.add_plain_inplace(total, bias)
        return total

    def _square_pair(self, z: Ciphertext, level: int) -> Ciphertext:
        """z = a + J b (two images in a slot) -> a^2 + J b^2 = J z conj(z) + (1 - J)/4 (z + conj(z))^2.

        Two key switches for two images (a conjugation, one relinearization of the sum), as
        many as squaring them apart would take; the constants are exact and cost 2 bits.
        """
        j, one_minus_j = self.pair_constants[level]
        conjugate = Ciphertext()
        self.evaluator.complex_conjugate(z, self.galois_keys, conjugate)
        norm = Ciphertext()
        self.evaluator.multiply(z, conjugate, norm)
        self.evaluator.multiply_plain_inplace(norm, j)
        self.evaluator.add_inplace(z, conjugate)
        self.evaluator.square_inplace(z)
        self.evaluator.multiply_plain_inplace(z, one_minus_j)
        self.evaluator.add_inplace(z, norm)
        self.evaluator.relinearize_inplace(z, self.relin_keys)
        return z

    def _pair_constants(self) -> dict[int, tuple[seal.Plaintext, seal.Plaintext]]:
        """J and (1 - J)/4 at scale 4 (the polynomials 4X^(N/2) and 1 - X^(N/2)) at each square's level."""
        scale = 2.0**PAIR_SQUARE_BITS
        return {
            stage.level: tuple(
                self._plain(values, stage.level, scale) for values in (self.unit_j, (1 - self.unit_j) / 4)
            )
            for step, stage in zip(STEPS, self.stages)
            if step == "square"
        }

    # --- shared steps ------------------------------------------------------------------

    def _require(self, packing: str) -> None:
        if self.params.packing != packing:
            raise ValueError(f"The public context is for the {self.params.packing!r} packing, not {packing!r}.")

    def _mul(self, x: Ciphertext, plain: seal.Plaintext) -> Ciphertext:
        out = Ciphertext()
        self.evaluator.multiply_plain(x, plain, out)
        return out

    def _sum(self, terms: Iterable[Ciphertext]) -> Ciphertext:
        terms = iter(terms)
        total = next(terms)
        for term in terms:
            self.evaluator.add_inplace(total, term)
        return total

    def _square(self, x: Ciphertext, stage: Stage) -> Ciphertext:
        if self.params.packing == "batch":
            x = self._square_pair(x, stage.level)
        else:
            self.evaluator.square_inplace(x)
            self.evaluator.relinearize_inplace(x, self.relin_keys)
        if stage.rescale:
            self.evaluator.rescale_to_next_inplace(x)
        return x

    def _levels(self) -> list:
        """parms_id of every level, top first."""
        ids, data = [], self.seal_context.first_context_data()
        while data is not None:
            ids.append(data.parms_id())
            data = data.next_context_data()
        return ids

    def _stages(self) -> list[Stage]:
        """Follow the scale plan with the actual primes, as SEAL computes the scales."""
        primes = [q.value() for q in self.seal_context.first_context_data().parms().coeff_modulus()]
        weights = iter(self.params.weight_bits)
        square_factor = 2.0**PAIR_SQUARE_BITS if self.params.packing == "batch" else 1.0
        level, scale, stages = 0, self.params.input_scale, []
        for step, target in zip(STEPS, self.params.rescale_bits):
            scale = scale * scale * square_factor if step == "square" else scale * 2.0 ** next(weights)
            if target is not None:
                scale /= primes[-1 - level]  # a rescale drops the last prime of the level
            stages.append(Stage(level=level, rescale=target is not None, scale=scale))
            level += target is not None
        return stages

    def _linear_stages(self) -> list[tuple[str, Stage, float]]:
        """(step, stage, weight scale) of conv, fc1 and fc2."""
        linear = [(step, stage) for step, stage in zip(STEPS, self.stages) if step != "square"]
        return [(step, stage, 2.0**bits) for (step, stage), bits in zip(linear, self.params.weight_bits)]


def classify_batch_apart(model: CryptoCNN, public_context: PublicContext, pixels: list[bytes]) -> list[bytes]:
    """One batch pass as a separate server process runs it: public context and ciphertexts in, logits out."""
    return HeServer(model, public_context).classify_batch(pixels)


def conv_matrix(weight: np.ndarray, geometry: Geometry) -> np.ndarray:
    """The convolution as a dense [C*windows, 28*28] matrix (zero outside each window)."""
    side = (geometry.side - 1) * geometry.stride + geometry.kernel
    basis = torch.eye(side * side, dtype=torch.float64).reshape(-1, 1, side, side)
    kernel = torch.as_tensor(weight, dtype=torch.float64)
    return torch.nn.functional.conv2d(basis, kernel, stride=geometry.stride).flatten(1).T.numpy()
