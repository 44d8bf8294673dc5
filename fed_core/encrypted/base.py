"""What every encrypted scheme shares: the :class:`Scheme` interface, its typed results, and the steps around them.

Every scheme runs the same crypto-friendly CryptoCNN. Step timings use the same names for all: ``encrypt``
(secret-share or encrypt the images), ``compute`` (the parties or the server run the network) and ``decrypt``
(reconstruct or decrypt the logits); a scheme may add its own (``keygen``, ``server_setup``).

What crossed the network (:class:`Communication`) and what the server held (:class:`ServerView`) differ from one
scheme to the next, so each scheme has its own dataclass of each, with fields: a page reads ``comm.rounds``,
not ``comm["rounds"]``, so a renamed field fails where it is read instead of silently on a page.
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from fed_core.limits.budget import Budget
from fed_core.models import ENCRYPTABLE_MODELS, MODEL_LABELS, is_encryptable
from fed_core.vocabulary import UserError

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


class Stopwatch:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[step] += time.perf_counter() - start


def available_cpus() -> int:
    """CPUs this process may run on (a container may get fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


# --- typed results ---------------------------------------------------------------------------


@dataclass
class Communication:
    """What crossed the network while a scheme evaluated a test set; each scheme's subclass names its fields."""

    def to_dict(self) -> dict:
        """JSON-friendly, with the field names as keys (what ``encrypted-eval --out`` writes)."""
        return asdict(self)


@dataclass
class ServerView:
    """What the server (or each compute party) held while it classified one digit; each scheme's subclass says."""

    def to_dict(self) -> dict:
        return asdict(self)


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
    seconds: dict[str, float]  # per step (see the module's docstring), and "total"
    communication: Communication
    confusion: list[list[int]]  # [true label][encrypted prediction]
    labels: list[int] = field(repr=False)
    plain_predictions: list[int] = field(repr=False)
    encrypted_predictions: list[int] = field(repr=False)

    @property
    def total_seconds(self) -> float:
        return self.seconds["total"]

    def summary(self) -> str:
        return (
            f"{self.scheme.upper()} ({self.packing}) on {self.n} images: plaintext accuracy "
            f"{self.plain_accuracy:.2%}, encrypted {self.encrypted_accuracy:.2%}, agreement "
            f"{self.agreement:.2%}, max logit error {self.max_logit_error:.2g}, "
            f"{self.images_per_second:.0f} images/s in {self.total_seconds:.1f} s"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "communication": self.communication.to_dict()}


@dataclass
class DigitResult:
    scheme: str
    prediction: int
    probabilities: list[float]
    logits: list[float]
    plain_prediction: int
    plain_probabilities: list[float]
    seconds: dict[str, float]  # keygen (if keys were made here), server_setup, encrypt, compute, decrypt
    server_view: ServerView  # what the server (HE) or each compute party (MPC) holds
    share_images: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """JSON-friendly: everything but the share images."""
        fields = {k: v for k, v in asdict(self).items() if k != "share_images"}
        return {**fields, "server_view": self.server_view.to_dict()}


@dataclass
class EncryptedRun:
    """A scheme's encrypted pass over a test set: its logits and what it cost."""

    packing: str
    logits: np.ndarray
    seconds: dict[str, float]
    communication: Communication


@dataclass
class EncryptedDigit:
    """A scheme's encrypted classification of one digit: the decrypted logits and what the server held."""

    logits: torch.Tensor
    server_view: ServerView
    share_images: tuple[np.ndarray, np.ndarray] | None = None


# --- the interface -----------------------------------------------------------------------------


class Scheme(ABC):
    """One way to run the model on data its server cannot read: evaluate a test set, classify a digit.

    ``evaluate`` and ``classify`` do what every scheme shares (refuse a model that cannot run encrypted, run the
    plaintext model beside it, compare); a scheme supplies the encrypted pass (``run``, ``classify_encrypted``),
    its time estimate, its words for the page, and how many images one request may evaluate. A scheme's own
    settings (MPC's party processes, HE's packing) are its constructor's keyword arguments.
    """

    name: ClassVar[str]  # the registry's key, the CLI's --scheme, the results' ``scheme``
    label: ClassVar[str]  # the page's choice: what runs where, in one line

    def evaluate(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int | None = None,
        progress: Progress | None = None,
    ) -> EvalResult:
        """Run ``model`` on normalised images [N,1,28,28] in plaintext and encrypted, and compare."""
        require_encryptable(model)
        with torch.no_grad():
            plain_logits = model(images).double().numpy()
        start = time.perf_counter()
        run = self.run(model, images, batch_size, progress or (lambda fraction: None))
        total = time.perf_counter() - start
        return self._compare(run, plain_logits, labels.numpy(), total)

    def classify(self, model: nn.Module, image28: torch.Tensor) -> DigitResult:
        """Classify one normalised 28x28 digit encrypted, with the plaintext answer beside it."""
        require_encryptable(model)
        x = image28.reshape(1, 1, 28, 28).float()
        with torch.no_grad():
            plain_logits = model(x)[0].double()
        watch = Stopwatch()
        digit = self.classify_encrypted(model, x, watch)
        return DigitResult(
            scheme=self.name,
            prediction=int(digit.logits.argmax()),
            probabilities=torch.softmax(digit.logits, 0).tolist(),
            logits=digit.logits.tolist(),
            plain_prediction=int(plain_logits.argmax()),
            plain_probabilities=torch.softmax(plain_logits, 0).tolist(),
            seconds=dict(watch.seconds),
            server_view=digit.server_view,
            share_images=digit.share_images,
        )

    @abstractmethod
    def run(self, model: nn.Module, images: torch.Tensor, batch_size: int | None, report: Progress) -> EncryptedRun:
        """The encrypted pass over ``images`` (in batches of ``batch_size``, or the scheme's own), reporting the
        fraction done."""

    @abstractmethod
    def classify_encrypted(self, model: nn.Module, x: torch.Tensor, watch: Stopwatch) -> EncryptedDigit:
        """One digit [1,1,28,28] encrypted, classified and decrypted, each step timed on ``watch``."""

    @abstractmethod
    def estimate_seconds(self, n: int) -> float:
        """Expected wall time for ``n`` test images on the development machine (2 cores, otherwise idle)."""

    @abstractmethod
    def describe(self, n: int) -> str:
        """One or two sentences for the page: how ``n`` images run under this scheme, and why so fast or slow."""

    @abstractmethod
    def images_per_request(self, budget: Budget) -> int:
        """How many test images one request may evaluate on a server with ``budget``."""

    def _compare(self, run: EncryptedRun, plain_logits: np.ndarray, labels: np.ndarray, total: float) -> EvalResult:
        plain, encrypted = plain_logits.argmax(1), run.logits.argmax(1)
        confusion = np.zeros((10, 10), dtype=int)
        np.add.at(confusion, (labels, encrypted), 1)
        return EvalResult(
            scheme=self.name,
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
