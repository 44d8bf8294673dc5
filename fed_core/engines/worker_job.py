"""One worker's local training, as its data owner runs it; shared by the syft and Flower engines.

:func:`train_local` trains the global model on one worker's whole shard, exactly as the in-process pool
does. A syft owner's warm worker (``fed_core.engines.syft_warm_worker``) calls it for every approved job,
reading the global model the aggregator sent (``global_model.b64``) and writing only the update (weight
delta, sample count and metrics) to the job's ``outputs/update.pt``. The Flower ClientApp calls it on
its node's shard file.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fed_core.federation.trainer import BatchedTrainer, worker_seed
from fed_core.models import build_model
from fed_core.vocabulary import LocalSettings, WorkerUpdate

if TYPE_CHECKING:
    from fed_core.config import TrainConfig

# Syft carries a submission's files as text, so the weights travel as base64 of raw float32.
GLOBAL_MODEL_FILE = "global_model.b64"
JOB_FILE = "job.json"
UPDATE_FILE = "outputs/update.pt"


@dataclass(frozen=True)
class LocalTask:
    """What the server asks one worker to do in one round (everything but the weights)."""

    worker: int
    round: int
    seed: int
    settings: LocalSettings

    @classmethod
    def for_round(cls, config: TrainConfig, worker: int, round_idx: int) -> LocalTask:
        """The task of ``worker`` in round ``round_idx`` of a run of ``config``."""
        return cls(worker, round_idx, worker_seed(config.seed, round_idx, worker), config.local)

    def to_dict(self) -> dict:
        """Flat, so a Flower ConfigRecord can carry it as well as a syft job's JSON file."""
        return {"worker": self.worker, "round": self.round, "seed": self.seed, **self.settings.to_dict()}

    @classmethod
    def from_dict(cls, values: dict) -> LocalTask:
        return cls(values["worker"], values["round"], values["seed"], LocalSettings.from_dict(values))


def save_shard(path: Path | str, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Write a worker's data (uint8 images [n, 28, 28], int64 labels [n]) as one file."""
    torch.save({"images": images.contiguous().clone(), "labels": labels.contiguous().clone()}, path)


def load_shard(path: Path | str) -> tuple[torch.Tensor, torch.Tensor]:
    saved = torch.load(path, weights_only=True)
    return saved["images"], saved["labels"]


def train_local(
    task: LocalTask, global_vector: torch.Tensor, images: torch.Tensor, labels: torch.Tensor
) -> WorkerUpdate:
    """Train the global model on one worker's whole shard, exactly as the in-process pool does."""
    trainer = BatchedTrainer(build_model(task.settings.model), images, labels, task.settings)
    return trainer.train(global_vector, [task.worker], [torch.arange(len(labels))], [task.seed])[0]


def encode_vector(vector: torch.Tensor) -> str:
    return base64.b64encode(vector.to(torch.float32).contiguous().numpy().tobytes()).decode("ascii")


def decode_vector(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.float32)


def save_update(path: Path | str, update: WorkerUpdate) -> None:
    torch.save(vars(update), path)


def load_update(path: Path | str) -> WorkerUpdate:
    return WorkerUpdate(**torch.load(path, weights_only=True))
