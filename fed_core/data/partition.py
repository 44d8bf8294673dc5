"""Split the training set between workers: IID, Dirichlet label skew, or the FedAvg paper's shards.

Every partitioner returns one int64 index tensor per worker, disjoint, and is
reproducible from the numpy Generator it is given.
"""

from __future__ import annotations

import numpy as np
import torch

from fed_core.vocabulary import UserError

PARTITIONS = ("iid", "dirichlet", "shards")
MIN_EXAMPLES_PER_WORKER = 10


class PartitionError(UserError, ValueError):
    """The requested split cannot be made (e.g. more workers than the data can serve)."""


def partition_iid(num_examples: int, workers: int, rng: np.random.Generator) -> list[torch.Tensor]:
    _check_enough(num_examples, workers)
    order = torch.from_numpy(rng.permutation(num_examples))
    return list(torch.tensor_split(order, workers))


def partition_dirichlet(
    labels: torch.Tensor, workers: int, alpha: float, rng: np.random.Generator, max_tries: int = 100
) -> list[torch.Tensor]:
    """Each class is split between workers in proportions drawn from Dir(alpha): small alpha, strong skew.

    Draws are repeated until every worker holds at least MIN_EXAMPLES_PER_WORKER
    examples, as in the common FL benchmarks (otherwise a worker may get nothing).
    """
    if alpha <= 0:
        raise PartitionError(f"Dirichlet alpha must be positive, got {alpha}.")
    _check_enough(len(labels), workers)
    labels_np = labels.numpy()
    by_class = [np.flatnonzero(labels_np == c) for c in range(int(labels_np.max()) + 1)]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(workers)]
        for class_indices in by_class:
            shuffled = rng.permutation(class_indices)
            cuts = (np.cumsum(rng.dirichlet(np.full(workers, alpha)))[:-1] * len(shuffled)).astype(int)
            for worker, piece in enumerate(np.split(shuffled, cuts)):
                parts[worker].append(piece)
        sizes = [sum(len(p) for p in pieces) for pieces in parts]
        if min(sizes) >= MIN_EXAMPLES_PER_WORKER:
            return [torch.from_numpy(rng.permutation(np.concatenate(pieces))) for pieces in parts]
    raise PartitionError(
        f"Dirichlet alpha={alpha} with {workers} workers left some worker with fewer than "
        f"{MIN_EXAMPLES_PER_WORKER} examples in {max_tries} tries: raise alpha or use fewer workers."
    )


def partition_shards(
    labels: torch.Tensor, workers: int, shards_per_worker: int, rng: np.random.Generator
) -> list[torch.Tensor]:
    """Sort by label, cut into workers * k equal shards, deal k shards to each worker (McMahan et al.)."""
    if shards_per_worker < 1:
        raise PartitionError(f"Each worker needs at least one shard, got {shards_per_worker}.")
    num_shards = workers * shards_per_worker
    if len(labels) // num_shards < 1:
        raise PartitionError(
            f"{workers} workers x {shards_per_worker} shards = {num_shards} shards, but there are only "
            f"{len(labels)} examples: use fewer workers or fewer shards per worker."
        )
    _check_enough(len(labels), workers)
    # A random tie-break inside each label keeps shards from always starting at the same images.
    order = np.lexsort((rng.random(len(labels)), labels.numpy()))
    shards = np.array_split(order, num_shards)
    dealt = rng.permutation(num_shards).reshape(workers, shards_per_worker)
    return [torch.from_numpy(np.concatenate([shards[s] for s in row])) for row in dealt]


def make_partition(
    labels: torch.Tensor,
    workers: int,
    scheme: str,
    rng: np.random.Generator,
    alpha: float = 0.5,
    shards_per_worker: int = 2,
) -> list[torch.Tensor]:
    if scheme == "iid":
        return partition_iid(len(labels), workers, rng)
    if scheme == "dirichlet":
        return partition_dirichlet(labels, workers, alpha, rng)
    if scheme == "shards":
        return partition_shards(labels, workers, shards_per_worker, rng)
    raise PartitionError(f"Unknown partition {scheme!r}; choose one of {', '.join(PARTITIONS)}.")


def label_histogram(labels: torch.Tensor, parts: list[torch.Tensor], num_classes: int = 10) -> torch.Tensor:
    """[workers, classes] count of each label on each worker."""
    return torch.stack([torch.bincount(labels[p], minlength=num_classes) for p in parts])


def _check_enough(num_examples: int, workers: int) -> None:
    if workers < 1:
        raise PartitionError(f"Need at least one worker, got {workers}.")
    if num_examples < workers * MIN_EXAMPLES_PER_WORKER:
        raise PartitionError(
            f"{num_examples} training examples cannot serve {workers} workers with at least "
            f"{MIN_EXAMPLES_PER_WORKER} each: use at most {num_examples // MIN_EXAMPLES_PER_WORKER} workers."
        )
