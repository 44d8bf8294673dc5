"""``python -m fed_core attack``: a server rebuilds simulated workers' training images from what it receives.

python -m fed_core attack --images 4 --local-steps 1 --server curious --defence none --out result.json
python -m fed_core attack --server malicious --workers 10 --images 8 --defence secure-agg

A curious server attacks one worker's update (``--worker``); a malicious server sends every worker of the
federation an imprinted model and reads all their images back, from the secure sum under ``secure-agg``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from fed_core.attack import (
    BINS,
    DEFENCES,
    MAX_IMAGES,
    READABLE_DB,
    AttackOptions,
    AttackResult,
    observe,
    reconstruct,
    rob,
    stage_malicious_round,
    stage_update,
    time_to_psnr,
)
from fed_core.cli.common import check_writable, positive_int
from fed_core.config import TrainConfig, validate
from fed_core.data.mnist import Mnist, load_mnist
from fed_core.data.partition import PARTITIONS
from fed_core.models import INIT_METHODS, MODELS
from fed_core.report import json_text

DEFAULTS = TrainConfig()
SERVERS = ("curious", "malicious")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("attack", help="rebuild workers' training images from what the server receives")
    p.add_argument(
        "--server",
        choices=SERVERS,
        default="curious",
        help="curious: inverts one worker's update; "
        "malicious: sends an imprinted model (Fowl et al. 2022) to every worker",
    )
    p.add_argument("--model", choices=list(MODELS), default=DEFAULTS.model)
    p.add_argument("--images", type=positive_int, default=1, help=f"training images per worker (1-{MAX_IMAGES})")
    p.add_argument("--local-steps", type=positive_int, default=1, help="local SGD steps each worker takes")
    p.add_argument("--worker", type=int, default=0, help="which worker a curious server attacks")
    p.add_argument("--round", dest="round_idx", type=positive_int, default=1, help="the round whose update is read")
    p.add_argument("--workers", type=int, default=DEFAULTS.workers, help="workers in the federation")
    p.add_argument("--partition", choices=PARTITIONS, default=DEFAULTS.partition)
    p.add_argument("--init", choices=INIT_METHODS, default=DEFAULTS.init)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="local learning rate")
    p.add_argument("--momentum", type=float, default=DEFAULTS.momentum, help="local SGD momentum")
    p.add_argument("--grad-clip", type=float, default=DEFAULTS.clip_norm, help="local per-step gradient-norm clip")
    p.add_argument("--steps", type=int, default=AttackOptions.steps, help="gradient-matching iterations (curious)")
    p.add_argument("--optimizer", choices=("adam", "lbfgs"), default=AttackOptions.optimizer)
    p.add_argument("--time-budget", type=float, default=AttackOptions.time_budget, help="seconds (curious)")
    p.add_argument("--bins", type=positive_int, default=BINS, help="rows of the imprint (malicious)")
    p.add_argument("--defence", choices=DEFENCES, default="none", help="both: DP, then secure aggregation")
    p.add_argument(
        "--noise",
        type=float,
        help="DP noise multiplier z; curious: noise z x clip on the worker's update (default 1); malicious: "
        f"example-level DP-SGD inside each worker (default {DEFAULTS.dp_noise:g}, the app's)",
    )
    p.add_argument(
        "--clip",
        type=float,
        help="DP clip norm; curious: of the update (default lr x grad clip, one step's bound); malicious: of "
        f"each example's gradient (default {DEFAULTS.dp_clip:g})",
    )
    p.add_argument("--out", type=Path, help="write the full result as JSON here")
    p.set_defaults(func=run_attack)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The federation the attacked workers belong to (validated like a training run)."""
    config = TrainConfig(
        workers=args.workers,
        partition=args.partition,
        init=args.init,
        seed=args.seed,
        model=args.model,
        lr=args.lr,
        momentum=args.momentum,
        clip_norm=args.grad_clip,
        dp_noise=DEFAULTS.dp_noise if args.noise is None else args.noise,
        dp_clip=DEFAULTS.dp_clip if args.clip is None else args.clip,
    )
    if args.steps < 0:
        raise ValueError(f"steps must be 0 or more, got {args.steps}.")
    if not 0 < args.time_budget <= 600:
        raise ValueError(f"the time budget must be in (0, 600] seconds, got {args.time_budget}.")
    if (args.noise is not None and args.noise < 0) or (args.clip is not None and args.clip <= 0):
        raise ValueError("the DP noise multiplier must be >= 0 and the DP clip norm positive.")
    return validate(config)


