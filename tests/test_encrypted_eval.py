"""The encrypted schemes (evaluate, classify, estimate, the registry) and the two CLI subcommands."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fed_core.cli import main
from fed_core.data.mnist import load_mnist, normalize
from fed_core.encrypted import SCHEMES, NotEncryptableError, UnknownSchemeError, scheme_for
from fed_core.encrypted.he import HeCommunication, HeScheme, HeServerView, choose_he_packing
from fed_core.encrypted.mpc import MpcCommunication, MpcScheme, MpcServerView
from fed_core.he.ckks import HeClient, HeServer
from fed_core.models import build_model, save_model
from fed_core.vocabulary import UserError


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
    result = MpcScheme().evaluate(trained_model, images, labels, batch_size=16, progress=fractions.append)
    assert result.agreement == 1.0 and result.max_logit_error < 0.05
    assert result.encrypted_accuracy == result.plain_accuracy > 0.9
    confusion = np.array(result.confusion)
    assert confusion.sum() == 64 and np.trace(confusion) == round(64 * result.encrypted_accuracy)
    assert fractions == [0.25, 0.5, 0.75, 1.0]
    comm = result.communication
    assert isinstance(comm, MpcCommunication)
    assert comm.rounds == 1 + 4 * 6 and comm.rounds_per_batch == 6
    assert comm.bytes_per_party[0] == comm.bytes_per_party[1] > comm.setup_bytes_per_party > 0
    assert set(result.seconds) == {"encrypt", "compute", "decrypt", "total"}
    saved = json.loads(json.dumps(result.to_dict()))
    assert saved["encrypted_predictions"] == result.encrypted_predictions
    assert saved["communication"] == {**vars(comm), "bytes_by_link": {}}  # the JSON keys are the field names


def test_he_evaluation_of_a_few_images_uses_the_one_digit_packing(trained_model, test_set):
    images, labels = test_set
    result = HeScheme().evaluate(trained_model, images[:2], labels[:2])
    assert result.packing == "image"
    assert result.agreement == 1.0 and result.max_logit_error < 0.02
    assert isinstance(result.communication, HeCommunication)
    assert result.communication.public_context_bytes > 1_000_000
    assert "server_processes" not in result.to_dict()["communication"]  # batch packing only, as before
    assert result.seconds["keygen"] > 0


def test_he_packing_choice_follows_the_estimates():
    assert choose_he_packing(10) == "image"
    assert choose_he_packing(10_000) == "batch"
    batch = HeScheme(packing="batch")
    assert batch.estimate_seconds(100) == batch.estimate_seconds(4000)
    assert MpcScheme().estimate_seconds(10_000) < HeScheme().estimate_seconds(10_000)
    assert "in 2 batches of up to 1,000" in MpcScheme().describe(2000)
    assert "one at a time (the faster of the two)" in HeScheme().describe(10)


@pytest.mark.parametrize("scheme", ["he", "mpc"])
def test_classify_digit_matches_plaintext_and_shows_the_server_view(trained_model, test_set, scheme):
    images, labels = test_set
    result = scheme_for(scheme).classify(trained_model, images[0])
    assert result.prediction == result.plain_prediction == int(labels[0])
    assert abs(sum(result.probabilities) - 1) < 1e-9 and len(result.probabilities) == 10
    assert {"encrypt", "compute", "decrypt"} <= set(result.seconds)
    if scheme == "he":
        assert isinstance(result.server_view, HeServerView)
        assert result.server_view.server_has_secret_key is False
        assert result.share_images is None
    else:
        assert isinstance(result.server_view, MpcServerView)
        share0, share1 = result.share_images
        assert share0.shape == (28, 28) and not np.array_equal(share0, share1)
    printed = json.loads(json.dumps(result.to_dict()))
    assert printed["prediction"] == result.prediction and printed["server_view"] == vars(result.server_view)


def test_classify_digit_reuses_the_sessions_keys_and_server(trained_model, test_set):
    images, _labels = test_set
    client = HeClient()
    server = HeServer(trained_model, client.public_context)
    scheme = HeScheme(keys=lambda model: (client, server))
    for image in images[1:3]:
        result = scheme.classify(trained_model, image)
        assert set(result.seconds) == {"encrypt", "compute", "decrypt"}  # no keygen, no server setup
        assert result.prediction == result.plain_prediction


def test_non_encryptable_model_is_refused_with_the_accepted_models():
    with pytest.raises(NotEncryptableError, match=r"relu_cnn.*accepts only crypto_cnn"):
        MpcScheme().classify(build_model("relu_cnn"), torch.zeros(28, 28))


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


def test_an_unknown_scheme_or_option_is_refused_with_the_choices():
    with pytest.raises(UnknownSchemeError, match="'rsa'; choose one of he, mpc") as caught:
        scheme_for("rsa")
    assert isinstance(caught.value, UserError)
    with pytest.raises(TypeError, match="No encryption scheme takes parties_count"):
        scheme_for("mpc", parties_count=3)
    with pytest.raises(ValueError, match="Unknown HE packing 'slots'"):
        HeScheme(packing="slots")


def test_each_scheme_takes_its_own_options_and_leaves_the_others():
    """The CLI passes --parties and --he-packing whatever the scheme: each scheme keeps its own."""
    assert scheme_for("mpc", parties="processes", packing="batch") == MpcScheme(parties="processes")
    assert scheme_for("he", parties="processes", packing="batch") == HeScheme(packing="batch")
    assert set(SCHEMES) == {"he", "mpc"} and all(SCHEMES[name].name == name for name in SCHEMES)
