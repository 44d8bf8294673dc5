"""Encrypted evaluation on test images, and encrypted classification of one digit.

Both schemes run the same crypto-friendly CryptoCNN: ``"mpc"`` (two-party secret
sharing with a dealer, :mod:`fed_core.mpc.protocol`) and ``"he"`` (CKKS homomorphic encryption,
:mod:`fed_core.he.ckks`). Step timings use the same names for both: ``encrypt`` (secret-share
or encrypt the images), ``compute`` (the parties or the server run the network) and
``decrypt`` (reconstruct or decrypt the logits).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from fed_core.he.ckks import BATCH_PARAMS, DIGIT_PARAMS, HeClient, HeParams, HeServer, classify_batch_apart
from fed_core.models import ENCRYPTABLE_MODELS, MODEL_LABELS, is_encryptable
from fed_core.mpc.processes import mpc_classifier
from fed_core.mpc.protocol import FRAC_BITS, MpcClassifier
from fed_core.vocabulary import UserError

SCHEMES = {
    "mpc": "Secure multi-party computation (secret sharing)",
    "he": "Homomorphic encryption (CKKS)",
}
HE_PACKINGS = ("auto", "image", "batch")
MPC_BATCH = 1000

# Speeds measured by bench/bench_encrypted.py on the 2-core development machine. They
# only feed the estimates shown before a run (and the HE route: their ratio puts the
# switch at ~330 images); results report the measured times.
MPC_IMAGES_PER_SECOND = 4000.0
HE_KEYGEN_SECONDS = 0.8  # keys and server setup
HE_SECONDS_PER_IMAGE = 0.12  # one-digit packing, per image
HE_SECONDS_PER_PASS = 40.0  # batch packing: one pass handles up to HE_PASS_IMAGES images
HE_PASS_IMAGES = BATCH_PARAMS.images_per_pass

Progress = Callable[[float], None]


class NotEncryptableError(UserError, ValueError):
    """The model cannot run on encrypted data; the message lists the models that can."""


def require_encryptable(model: nn.Module) -> None:
    if is_encryptable(model):
        return
    name = getattr(model, "model_name", type(model).__name__)
    accepted = "; ".join(f"{n}: {MODEL_LABELS[n]}" for n in ENCRYPTABLE_MODELS)
    raise NotEncryptableError(
        f"The model {name!r} cannot run on encrypted data; encrypted inference accepts only {accepted}."
    )


def _require_scheme(scheme: str) -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"Unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}.")


class Stopwatch:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[step] += time.perf_counter() - start


# --- estimates ---------------------------------------------------------------------------


def available_cpus() -> int:
    """CPUs this process may run on (a container may get fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def he_passes(n: int) -> int:
    return math.ceil(n / HE_PASS_IMAGES)


def he_batch_seconds(n: int) -> float:
    """Batch passes run side by side, one per available CPU."""
    passes = he_passes(n)
    return math.ceil(passes / min(passes, available_cpus())) * HE_SECONDS_PER_PASS


def choose_he_packing(n: int, packing: str = "auto") -> str:
    """'image' (one digit at a time) or 'batch' (two images per slot); 'auto' picks the faster."""
    if packing not in HE_PACKINGS:
        raise ValueError(f"Unknown HE packing {packing!r}; choose one of {', '.join(HE_PACKINGS)}.")
    if packing != "auto":
        return packing
    return "image" if n * HE_SECONDS_PER_IMAGE < he_batch_seconds(n) else "batch"


def describe_he_route(n: int, packing: str = "auto") -> str:
    """One line: which HE packing runs for n images, and why."""
    one_by_one, passes = _seconds(n * HE_SECONDS_PER_IMAGE), he_passes(n)
    why = "as requested" if packing != "auto" else "the faster of the two"
    if choose_he_packing(n, packing) == "image":
        return (
            f"HE encrypts the images one at a time ({why}): {n:,} x {HE_SECONDS_PER_IMAGE:.2f} s = ~{one_by_one}, "
            f"against ~{_seconds(HE_SECONDS_PER_PASS)} for a batch pass of up to {HE_PASS_IMAGES:,} images."
        )
    side_by_side = min(passes, available_cpus())
    passes_text = f"{passes} passes, {side_by_side} at a time," if passes > 1 else "1 pass"
    return (
        f"HE packs two images per slot, {HE_PASS_IMAGES:,} per pass ({why}): {passes_text} "
        f"~{_seconds(he_batch_seconds(n))}, against ~{one_by_one} one image at a time."
    )


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:,.0f} s"


