"""``python -m fed_core attack``: a curious server rebuilds a simulated worker's training images from its update.

python -m fed_core attack --images 1 --worker 0 --defence none --out result.json
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from tqdm import tqdm

from fed_core.attack import DEFENCES, AttackOptions, observe, reconstruct, stage_update, time_to_psnr
from fed_core.cli.common import check_writable, positive_int
from fed_core.config import TrainConfig, validate
from fed_core.data import load_mnist
from fed_core.models import INIT_METHODS, MODELS
from fed_core.partition import PARTITIONS
from fed_core.report import json_text

DEFAULTS = TrainConfig()
TARGET_DB = 25.0  # the PSNR the summary times


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("attack", help="reconstruct a worker's training images from its update")
    p.add_argument("--model", choices=list(MODELS), default=DEFAULTS.model)
    p.add_argument("--images", type=positive_int, default=1, help="training images on the attacked worker")
    p.add_argument("--worker", type=int, default=0, help="which worker of the federation is attacked")
    p.add_argument("--round", dest="round_idx", type=positive_int, default=1, help="the round whose update is read")
    p.add_argument("--workers", type=int, default=DEFAULTS.workers, help="workers in the federation")
    p.add_argument("--partition", choices=PARTITIONS, default=DEFAULTS.partition)
    p.add_argument("--init", choices=INIT_METHODS, default=DEFAULTS.init)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--local-epochs", type=int, default=DEFAULTS.local_epochs)
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="local learning rate")
    p.add_argument("--momentum", type=float, default=DEFAULTS.momentum, help="local SGD momentum")
    p.add_argument("--grad-clip", type=float, default=DEFAULTS.clip_norm, help="local per-step gradient-norm clip")
    p.add_argument("--steps", type=int, default=AttackOptions.steps, help="gradient-matching iterations")
    p.add_argument("--optimizer", choices=("adam", "lbfgs"), default=AttackOptions.optimizer)
    p.add_argument("--defence", choices=DEFENCES, default="none")
    p.add_argument("--noise", type=float, default=1.0, help="DP noise multiplier z (noise std = z x clip)")
    p.add_argument("--clip", type=float, help="DP clip norm of the update (default: lr x grad clip, one step's bound)")
    p.add_argument("--out", type=Path, help="write the full result as JSON here")
    p.set_defaults(func=run_attack)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The federation the attacked worker belongs to (validated like a training run)."""
    config = TrainConfig(
        workers=args.workers,
        partition=args.partition,
        init=args.init,
        seed=args.seed,
        model=args.model,
        local_epochs=args.local_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        clip_norm=args.grad_clip,
    )
    if args.steps < 0:
        raise ValueError(f"steps must be 0 or more, got {args.steps}.")
    if args.noise < 0 or (args.clip is not None and args.clip <= 0):
        raise ValueError("the DP noise multiplier must be >= 0 and the DP clip norm positive.")
    return validate(config)


def run_attack(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    check_writable("--out", args.out)
    data = load_mnist()
    started = time.perf_counter()
    staged = stage_update(config, data, args.worker, args.images, args.round_idx)
    images, labels = staged.images, staged.labels
    update_seconds = time.perf_counter() - started
    observed = observe(
        config.model, staged.global_vector, staged.update, config.local, args.defence, args.noise, args.clip
    )
    bar = tqdm(desc="attack", unit="step", file=sys.stderr)

    def show(step: int, total: int, _images, metrics: dict) -> None:
        bar.total = total
        bar.update(step - bar.n)
        bar.set_postfix(psnr=f"{metrics.get('psnr', float('nan')):.1f}", loss=f"{metrics['loss']:.1e}")

    try:
        result = reconstruct(observed, AttackOptions(steps=args.steps, optimizer=args.optimizer), show, images, data)
    finally:
        bar.close()
    true_labels = labels.tolist()
    to_target = time_to_psnr(result.history, TARGET_DB)
    print(
        f"{config.model}, {len(images)} image(s) of worker {args.worker}, defence {args.defence}: "
        f"PSNR {_mean(result.psnr):.1f} dB, SSIM {_mean(result.ssim):.3f}, labels {result.labels} "
        f"(true {sorted(true_labels)}), {TARGET_DB:.0f} dB "
        f"{'after ' + format(to_target, '.1f') + ' s' if to_target is not None else 'not reached'}, "
        f"attack {result.seconds:.1f} s"
    )
    if args.out:
        report = {
            **result.to_dict(),
            "config": {key: value for key, value in vars(args).items() if key not in ("func", "out")},
            "labels": {"true": true_labels, "inferred": result.labels, "correct": sorted(true_labels) == result.labels},
            "seconds": {"update": update_seconds, "attack": result.seconds, f"to_{TARGET_DB:.0f}_db": to_target},
        }
        args.out.write_text(json_text(report))
    return 0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
