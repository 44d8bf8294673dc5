"""The federated run, round by round. Read this file to follow one round of FedAvg:

1. the server initialises the global model (default, He, Xavier or uniform init);
2. each round it samples a fraction C of the workers at random (at least one),
   and some sampled workers may drop out (fail to report);
3. each reporting worker trains E local epochs on its own shard only (trainer.py), with what the
   run's strategy sends it (strategies/: FedProx's mu, SCAFFOLD's corrections);
4. the server averages the updates weighted by each worker's number of examples
   and applies the average with the strategy's server update (FedAvg/FedAvgM, FedAdam, FedYogi);
   the strategy then closes the round (SCAFFOLD's server control variate);
5. the new global model is evaluated on the 10k test set, and each worker's
   contribution is scored by leaving its update out of the round;
6. the round is published (the page, the CSV and JSON exports, the CLI): under
   client-level DP without anything per worker (:func:`published`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from fed_core.config import TrainConfig
from fed_core.data.mnist import Mnist, normalize
from fed_core.data.partition import label_histogram, make_partition
from fed_core.federation.aggregation import collect
from fed_core.federation.shapley import coalition_accuracy, cumulative_shapley, leave_one_out, shapley_values
from fed_core.federation.strategies import Strategy, strategy_for
from fed_core.federation.trainer import DEFAULT_MEMORY_BUDGET, EVAL_CHUNK_BYTES, activation_bytes
from fed_core.limits.estimates import working_memory
from fed_core.models import new_model
from fed_core.privacy.policy import Privacy, privacy_for
from fed_core.vocabulary import Aggregate, Params, WorkerUpdate, flatten, model_params, unflatten


class WorkerPool(Protocol):
    """Where local training happens: in this process, as syft jobs, or as Flower clients (fed_core/engines)."""

    def train(self, global_vector: torch.Tensor, workers: list[int], round_idx: int) -> list[WorkerUpdate]: ...


@dataclass
class RoundRecord:
    round: int
    test_accuracy: float
    test_loss: float
    sampled: list[int]
    dropped: list[int]
    seconds: float
    elapsed: float
    workers: list[dict] = field(default_factory=list)
    upload_bytes: float = 0.0  # mean bytes a sampled worker sent the server
    note: str | None = None  # why the global model did not move this round, if it did not
    epsilon: float | None = None  # the DP guarantee spent so far (at the config's delta); None without DP
    epsilon_rdp: float | None = None  # the two accountants' bounds; epsilon is the smaller (dp.Epsilon)
    epsilon_prv: float | None = None
    # The reporting workers' loss before and after local training and local accuracy, example-weighted means
    # (summed through the masks under secure aggregation); None where not released (DP, or no update)
    local_means: dict[str, float] | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def published(record: RoundRecord, privacy: Privacy) -> RoundRecord:
    """What the run publishes of a round: where its privacy publishes no worker (client-level DP, whose epsilon
    counts on secret sampling: policy.ClientLevelDP), nothing per worker, nor anything that counts them.

    Withheld then: the participants and the dropped, every worker row, the note (it names workers that left,
    or says how few took part) and the upload per worker (under secure aggregation it grows with the round's
    size). The round's duration still grows with the number of participants: a side channel left open.
    """
    if privacy.publishes_workers:
        return record
    return replace(record, sampled=[], dropped=[], workers=[], note=None, upload_bytes=float("nan"))


@dataclass(frozen=True)
class ServerView:
    """One worker's own update (where the simulation has it) beside what the server received from it."""

    worker: int
    update: torch.Tensor | None
    received: torch.Tensor | None


def sample_workers(config: TrainConfig, round_idx: int) -> tuple[list[int], list[int]]:
    """(reporting, dropped) workers of a round; the same for a given seed on every engine.

    The run's privacy samples (policy.Privacy.sample): under client-level DP each worker joins with
    probability C, drawn secretly, as the epsilon of DP-FedAvg counts on nobody outside the server
    knowing who took part. Dropout is simulation, drawn from the seeded generator.
    """
    rng = np.random.default_rng([config.seed, round_idx, 1])
    sampled = privacy_for(config).sample(rng)
    fails = rng.random(len(sampled)) < config.dropout
    return [w for w, f in zip(sampled, fails) if not f], [w for w, f in zip(sampled, fails) if f]


def partition_for(config: TrainConfig, data: Mnist) -> list[torch.Tensor]:
    rng = np.random.default_rng([config.seed, 0, 2])
    labels = data.train_labels[: config.train_size]
    return make_partition(labels, config.workers, config.partition, rng, config.alpha, config.shards_per_worker)


