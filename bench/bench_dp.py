"""DP-SGD speed against Opacus 1.6.0, per-sample hooks and ghost clipping, on the same settings in one process.

python bench/bench_dp.py            # 2 epochs (about 2 minutes on a loaded 2-core machine)
python bench/bench_dp.py --full     # the issue's run: 5 epochs
python bench/bench_dp.py --engines ours opacus-ghost --epochs 3

Settings (issue 17): crypto_cnn, all 60k training images on one worker, Poisson batches
of expected size 2,000 (q = 1/30), noise multiplier z = 1, clip S = 1, plain SGD at
lr 2, delta 1e-5. Every engine starts from the same initial model and runs one thread.
The engines take turns epoch by epoch (the order rotating), so a load from other
processes hits them all alike. Per epoch each prints examples per wall second and per
CPU second (60,000 expected examples an epoch), the CPU seconds, test accuracy, and
epsilon by RDP and by PRV from its own history (Opacus's accountant for Opacus, the
project's ExampleAccountant for ours: the histories are the same).

Opacus's runs get the same secure Poisson draws as ours, indexing a normalised copy of
the images: its DPDataLoader would build each batch image by image (a Python call per
example), which would measure the loader rather than the clipping.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fed_core.data.mnist import Mnist, load_mnist, normalize
from fed_core.federation.server import load_vector
from fed_core.federation.trainer import BatchedTrainer
from fed_core.models import new_model
from fed_core.privacy.dp import (
    Epsilon,
    ExampleAccountant,
    ExampleDP,
    SecureRandom,
    epsilon_of_history,
    poisson_batches,
    poisson_plan,
)
from fed_core.vocabulary import LocalSettings, flatten, model_params

MODEL = "crypto_cnn"
ENGINES = ("opacus-hooks", "opacus-ghost", "ours")


@dataclass(frozen=True)
class Setting:
    batch_size: int = 2000
    noise: float = 1.0
    clip: float = 1.0
    lr: float = 2.0
    delta: float = 1e-5
    seed: int = 0


class OpacusRun:
    """Opacus's PrivacyEngine.make_private on a fresh SGD: per-sample hooks, or ghost clipping (two backward passes)."""

    def __init__(self, mode: str, data: Mnist, setting: Setting) -> None:
        from opacus import PrivacyEngine

        self.x, self.y = normalize(data.train_images), data.train_labels
        model = new_model(MODEL, "default", setting.seed)
        optimizer = torch.optim.SGD(model.parameters(), lr=setting.lr)
        # Only its length and batch size matter: make_private derives q = 1 / len(loader) and E[batch] from them.
        loader = DataLoader(TensorDataset(self.x, self.y), batch_size=setting.batch_size)
        self.engine = PrivacyEngine(accountant="rdp")
        private = self.engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            criterion=nn.CrossEntropyLoss(),
            noise_multiplier=setting.noise,
            max_grad_norm=setting.clip,
            poisson_sampling=True,
            grad_sample_mode="ghost" if mode == "opacus-ghost" else "hooks",
        )
        if mode == "opacus-ghost":
            self.module, self.optimizer, self.criterion, _ = private
        else:
            (self.module, self.optimizer, _), self.criterion = private, nn.CrossEntropyLoss()
        self.plan = poisson_plan(len(self.y), setting.batch_size, epochs=1)
        self.rng, self.delta = SecureRandom(), setting.delta

    def epoch(self) -> None:
        everything = torch.arange(len(self.y))
        for _ in range(self.plan.steps):
            (batch,) = poisson_batches([everything], [self.plan.sample_rate], self.rng)
            self.optimizer.zero_grad()
            self.criterion(self.module(self.x[batch]), self.y[batch]).backward()
            self.optimizer.step()

    def model(self) -> nn.Module:
        return self.module._module

    def epsilon(self) -> Epsilon:
        return epsilon_of_history(self.engine.accountant.history, self.delta)


class OurRun:
    """The project's DP-SGD (trainer.BatchedTrainer with ExampleDP: ghost_clip.py's norms and clipped sum)."""

    def __init__(self, data: Mnist, setting: Setting) -> None:
        self.net = new_model(MODEL, "default", setting.seed)
        local = LocalSettings(MODEL, 1, setting.batch_size, setting.lr, 0.0, 1.0, setting.clip, setting.noise)
        self.trainer = BatchedTrainer(self.net, data.train_images, data.train_labels, local)
        dp = ExampleDP(setting.clip, setting.noise)
        self.accountant = ExampleAccountant(dp, setting.batch_size, 1, setting.delta)
        self.vector = flatten(model_params(self.net))
        self.shard = torch.arange(len(data.train_labels))

    def epoch(self) -> None:
        (update,) = self.trainer.train(self.vector, [0], [self.shard], [0])
        self.vector = self.vector + update.delta
        self.accountant.record_round({0: len(self.shard)})

    def model(self) -> nn.Module:
        load_vector(self.net, self.vector)
        return self.net

    def epsilon(self) -> Epsilon:
        return self.accountant.bounds()


def test_accuracy(model: nn.Module, data: Mnist) -> float:
    with torch.no_grad():
        logits = torch.cat([model(normalize(part)) for part in data.test_images.split(2000)])
    return (logits.argmax(1) == data.test_labels).float().mean().item()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="the issue's 5 epochs")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    args = parser.parse_args(argv)
    epochs = 5 if args.full else args.epochs
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", module="opacus")  # its note on secure mode
    warnings.filterwarnings("ignore", message="Full backward hook")  # its hooks on an input that needs no gradient
    data, setting = load_mnist(), Setting()
    runs = {name: OurRun(data, setting) if name == "ours" else OpacusRun(name, data, setting) for name in args.engines}
    examples = len(data.train_labels)  # per epoch, expected
    totals = dict.fromkeys(runs, 0.0)
    print(f"DP-SGD on {MODEL}, {examples:,} images, {setting}, {epochs} epochs, one thread each, interleaved")
    for epoch in range(1, epochs + 1):
        names = list(runs)
        for name in names[epoch - 1 :] + names[: epoch - 1]:  # rotate who goes first
            run = runs[name]
            wall, cpu = time.perf_counter(), time.process_time()
            run.epoch()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            totals[name] += cpu
            eps = run.epsilon()
            print(
                f"epoch {epoch} {name:>13}: {examples / wall:>7,.0f} examples/s, {examples / cpu:>7,.0f} per CPU-s "
                f"({cpu:5.1f} CPU-s); test accuracy {test_accuracy(run.model(), data):.2%}; "
                f"epsilon RDP {eps.rdp:.4f}, PRV {eps.prv:.4f}",
                flush=True,
            )
    print("total CPU seconds: " + ", ".join(f"{name} {seconds:.1f}" for name, seconds in totals.items()))
    if "ours" in totals:
        for name in totals.keys() - {"ours"}:
            print(f"ours vs {name}: {totals[name] / totals['ours']:.2f}x the examples per CPU second")


if __name__ == "__main__":
    main()
