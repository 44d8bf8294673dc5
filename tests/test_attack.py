"""The curious server's gradient inversion: one image and batches from a plain update; it fails behind the defences."""

import json
import math

import pytest
import torch

from fed_core.attack import (
    AttackOptions,
    FeatureDecomposition,
    ObservedUpdate,
    infer_labels,
    make_update,
    match_images,
    observe,
    psnr,
    reconstruct,
    simulate_update,
    ssim,
    time_to_psnr,
    with_local_steps,
    worker_examples,
)
from fed_core.cli import main
from fed_core.config import TrainConfig
from fed_core.data.mnist import normalize
from fed_core.models import new_model
from fed_core.vocabulary import LocalSettings, flatten, model_params, unflatten

SETTINGS = LocalSettings(
    model="crypto_cnn", epochs=1, batch_size=128, lr=0.02, momentum=0.9, clip_norm=1.0
)  # the app's defaults
FAST = AttackOptions(steps=20)


def worker_update(mnist, model_name: str = "crypto_cnn", count: int = 1, settings: LocalSettings = SETTINGS):
    """Worker 0's first ``count`` images in the default federation, and the update it sends at round 1."""
    images, labels = worker_examples(TrainConfig(), mnist, worker=0, count=count)
    model = new_model(model_name, "default", seed=0)
    global_vector = flatten(model_params(model))
    return model, global_vector, images, labels, make_update(model, global_vector, images, labels, settings, seed=0)


def test_psnr_and_ssim_agree_with_hand_computations():
    image = torch.rand(28, 28, generator=torch.Generator().manual_seed(0)) * 0.8
    assert psnr(image, image) == math.inf
    assert ssim(image, image) == pytest.approx(1.0)
    assert psnr(image + 0.1, image) == pytest.approx(20.0)  # MSE 0.01
    checker = (torch.arange(28)[:, None] + torch.arange(28)[None, :]) % 2 * 0.1 - 0.05  # +-0.05: MSE 0.0025
    assert psnr(image + checker, image) == pytest.approx(10 * math.log10(1 / 0.0025))
    # Two flat images: no variance, so SSIM is the luminance term (2ab + C1) / (a^2 + b^2 + C1).
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.5 + c1) / (0.2**2 + 0.5**2 + c1)
    assert ssim(torch.full((28, 28), 0.2), torch.full((28, 28), 0.5)) == pytest.approx(expected)
    assert ssim(image, 1 - image) < 0  # anti-correlated structure


@pytest.mark.parametrize(
    "count, settings",
    [
        (1, LocalSettings("crypto_cnn", 2, 128, 0.05, 0.9, 0.5)),
        (4, LocalSettings("crypto_cnn", 3, 8, 0.05, 0.9, 1.0)),
    ],
)
def test_the_replayed_update_is_the_workers_update(mnist, count, settings):
    """Momentum, clipping and several steps: the differentiable replay follows trainer.BatchedTrainer exactly."""
    model, global_vector, images, labels, update = worker_update(mnist, count=count, settings=settings)
    params = unflatten(global_vector, model_params(model))
    replayed = simulate_update(model, params, normalize(images), labels, settings)
    assert torch.allclose(replayed, update.delta, rtol=1e-4, atol=1e-7)
    assert update.delta.norm() > 0


def test_labels_come_from_the_last_bias(mnist):
    for model_name in ("crypto_cnn", "relu_cnn"):
        model, global_vector, _images, labels, update = worker_update(mnist, model_name)
        observed = observe(model_name, global_vector, update, SETTINGS)
        assert infer_labels(model, observed) == labels.tolist()
    model, global_vector, *_ = worker_update(mnist)
    images, labels = mnist.train_images[:3], mnist.train_labels[:3]
    assert len(set(labels.tolist())) == 3  # three different digits: the heuristic is exact then
    update = make_update(model, global_vector, images, labels, SETTINGS, seed=0)
    assert infer_labels(model, observe("crypto_cnn", global_vector, update, SETTINGS)) == sorted(labels.tolist())


def test_one_image_is_rebuilt_from_a_plain_update(mnist):
    """The default model at init, one real MNIST image: well above 25 dB, with the right label (about 50 dB here)."""
    _model, global_vector, images, labels, update = worker_update(mnist)
    seen = []
    result = reconstruct(
        observe("crypto_cnn", global_vector, update, SETTINGS),
        FAST,
        progress=lambda step, total, x, metrics: seen.append((step, total, x.shape)),
        reference=images,
        public=mnist,
    )
    assert result.labels == labels.tolist()
    assert result.psnr[0] >= 25 and result.ssim[0] > 0.95
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert time_to_psnr(result.history, 25) is not None
    steps = [s for s, _, _ in seen]
    assert steps == sorted(steps) and steps[-1] == seen[-1][1] and seen[-1][2] == (1, 28, 28)


def test_behind_secure_aggregation_the_server_holds_fresh_noise(mnist):
    _model, global_vector, _images, _labels, update = worker_update(mnist)
    first, second = (observe("crypto_cnn", global_vector, update, SETTINGS, "secure-agg").update for _ in range(2))
    assert not torch.equal(first, second)  # a fresh mask every round
    assert torch.corrcoef(torch.stack([first, update.delta]))[0, 1].abs() < 0.05
    assert 0.45 < float((first < 0).float().mean()) < 0.55  # the sign bit is a fair coin