def estimate_seconds(scheme: str, n: int, he_packing: str = "auto") -> float:
    """Expected wall time on the development machine (2 cores, otherwise idle)."""
    _require_scheme(scheme)
    if scheme == "mpc":
        return n / MPC_IMAGES_PER_SECOND
    if choose_he_packing(n, he_packing) == "image":
        return HE_KEYGEN_SECONDS + n * HE_SECONDS_PER_IMAGE
    return HE_KEYGEN_SECONDS + he_batch_seconds(n)


# --- evaluation on a test set --------------------------------------------------------------


@dataclass
class EvalResult:
    scheme: str
    packing: str  # "shares" (MPC), "image" or "batch" (HE)
    n: int
    plain_accuracy: float
    encrypted_accuracy: float
    agreement: float  # fraction of images where both predictions are equal
    max_logit_error: float
    images_per_second: float
    seconds: dict[str, float]
    communication: dict[str, float | int | list[int]]
    confusion: list[list[int]]  # [true label][encrypted prediction]
    labels: list[int] = field(repr=False)
    plain_predictions: list[int] = field(repr=False)
    encrypted_predictions: list[int] = field(repr=False)

    def summary(self) -> str:
        return (
            f"{self.scheme.upper()} ({self.packing}) on {self.n} images: plaintext accuracy "
            f"{self.plain_accuracy:.2%}, encrypted {self.encrypted_accuracy:.2%}, agreement "
            f"{self.agreement:.2%}, max logit error {self.max_logit_error:.2g}, "
            f"{self.images_per_second:.0f} images/s in {self.seconds['total']:.1f} s"
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Run:
    packing: str
    logits: np.ndarray
    seconds: dict[str, float]
    communication: dict


def evaluate_encrypted(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    scheme: str = "mpc",
    batch_size: int | None = None,
    progress: Progress | None = None,
    he_packing: str = "auto",
    mpc_parties: str = "in-process",
    he_workers: int | None = None,
) -> EvalResult:
    """Run ``model`` on normalised images [N,1,28,28] in plaintext and encrypted, and compare.

    ``mpc_parties`` is "in-process" (both parties simulated here) or "processes" (each role
    its own process, over loopback TCP: :mod:`fed_core.mpc.processes`). ``he_workers``: server
    processes for HE batch passes (default: one per available CPU, at most one per pass); 1 runs
    every pass in this process.
    """
    require_encryptable(model)
    _require_scheme(scheme)
    report = progress or (lambda fraction: None)
    with torch.no_grad():
        plain_logits = model(images).double().numpy()
    start = time.perf_counter()
    if scheme == "mpc":
        run = _run_mpc(model, images, batch_size or MPC_BATCH, report, mpc_parties)
    elif choose_he_packing(len(images), he_packing) == "image":
        run = _run_he_images(model, images, report)
    else:
        run = _run_he_batches(model, images, batch_size or HE_PASS_IMAGES, report, he_workers)
    total = time.perf_counter() - start
    return _compare(scheme, run, plain_logits, labels.numpy(), total)


def _compare(scheme: str, run: _Run, plain_logits: np.ndarray, labels: np.ndarray, total: float) -> EvalResult:
    plain, encrypted = plain_logits.argmax(1), run.logits.argmax(1)
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (labels, encrypted), 1)
    return EvalResult(
        scheme=scheme,
        packing=run.packing,
        n=len(labels),
        plain_accuracy=float((plain == labels).mean()),
        encrypted_accuracy=float((encrypted == labels).mean()),
        agreement=float((plain == encrypted).mean()),
        max_logit_error=float(np.abs(run.logits - plain_logits).max()),
        images_per_second=len(labels) / total,
        seconds={**run.seconds, "total": total},
        communication=run.communication,
        confusion=confusion.tolist(),
        labels=labels.tolist(),
        plain_predictions=plain.tolist(),
        encrypted_predictions=encrypted.tolist(),
    )


