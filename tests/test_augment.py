"""Augmentation as a local-training option: what it does to images, and that it reaches every worker's batches."""

from dataclasses import replace

import pytest
import torch

from fed_core.cli.train import register
from fed_core.config import TrainConfig, estimate_seconds
from fed_core.data.augment import _dilated, augmented
from fed_core.federation.trainer import BatchedTrainer
from fed_core.models import new_model
from fed_core.vocabulary import LocalSettings, flatten, model_params


def generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in seeds]


def digits(data, k: int, b: int) -> torch.Tensor:
    return (data.train_images[: k * b].float() / 255).view(k, b, 1, 28, 28)


def test_redrawn_digits_stay_digits_but_change(tiny_data):
    images = digits(tiny_data, 2, 64)
    out = augmented(images, generators(1, 2))
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1.0001
    changed = (out - images).abs().flatten(2).mean(2)
    assert (changed > 0.01).float().mean() > 0.9  # nearly every image is redrawn
    # Still mostly ink where the digit was: the change is small next to the digit itself.
    assert torch.nn.functional.cosine_similarity(out.flatten(2), images.flatten(2), dim=2).median() > 0.5


def test_a_workers_redrawing_depends_only_on_its_own_generator(tiny_data):
    images = digits(tiny_data, 2, 32)
    together = augmented(images, generators(7, 8))
    alone = augmented(images[1:], generators(8))
    torch.testing.assert_close(together[1:], alone)
    torch.testing.assert_close(augmented(images, generators(7, 8)), together)


def test_dilation_thickens_a_one_pixel_line():
    line = torch.zeros(1, 1, 28, 28)
    line[..., 14, 5:20] = 1.0
    assert _dilated(line, 2).sum() == 2 * 16  # two rows, one pixel longer
    assert _dilated(line, 3).sum() == 3 * 17  # three rows, one pixel longer at each end


def test_the_option_reaches_the_trainer_and_changes_the_update(tiny_data):
    plain = TrainConfig(batch_size=16, lr=0.05).local
    assert plain.augment is False and TrainConfig(augment=True).local.augment is True
    model = new_model("crypto_cnn", "default", seed=0)
    start = flatten(model_params(model))
    shards, seeds = [torch.arange(0, 64), torch.arange(64, 128)], [3, 4]

    def deltas(settings: LocalSettings) -> list[torch.Tensor]:
        trainer = BatchedTrainer(model, tiny_data.train_images, tiny_data.train_labels, settings)
        return [u.delta for u in trainer.train(start, [0, 1], shards, seeds)]

    base, first, again = deltas(plain), deltas(replace(plain, augment=True)), deltas(replace(plain, augment=True))
    assert all((a - b).norm() > 1e-4 for a, b in zip(first, base))
    for a, b in zip(first, again):  # seeded from the workers' round seeds: a run is reproducible
        torch.testing.assert_close(a, b)


def test_example_level_dp_can_augment_too(tiny_data):
    settings = LocalSettings("crypto_cnn", 1, 16, 0.05, 0.9, 1.0, dp_clip=1.0, dp_noise=1.0, augment=True)
    model = new_model("crypto_cnn", "default", seed=0)
    trainer = BatchedTrainer(model, tiny_data.train_images, tiny_data.train_labels, settings)
    updates = trainer.train(flatten(model_params(model)), [0, 1], [torch.arange(0, 64), torch.arange(64, 128)], [1, 2])
    assert all(torch.isfinite(u.delta).all() for u in updates)


def test_multiplicity_clips_each_examples_mean_over_its_redrawn_copies(tiny_data, monkeypatch):
    settings = LocalSettings(
        "crypto_cnn", 1, 16, 0.05, 0.0, 1.0, dp_clip=1.0, dp_noise=1.0, augment=True, augment_multiplicity=3
    )
    model = new_model("crypto_cnn", "default", seed=0)
    trainer = BatchedTrainer(model, tiny_data.train_images, tiny_data.train_labels, settings)
    calls = []
    clipped_sum = trainer._clipper.clipped_sum

    def recording(params, x, y, clip, group=1):
        calls.append((x.clone(), y.clone(), group))
        return clipped_sum(params, x, y, clip, group)

    monkeypatch.setattr(trainer._clipper, "clipped_sum", recording)
    updates = trainer.train(flatten(model_params(model)), [0, 1], [torch.arange(0, 64), torch.arange(64, 128)], [1, 2])
    assert all(torch.isfinite(u.delta).all() for u in updates)
    x, y, group = calls[0]
    assert group == 3 and len(x) % 3 == 0 and len(x) > 0
    copies = x.view(-1, 3, 1, 28, 28)
    assert torch.equal(y.view(-1, 3), y.view(-1, 3)[:, :1].expand(-1, 3))  # three copies of each example
    assert (copies[:, 0] - copies[:, 1]).abs().amax((1, 2, 3)).min() > 0  # each redrawn its own way
    with pytest.raises(ValueError, match="multiplicity"):
        BatchedTrainer(model, tiny_data.train_images, tiny_data.train_labels, replace(settings, augment=False))


def test_its_cost_is_in_the_time_estimate():
    config = TrainConfig()
    assert estimate_seconds(replace(config, augment=True)) > 1.5 * estimate_seconds(config)
    heavy = replace(config, model="relu_cnn")
    assert estimate_seconds(replace(heavy, augment=True)) < 1.2 * estimate_seconds(heavy)


def test_the_cli_has_the_option():
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    assert parser.parse_args(["train", "--augment"]).augment is True
    assert parser.parse_args(["train"]).augment is False


def test_the_train_page_offers_it_and_its_estimate_counts_it():
    from test_train_page import train_page_app, widget

    at = train_page_app().run()
    before = next(c.value for c in at.caption if "Estimated time" in c.value)
    box = widget(at.checkbox, "Augment: redraw digits at random")
    assert box.value is False and "Draw page" in box.help
    box.check().run()
    after = next(c.value for c in at.caption if "Estimated time" in c.value)
    assert not at.exception and after != before
