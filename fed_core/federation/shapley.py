"""Each worker's Shapley value in a round: its average gain in test accuracy over every order of joining.

Leave-one-out (server.contribution_scores) only asks what the round loses without one worker, so two
workers who bring the same thing both look useless. The Shapley value shares the round's gain fairly: it
averages a worker's marginal gain v(S + worker) - v(S) over all coalitions S of the others, weighted as if
the workers joined in a random order. The values add up to v(all) - v(empty), equal workers get equal
values, and a worker who never changes v gets zero.

The value v(S) of a coalition S is the accuracy, on the evaluator's fixed test subset, of the model the
server would propose from the FedAvg (example-weighted) aggregate of S's updates; the empty coalition
(and one whose examples sum to zero) keeps the round's starting model, as a round where every worker
drops out does. So with server momentum, the step the momentum carries over from earlier rounds is part
of every other coalition's gain, and is shared equally.

Up to EXACT_MAX_WORKERS workers every one of the 2^K coalitions is evaluated, vmapped in chunks; above
that, random orders are sampled (Castro et al. 2009) and each value comes with the half-width of its 95%
confidence interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from fed_core.federation.strategies import Strategy


class Evaluator(Protocol):
    """What this module needs of server.Evaluator: the fixed test subset and the accuracy of models on it."""

    subset: torch.Tensor

    def subset_accuracies(self, vectors: torch.Tensor) -> torch.Tensor: ...


# 2^8 = 256 coalition models: 0.7 s of CPU for crypto_cnn on 1,000 images, but a minute for relu_cnn
# (bench/bench_shapley.py): heavier models need a lower limit.
EXACT_MAX_WORKERS = 8
PERMUTATIONS = 32  # random orders sampled above that
CHUNK = 8  # coalition models per vmapped evaluation: the fastest for crypto_cnn on 1,000 images (16+ is slower)
Z_95 = 1.96  # normal quantile for a mean of independent orders; it covered ~93% at 32-60 orders (tests)
SHAPLEY_KEY, SHAPLEY_CI_KEY = "shapley", "shapley_ci"  # the fields a worker row carries

ValueFunction = Callable[[torch.Tensor], torch.Tensor]  # bool coalition masks [M, K] -> values [M]


@dataclass(frozen=True)
class ShapleyResult:
    values: torch.Tensor  # [K], in the order of the round's updates
    ci_halfwidth: torch.Tensor | None  # [K], 95% confidence half-width when sampled; None when exact
    exact: bool

    def rows(self) -> list[dict]:
        """One dict per worker, to merge into the round's worker rows."""
        halfwidths = [None] * len(self.values) if self.ci_halfwidth is None else self.ci_halfwidth.tolist()
        return [{SHAPLEY_KEY: v, SHAPLEY_CI_KEY: h} for v, h in zip(self.values.tolist(), halfwidths)]


def shapley_values(
    global_vector: torch.Tensor,
    deltas: torch.Tensor,
    counts: torch.Tensor,
    strategy: Strategy,
    evaluator: Evaluator,
    samples: int = PERMUTATIONS,
    generator: torch.Generator | None = None,
    exact_max_workers: int = EXACT_MAX_WORKERS,
) -> ShapleyResult:
    """Shapley value of each of the round's K >= 1 updates; exact up to ``exact_max_workers``, else sampled.

    Call it before ``strategy.step``, as contribution_scores is: proposals use the current momentum or moments.
    ``samples`` random orders (at least 2) are drawn with ``generator`` when sampling. With no test subset
    (contribution_subset = 0) the values are NaN, as the leave-one-out scores are.
    """
    players = len(deltas)
    exact = players <= exact_max_workers
    if len(evaluator.subset) == 0:
        nan = torch.full((players,), float("nan"))
        return ShapleyResult(nan, None if exact else nan, exact)
    value = coalition_accuracy(global_vector, deltas, counts, strategy, evaluator)
    if exact:
        return ShapleyResult(exact_shapley(value, players), None, True)
    return ShapleyResult(*sampled_shapley(value, players, samples, generator), False)