def _run_mpc(model: nn.Module, images: torch.Tensor, batch_size: int, report: Progress, parties: str) -> _Run:
    watch = Stopwatch()
    with mpc_classifier(model, parties) as classifier:
        # Opening the weights' masked values happens once, before the first batch.
        setup_rounds, setup_bytes = classifier.traffic.rounds, classifier.traffic.sent_by_party[0]
        logits, done = [], 0
        for batch in images.split(batch_size):
            with watch("encrypt"):
                shared = classifier.share_images(batch)
            with watch("compute"):
                shared_logits = classifier.forward(shared)
            with watch("decrypt"):
                logits.append(classifier.reveal(shared_logits).numpy())
            done += len(batch)
            report(done / len(images))
        traffic = classifier.traffic
    communication = {
        "parties": parties,
        "bytes_per_party": traffic.sent_by_party,
        "online_bytes": traffic.online_bytes,
        "online_bytes_per_image": traffic.online_bytes / len(images),
        "setup_bytes_per_party": setup_bytes,
        "rounds": traffic.rounds,
        "rounds_per_batch": (traffic.rounds - setup_rounds) // len(logits),
        "dealer_bytes": traffic.dealer_bytes,
        "input_bytes": traffic.input_bytes,
        "bytes_by_link": traffic.links,  # measured on the sockets ("processes" only)
        "fixed_point_fractional_bits": FRAC_BITS,
    }
    return _Run("shares", np.concatenate(logits), dict(watch.seconds), communication)


def _he_setup(model: nn.Module, params: HeParams, watch: Stopwatch) -> tuple[HeClient, HeServer]:
    with watch("keygen"):
        client = HeClient(params)
    with watch("server_setup"):
        server = HeServer(model, client.public_context)
    return client, server


def _he_communication(client: HeClient, upload: int, download: int, n: int, rounds: int) -> dict:
    return {
        "public_context_bytes": client.public_context.size,
        "secret_context_bytes": client.secret_context_size,  # never leaves the user
        "upload_bytes": upload,
        "download_bytes": download,
        "bytes_per_image": (upload + download) / n,
        "rounds": rounds,
    }


def _run_he_images(model: nn.Module, images: torch.Tensor, report: Progress) -> _Run:
    watch = Stopwatch()
    client, server = _he_setup(model, DIGIT_PARAMS, watch)
    logits, upload, download = [], 0, 0
    for index, image in enumerate(images):
        with watch("encrypt"):
            encrypted = client.encrypt_image(image[0].numpy())
        with watch("compute"):
            result = server.classify(encrypted)
        with watch("decrypt"):
            logits.append(client.decrypt_logits(result))
        upload += sum(map(len, encrypted))
        download += len(result)
        report((index + 1) / len(images))
    communication = _he_communication(client, upload, download, len(images), len(images))
    return _Run("image", np.stack(logits), dict(watch.seconds), communication)


def _within(report: Progress, start: int, size: int, total: int) -> Progress:
    """Progress through one pass of ``size`` images, reported as a fraction of all ``total``."""
    return lambda fraction: report((start + fraction * size) / total)


def _run_he_batches(
    model: nn.Module, images: torch.Tensor, batch_size: int, report: Progress, workers: int | None
) -> _Run:
    watch = Stopwatch()
    with watch("keygen"):
        client = HeClient(BATCH_PARAMS)
    batches = [batch[:, 0].numpy() for batch in images.split(min(batch_size, HE_PASS_IMAGES))]
    workers = min(workers or available_cpus(), len(batches))
    if workers > 1:
        passes = _serve_passes_apart(model, client, batches, watch, report, workers)
    else:
        passes = _serve_passes_here(model, client, batches, watch, report)
    logits, upload, download = [], 0, 0
    for batch, (pixels, result) in zip(batches, passes):
        with watch("decrypt"):
            logits.append(client.decrypt_batch(result, len(batch)))
        upload += pixels
        download += sum(map(len, result))
    communication = _he_communication(client, upload, download, len(images), len(batches))
    communication["server_processes"] = workers
    return _Run("batch", np.concatenate(logits), dict(watch.seconds), communication)


def _serve_passes_here(
    model: nn.Module, client: HeClient, batches: list[np.ndarray], watch: Stopwatch, report: Progress
) -> list[tuple[int, list[bytes]]]:
    """(upload bytes, encrypted logits) of each pass, one after the other in this process."""
    with watch("server_setup"):
        server = HeServer(model, client.public_context)
    total, done, passes = sum(map(len, batches)), 0, []
    for batch in batches:
        with watch("encrypt"):
            pixels = client.encrypt_batch(batch)
        with watch("compute"):
            result = server.classify_batch(pixels, _within(report, done, len(batch), total))
        passes.append((sum(map(len, pixels)), result))
        done += len(batch)
    return passes


