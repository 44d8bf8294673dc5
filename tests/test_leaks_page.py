"""The What leaks page: the curious server rebuilds a worker's image and fails behind each defence; the malicious
server reads the images out of the secure sum and fails under DP."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

from ui import session

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def choose(at: AppTest, label: str, value) -> None:
    next(r for r in at.radio if r.label == label).set_value(value)


def attack(at: AppTest, defence: str) -> AppTest:
    choose(at, "What the server receives", defence)
    next(b for b in at.button if b.label == "Attack this update").click().run()
    assert not at.exception
    return at


def test_the_curious_server_reads_the_image_then_fails_behind_secure_aggregation_and_dp():
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


def test_the_malicious_server_gets_through_secure_aggregation_but_not_dp():
    at = AppTest.from_file(APP, default_timeout=180)
    at.switch_page("pages/4_What_Leaks.py").run()
    choose(at, "The server is", "malicious")
    at.run()
    next(n for n in at.number_input if n.label == "Images per update").set_value(8).run()
    attack(at, "secure-agg")
    assert any("would refuse this one" in c.value for c in at.caption)
    attack(at, "dp")
    assert any("The attack failed" in c.value for c in at.caption)
    table = at.dataframe[0].value
    assert list(table["server"]) == ["malicious", "malicious"] and list(table["worker"]) == ["all 5", "all 5"]
    summed, noisy = (int(cell.split("/")[0]) for cell in table[">= 25 dB"])
    assert summed >= 30 and noisy == 0  # 40 images in the round
