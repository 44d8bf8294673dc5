"""A malicious server's imprint (Fowl et al. 2022): exact images from one update and from a secure sum; DP stops it."""

import torch

from fed_core.attack import (
    ImprintedModel,
    check_received_model,
    imprint_model,
    recover,
    rob,
    round_move_bound,
    stage_malicious_round,
)
from fed_core.config import TrainConfig
from fed_core.models import new_model
from fed_core.vocabulary import flatten, model_params, unflatten


def test_each_image_comes_back_exactly_from_one_workers_batch(mnist):
    staged = stage_malicious_round(TrainConfig(workers=1), mnist, count=16)
    result = rob(staged)
    assert len(staged.observed) == 1 and len(result.psnr) == 16
    assert sum(p >= 30 for p in result.psnr) >= 14  # a pair sharing a bin is lost, the rest is float-exact
    assert sorted(result.psnr)[len(result.psnr) // 2] > 60


def test_secure_aggregation_does_not_stop_it(mnist):
    """10 workers x 8 images, the server holds only the secure sum: still most images, exactly."""
    staged = stage_malicious_round(TrainConfig(workers=10), mnist, count=8, defence="secure-agg")
    assert len(staged.observed) == 1  # one vector: the sum, not any worker's update
    result = rob(staged)
    assert len(result.psnr) == 80
    assert sum(p >= 30 for p in result.psnr) >= 60


def test_example_level_dp_stops_it_at_the_apps_defaults(mnist):
    config = TrainConfig(workers=10)
    assert (config.dp_clip, config.dp_noise) == (1.0, 1.0)  # the app's defaults
    for defence in ("dp", "both"):
        staged = stage_malicious_round(config, mnist, count=8, defence=defence)
        assert staged.settings.dp_clip == 1.0 and staged.settings.dp_noise == 1.0
        result = rob(staged)
        assert sum(p >= 25 for p in result.psnr) == 0
        assert max(result.psnr) < 20


def test_recover_reads_a_weighted_sum_of_gradients_by_hand(mnist):
    """Two images in different bins, gradients summed with arbitrary weights: both come back."""
    model = imprint_model(new_model("crypto_cnn", "default", 0), mnist.test_images, bins=64)
    x = (mnist.train_images[:2].float() / 255 - 0.1307) / 0.3081
    grads = []
    for i in range(2):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 1].unsqueeze(1)), mnist.train_labels[i : i + 1]).backward()
        grads.append(flatten({n: p.grad for n, p in model.named_parameters()}))
    found = recover(model, 0.3 * grads[0] - 2.0 * grads[1], most=2)
    errors = (found.view(-1, 1, 784) - x.view(1, 2, 784)).abs().amax(2).amin(0)
    assert errors.max() < 1e-3


def test_a_checking_worker_refuses_the_imprinted_model_and_the_honest_one_passes():
    honest = new_model("crypto_cnn", "default", 0)
    assert check_received_model("crypto_cnn", model_params(honest)) == []
    imprinted = ImprintedModel(new_model("crypto_cnn", "default", 0))
    problems = check_received_model("crypto_cnn", model_params(imprinted))
    assert problems and "imprint.weight" in problems[0]


def test_trap_weights_in_the_agreed_layers_fail_the_move_bound(mnist):
    """Same architecture, hand-set fc1 weights (trap weights): caught by how far the weights moved."""
    config = TrainConfig()
    previous = new_model("crypto_cnn", "default", 0)
    previous_vector = flatten(model_params(previous))
    bound = round_move_bound(config.local, max_steps=1)
    honest = previous_vector + 0.5 * bound * torch.nn.functional.normalize(torch.randn_like(previous_vector), dim=0)
    honest_params = unflatten(honest, model_params(previous))
    assert check_received_model("crypto_cnn", honest_params, previous_vector, bound) == []
    trapped = dict(model_params(previous))
    trapped["fc1.weight"] = torch.randn_like(trapped["fc1.weight"]) * 0.5
    problems = check_received_model("crypto_cnn", trapped, previous_vector, bound)
    assert problems and "moved" in problems[0]