def _serve_passes_apart(
    model: nn.Module, client: HeClient, batches: list[np.ndarray], watch: Stopwatch, report: Progress, workers: int
) -> list[tuple[int, list[bytes]]]:
    """The passes side by side in server processes that get the public context and ciphertexts only.

    Each pass is sent as soon as it is encrypted; ``compute`` is the wait after the last one.
    """
    total, done, uploads = sum(map(len, batches)), 0, {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for batch in batches:
            with watch("encrypt"):
                pixels = client.encrypt_batch(batch)
            future = pool.submit(classify_batch_apart, model, client.public_context, pixels)
            uploads[future] = (len(batch), sum(map(len, pixels)))
        with watch("compute"):
            for future in as_completed(uploads):
                done += uploads[future][0]
                report(done / total)
    return [(upload, future.result()) for future, (_, upload) in uploads.items()]


# --- one digit -------------------------------------------------------------------------------


@dataclass
class DigitResult:
    scheme: str
    prediction: int
    probabilities: list[float]
    logits: list[float]
    plain_prediction: int
    plain_probabilities: list[float]
    seconds: dict[str, float]  # keygen (if keys were made here), encrypt, compute, decrypt
    server_view: dict  # what the server (HE) or each compute party (MPC) holds
    share_images: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """JSON-friendly: everything but the share images."""
        return {k: v for k, v in asdict(self).items() if k != "share_images"}


def classify_digit(
    model: nn.Module,
    image28: torch.Tensor,
    scheme: str = "he",
    he_client: HeClient | None = None,
    he_server: HeServer | None = None,
) -> DigitResult:
    """Classify one normalised 28x28 digit encrypted, with the plaintext answer beside it.

    ``he_client`` carries the user's keys between digits; without one, keys are made here.
    ``he_server``, built for this model from that client's public context, saves the
    server's setup; without one, it is made here.
    """
    require_encryptable(model)
    _require_scheme(scheme)
    x = image28.reshape(1, 1, 28, 28).float()
    with torch.no_grad():
        plain_logits = model(x)[0].double()
    watch = Stopwatch()
    if scheme == "he":
        logits, view, shares = _digit_he(model, x, he_client, he_server, watch)
    else:
        logits, view, shares = _digit_mpc(model, x, watch)
    probabilities = torch.softmax(logits, 0)
    return DigitResult(
        scheme=scheme,
        prediction=int(logits.argmax()),
        probabilities=probabilities.tolist(),
        logits=logits.tolist(),
        plain_prediction=int(plain_logits.argmax()),
        plain_probabilities=torch.softmax(plain_logits, 0).tolist(),
        seconds=dict(watch.seconds),
        server_view=view,
        share_images=shares,
    )


def _digit_he(model: nn.Module, x: torch.Tensor, client: HeClient | None, server: HeServer | None, watch: Stopwatch):
    if client is None:
        with watch("keygen"):
            client = HeClient()
    if server is None:
        with watch("server_setup"):
            server = HeServer(model, client.public_context)
    with watch("encrypt"):
        encrypted = client.encrypt_image(x[0, 0].numpy())
    with watch("compute"):
        result = server.classify(encrypted)
    with watch("decrypt"):
        logits = torch.from_numpy(client.decrypt_logits(result))
    first = encrypted[0]
    view = {
        "server_has_secret_key": server.context.has_secret_key(),
        "public_context_bytes": client.public_context.size,
        "input_ciphertexts": len(encrypted),
        "input_bytes": sum(map(len, encrypted)),
        "output_bytes": len(result),
        "ciphertext_glimpse": first[len(first) // 2 : len(first) // 2 + 48].hex(" "),
    }
    return logits, view, None


def _digit_mpc(model: nn.Module, x: torch.Tensor, watch: Stopwatch):
    with watch("server_setup"):  # share the weights, open their masked values
        classifier = MpcClassifier(model)
    setup_bytes = classifier.traffic.sent_by_party[0]
    with watch("encrypt"):
        shared = classifier.share_images(x)
    with watch("compute"):
        shared_logits = classifier.forward(shared)
    with watch("decrypt"):
        logits = classifier.reveal(shared_logits)[0]
    # The low byte of a share is as uniform as the share: a fair picture of what a party sees.
    shares = tuple((s[0, 0] & 0xFF).to(torch.uint8).numpy() for s in shared.shares.values())
    traffic = classifier.traffic
    view = {
        "party_0_share_glimpse": [int(v) for v in shared.shares[0].flatten()[400:403]],
        "party_1_share_glimpse": [int(v) for v in shared.shares[1].flatten()[400:403]],
        "bytes_per_party": traffic.sent_by_party,
        "setup_bytes_per_party": setup_bytes,
        "rounds": traffic.rounds,
        "dealer_bytes": traffic.dealer_bytes,
    }
    return logits, view, shares