class Evaluator:
    """Scores global models on the test set; a fixed subset serves the cheap leave-one-out scores."""

    def __init__(
        self, model: nn.Module, data: Mnist, config: TrainConfig, memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET
    ) -> None:
        self.model = model
        self.memory_budget_bytes = memory_budget_bytes
        self.model_name = config.model
        self.template = model_params(model)
        self.images = data.test_images  # uint8, normalised a chunk at a time: a float copy would hold 31 MB
        self.y = data.test_labels
        subset = torch.from_numpy(np.random.default_rng([config.seed, 0, 3]).permutation(len(self.y)))
        self.subset = subset[: config.contribution_subset]

    @torch.no_grad()
    def evaluate(self, vector: torch.Tensor) -> tuple[float, float]:
        params = unflatten(vector, self.template)
        chunk = max(1, EVAL_CHUNK_BYTES // activation_bytes(self.model_name))
        logits = torch.cat([functional_call(self.model, params, (normalize(xb),)) for xb in self.images.split(chunk)])
        return (logits.argmax(1) == self.y).float().mean().item(), F.cross_entropy(logits, self.y).item()

    @torch.no_grad()
    def subset_accuracies(self, vectors: torch.Tensor) -> torch.Tensor:
        """Accuracy of each of K models [K, P] on the fixed subset, as many models at once as the budget holds."""
        per_model = len(self.subset) * activation_bytes(self.model_name) + 4 * vectors.shape[1]
        chunk = max(1, self.memory_budget_bytes // per_model)
        x, y = normalize(self.images[self.subset]), self.y[self.subset]
        forward = vmap(lambda p: functional_call(self.model, p, (x,)))
        accuracies = []
        for part in vectors.split(chunk):
            params: Params = unflatten(part, self.template)
            accuracies.append((forward(params).argmax(-1) == y).float().mean(1))
        return torch.cat(accuracies)


@dataclass
class RoundOutcome:
    """What one round did: the new global model, who took part, and what the server saw."""

    global_vector: torch.Tensor
    reporting: list[int]
    dropped: list[int]
    rows: list[dict]
    upload_bytes: float = 0.0
    note: str | None = None
    view: ServerView | None = None
    local_means: dict[str, float] | None = None


def run_round(
    config: TrainConfig,
    round_idx: int,
    global_vector: torch.Tensor,
    pool: WorkerPool,
    strategy: Strategy,
    evaluator: Evaluator,
) -> RoundOutcome:
    """One round: sample, train locally, aggregate, apply, score contributions."""
    reporting, dropped = sample_workers(config, round_idx)
    if not reporting:  # everybody dropped out: the global model stays as it is
        return RoundOutcome(global_vector, reporting, dropped, [], note="every sampled worker dropped out")
    combined = collect(pool, global_vector, reporting, dropped, round_idx, config)
    reporting, dropped = [w for w in reporting if w not in combined.lost], sorted(dropped + list(combined.lost))
    view = ServerView(reporting[0], combined.first_update, combined.received) if reporting else None
    lost = "; ".join(f"worker {w} left during secure aggregation: {why}" for w, why in combined.lost.items())
    if combined.average is None:  # secure aggregation refused the round: never a wrong model
        return RoundOutcome(global_vector, reporting, dropped, [], combined.upload_bytes, combined.refused, view)
    scores = contribution_scores(config, round_idx, global_vector, combined, strategy, evaluator)
    new_vector = strategy.step(global_vector, combined.average)
    rows = worker_rows(combined, scores, config)
    return RoundOutcome(
        new_vector, reporting, dropped, rows, combined.upload_bytes, lost or None, view, combined.local_means
    )


def contribution_scores(
    config: TrainConfig,
    round_idx: int,
    global_vector: torch.Tensor,
    combined: Aggregate,
    strategy: Strategy,
    evaluator: Evaluator,
) -> dict[str, torch.Tensor]:
    """Each worker's contribution to the round, as columns of its row (NaN where the server cannot tell).

    ``contribution``: the accuracy the round's model would lose without the worker's update (leave-one-out);
    ``shapley`` (and ``shapley_ci``): its Shapley value, the accuracy it adds on average over every order in
    which the round's workers could have joined (shapley.py). Neither exists when the server never sees a single
    update (secure aggregation) or scoring is off.
    """
    unknown = torch.full((len(combined.reports),), float("nan"))
    if combined.visible is None or len(evaluator.subset) == 0:
        return {"contribution": unknown, "shapley": unknown, "shapley_ci": unknown}
    # Models are proposed a few coalitions at a time: K models of the paper's CNN at once would not fit.
    value = coalition_accuracy(global_vector, combined.visible, combined.counts, strategy, evaluator)
    scores = {"contribution": leave_one_out(value, len(combined.visible)), "shapley": unknown, "shapley_ci": unknown}
    if config.shapley:
        # Seeded, so a run repeats: the sampled orders are simulation randomness, not a secret.
        orders = torch.Generator().manual_seed(
            int(np.random.SeedSequence([config.seed, round_idx, 11]).generate_state(1)[0])
        )
        shapley = shapley_values(
            global_vector, combined.visible, combined.counts, strategy, evaluator, generator=orders
        )
        scores["shapley"] = shapley.values
        scores["shapley_ci"] = unknown if shapley.ci_halfwidth is None else shapley.ci_halfwidth
    return scores


def worker_rows(combined: Aggregate, scores: dict[str, torch.Tensor], config: TrainConfig) -> list[dict]:
    """Each reporting worker's figures; the ones made from its update are NaN when the server never saw it."""
    unknown = torch.full((len(combined.reports),), float("nan"))
    if combined.visible is None:
        counts = norms = cosines = unknown
    else:
        counts, norms = combined.counts.double(), combined.visible.norm(dim=1)
        cosines = cosine_to(combined.visible, combined.average)
    weights = counts / counts.sum()
    return [
        {
            **report,
            "examples": counts[i].item() * config.local_epochs,
            "weight": weights[i].item(),
            "update_norm": norms[i].item(),
            "cosine_to_aggregate": cosines[i].item(),
            **{name: column[i].item() for name, column in scores.items()},
        }
        for i, report in enumerate(combined.reports)
    ]


def cosine_to(deltas: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each update [K, P] to ``reference`` [P], without a [K, P] temporary."""
    norms = deltas.norm(dim=1).clamp(min=1e-8) * reference.norm().clamp(min=1e-8)
    return (deltas @ reference) / norms


def cumulative_contributions(workers: int, rounds: list[list[dict]]) -> dict[int, float]:
    """Running sum of each worker's contribution score over the rounds' worker rows."""
    totals = {w: 0.0 for w in range(workers)}
    for rows in rounds:
        for row in rows:
            if row["contribution"] == row["contribution"]:  # NaN when scoring is switched off
                totals[row["worker"]] += row["contribution"]
    return totals


@dataclass
class FederatedRun:
    config: TrainConfig
    label_histogram: list[list[int]]
    history: list[RoundRecord] = field(default_factory=list)
    model: nn.Module | None = None
    wall_seconds: float = 0.0
    server_view: ServerView | None = None  # of the latest round that had a reporting worker

    def to_dict(self) -> dict:
        rows = [r.workers for r in self.history]
        per_worker = {
            "label_histogram": self.label_histogram,
            "cumulative_contributions": cumulative_contributions(self.config.workers, rows),
            "cumulative_shapley": cumulative_shapley(self.config.workers, rows),
        }
        return {
            "config": self.config.to_dict(),
            **(per_worker if privacy_for(self.config).publishes_workers else {}),
            "rounds": [r.to_dict() for r in self.history],
            "final_test_accuracy": self.history[-1].test_accuracy if self.history else None,
            "wall_seconds": self.wall_seconds,
        }


def run_federated(
    config: TrainConfig,
    data: Mnist,
    pool_factory: Callable[..., WorkerPool],
    on_start: Callable[[FederatedRun], None] | None = None,
    on_round: Callable[[FederatedRun, RoundRecord], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FederatedRun:
    """Run every round of a validated ``config``; stops with TrainingStopped when ``should_stop`` says so.

    ``pool_factory(model, data, shards, config, should_stop)`` says where workers train: an engine
    (fed_core/engines) passes its own, after :func:`fed_core.engines.engine_for` validated the config.
    """
    started = time.perf_counter()
    shards = partition_for(config, data)
    model = new_model(config.model, config.init, config.seed)
    privacy = privacy_for(config)
    histogram = label_histogram(data.train_labels, shards).tolist() if privacy.publishes_workers else []
    run = FederatedRun(config, histogram, model=model)
    strategy = strategy_for(config)
    pool = strategy.workers(pool_factory(model, data, shards, config, should_stop))
    evaluator = Evaluator(model, data, config, working_memory(config))
    accountant = privacy.accountant()
    global_vector = flatten(model_params(model))
    if on_start:
        on_start(run)
    for round_idx in range(1, config.rounds + 1):
        round_start = time.perf_counter()
        outcome = run_round(config, round_idx, global_vector, pool, strategy, evaluator)
        strategy.after_round()
        global_vector = outcome.global_vector
        accuracy, loss = evaluator.evaluate(global_vector)
        load_vector(model, global_vector)
        if accountant:  # a round that released nothing is counted too: that only overstates epsilon
            accountant.record_round({w: len(shards[w]) for w in outcome.reporting})
        bounds = accountant.bounds() if accountant else None
        now = time.perf_counter()
        sampled = sorted(outcome.reporting + outcome.dropped)
        record = RoundRecord(
            round_idx,
            accuracy,
            loss,
            sampled,
            outcome.dropped,
            now - round_start,
            now - started,
            outcome.rows,
            outcome.upload_bytes,
            outcome.note,
            bounds.value if bounds else None,
            bounds.rdp if bounds else None,
            bounds.prv if bounds else None,
            outcome.local_means,
        )
        record = published(record, privacy)
        run.history.append(record)
        if privacy.publishes_workers:  # the view names a worker that took part, and shows its update
            run.server_view = outcome.view or run.server_view
        run.wall_seconds = now - started
        if on_round:
            on_round(run, record)
    return run


def load_vector(model: nn.Module, vector: torch.Tensor) -> None:
    with torch.no_grad():
        for p, v in zip(model.parameters(), unflatten(vector, model_params(model)).values()):
            p.copy_(v)
