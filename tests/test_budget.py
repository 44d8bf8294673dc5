"""What keeps a shared server usable: the budget's limits from the environment, the run estimators, refusals
that say what to change, the gates and key cache, and a web server Streamlit does not warn about."""

from dataclasses import replace
from pathlib import Path

import pytest

from fed_core.config import TrainConfig, estimate_seconds, problems
from fed_core.federation.trainer import bytes_per_worker
from fed_core.limits.budget import Budget, BudgetError, load_budget, training_memory_budget
from fed_core.limits.estimates import (
    BYTES_PER_SCORED_EXAMPLE,
    batch_problem,
    estimate_run_bytes,
    largest_batch,
    working_memory,
)
from fed_core.limits.gates import Gate, SessionCache, budget_problems
from fed_core.models import MODEL_LABELS, MODELS

DEFAULT = TrainConfig()
REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"


def test_defaults_fit_a_small_instance_and_the_environment_raises_them():
    assert load_budget({}) == Budget()
    raised = load_budget({"FEDMNIST_RUNS_PER_SERVER": "4", "FEDMNIST_TRAINING_MEMORY_MB": "2000"})
    assert raised.runs_per_server == 4 and raised.training_memory_bytes == 2_000_000_000
    assert training_memory_budget(raised) == 2_000_000_000


@pytest.mark.parametrize("text", ["-1", "0", "nan", "inf", "two", "1.5"])
def test_bad_environment_values_are_named(text):
    with pytest.raises(BudgetError, match="FEDMNIST_RUNS_PER_SERVER"):
        load_budget({"FEDMNIST_RUNS_PER_SERVER": text})


def test_the_default_run_fits_the_default_budget():
    assert budget_problems(DEFAULT, Budget()) == []
    assert estimate_run_bytes(DEFAULT) < Budget().training_memory_bytes


def test_memory_grows_with_workers_batch_size_model_and_contribution_scoring():
    base = estimate_run_bytes(DEFAULT)
    assert estimate_run_bytes(replace(DEFAULT, workers=100, batch_size=1024)) > base
    assert estimate_run_bytes(replace(DEFAULT, model="fedavg_cnn")) > base
    many = replace(DEFAULT, workers=100, contribution_subset=10_000)
    assert estimate_run_bytes(many) > estimate_run_bytes(replace(many, contribution_subset=0))
    assert bytes_per_worker("crypto_cnn", 256) > bytes_per_worker("crypto_cnn", 32)


def test_workers_train_in_groups_so_memory_stays_within_the_budget():
    big = replace(DEFAULT, workers=100, batch_size=1024, rounds=1)
    budget = Budget(training_memory_mb=400)
    assert estimate_run_bytes(big, budget) <= budget.training_memory_bytes
    assert estimate_run_bytes(big, Budget(training_memory_mb=100_000)) > 4 * budget.training_memory_bytes
    assert budget_problems(big, budget) == []


def test_too_long_a_run_is_refused_with_the_setting_to_lower_and_its_value():
    budget = Budget(run_seconds=60)
    long_run = replace(DEFAULT, rounds=200)
    [problem] = budget_problems(long_run, budget)
    assert "this server allows 60 s per run" in problem
    fits_rounds = int(problem.split("lower Rounds to ")[1].split(",")[0].rstrip("."))
    assert estimate_seconds(replace(long_run, rounds=fits_rounds)) <= 60
    assert estimate_seconds(replace(long_run, rounds=fits_rounds + 1)) > 60


def test_a_run_where_one_worker_does_not_fit_is_refused_with_a_smaller_batch():
    budget = Budget(training_memory_mb=400, run_seconds=10**6)
    big = replace(DEFAULT, model="fedavg_cnn", batch_size=1024)
    [problem] = budget_problems(big, budget)
    assert "this server allows 400 MB per run" in problem and "lower Batch size B to " in problem
    batch = int(problem.split("Batch size B to ")[1].rstrip("."))
    assert estimate_run_bytes(replace(big, batch_size=batch), budget) <= budget.training_memory_bytes
    assert estimate_run_bytes(replace(big, batch_size=batch * 2), budget) > budget.training_memory_bytes


