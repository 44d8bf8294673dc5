"""What leaks from one worker's update: the gradient-inversion attack against each defence.

python bench/private_attack.py               # crypto_cnn: 10 single-image updates per defence, a batch of 4
python bench/private_attack.py --images 30   # more updates
python bench/private_attack.py --relu        # adds relu_cnn (plain gradient matching, about a minute per image)
python bench/private_attack.py --seed 1 --no-defence   # another model init and federation, plain updates only

Each attacked update is worker 0's round-1 update in the default federation, the worker holding one image
(the first images of its shard, one per update). Prints, per defence: PSNR (median and worst), mean SSIM,
labels right, share of images above 25 dB, median time to 25 dB and median attack time.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from fed_core.attack import AttackOptions, make_update, observe, reconstruct, time_to_psnr, worker_examples
from fed_core.client import flatten, model_params, worker_seed
from fed_core.config import TrainConfig
from fed_core.data import load_mnist
from fed_core.models import new_model

TARGET_DB = 25.0
DEFENCES = [("none", 0.0), ("secure-agg", 0.0), ("dp", 1e-4), ("dp", 1e-3), ("dp", 1e-2), ("dp", 1.0)]


def attack_one(config: TrainConfig, images: torch.Tensor, labels: torch.Tensor, defence: str, noise: float, steps: int):
    model = new_model(config.model, config.init, config.seed)
    global_vector = flatten(model_params(model))
    update = make_update(model, global_vector, images, labels, config.local, worker_seed(config.seed, 1, 0))
    observed = observe(config.model, global_vector, update, config.local, defence, noise)
    return reconstruct(observed, AttackOptions(steps=steps), reference=images, public=load_mnist())


def row(name: str, results: list, true_labels: list[list[int]]) -> str:
    psnrs = [p for r in results for p in r.psnr]
    ssims = [s for r in results for s in r.ssim]
    right = sum(r.labels == sorted(t) for r, t in zip(results, true_labels))
    # Only attacks whose final answer clears the target: a noisy trajectory may pass it and move on.
    reached = [time_to_psnr(r.history, TARGET_DB) for r in results if min(r.psnr) >= TARGET_DB]
    above = sum(p >= TARGET_DB for p in psnrs)
    to_target = f"{statistics.median(reached):5.1f} s" if reached else "    -  "
    return (
        f"{name:<34} PSNR median {statistics.median(psnrs):5.1f} dB, worst {min(psnrs):5.1f} dB | "
        f"SSIM {statistics.mean(ssims):.3f} | labels {right}/{len(results)} | "
        f">= {TARGET_DB:.0f} dB {above}/{len(psnrs)} | to {TARGET_DB:.0f} dB {to_target} | "
        f"attack {statistics.median(r.seconds for r in results):5.1f} s"
    )


def bench_model(config: TrainConfig, count: int, steps: int, defences: list[tuple[str, float]]) -> None:
    images, labels = worker_examples(config, load_mnist(), worker=0, count=count)
    print(f"{config.model} (seed {config.seed}): {count} single-image updates of worker 0, {steps} steps", flush=True)
    for defence, noise in defences:
        results = [
            attack_one(config, images[i : i + 1], labels[i : i + 1], defence, noise, steps) for i in range(count)
        ]
        name = f"{defence} (z = {noise:g})" if defence == "dp" else defence
        print("  " + row(name, results, [[y] for y in labels.tolist()]), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="model init and federation seed")
    parser.add_argument("--no-defence", action="store_true", help="only the plain updates")
    parser.add_argument("--relu", action="store_true", help="also attack relu_cnn (slow)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    defences = DEFENCES[:1] if args.no_defence else DEFENCES
    config = TrainConfig(seed=args.seed)
    bench_model(config, args.images, AttackOptions.steps, defences)
    batch_images, batch_labels = worker_examples(config, load_mnist(), worker=0, count=4)
    batch = attack_one(config, batch_images, batch_labels, "none", 0.0, 1000)
    print("  " + row("batch of 4, none (plain matching)", [batch], [batch_labels.tolist()]), flush=True)
    if args.relu:
        bench_model(TrainConfig(seed=args.seed, model="relu_cnn"), min(args.images, 3), 1500, defences[:2])


if __name__ == "__main__":
    main()
