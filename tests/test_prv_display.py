"""Both accountants' epsilon wherever a run's epsilon is shown: the run record, the Train page line, the CLI."""

import subprocess
import sys
from pathlib import Path

from fed_core.config import TrainConfig
from fed_core.engines import engine_for
from ui.privacy_views import epsilon_text

ROOT = Path(__file__).resolve().parent.parent


def test_every_round_records_both_bounds_and_the_smaller_as_the_guarantee(tiny_data):
    config = TrainConfig(
        dp="example", dp_noise=1.1, workers=2, rounds=2, train_size=1000, contribution_subset=0, batch_size=64
    )
    run = engine_for(config).run(tiny_data)
    for record in run.history:
        assert record.epsilon_prv < record.epsilon_rdp  # PRV is the tighter here
        assert record.epsilon == min(record.epsilon_rdp, record.epsilon_prv)
    line = epsilon_text([r.to_dict() for r in run.history], config)
    last = run.history[-1]
    assert f"ε = {last.epsilon:.2f}" in line and f"PRV {last.epsilon_prv:.2f}" in line
    assert f"RDP {last.epsilon_rdp:.2f}" in line


def test_a_record_without_prv_shows_the_rdp_figure():
    config = TrainConfig(dp="client")
    assert "ε = 1.50 (PRV n/a, RDP 1.50" in epsilon_text([{"epsilon": 1.5}], config)
    assert epsilon_text([{"epsilon": None}], TrainConfig()) is None


def test_the_cli_prints_both_accountants():
    args = (
        "train --workers 2 --rounds 1 --train-size 1000 --contribution-subset 0 --no-shapley --dp example --noise 1.1"
    )
    done = subprocess.run(
        [sys.executable, "-m", "fed_core", *args.split()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if "DP for" in line)
    assert "example-level DP for one training image: ε = " in line
    assert "PRV " in line and "RDP " in line and "δ = 1e-05" in line
    prv = float(line.split("PRV ")[1].split(",")[0])
    rdp = float(line.split("RDP ")[1].split(";")[0])
    assert prv < rdp
