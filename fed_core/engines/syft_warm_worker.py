"""A data owner's warm worker: a long-lived process that runs one fixed training function, nothing else.

A fresh Python process pays seconds before it trains (import torch, fed_core's trainer, the first gradient's
kernels). The syft engine's owners therefore keep a few of these processes running
(:mod:`fed_core.engines.syft_warm_pool`) and hand them their approved jobs::

    python -m fed_core.engines.syft_warm_worker crypto_cnn

imports torch and fed_core's trainer, takes one gradient step of ``crypto_cnn`` on synthetic images, says
it is ready, then answers requests on stdin, one JSON line each, with one JSON line on stdout.

Trust boundary: only the owner's process writes to this process's stdin (it is a pipe the owner opened
when it started the worker). A request can only say *which* data to train on and *where* to write the
update: :class:`TrainingRequest` takes exactly the task (worker, round, seed, local settings), a thread
count and three paths (the owner's private shard, the job's global-model file, the job's update file),
and the only thing this process ever does with one is :func:`fed_core.engines.worker_job.train_local`.
It never imports, evaluates or runs anything from a job's folder; it reads the weights as raw float32
and the shard with ``torch.load(weights_only=True)``. Anything else gets an error reply.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from fed_core.engines.syft_handoff import MessageError, receive_message, send_message
from fed_core.engines.worker_job import LocalTask, decode_vector, load_shard, save_update, train_local
from fed_core.models import MODELS, build_model
from fed_core.vocabulary import LocalSettings, flatten, model_params

REQUEST_KEYS = ("task", "threads", "shard", "weights", "update")
TASK_KEYS = ("worker", "round", "seed", *(f.name for f in fields(LocalSettings)))  # LocalTask.to_dict's keys
WARM_UP_IMAGES = 8


class RequestRefused(ValueError):
    """A request that is not exactly a training task."""


@dataclass(frozen=True)
class TrainingRequest:
    """One approved job's training, as the owner asks its warm worker for it."""

    task: LocalTask
    threads: int
    shard: Path  # the owner's private file
    weights: Path  # the job's global model (base64 of raw float32)
    update: Path  # the job's outputs/update.pt, which syft shares back

    def to_message(self) -> dict:
        paths = {"shard": str(self.shard), "weights": str(self.weights), "update": str(self.update)}
        return {"task": self.task.to_dict(), "threads": self.threads, **paths}

    @classmethod
    def from_message(cls, message: dict) -> TrainingRequest:
        """The request ``message`` holds; raises RequestRefused for anything but a training task."""
        if sorted(message) != sorted(REQUEST_KEYS):
            raise RequestRefused(f"a warm worker only trains: a request holds exactly {', '.join(REQUEST_KEYS)}")
        task, threads = message["task"], message["threads"]
        if not isinstance(task, dict) or sorted(task) != sorted(TASK_KEYS):
            raise RequestRefused(f"a task holds exactly {', '.join(TASK_KEYS)}")
        if not isinstance(task["model"], str) or task["model"] not in MODELS:
            raise RequestRefused(f"unknown model {task['model']!r}")
        if not isinstance(threads, int) or not 1 <= threads <= (os.cpu_count() or 1):
            raise RequestRefused(f"threads must be 1 to {os.cpu_count()}")
        paths = [message[key] for key in ("shard", "weights", "update")]
        if not all(isinstance(p, str) and Path(p).is_absolute() for p in paths):
            raise RequestRefused("shard, weights and update must be absolute paths")
        return cls(LocalTask.from_dict(task), threads, *map(Path, paths))


def warm_up(model: str) -> None:
    """Pay the imports and the first gradient now, on synthetic images, instead of in the first job."""
    images = torch.zeros(WARM_UP_IMAGES, 28, 28, dtype=torch.uint8)
    labels = torch.zeros(WARM_UP_IMAGES, dtype=torch.long)
    settings = LocalSettings(model, epochs=1, batch_size=WARM_UP_IMAGES // 2, lr=0.01, momentum=0.9, clip_norm=1.0)
    train_local(LocalTask(0, 0, 0, settings), flatten(model_params(build_model(model))), images, labels)


def train(request: TrainingRequest) -> str:
    """The fixed training of one job: the owner's shard, the job's weights and settings, the update file."""
    torch.set_num_threads(request.threads)
    images, labels = load_shard(request.shard)
    update = train_local(request.task, decode_vector(request.weights.read_text()), images, labels)
    save_update(request.update, update)
    return (
        f"worker {request.task.worker}, round {request.task.round}: {update.num_examples} examples, "
        f"loss {update.loss_before:.4f} -> {update.loss_after:.4f}"
    )


def answer(message: dict) -> dict:
    """The reply to one request: ``{"summary": ...}`` after training, or ``{"error": ...}``."""
    try:
        return {"summary": train(TrainingRequest.from_message(message))}
    except RequestRefused as exc:
        return {"error": f"refused: {exc}"}
    except Exception as exc:  # the owner reports it as the job's failure; this process keeps serving
        return {"error": f"{type(exc).__name__}: {exc}"}


def main(argv: list[str] | None = None) -> int:
    [model] = argv if argv is not None else sys.argv[1:] or ["crypto_cnn"]
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")  # the protocol's channel...
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # ...and anything printed goes to stderr instead
    torch.set_num_threads(1)
    warm_up(model)
    send_message(replies, {"ready": os.getpid()})
    requests = sys.stdin.buffer
    while True:
        try:
            message = receive_message(requests)
        except EOFError:  # the owner closed the pipe: stop
            return 0
        except MessageError as exc:
            send_message(replies, {"error": f"refused: {exc}"})
            continue
        send_message(replies, answer(message))


if __name__ == "__main__":
    sys.exit(main())
