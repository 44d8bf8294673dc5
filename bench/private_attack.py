"""What leaks from the workers' updates: the curious and the malicious server against each defence.

python bench/private_attack.py               # all three parts below
python bench/private_attack.py --part single --images 30   # more single-image updates
python bench/private_attack.py --part batch --batch-workers 3   # batches of three workers each
python bench/private_attack.py --relu        # adds relu_cnn (plain gradient matching, about a minute per image)
python bench/private_attack.py --seed 1 --no-defence   # another model init and federation, plain updates only

* single: worker 0's round-1 update in the default federation, the worker holding one image (the first images
  of its shard, one per update), against each defence;
* batch: the curious server against 4 and 8 images in one local step, and 16 images in batches of 4 for one
  epoch (4 local steps), of workers 0, 1, ... (``--batch-workers``), within the attack's 25 s budget;
* malicious: the imprint against one worker's 64 images, and against 10 workers x 8 images under each defence
  (DP: the app's example-level DP-SGD at its defaults).

Prints per row: PSNR (median and worst), mean SSIM, labels right, images above 20 and 25 dB (30 dB for the
malicious server), median time to 25 dB, median attack time and the time to stage the workers' updates.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from fed_core.attack import (
    AttackOptions,
    make_update,
    observe,
    reconstruct,
    rob,
    stage_malicious_round,
    stage_update,
    time_to_psnr,
    worker_examples,
)
from fed_core.config import TrainConfig
from fed_core.data.mnist import load_mnist
from fed_core.federation.trainer import worker_seed
from fed_core.models import new_model
from fed_core.vocabulary import flatten, model_params

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
    above = {db: sum(p >= db for p in psnrs) for db in (20, TARGET_DB, 30)}
    to_target = f"{statistics.median(reached):5.1f} s" if reached else "    -  "
    return (
        f"{name:<38} PSNR median {statistics.median(psnrs):5.1f} dB, worst {min(psnrs):5.1f} dB | "
        f"SSIM {statistics.mean(ssims):.3f} | "
        + (f"labels {right}/{len(results)} | " if any(true_labels) else "")
        + " ".join(f">= {db:.0f} dB {n}/{len(psnrs)}" for db, n in above.items())
        + f" | to {TARGET_DB:.0f} dB {to_target} | attack {statistics.median(r.seconds for r in results):5.1f} s"
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


def bench_batches(config: TrainConfig, workers: int) -> None:
    """The curious server against batches and local steps (the issue's goals), each attack within 25 s."""
    data = load_mnist()
    print(f"{config.model}: curious server, batches of workers 0-{workers - 1}, round 1", flush=True)
    for images, steps in ((4, 1), (8, 1), (16, 4)):
        results, labels, staging = [], [], []
        for worker in range(workers):
            started = time.perf_counter()
            staged = stage_update(config, data, worker, images, 1, steps)
            staging.append(time.perf_counter() - started)
            observed = observe(config.model, staged.global_vector, staged.update, staged.settings)
            results.append(reconstruct(observed, AttackOptions(), reference=staged.images, public=data))
            labels.append(staged.labels.tolist())
        name = f"{images} images, {steps} local step{'s' if steps > 1 else ''}"
        print(f"  {row(name, results, labels)} | update {statistics.median(staging):4.1f} s", flush=True)


def bench_malicious(config: TrainConfig) -> None:
    """The imprint against one worker's batch and against the secure sum of 10 workers, under each defence."""
    data = load_mnist()
    print(f"{config.model}: malicious server (imprint, Fowl et al. 2022), round 1", flush=True)
    cases = [(1, 64, "none")] + [(10, 8, defence) for defence in ("none", "secure-agg", "dp", "both")]
    for workers, images, defence in cases:
        started = time.perf_counter()
        staged = stage_malicious_round(replace(config, workers=workers), data, images, 1, defence)
        staging = time.perf_counter() - started
        result = rob(staged)
        name = f"{workers} x {images} images, {defence}"
        print(f"  {row(name, [result], [[]])} | update {staging:4.1f} s", flush=True)
    print(f"  a worker checking the architecture refuses it: {bool(result.worker_check)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="model init and federation seed")
    parser.add_argument("--no-defence", action="store_true", help="only the plain updates")
    parser.add_argument("--relu", action="store_true", help="also attack relu_cnn (slow)")
    parser.add_argument("--part", choices=("all", "single", "batch", "malicious"), default="all")
    parser.add_argument("--batch-workers", type=int, default=2, help="workers whose batches are attacked")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    defences = DEFENCES[:1] if args.no_defence else DEFENCES
    config = TrainConfig(seed=args.seed)
    if args.part in ("all", "single"):
        bench_model(config, args.images, AttackOptions.steps, defences)
    if args.part in ("all", "batch"):
        bench_batches(config, args.batch_workers)
    if args.part in ("all", "malicious"):
        bench_malicious(config)
    if args.relu:
        bench_model(TrainConfig(seed=args.seed, model="relu_cnn"), min(args.images, 3), 1500, defences[:2])


if __name__ == "__main__":
    main()
