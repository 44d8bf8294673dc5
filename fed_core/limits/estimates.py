"""What a run will cost before it starts: the memory an in-process run adds to the server.

The trainer and the evaluator size their work from the run's working memory (working_memory), so these
estimates bound a run whatever its workers and batch size; gates.py refuses a run whose estimate does not fit.
"""

from __future__ import annotations

import functools

from fed_core.config import LIMITS, TrainConfig
from fed_core.federation.trainer import EVAL_CHUNK_BYTES, bytes_per_worker, workers_per_group
from fed_core.limits.budget import MB, Budget, env_name, training_memory_budget
from fed_core.models import MODELS

# The trainer trains workers in groups and the evaluator scores models in chunks, both sized from the training
# memory budget (trainer.workers_per_group, server.Evaluator), so a run's memory is bounded
# by the budget whatever its workers and batch size, unless one worker alone does not fit. A "scored" example
# is one image through one model without gradients, measured on the 2-core machine from the growth of peak RSS
# (one torch thread); ``python bench/bench_app.py estimator`` compares the estimate with whole runs.
BYTES_PER_SCORED_EXAMPLE = {"crypto_cnn": 4_200, "relu_cnn": 120_000, "fedavg_cnn": 240_000, "tanh_cnn": 40_000}


@functools.cache
def _parameters(model: str) -> int:
    return sum(p.numel() for p in MODELS[model]().parameters())


def sampled_workers(config: TrainConfig) -> int:
    """Workers sampled in a round (fed_core.federation.server.sample_workers takes this many, before dropout)."""
    return max(1, round(config.fraction * config.workers))


def held_bytes(config: TrainConfig) -> int:
    """What a run holds whatever it does: the round's updates with their average."""
    return 2 * sampled_workers(config) * 4 * _parameters(config.model)


def working_memory(config: TrainConfig, budget: Budget | None = None) -> int:
    """Bytes the trainer's worker groups and the evaluator's chunks may use: the run's budget less what it holds."""
    return max(1, training_memory_budget(budget) - held_bytes(config))


def estimate_run_bytes(config: TrainConfig, budget: Budget | None = None) -> int:
    """Peak memory an in-process run adds to the server: what it holds, plus the largest of its three phases.

    The phases: local training (as many workers at once as the working memory holds, at least one);
    contribution scoring (the round's model with and without each update, and Shapley's coalitions, on
    ``contribution_subset`` images, as many models at once as the working memory holds); and evaluation on
    the test set in cache-sized chunks.
    """
    working = working_memory(config, budget)
    one_worker = bytes_per_worker(config.model, config.batch_size)
    training = min(sampled_workers(config), workers_per_group(config.model, config.batch_size, working)) * one_worker
    one_model = config.contribution_subset * BYTES_PER_SCORED_EXAMPLE[config.model]
    scoring = max(one_model, min(working, (sampled_workers(config) + 1) * one_model))
    return held_bytes(config) + max(training, scoring, EVAL_CHUNK_BYTES)


def largest_batch(config: TrainConfig, budget: Budget | None = None) -> int:
    """The largest batch size at which one worker of ``config`` fits the run's working memory (at least 1).

    This, not a fixed number, caps the batch: workers train in groups that fit the budget, so only one worker
    alone can overflow it. Binary search: a worker's bytes grow with its batch (trainer.bytes_per_worker).
    """
    working = working_memory(config, budget)
    low, high = 1, LIMITS["batch_size"][1]
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if bytes_per_worker(config.model, middle) <= working else (low, middle - 1)
    return low


def batch_problem(config: TrainConfig, budget: Budget | None = None) -> str | None:
    """Why one worker at ``config.batch_size`` does not fit the memory budget, with the largest batch that does."""
    largest = largest_batch(config, budget)
    if config.batch_size <= largest:
        return None
    one_worker = bytes_per_worker(config.model, config.batch_size)
    return (
        f"batch size {config.batch_size:,} needs about {one_worker / MB:,.0f} MB "
        f"for one {config.model} worker; the memory budget ({env_name('training_memory_mb')}="
        f"{training_memory_budget(budget) // MB:,} MB) allows batch sizes up to {largest:,}: lower the batch size "
        f"or raise the budget."
    )
