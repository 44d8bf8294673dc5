import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from fed_core.cli import main
from fed_core.models import build_model, load_model, save_model

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fed_core", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_train_on_real_mnist_writes_metrics_and_model(tmp_path):
    """End to end on real MNIST: 3 workers x 3 rounds on 6,000 images reach 92% on the full test set (93.4% here)."""
    out, model_path = tmp_path / "run.json", tmp_path / "model.pt"
    done = run_cli(
        "train",
        "--workers",
        "3",
        "--rounds",
        "3",
        "--train-size",
        "6000",
        "--batch-size",
        "32",
        "--out",
        str(out),
        "--save-model",
        str(model_path),
    )
    assert done.returncode == 0, done.stderr
    assert "3 workers x 3 rounds" in done.stdout and "test accuracy" in done.stdout
    assert "rounds" in done.stderr  # the progress bar
    report = json.loads(out.read_text())
    accuracies = [r["test_accuracy"] for r in report["rounds"]]
    assert len(accuracies) == 3 and accuracies[-1] >= 0.92
    assert len(report["rounds"][0]["workers"]) == 3 and report["wall_seconds"] > 0
    model, meta = load_model(model_path)
    assert meta["model"] == "crypto_cnn" and meta["test_accuracy"] == accuracies[-1]
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_bad_arguments_give_a_clear_message_and_exit_2():
    not_an_int = run_cli("train", "--workers", "2.5")
    assert not_an_int.returncode == 2 and "invalid int value: '2.5'" in not_an_int.stderr
    out_of_range = run_cli("train", "--workers", "0")
    assert out_of_range.returncode == 2
    assert "workers must be between 1 and 100" in out_of_range.stderr
    assert "Traceback" not in out_of_range.stderr


def cli(capsys, *args: str) -> tuple[int, str]:
    """The CLI in this process (faster than a subprocess): exit code and stderr."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    return code, capsys.readouterr().err


def png_claiming(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims width x height pixels (no real pixel data)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(build_model("crypto_cnn"), path, "crypto_cnn")
    return path


@pytest.mark.parametrize("side", [20_000, 5_000])
def test_classify_refuses_an_image_whose_header_claims_a_huge_size(capsys, tmp_path, model_file, side):
    image = tmp_path / "bomb.png"
    image.write_bytes(png_claiming(side, side))
    code, err = cli(capsys, "classify", "--model", str(model_file), "--image", str(image))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "bomb.png" in err and "at most 4096 px a side" in err


def test_classify_refuses_a_text_file_as_model(capsys, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    code, err = cli(capsys, "classify", "--model", str(text), "--image", str(text))
    assert code == 2 and "notes.txt is not a model file saved by fed_core" in err


@pytest.mark.parametrize("value", ["-1", "0"])
def test_encrypted_eval_refuses_a_batch_size_below_one(capsys, model_file, value):
    code, err = cli(capsys, "encrypted-eval", "--model", str(model_file), "--n", "10", "--batch-size", value)
    assert code == 2 and f"--batch-size: must be at least 1, got {value}" in err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_train_refuses_a_non_finite_alpha(capsys, value):
    code, err = cli(capsys, "train", "--partition", "dirichlet", f"--alpha={value}")
    assert code == 2 and "Dirichlet alpha must be a finite number" in err


@pytest.mark.parametrize(
    "out, reason",
    [
        ("/proc/run.json", "cannot write in /proc"),
        ("/no/such/folder/run.json", "the folder /no/such/folder does not exist"),
    ],
)
def test_an_unwritable_out_path_is_refused_before_training(capsys, out, reason):
    code, err = cli(capsys, "train", "--rounds", "200", "--out", out)
    assert code == 2 and reason in err
    assert "rounds:" not in err  # no progress bar: training never started


def test_a_run_that_diverges_keeps_its_finished_rounds_and_their_model(capsys, tmp_path):
    """Round 1 finishes; with no gradient clipping and lr 0.3 the loss becomes inf in round 2."""
    out, model_path = tmp_path / "run.json", tmp_path / "model.pt"
    code, err = cli(
        capsys,
        *("train", "--workers", "2", "--rounds", "6", "--train-size", "1000", "--contribution-subset", "0"),
        *("--lr", "0.3", "--clip-norm", "1e9", "--out", str(out), "--save-model", str(model_path)),
    )
    assert code == 1 and "Training diverged" in err and "Kept the 1 finished round(s)" in err
    report = json.loads(out.read_text())
    assert report["status"] == "failed" and "diverged" in report["error"] and len(report["rounds"]) == 1
    _, meta = load_model(model_path)
    assert meta["round"] == 1 and meta["test_accuracy"] == report["rounds"][0]["test_accuracy"]
