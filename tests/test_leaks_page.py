"""The What leaks page: the curious server rebuilds a worker's image, then fails behind each defence."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

from ui import session

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def attack(at: AppTest, defence: str) -> AppTest:
    next(r for r in at.radio if r.label == "What the server receives").set_value(defence)
    next(b for b in at.button if b.label == "Attack this update").click().run()
    assert not at.exception
    return at


def test_the_server_reads_the_image_then_fails_behind_secure_aggregation_and_dp():
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("pages/4_What_Leaks.py").run()
    assert "Attack this update" in at.info[0].value

    attack(at, "none")
    assert any("read the image back" in c.value for c in at.caption)
    attack(at, "secure-agg")
    assert any("The attack failed" in c.value for c in at.caption)
    attack(at, "dp")
    table = at.dataframe[0].value
    assert list(table["the server received"].str.split(" ").str[0]) == ["its", "a", "its"]
    none, masked, noisy = table["PSNR (dB)"]
    assert none >= 25 and masked < 12 and noisy < none
    assert len(at.session_state[session.ATTACKS]) == 3
