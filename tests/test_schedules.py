import itertools
import math

import pytest
import torch

from fed_core.federation.schedules import WeightAverage, scheduled_lr


def test_constant_schedule_keeps_the_base_rate():
    assert [scheduled_lr(2.0, "constant", t, 4) for t in range(4)] == [2.0] * 4


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decaying_schedules_fall_from_near_base_to_near_zero_and_never_stop(schedule):
    rates = [scheduled_lr(4.0, schedule, t, 40) for t in range(40)]
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert rates[0] > 3.9 and 0 < rates[-1] < 0.1
    # Symmetric about the middle of the run: the mean rate is half the base.
    assert math.isclose(sum(rates) / 40, 2.0, rel_tol=1e-9)


def test_schedule_rejects_unknown_names_and_rounds_outside_the_run():
    with pytest.raises(ValueError, match="Unknown schedule"):
        scheduled_lr(1.0, "step", 0, 10)
    with pytest.raises(ValueError, match="outside"):
        scheduled_lr(1.0, "cosine", 10, 10)


def test_weight_average_without_decay_is_the_latest_vector():
    average = WeightAverage(0.0)
    for value in (1.0, 5.0, 3.0):
        result = average.update(torch.full((3,), value))
    assert torch.equal(result, torch.full((3,), 3.0))


def test_weight_average_is_the_warmed_up_exponential_average():
    average, expected = WeightAverage(0.9), None
    for t, value in enumerate([1.0, 2.0, 4.0, 8.0] * 10):
        vector = torch.full((2,), value)
        rate = min(0.9, (1 + t) / (10 + t))
        expected = vector if expected is None else rate * expected + (1 - rate) * vector
        average.update(vector)
    assert torch.allclose(average.value, expected)
    # It does not alias the caller's tensor.
    vector = torch.zeros(2)
    first = WeightAverage(0.5)
    first.update(vector)
    vector += 1
    assert torch.equal(first.value, torch.zeros(2))


def test_weight_average_rejects_a_decay_outside_zero_to_one():
    with pytest.raises(ValueError):
        WeightAverage(1.0)
