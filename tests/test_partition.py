import numpy as np
import pytest
import torch

from fed_core.data.partition import (
    PartitionError,
    label_histogram,
    make_partition,
    partition_dirichlet,
    partition_iid,
    partition_shards,
)

LABELS = torch.arange(6000) % 10


def _check_disjoint_cover(parts, n):
    joined = torch.cat(parts)
    assert len(joined) == len(torch.unique(joined))
    return len(joined) == n


def test_iid_splits_everything_evenly():
    parts = partition_iid(6000, 7, np.random.default_rng(0))
    assert _check_disjoint_cover(parts, 6000)
    assert {len(p) for p in parts} <= {857, 858}


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partitions_are_reproducible_from_the_seed(scheme):
    a = make_partition(LABELS, 5, scheme, np.random.default_rng(42))
    b = make_partition(LABELS, 5, scheme, np.random.default_rng(42))
    c = make_partition(LABELS, 5, scheme, np.random.default_rng(43))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def _mean_label_entropy(parts):
    hist = label_histogram(LABELS, parts).float()
    p = hist / hist.sum(1, keepdim=True)
    return -(p * p.clamp(min=1e-12).log()).sum(1).mean().item()


def test_dirichlet_skew_grows_as_alpha_shrinks():
    entropies = []
    for alpha in (100.0, 1.0, 0.1):
        parts = partition_dirichlet(LABELS, 10, alpha, np.random.default_rng(0))
        assert _check_disjoint_cover(parts, 6000)
        assert min(len(p) for p in parts) >= 10
        entropies.append(_mean_label_entropy(parts))
    assert entropies[0] > entropies[1] > entropies[2]
    assert entropies[0] > 2.2  # near uniform: log(10) = 2.30


def test_shards_give_each_worker_few_labels():
    parts = partition_shards(LABELS, 10, 2, np.random.default_rng(0))
    assert _check_disjoint_cover(parts, 6000)
    assert all(len(p) == 600 for p in parts)
    labels_per_worker = (label_histogram(LABELS, parts) > 0).sum(1)
    assert labels_per_worker.max() <= 4  # two label-sorted shards can straddle at most 4 labels


def test_more_workers_than_data_can_serve_is_explained():
    with pytest.raises(PartitionError, match="at most 60 workers"):
        partition_iid(600, 100, np.random.default_rng(0))
    with pytest.raises(PartitionError, match="shards"):
        partition_shards(LABELS[:50], 5, 20, np.random.default_rng(0))
