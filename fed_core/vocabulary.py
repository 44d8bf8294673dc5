"""The words every part of a federated run speaks: what the server sends a worker (:class:`LocalSettings`),
what a worker sends back (:class:`WorkerUpdate`), what aggregation hands the server (:class:`Aggregate`),
how a run ends early (:class:`TrainingStopped`, :class:`TrainingDiverged`), the base of every error a user
can fix (:class:`UserError`: the CLI and the pages show its message instead of a traceback), and a model's
parameters as one flat vector (:func:`flatten`, :func:`unflatten`).

It sits below everything else in fed_core and imports nothing from it, so the trainer, the engines, the
privacy mechanisms and the pages can share these types without depending on each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import torch
from torch import nn

Params = dict[str, torch.Tensor]


class UserError(Exception):
    """Something the user can change: a setting, a file, a drawing. The message says what to do."""


class TrainingStopped(Exception):
    """The user stopped the run; raised between batches."""


class TrainingDiverged(UserError, RuntimeError):
    """A worker's loss became NaN or infinite."""


@dataclass(frozen=True)
class LocalSettings:
    """How every worker of a run trains: what the server sends along with the weights each round."""

    model: str
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    clip_norm: float  # per-worker gradient norm cap; square activations blow up without it
    dp_clip: float = 0.0  # when positive, example-level DP-SGD: each example's gradient norm cap S
    dp_noise: float = 0.0  # and the noise multiplier z (noise std z * S on each step's sum)
    prox_mu: float = 0.0  # FedProx: weight mu of the proximal term mu/2 ||w - w_global||^2 (0: plain FedAvg)
    # FedSGD under secure aggregation: one step and no noise here; the update is the clipped gradient sum, and
    # the noise is added in shares inside the masked sum (distributed_dp.py, aggregation.py).
    dp_noise_split: bool = False
    augment: bool = False  # every training batch randomly redrawn as other hands would (fed_core/data/augment.py)
    # DP-SGD with augment: each example's gradient is the mean over this many redrawn copies, clipped once
    # (De et al. 2022's augmentation multiplicity: less variance at no privacy cost, the compute times as many).
    augment_multiplicity: int = 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> LocalSettings:
        return cls(**{f.name: values[f.name] for f in fields(cls)})


@dataclass
class WorkerUpdate:
    worker: int
    num_examples: int  # size of the worker's shard: its FedAvg weight
    delta: torch.Tensor  # flat float32 [P]: local model minus global model
    loss_before: float
    loss_after: float
    accuracy_after: float  # on its own shard (a sample of it)
    local_steps: int = 0  # optimizer steps the worker took (SCAFFOLD's control update divides by them)


def flatten(params: Params) -> torch.Tensor:
    return torch.cat([p.reshape(-1) for p in params.values()])


def unflatten(vector: torch.Tensor, like: Params) -> Params:
    """Inverse of :func:`flatten`; also works on a stacked [K, P] vector (gives [K, ...] tensors)."""
    out, start = {}, 0
    lead = vector.shape[:-1]
    for name, p in like.items():
        out[name] = vector[..., start : start + p.numel()].reshape(*lead, *p.shape)
        start += p.numel()
    return out


def model_params(model: nn.Module) -> Params:
    return {name: p.detach() for name, p in model.named_parameters()}


@dataclass
class Aggregate:
    """The outcome of one round's aggregation, as the server has it."""

    average: torch.Tensor | None  # the update the server applies; None if the round was refused
    reports: list[dict]  # each reporting worker's own account: worker, loss_before, loss_after, local_accuracy
    visible: torch.Tensor | None  # [K, P] the updates as the server received them; None if it never sees one
    counts: torch.Tensor | None  # [K] the examples behind each update, when the server knows them
    received: torch.Tensor | None  # [P] what the server received from the first reporting worker
    first_update: torch.Tensor | None  # that worker's own update: the simulation knows it, a secure server does not
    upload_bytes: float  # mean bytes one sampled worker sent
    lost: dict[int, str] = field(default_factory=dict)  # workers that left during the protocol, and why
    refused: str | None = None  # why no aggregate came out
    # LOCAL_STATS averaged over the reporting workers, weighted by examples; None where they are not released
    local_means: dict[str, float] | None = None
