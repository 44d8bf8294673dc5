"""The landing page and the Train page, run by Streamlit's AppTest (no browser)."""

import io
import json
import math
import time
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from fed_core.job import TrainingJob
from ui import session
from ui import train_views as views

ROOT = Path(__file__).resolve().parent.parent


def train_page_app() -> AppTest:
    """The Train page as Streamlit serves it: app.py is the entrypoint, so page links resolve."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.switch_page("pages/1_Train.py")
    return at


def widget(widgets, label):
    return next(w for w in widgets if w.label == label)


@pytest.fixture
def train_page():
    at = train_page_app()
    yield at
    job = at.session_state.get(session.JOB, None)
    if job is not None:  # AppTest leaves threads running unless stopped here
        job.stop()
        job.join(60)


def started_and_finished(at: AppTest, seconds: float) -> AppTest:
    """Press Start, wait up to ``seconds`` for the run to end, and rerun the page as its poll would."""
    widget(at.button, "Start").click()
    at.run()
    at.session_state[session.JOB].join(seconds)
    return at.run()


def test_landing_page_explains_and_links_the_pages():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=30).run()
    assert not at.exception
    assert "Private machine learning, live" in at.title[0].value
    assert "workers" in at.markdown[0].value and "server" in at.markdown[0].value


def test_tiny_run_shows_live_charts_table_and_downloads(train_page):
    at = train_page.run()
    assert not at.exception
    assert "Choose the settings" in at.info[0].value
    widget(at.number_input, "Workers").set_value(3)
    widget(at.number_input, "Rounds").set_value(2)
    widget(at.button, "Start").click()
    at.run()
    job = at.session_state[session.JOB]
    assert job.config.workers == 3 and job.config.rounds == 2
    assert at.query_params["run"] == [job.job_id] or at.query_params["run"] == job.job_id
    job.join(120)
    at.run()  # run_every never fires in AppTest: poll by hand
    assert not at.exception
    assert any("Done:" in s.value for s in at.success)
    charts = at.get("plotly_chart")
    assert len(charts) == 4  # accuracy, contributions, label heatmap, what the server sees
    workers, runs = at.dataframe
    assert len(workers.value) == 3 and list(runs.value["privacy"]) == ["none"]
    assert not any("Not known to the server" in c.value for c in at.caption)  # exact Shapley: nothing hidden
    assert len(at.get("download_button")) == 3
    assert at.session_state[session.TRAINED_MODEL]["meta"]["model"] == "crypto_cnn"


def test_the_dp_papers_model_is_a_choice_and_trains(train_page):
    at = train_page.run()
    model = widget(at.selectbox, "Model")
    assert "Tempered-sigmoid CNN of the DP papers (tanh; plaintext only)" in model.options
    model.set_value("tanh_cnn")
    widget(at.number_input, "Workers").set_value(20)
    widget(at.slider, "Fraction C sampled per round").set_value(0.1)  # two workers' 3,000 images each: fast
    widget(at.number_input, "Rounds").set_value(1)
    started_and_finished(at, 300)
    assert not at.exception
    assert any("Done:" in s.value for s in at.success)
    assert at.session_state[session.TRAINED_MODEL]["meta"]["model"] == "tanh_cnn"


def test_big_run_shows_its_estimate_before_start(train_page, monkeypatch):
    """On a server whose budget was raised (a local user's), a big run is allowed and shows its cost."""
    monkeypatch.setenv("FEDMNIST_RUN_SECONDS", "100000")
    monkeypatch.setenv("FEDMNIST_TRAINING_MEMORY_MB", "100000")
    at = train_page.run()
    widget(at.number_input, "Workers").set_value(100)
    widget(at.number_input, "Rounds").set_value(200)
    at.run()
    estimate = next(c.value for c in at.caption if "Estimated time" in c.value)
    assert "min" in estimate or " h " in estimate
    assert "memory about" in estimate


def test_impossible_split_is_explained_not_a_traceback(train_page):
    at = train_page.run()
    widget(at.number_input, "Workers").set_value(100)
    widget(at.slider, "Fraction C sampled per round").set_value(0.5)  # all 100 at once is over the memory budget
    widget(at.selectbox, "How data is split").set_value("dirichlet")
    at.run()
    widget(at.number_input, "alpha (smaller = more skew)").set_value(0.01)
    started_and_finished(at, 60)
    assert not at.exception
    assert any("fewer than 10 examples" in e.value and "raise alpha" in e.value for e in at.error)


def test_stop_during_the_first_round(train_page):
    at = train_page.run()
    widget(at.number_input, "Rounds").set_value(50)
    widget(at.button, "Start").click()
    at.run()
    widget(at.button, "Stop").click()
    at.run()
    job = at.session_state[session.JOB]
    job.join(60)
    at.run()
    assert job.snapshot().status == "stopped"
    assert any("Stopped by you" in w.value for w in at.warning)
    assert not at.exception


def test_full_server_says_busy_with_an_estimate():
    sessions = [train_page_app() for _ in range(3)]
    try:
        for at in sessions:
            at.run()
            widget(at.number_input, "Rounds").set_value(200)
            widget(at.button, "Start").click()
            at.run()
        assert all(session.JOB in at.session_state for at in sessions[:2])
        third = sessions[2]
        assert not third.exception and "job" not in third.session_state
        busy = next(w.value for w in third.warning if "busy" in w.value)
        assert "2 runs are training" in busy and "about" in busy and "try again" in busy
    finally:
        for at in sessions[:2]:
            if session.JOB in at.session_state:
                at.session_state[session.JOB].stop()
                at.session_state[session.JOB].join(60)


def start_tiny_run(at: AppTest, rounds: int = 2) -> None:
    at.run()
    widget(at.number_input, "Workers").set_value(3)
    widget(at.number_input, "Rounds").set_value(rounds)
    widget(at.button, "Start").click()
    at.run()


def wait_for_first_round(job) -> None:
    deadline = time.monotonic() + 120
    while job.snapshot().round < 1 and time.monotonic() < deadline:
        time.sleep(0.1)


def test_another_session_opening_the_link_gets_a_read_only_view(train_page):
    owner = train_page
    start_tiny_run(owner)
    job = owner.session_state[session.JOB]
    job.join(120)
    viewer = train_page_app()
    viewer.query_params[session.RUN_PARAM] = job.job_id
    viewer.run()
    assert not viewer.exception
    assert viewer.session_state[session.JOB] is job
    assert any("watching a run started in another browser: read-only" in i.value for i in viewer.info)
    assert any("Done:" in s.value for s in viewer.success)
    assert len(viewer.get("plotly_chart")) == 4 and len(viewer.dataframe) == 1  # the live view is there
    assert not any(b.label == "Stop" for b in viewer.button)
    assert not viewer.get("download_button")
    assert session.TRAINED_MODEL not in viewer.session_state


def test_the_owner_token_re_attaches_a_new_session_to_its_run(train_page):
    """A reload is a new session; the browser brings the owner token back (in a cookie), not the URL."""
    owner = train_page
    start_tiny_run(owner, rounds=50)
    job = owner.session_state[session.JOB]
    token = owner.session_state[session.OWNER_TOKEN]
    assert token not in str(owner.query_params)
    reloaded = train_page_app()
    reloaded.query_params[session.RUN_PARAM] = job.job_id
    reloaded.session_state[session.OWNER_TOKEN] = token  # what ui.runs.owner_token() reads from the cookie
    reloaded.run()
    assert not any("read-only" in i.value for i in reloaded.info)
    wait_for_first_round(job)
    widget(reloaded.button, "Stop").click()
    reloaded.run()
    job.join(60)
    reloaded.run()
    assert job.snapshot().status == "stopped"
    assert len(reloaded.get("download_button")) == 3


def test_a_second_run_of_the_same_session_waits_for_the_first(train_page):
    at = train_page
    start_tiny_run(at, rounds=50)
    first = at.session_state[session.JOB]
    other = train_page_app()
    other.session_state[session.OWNER_TOKEN] = at.session_state[session.OWNER_TOKEN]  # another tab, same browser
    other.run()
    widget(other.button, "Start").click()
    other.run()
    assert any("You already have a run training" in w.value for w in other.warning)
    assert session.JOB not in other.session_state
    assert first.snapshot().status == "running"


def test_a_stopped_run_keeps_the_model_of_its_last_round(train_page):
    at = train_page
    start_tiny_run(at, rounds=50)
    job = at.session_state[session.JOB]
    wait_for_first_round(job)
    widget(at.button, "Stop").click()
    at.run()
    job.join(60)
    at.run()
    rounds = job.snapshot().round
    assert rounds >= 1
    assert any(f"The model of round {rounds}, its last finished round, is kept" in w.value for w in at.warning)
    assert any(b.label == f"Model of round {rounds} (.pt)" for b in at.get("download_button"))
    assert f"round {rounds} of 50" in at.session_state[session.TRAINED_MODEL]["meta"]["source"]


def test_settings_over_the_servers_time_budget_are_refused_with_what_to_lower(train_page, monkeypatch):
    monkeypatch.setenv("FEDMNIST_RUN_SECONDS", "60")
    at = train_page.run()
    widget(at.number_input, "Rounds").set_value(200)
    at.run()
    refusal = next(e.value for e in at.error if "can't run here" in e.value)
    assert "this server allows 60 s per run" in refusal and "lower Rounds to " in refusal
    assert widget(at.button, "Start").disabled


def test_corrupted_data_file_is_named_on_the_page(monkeypatch, tmp_path):
    import shutil

    import fed_core.data.mnist as data

    for item in data.SHIPPED_ROOT.iterdir():
        shutil.copy(item, tmp_path / item.name)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    monkeypatch.setattr(data, "SHIPPED_ROOT", tmp_path)
    monkeypatch.setattr(data, "_CACHE", {})
    at = train_page_app().run()
    widget(at.button, "Start").click()
    at.run()
    assert not at.exception
    message = next(e.value for e in at.error if "MNIST" in e.value)
    assert "train-labels-idx1-ubyte.gz is corrupted" in message and "git checkout" in message
    assert session.JOB not in at.session_state


def test_a_private_run_reports_epsilon_hides_single_updates_and_joins_the_comparison(train_page):
    at = train_page.run()
    widget(at.radio, "Privacy").set_value("both").run()
    widget(at.number_input, "Workers").set_value(3)
    widget(at.number_input, "Rounds").set_value(1)
    widget(at.button, "Start").click().run()
    job = at.session_state[session.JOB]
    assert (job.config.secure_aggregation, job.config.dp) == (True, "example")
    job.join(300)
    at.run()
    assert not at.exception
    assert any("ε = " in m.value and "one training image" in m.value for m in at.markdown)
    [runs] = at.dataframe  # no worker table: the server knows none of a worker's figures under both defences
    assert any("Not known to the server" in c.value and "leave-one-out" in c.value for c in at.caption)
    assert runs.value["privacy"][0].startswith("secure aggregation + example-level DP")
    assert any(e.label == "What the server sees of worker W0" for e in at.expander)


def test_strategies_are_chosen_on_the_page_and_a_bad_combination_is_explained(train_page):
    at = train_page.run()
    widget(at.selectbox, "Strategy").set_value("fedprox")
    at.run()
    widget(at.number_input, "FedProx mu").set_value(0.1)
    widget(at.number_input, "Workers").set_value(3)
    widget(at.number_input, "Rounds").set_value(1)
    widget(at.button, "Start").click()
    at.run()
    job = at.session_state[session.JOB]
    assert job.config.strategy == "fedprox" and job.config.prox_mu == 0.1
    job.join(120)
    at.run()
    assert any("Done:" in s.value for s in at.success)
    widget(at.selectbox, "Strategy").set_value("scaffold")
    widget(at.selectbox, "Where workers train").set_value("flower")
    at.run()
    assert not at.exception
    assert any("SCAFFOLD runs on the inprocess engine only" in e.value for e in at.error)


def test_secure_aggregation_of_two_workers_is_refused_before_start(train_page):
    at = train_page.run()
    widget(at.radio, "Privacy").set_value("secure").run()
    widget(at.number_input, "Workers").set_value(2).run()
    refusal = next(e.value for e in at.error if "can't run here" in e.value)
    assert "secure aggregation needs at least 3 workers in every round" in refusal
    assert widget(at.button, "Start").disabled


def run_one_round(at: AppTest, privacy: str, protect: str | None = None) -> TrainingJob:
    at.run()
    widget(at.radio, "Privacy").set_value(privacy).run()
    if protect:
        widget(at.radio, "Protect").set_value(protect).run()
    widget(at.number_input, "Workers").set_value(3)
    widget(at.number_input, "Rounds").set_value(1)
    widget(at.button, "Start").click().run()
    job = at.session_state[session.JOB]
    job.join(300)
    at.run()
    assert not at.exception and any("Done:" in s.value for s in at.success)
    return job


def test_under_secure_aggregation_the_page_shows_only_means_of_the_workers_own_training(train_page):
    at = train_page
    job = run_one_round(at, "secure")
    [row_of_first] = [r for r in job.snapshot().history[0]["workers"] if r["worker"] == 0]
    assert all(math.isnan(row_of_first[k]) for k in ("loss_before", "loss_after", "local_accuracy"))
    means = next(m.value for m in at.markdown if "mean over the round" in m.value)
    assert "summed through the same masks" in means and "loss" in means
    assert len(at.dataframe) == 1  # your runs only: the server knows no figure of any single worker
    assert any("Took part" in m.value and "W0, W1, W2" in m.value for m in at.markdown)
    hidden = next(c.value for c in at.caption if "Not known to the server" in c.value)
    assert "loss before" in hidden and "local accuracy" in hidden


def test_under_client_level_dp_the_page_and_downloads_publish_nothing_per_worker(train_page):
    at = train_page
    job = run_one_round(at, "dp", protect="client")
    assert job.config.dp == "client"
    assert any("publishes nothing per worker" in i.value for i in at.info)
    assert len(at.get("plotly_chart")) == 1  # the global model's accuracy: no contributions, labels or server view
    assert len(at.dataframe) == 1  # your runs only: no worker table
    assert not any("What the server sees" in e.label for e in at.expander)
    snapshot = job.snapshot()
    assert snapshot.server_view is None and snapshot.label_histogram == []
    exported = json.loads(views.metrics_json(job, snapshot))
    assert "label_histogram" not in exported and "cumulative_contributions" not in exported
    assert all(r["sampled"] == r["dropped"] == r["workers"] == [] for r in exported["rounds"])
    csv = pd.read_csv(io.StringIO(views.metrics_csv(snapshot.history)))
    assert list(csv.columns) == ["round", "test_accuracy", "test_loss", "epsilon"]