def coalition_accuracy(
    global_vector: torch.Tensor,
    deltas: torch.Tensor,
    counts: torch.Tensor,
    strategy: Strategy,
    evaluator: Evaluator,
) -> ValueFunction:
    """v(S) for a batch of coalitions: subset accuracy of the model proposed from S's FedAvg aggregate."""

    def value(masks: torch.Tensor) -> torch.Tensor:
        return torch.cat([evaluator.subset_accuracies(proposals(chunk)) for chunk in masks.split(CHUNK)])

    def proposals(masks: torch.Tensor) -> torch.Tensor:
        examples = masks.to(deltas.dtype) * counts.to(deltas.dtype)  # [M, K]
        totals = examples.sum(1, keepdim=True)
        aggregates = (examples / totals.clamp(min=1e-12)) @ deltas
        proposed = strategy.propose(global_vector, aggregates)
        return torch.where(totals > 0, proposed, global_vector)

    return value


def leave_one_out(value: ValueFunction, players: int) -> torch.Tensor:
    """v(all) - v(all but i) for every player: what the round would lose without each one."""
    masks = torch.cat([torch.ones(1, players, dtype=torch.bool), ~torch.eye(players, dtype=torch.bool)])
    v = value(masks)
    return v[0] - v[1:]


def exact_shapley(value: ValueFunction, players: int) -> torch.Tensor:
    """Exact Shapley values from v on all 2^players coalitions (coalition c holds player i if bit i of c is set)."""
    codes = torch.arange(2**players)
    masks = (codes.unsqueeze(1) >> torch.arange(players)) & 1 == 1
    v = value(masks).double()
    sizes = masks.sum(1)
    # A coalition S of the others is followed by player i in |S|! (n - 1 - |S|)! of the n! orders.
    weights = torch.tensor([1 / (players * math.comb(players - 1, s)) for s in range(players)], dtype=torch.double)
    values = torch.empty(players, dtype=torch.double)
    for i in range(players):
        without = codes[~masks[:, i]]
        values[i] = (weights[sizes[without]] * (v[without | (1 << i)] - v[without])).sum()
    return values.float()


def sampled_shapley(
    value: ValueFunction, players: int, samples: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo Shapley values over ``samples`` random orders, and their 95% confidence half-widths.

    Each order's marginal gains add up to v(all) - v(empty), so the means do too. A coalition met in
    several orders is evaluated once.
    """
    if samples < 2:
        raise ValueError(f"Sampling needs at least 2 orders for a confidence interval, got {samples}.")
    orders = torch.stack([torch.randperm(players, generator=generator) for _ in range(samples)])  # [T, K]
    ranks = orders.argsort(1)
    prefixes = ranks.unsqueeze(1) < torch.arange(players + 1).view(1, -1, 1)  # [T, K + 1, K]: first j joined
    unique, index = torch.unique(prefixes.flatten(0, 1), dim=0, return_inverse=True)
    v = value(unique).double()[index].view(samples, players + 1)
    gains = torch.zeros(samples, players, dtype=torch.double).scatter_(1, orders, v.diff(dim=1))
    halfwidth = Z_95 * gains.std(0) / math.sqrt(samples)
    return gains.mean(0).float(), halfwidth.float()


def cumulative_shapley(workers: int, rounds: list[list[dict]]) -> dict[int, tuple[float, float]]:
    """Each worker's Shapley values summed over the rounds' worker rows, with the 95% half-width of the sum.

    Rounds sample their orders independently, so half-widths add in quadrature; exact rounds add none.
    Rows without a value (NaN, scoring switched off) are skipped.
    """
    totals, variances = [0.0] * workers, [0.0] * workers
    for rows in rounds:
        for row in rows:
            if row.get(SHAPLEY_KEY) is None or math.isnan(row[SHAPLEY_KEY]):
                continue
            totals[row["worker"]] += row[SHAPLEY_KEY]
            variances[row["worker"]] += (row.get(SHAPLEY_CI_KEY) or 0.0) ** 2
    return {w: (totals[w], math.sqrt(variances[w])) for w in range(workers)}
