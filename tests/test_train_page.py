"""The landing page and the Train page, run by Streamlit's AppTest (no browser)."""

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ui import session

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
    assert len(charts) == 3  # accuracy, contributions, label heatmap
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 3
    assert len(at.get("download_button")) == 3
    assert at.session_state[session.TRAINED_MODEL]["meta"]["model"] == "crypto_cnn"


def test_big_run_shows_its_estimate_before_start(train_page):
    at = train_page.run()
    widget(at.number_input, "Workers").set_value(100)
    widget(at.number_input, "Rounds").set_value(200)
    at.run()
    estimate = next(c.value for c in at.caption if "Estimated time" in c.value)
    assert "min" in estimate or " h " in estimate


def test_impossible_split_is_explained_not_a_traceback(train_page):
    at = train_page.run()
    widget(at.number_input, "Workers").set_value(100)
    widget(at.selectbox, "How data is split").set_value("dirichlet")
    at.run()
    widget(at.number_input, "alpha (smaller = more skew)").set_value(0.01)
    widget(at.button, "Start").click()
    at.run()
    at.session_state[session.JOB].join(60)
    at.run()
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


def test_corrupted_data_file_is_named_on_the_page(monkeypatch, tmp_path):
    import shutil

    import fed_core.data as data

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
