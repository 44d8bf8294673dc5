"""One worker's local training, as its data owner runs it; shared by the syft and Flower engines.

The syft engine runs this module as the job script of every approved job::

    python -m fed_core.engines.worker_job job.json

in the job's code folder, next to the global model the aggregator sent (``global_model.b64``). It
trains on the owner's private shard and writes only the update (weight delta, sample count and
metrics) to ``outputs/update.pt``. The Flower ClientApp calls :func:`train_local` on its node's
shard file.

Every syft job is a fresh Python process, so each import here is paid on every round: this module
imports torch and fed_core's client and models, and syft only to find the private file.
"""

from __future__ import annotations

import base64
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fed_core.client import BatchedTrainer, LocalSettings, WorkerUpdate, worker_seed
from fed_core.models import build_model

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


def private_shard_path(dataset: str) -> Path:
    """The owner's private file of ``dataset``; syft resolves it only inside an approved job."""
    import syft as sy  # the job's one syft import, kept here so the rest stays torch-only

    return Path(sy.resolve_dataset_file_path(dataset))


def main(argv: list[str] | None = None) -> int:
    job_file = Path((argv if argv is not None else sys.argv[1:] or [JOB_FILE])[0])
    job = json.loads(job_file.read_text())
    torch.set_num_threads(job["threads"])
    task = LocalTask.from_dict(job["task"])
    global_vector = decode_vector((job_file.parent / GLOBAL_MODEL_FILE).read_text())
    images, labels = load_shard(private_shard_path(job["dataset"]))
    update = train_local(task, global_vector, images, labels)
    out = job_file.parent / UPDATE_FILE
    out.parent.mkdir(exist_ok=True)
    save_update(out, update)
    print(
        f"worker {task.worker}, round {task.round}: {update.num_examples} examples, "
        f"loss {update.loss_before:.4f} -> {update.loss_after:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
