"""evaluate_encrypted, classify_digit and the two CLI subcommands."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fed_core.cli import main
from fed_core.data.mnist import load_mnist, normalize
from fed_core.encrypted_eval import (
    NotEncryptableError,
    choose_he_packing,
    classify_digit,
    estimate_seconds,
    evaluate_encrypted,
)
from fed_core.he.ckks import HeClient, HeServer
from fed_core.models import build_model, save_model


@pytest.fixture(scope="module")
def test_set():
    mnist = load_mnist()
    return normalize(mnist.test_images[:64]), mnist.test_labels[:64]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, trained_model):
    path = tmp_path_factory.mktemp("models") / "crypto.pt"
    save_model(trained_model, path, "crypto_cnn")
    return path


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory):
    mnist = load_mnist()
    path = tmp_path_factory.mktemp("images") / "seven.png"
    Image.fromarray(np.kron(mnist.test_images[0].numpy(), np.ones((6, 6), dtype=np.uint8))).save(path)
    return path, int(mnist.test_labels[0])


def test_mpc_evaluation_reports_agreement_traffic_and_confusion(trained_model, test_set):
    images, labels = test_set
    fractions = []
    result = evaluate_encrypted(trained_model, images, labels, "mpc", batch_size=16, progress=fractions.append)
    assert result.agreement == 1.0 and result.max_logit_error < 0.05
    assert result.encrypted_accuracy == result.plain_accuracy > 0.9
    confusion = np.array(result.confusion)
    assert confusion.sum() == 64 and np.trace(confusion) == round(64 * result.encrypted_accuracy)
    assert fractions == [0.25, 0.5, 0.75, 1.0]
    comm = result.communication
    assert comm["rounds"] == 1 + 4 * 6 and comm["rounds_per_batch"] == 6
    assert comm["bytes_per_party"][0] == comm["bytes_per_party"][1] > comm["setup_bytes_per_party"] > 0
    assert set(result.seconds) == {"encrypt", "compute", "decrypt", "total"}
    assert json.loads(json.dumps(result.to_dict()))["encrypted_predictions"] == result.encrypted_predictions


def test_he_evaluation_of_a_few_images_uses_the_one_digit_packing(trained_model, test_set):
    images, labels = test_set
    result = evaluate_encrypted(trained_model, images[:2], labels[:2], "he")
    assert result.packing == "image"
    assert result.agreement == 1.0 and result.max_logit_error < 0.02
    assert result.communication["public_context_bytes"] > 1_000_000
    assert result.seconds["keygen"] > 0


def test_he_packing_choice_follows_the_estimates():
    assert choose_he_packing(10) == "image"
    assert choose_he_packing(10_000) == "batch"
    assert estimate_seconds("he", 100, "batch") == estimate_seconds("he", 4000, "batch")
    assert estimate_seconds("mpc", 10_000) < estimate_seconds("he", 10_000)


@pytest.mark.parametrize("scheme", ["he", "mpc"])
def test_classify_digit_matches_plaintext_and_shows_the_server_view(trained_model, test_set, scheme):
    images, labels = test_set
    result = classify_digit(trained_model, images[0], scheme)
    assert result.prediction == result.plain_prediction == int(labels[0])
    assert abs(sum(result.probabilities) - 1) < 1e-9 and len(result.probabilities) == 10
    assert {"encrypt", "compute", "decrypt"} <= set(result.seconds)
    if scheme == "he":
        assert result.server_view["server_has_secret_key"] is False
        assert result.share_images is None
    else:
        share0, share1 = result.share_images
        assert share0.shape == (28, 28) and not np.array_equal(share0, share1)
    assert json.loads(json.dumps(result.to_dict()))["prediction"] == result.prediction


def test_classify_digit_reuses_the_sessions_keys_and_server(trained_model, test_set):
    images, _labels = test_set
    client = HeClient()
    server = HeServer(trained_model, client.public_context)
    for image in images[1:3]:
        result = classify_digit(trained_model, image, "he", he_client=client, he_server=server)
        assert set(result.seconds) == {"encrypt", "compute", "decrypt"}  # no keygen, no server setup
        assert result.prediction == result.plain_prediction


def test_non_encryptable_model_is_refused_with_the_accepted_models():
    with pytest.raises(NotEncryptableError, match=r"relu_cnn.*accepts only crypto_cnn"):
        classify_digit(build_model("relu_cnn"), torch.zeros(28, 28), "mpc")


def test_cli_encrypted_eval_writes_json_and_one_summary_line(model_file, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["encrypted-eval", "--model", str(model_file), "--scheme", "mpc", "--n", "40", "--out", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    assert stdout.count("\n") == 1 and "agreement 100.00%" in stdout
    assert "100%" in stderr
    saved = json.loads(out.read_text())
    assert saved["n"] == 40 and len(saved["encrypted_predictions"]) == 40


def test_cli_classify_prints_the_prediction(model_file, digit_png, capsys):
    path, label = digit_png
    assert main(["classify", "--model", str(model_file), "--image", str(path), "--scheme", "mpc"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["prediction"] == label and set(printed["seconds"]) >= {"encrypt", "compute", "decrypt"}


@pytest.mark.parametrize("case", ["missing model", "relu model", "empty image", "bad n"])
def test_cli_bad_input_is_one_line_and_exit_code_2(case, model_file, digit_png, tmp_path, capsys):
    image = str(digit_png[0])
    if case == "relu model":
        save_model(build_model("relu_cnn"), tmp_path / "relu.pt", "relu_cnn")
    if case == "empty image":
        Image.new("L", (100, 100)).save(tmp_path / "empty.png")
    argv = {
        "missing model": ["classify", "--model", str(tmp_path / "none.pt"), "--image", image],
        "relu model": ["classify", "--model", str(tmp_path / "relu.pt"), "--image", image],
        "empty image": ["classify", "--model", str(model_file), "--image", str(tmp_path / "empty.png")],
        "bad n": ["encrypted-eval", "--model", str(model_file), "--n", "0"],
    }[case]
    assert main(argv) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr
    expected = {"missing model": "does not exist", "relu model": "crypto_cnn", "empty image": "empty", "bad n": "--n"}
    assert expected[case] in stderr