@pytest.mark.parametrize("defence", ["secure-agg", "dp", "both"])
def test_the_attack_fails_behind_a_defence(mnist, defence):
    """The masked vector is uniform noise; DP noise (z = 1 times the clip norm) drowns the update."""
    _model, global_vector, images, _labels, update = worker_update(mnist)
    observed = observe("crypto_cnn", global_vector, update, SETTINGS, defence, noise_multiplier=1.0)
    assert isinstance(observed, ObservedUpdate) and torch.isfinite(observed.update).all()
    result = reconstruct(observed, FAST, reference=images, public=mnist)
    assert result.psnr[0] < 12


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse's own refusals
        return exit_.code


def test_cli_writes_the_result(tmp_path, capsys):
    out = tmp_path / "attack.json"
    assert run_cli(["attack", "--steps", "0", "--out", str(out)]) == 0
    summary = capsys.readouterr().out
    assert "defence none" in summary and "PSNR" in summary
    report = json.loads(out.read_text())
    assert report["labels"]["correct"] and report["psnr"][0] >= 25
    assert report["config"]["model"] == "crypto_cnn" and report["seconds"]["attack"] > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--worker", "7"], "worker must be between 0 and 4"),
        (["--images", "0"], "must be at least 1"),
        (["--images", "9999"], "images must be between 1 and"),
        (["--noise", "-1"], "noise multiplier must be >= 0"),
        (["--images", "65"], "images must be between 1 and 64"),
        (["--server", "malicious", "--round", "2"], "leave --round at 1"),
        (["--lr", "0"], "learning rate must be in"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert run_cli(["attack", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(("error:", "usage:", "python -m fed_core"))


def test_matching_pairs_each_real_image_with_one_rebuilt():
    """The Hungarian pairing undoes any order; real images left over when fewer were rebuilt get -1."""
    real = torch.rand(5, 28, 28, generator=torch.Generator().manual_seed(0))
    rebuilt = real[[3, 0, 4, 1, 2]] + 0.01
    assert match_images(rebuilt, real) == [1, 3, 4, 0, 2]
    assert match_images(rebuilt[:3], real) == [1, -1, -1, 0, 2]


def test_local_steps_set_the_batches():
    """16 images in 4 steps: one epoch in batches of 4 (FedAvg's setting); more steps than images: full batches."""
    four = with_local_steps(SETTINGS, 16, 4)
    assert (four.epochs, four.batch_size) == (1, 4)
    assert (with_local_steps(SETTINGS, 8, 1).epochs, with_local_steps(SETTINGS, 8, 1).batch_size) == (1, 8)
    many = with_local_steps(SETTINGS, 2, 5)
    assert (many.epochs, many.batch_size) == (5, 2)
    with pytest.raises(ValueError, match="at least 1"):
        with_local_steps(SETTINGS, 4, 0)


def test_label_counts_of_a_batch(mnist):
    """Eight images, one local step: the counts from the last bias and the public mean softmax are right."""
    model, global_vector, _images, labels, update = worker_update(mnist, count=8)
    observed = observe("crypto_cnn", global_vector, update, SETTINGS)
    assert infer_labels(model, observed, mnist.test_images) == sorted(labels.tolist())


def test_the_batch_features_are_found_exactly(mnist):
    """fc1 and fc2's gradients of four images give each image's squared conv output a_n (up to order)."""
    model, global_vector, images, labels, update = worker_update(mnist, count=4)
    params = unflatten(global_vector, model_params(model))
    decomposition = FeatureDecomposition(params, unflatten(-update.delta, params), sorted(labels.tolist()))
    starts = torch.Generator().manual_seed(0)
    public = normalize(mnist.test_images[:500])
    conv = torch.nn.functional.conv2d(public, params["conv.weight"], params["conv.bias"], stride=3).flatten(1)

    def public_features() -> torch.Tensor:
        return conv[torch.randint(len(conv), (4,), generator=starts)].double().pow(2)

    features, mismatch = decomposition.fit(public_features, deadline=math.inf)
    truth = torch.nn.functional.conv2d(normalize(images), params["conv.weight"], params["conv.bias"], stride=3)
    truth = truth.flatten(1).double().pow(2)
    errors = torch.cdist(features, truth).min(0).values / truth.norm(dim=1)
    assert mismatch < 1e-6 and errors.max() < 1e-3


def test_a_batch_of_four_is_rebuilt(mnist):
    """The curious server's batch inversion: most of four images above 25 dB within the time budget."""
    _model, global_vector, images, labels, update = worker_update(mnist, count=4)
    seen = []
    result = reconstruct(
        observe("crypto_cnn", global_vector, update, SETTINGS),
        AttackOptions(time_budget=25),
        progress=lambda step, total, x, metrics: seen.append(step),
        reference=images,
        public=mnist,
    )
    assert result.labels == sorted(labels.tolist()) and result.method.startswith("batch")
    assert sorted(result.psnr)[1] >= 20 and sum(p >= 25 for p in result.psnr) >= 2
    assert result.seconds < 35 and seen == sorted(seen)


def test_cli_malicious_server_reads_the_secure_sum(tmp_path, capsys):
    out = tmp_path / "attack.json"
    argv = ["attack", "--server", "malicious", "--workers", "4", "--images", "4", "--defence", "secure-agg"]
    assert run_cli([*argv, "--out", str(out)]) == 0
    assert "would refuse it" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["server"] == "malicious" and len(report["psnr"]) == len(report["ssim"]) == 16
    assert report["images_at_least_25_db"] >= 14 and report["worker_check"]