def progress_bar() -> tuple[tqdm, Callable]:
    bar = tqdm(desc="attack", unit="step", file=sys.stderr)

    def show(step: int, total: int, _images, metrics: dict) -> None:
        bar.total = total
        bar.update(step - bar.n)
        bar.set_postfix(psnr=f"{metrics.get('psnr', float('nan')):.1f}")

    return bar, show


def attack_curious(args: argparse.Namespace, config: TrainConfig, data: Mnist) -> tuple[AttackResult, dict, dict]:
    started = time.perf_counter()
    staged = stage_update(config, data, args.worker, args.images, args.round_idx, args.local_steps)
    update_seconds = time.perf_counter() - started
    noise = 1.0 if args.noise is None else args.noise
    observed = observe(
        config.model, staged.global_vector, staged.update, staged.settings, args.defence, noise, args.clip
    )
    options = AttackOptions(steps=args.steps, optimizer=args.optimizer, time_budget=args.time_budget)
    bar, show = progress_bar()
    try:
        result = reconstruct(observed, options, show, staged.images, data)
    finally:
        bar.close()
    true = sorted(staged.labels.tolist())
    labels = {"true": true, "inferred": result.labels, "correct": true == result.labels}
    return result, labels, {"update_seconds": update_seconds, "local_steps": observed.local_steps}


def attack_malicious(args: argparse.Namespace, config: TrainConfig, data: Mnist) -> tuple[AttackResult, dict, dict]:
    started = time.perf_counter()
    staged = stage_malicious_round(config, data, args.images, args.local_steps, args.defence, args.bins)
    update_seconds = time.perf_counter() - started
    bar, show = progress_bar()
    try:
        result = rob(staged, show, config.model)
    finally:
        bar.close()
    steps = staged.settings.epochs * -(-args.images // staged.settings.batch_size)
    return result, {}, {"update_seconds": update_seconds, "local_steps": steps}


def run_attack(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    check_writable("--out", args.out)
    if args.server == "malicious" and args.round_idx != 1:
        raise ValueError("a malicious server's imprint is staged in round 1; leave --round at 1.")
    data = load_mnist()
    attack = attack_curious if args.server == "curious" else attack_malicious
    result, labels, facts = attack(args, config, data)
    readable = sum(p >= READABLE_DB for p in result.psnr)
    to_target = time_to_psnr(result.history, READABLE_DB)
    whose = f"worker {args.worker}" if args.server == "curious" else f"all {config.workers} workers"
    print(
        f"{args.server} server, {config.model}, {args.images} image(s) of {whose}, {args.local_steps} local step(s), "
        f"defence {args.defence}: PSNR median {statistics.median(result.psnr):.1f} dB, "
        f"{readable}/{len(result.psnr)} images >= {READABLE_DB:.0f} dB, SSIM {_mean(result.ssim):.3f}"
        + (f", labels {'right' if labels['correct'] else 'wrong'}" if labels else "")
        + f", attack {result.seconds:.1f} s"
    )
    for problem in result.worker_check:
        print(f"A worker checking the model it was sent would refuse it: {problem}.")
    if args.out:
        report = {
            **result.to_dict(),
            "server": args.server,
            "config": {key: value for key, value in vars(args).items() if key not in ("func", "out")},
            "images_at_least_25_db": readable,
            "labels": labels,
            "local_steps": facts["local_steps"],
            "seconds": {
                "update": facts["update_seconds"],
                "attack": result.seconds,
                f"to_{READABLE_DB:.0f}_db": to_target,
            },
        }
        args.out.write_text(json_text(report))
    return 0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