def test_gate_admits_capacity_holders_and_estimates_the_wait():
    gate = Gate(1)
    ticket = gate.acquire(expected_seconds=30)
    assert ticket is not None
    assert gate.acquire(expected_seconds=1, timeout=0.01) is None
    assert 25 < gate.wait_estimate() <= 30
    gate.release(ticket)
    assert gate.wait_estimate() == 0
    gate.release(gate.acquire(1))


def test_session_cache_drops_idle_entries_and_the_least_recently_used():
    now = [0.0]
    cache = SessionCache(idle_seconds=60, capacity=2, clock=lambda: now[0])
    cache.put("a", {"keys": 1})
    now[0] = 10
    cache.put("b", {"keys": 2})
    now[0] = 15
    assert cache.get("a") == {"keys": 1}  # a is now the most recently used
    now[0] = 20
    cache.put("c", {"keys": 3})  # full: b, the least recently used, goes
    assert cache.get("b") is None and len(cache) == 2
    now[0] = 100  # a was last used at 15, c at 20: both idle for more than 60 s
    cache.sweep()
    assert len(cache) == 0 and cache.get("a") is None


def pinned(name: str) -> str:
    line = next(x for x in REQUIREMENTS.read_text().splitlines() if x.startswith(f"{name}=="))
    return line.split("==")[1].strip()


def proxy_warnings(monkeypatch, versions: dict[str, str] | None = None) -> list:
    """Run Streamlit's own start-up check of the uvicorn/websockets pair; the warnings it would log."""
    from streamlit.web.server.starlette import starlette_server

    logged = []
    monkeypatch.setattr(starlette_server._LOGGER, "warning", lambda *args, **kwargs: logged.append(args))
    if versions is not None:
        monkeypatch.setattr(starlette_server, "_package_version", versions.__getitem__)
    starlette_server._maybe_warn_uvicorn_websockets_mismatch()
    return logged


def test_streamlit_does_not_warn_about_the_pinned_uvicorn_and_websockets(monkeypatch):
    assert proxy_warnings(monkeypatch, {"uvicorn": "0.49.0", "websockets": "17.4"})  # the check does warn
    assert proxy_warnings(monkeypatch, {"uvicorn": pinned("uvicorn"), "websockets": pinned("websockets")}) == []


def test_streamlit_does_not_warn_about_the_installed_uvicorn_and_websockets(monkeypatch):
    assert proxy_warnings(monkeypatch) == []


def test_the_batch_cap_comes_from_the_memory_budget_not_a_fixed_number():
    dp_sgd = replace(DEFAULT, dp="example", batch_size=2000)
    assert problems(dp_sgd) == []  # once refused: "between 1 and 1024"
    assert batch_problem(dp_sgd, Budget()) is None and budget_problems(dp_sgd, Budget(run_seconds=10**6)) == []
    largest = largest_batch(dp_sgd, Budget())
    working = working_memory(dp_sgd, Budget())
    assert bytes_per_worker("crypto_cnn", largest) <= working < bytes_per_worker("crypto_cnn", largest + 1)
    tight = Budget(training_memory_mb=40)
    problem = batch_problem(dp_sgd, tight)
    assert f"allows batch sizes up to {largest_batch(dp_sgd, tight):,}" in problem
    assert "FEDMNIST_TRAINING_MEMORY_MB=40 MB" in problem
    # The app's refusal names a batch size that fits, now above the old cap where the budget allows it.
    [refusal] = budget_problems(replace(dp_sgd, batch_size=60_000), Budget(run_seconds=10**9))
    batch = int(refusal.split("Batch size B to ")[1].split(",")[0].rstrip("."))
    assert batch > 1024


@pytest.mark.parametrize("model", list(MODELS))
def test_every_model_has_time_and_memory_figures_and_a_label(model):
    """A model added to the registry without its measured figures would crash the Train page's estimate."""
    config = replace(DEFAULT, model=model)
    assert model in MODEL_LABELS and model in BYTES_PER_SCORED_EXAMPLE
    assert estimate_seconds(config) > 0 and estimate_run_bytes(config) > 0
