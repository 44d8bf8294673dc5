"""CKKS homomorphic encryption (:mod:`fed_core.he.ckks`) as an encrypted scheme, with its two packings."""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fed_core.encrypted.base import (
    Communication,
    EncryptedDigit,
    EncryptedRun,
    Progress,
    Scheme,
    ServerView,
    Stopwatch,
    available_cpus,
)
from fed_core.he.ckks import BATCH_PARAMS, DIGIT_PARAMS, HeClient, HeParams, HeServer, classify_batch_apart
from fed_core.limits.budget import Budget

HE_PACKINGS = ("auto", "image", "batch")

# Speeds measured by bench/bench_encrypted.py on the 2-core development machine. They
# only feed the estimates shown before a run (and the HE route: their ratio puts the
# switch at ~330 images); results report the measured times.
HE_KEYGEN_SECONDS = 0.8  # keys and server setup
HE_SECONDS_PER_IMAGE = 0.12  # one-digit packing, per image
HE_SECONDS_PER_PASS = 40.0  # batch packing: one pass handles up to HE_PASS_IMAGES images
HE_PASS_IMAGES = BATCH_PARAMS.images_per_pass

# The user's keys and the server built from their public context, for a model: a page keeps them between digits.
KeySource = Callable[[nn.Module], tuple[HeClient, HeServer]]


@dataclass
class HeCommunication(Communication):
    """What went each way: the public context and encrypted images up, encrypted scores down; no offline phase."""

    public_context_bytes: int  # to the server, once
    secret_context_bytes: int  # never leaves the user
    upload_bytes: int  # encrypted images
    download_bytes: int  # encrypted scores
    bytes_per_image: float  # upload and download together
    rounds: int  # one per image (one-digit packing) or per pass (batch packing)
    server_processes: int | None = None  # batch packing only: passes served side by side

    def to_dict(self) -> dict:
        return {k: v for k, v in super().to_dict().items() if not (k == "server_processes" and v is None)}


@dataclass
class HeServerView(ServerView):
    """What the server holds for one digit: the public context (no secret key) and ciphertexts."""

    server_has_secret_key: bool
    public_context_bytes: int
    input_ciphertexts: int
    input_bytes: int
    output_bytes: int
    ciphertext_glimpse: str  # a few bytes from the middle of the first input ciphertext, in hex


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


def _seconds(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:,.0f} s"


@dataclass(frozen=True)
class HeScheme(Scheme):
    """Homomorphic encryption (CKKS): the server computes on ciphertexts.

    ``packing``: "image" (one digit at a time), "batch" (two images per slot, thousands per pass) or "auto" (the
    faster for the number of images). ``workers``: server processes for batch passes (default: one per available
    CPU, at most one per pass); 1 runs every pass in this process. ``keys`` carries the user's keys and the
    server built for this model between digits; without it, both are made for each digit.
    """

    name = "he"
    label = "Homomorphic encryption (CKKS): the server computes on ciphertexts"
    packing: str = "auto"
    workers: int | None = None
    keys: KeySource | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        choose_he_packing(1, self.packing)  # refuses an unknown packing now rather than at the run

    def run(self, model: nn.Module, images: torch.Tensor, batch_size: int | None, report: Progress) -> EncryptedRun:
        if choose_he_packing(len(images), self.packing) == "image":
            return _run_images(model, images, report)
        return _run_batches(model, images, batch_size or HE_PASS_IMAGES, report, self.workers)

    def classify_encrypted(self, model: nn.Module, x: torch.Tensor, watch: Stopwatch) -> EncryptedDigit:
        client, server = self.keys(model) if self.keys else _setup(model, DIGIT_PARAMS, watch)
        with watch("encrypt"):
            encrypted = client.encrypt_image(x[0, 0].numpy())
        with watch("compute"):
            result = server.classify(encrypted)
        with watch("decrypt"):
            logits = torch.from_numpy(client.decrypt_logits(result))
        first = encrypted[0]
        view = HeServerView(
            server_has_secret_key=server.context.has_secret_key(),
            public_context_bytes=client.public_context.size,
            input_ciphertexts=len(encrypted),
            input_bytes=sum(map(len, encrypted)),
            output_bytes=len(result),
            ciphertext_glimpse=first[len(first) // 2 : len(first) // 2 + 48].hex(" "),
        )
        return EncryptedDigit(logits, view)

    def estimate_seconds(self, n: int) -> float:
        if choose_he_packing(n, self.packing) == "image":
            return HE_KEYGEN_SECONDS + n * HE_SECONDS_PER_IMAGE
        return HE_KEYGEN_SECONDS + he_batch_seconds(n)

    def describe(self, n: int) -> str:
        """Which HE packing runs for n images, and why."""
        one_by_one, passes = _seconds(n * HE_SECONDS_PER_IMAGE), he_passes(n)
        why = "as requested" if self.packing != "auto" else "the faster of the two"
        if choose_he_packing(n, self.packing) == "image":
            return (
                f"HE encrypts the images one at a time ({why}): {n:,} x {HE_SECONDS_PER_IMAGE:.2f} s = "
                f"~{one_by_one}, against ~{_seconds(HE_SECONDS_PER_PASS)} for a batch pass of up to "
                f"{HE_PASS_IMAGES:,} images."
            )
        side_by_side = min(passes, available_cpus())
        passes_text = f"{passes} passes, {side_by_side} at a time," if passes > 1 else "1 pass"
        return (
            f"HE packs two images per slot, {HE_PASS_IMAGES:,} per pass ({why}): {passes_text} "
            f"~{_seconds(he_batch_seconds(n))}, against ~{one_by_one} one image at a time."
        )

    def images_per_request(self, budget: Budget) -> int:
        return budget.he_images_per_request


def _setup(model: nn.Module, params: HeParams, watch: Stopwatch) -> tuple[HeClient, HeServer]:
    with watch("keygen"):
        client = HeClient(params)
    with watch("server_setup"):
        server = HeServer(model, client.public_context)
    return client, server


def _communication(client: HeClient, upload: int, download: int, n: int, rounds: int) -> HeCommunication:
    return HeCommunication(
        public_context_bytes=client.public_context.size,
        secret_context_bytes=client.secret_context_size,
        upload_bytes=upload,
        download_bytes=download,
        bytes_per_image=(upload + download) / n,
        rounds=rounds,
    )


def _run_images(model: nn.Module, images: torch.Tensor, report: Progress) -> EncryptedRun:
    watch = Stopwatch()
    client, server = _setup(model, DIGIT_PARAMS, watch)
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
    communication = _communication(client, upload, download, len(images), len(images))
    return EncryptedRun("image", np.stack(logits), dict(watch.seconds), communication)


def _within(report: Progress, start: int, size: int, total: int) -> Progress:
    """Progress through one pass of ``size`` images, reported as a fraction of all ``total``."""
    return lambda fraction: report((start + fraction * size) / total)


def _run_batches(
    model: nn.Module, images: torch.Tensor, batch_size: int, report: Progress, workers: int | None
) -> EncryptedRun:
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
    communication = _communication(client, upload, download, len(images), len(batches))
    communication.server_processes = workers
    return EncryptedRun("batch", np.concatenate(logits), dict(watch.seconds), communication)


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
