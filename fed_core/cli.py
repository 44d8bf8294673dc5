"""Command line: ``python -m fed_core train|encrypted-eval|classify ...`` does what the pages do."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from . import cli_encrypted
from .client import TrainingDiverged
from .config import ENGINES, TrainConfig, problems
from .data import MnistFileError, load_mnist
from .engines import EngineError
from .models import INIT_METHODS, MODELS, save_model
from .partition import PARTITIONS, PartitionError
from .server import FederatedRun, RoundRecord, run_federated

DEFAULTS = TrainConfig()


def add_train_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="run federated training on MNIST")
    p.add_argument("--workers", type=int, default=DEFAULTS.workers, help="number of workers (1-100)")
    p.add_argument("--rounds", type=int, default=DEFAULTS.rounds, help="number of rounds (1-200)")
    p.add_argument("--fraction", type=float, default=DEFAULTS.fraction, help="share C of workers sampled per round")
    p.add_argument("--local-epochs", type=int, default=DEFAULTS.local_epochs)
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="local learning rate")
    p.add_argument("--momentum", type=float, default=DEFAULTS.momentum, help="local SGD momentum")
    p.add_argument("--server-lr", type=float, default=DEFAULTS.server_lr)
    p.add_argument("--server-momentum", type=float, default=DEFAULTS.server_momentum)
    p.add_argument("--partition", choices=PARTITIONS, default=DEFAULTS.partition)
    p.add_argument("--alpha", type=float, default=DEFAULTS.alpha, help="Dirichlet concentration")
    p.add_argument("--shards-per-worker", type=int, default=DEFAULTS.shards_per_worker)
    p.add_argument("--init", choices=INIT_METHODS, default=DEFAULTS.init)
    p.add_argument("--dropout", type=float, default=DEFAULTS.dropout, help="chance a sampled worker fails to report")
    p.add_argument("--model", choices=list(MODELS), default=DEFAULTS.model)
    p.add_argument("--engine", choices=ENGINES, default=DEFAULTS.engine)
    p.add_argument("--train-size", type=int, default=DEFAULTS.train_size, help="use the first N training images")
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--out", type=Path, help="write every round's metrics as JSON here")
    p.add_argument("--save-model", type=Path, help="save the trained global model (.pt) here")
    p.set_defaults(func=train_command)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def train_command(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    found = problems(config)
    if found:
        return fail(" ".join(found))
    bar = tqdm(total=config.rounds, desc="rounds", unit="round", file=sys.stderr)

    def show(run: FederatedRun, record: RoundRecord) -> None:
        bar.set_postfix(accuracy=f"{record.test_accuracy:.4f}")
        bar.update(1)

    try:
        run = run_federated(config, load_mnist(), on_round=show)
    except (MnistFileError, PartitionError, TrainingDiverged, EngineError) as exc:
        return fail(str(exc))
    finally:
        bar.close()
    last = run.history[-1]
    print(
        f"{config.workers} workers x {config.rounds} rounds ({config.engine}, {config.model}): "
        f"test accuracy {last.test_accuracy:.2%}, loss {last.test_loss:.4f}, wall time {run.wall_seconds:.1f} s"
    )
    if args.out:
        args.out.write_text(json.dumps(run.to_dict(), indent=1))
    if args.save_model:
        save_model(
            run.model, args.save_model, config.model, {"config": config.to_dict(), "test_accuracy": last.test_accuracy}
        )
    return 0


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fed_core", description=__doc__)
    subparsers = parser.add_subparsers(required=True, metavar="command")
    add_train_command(subparsers)
    cli_encrypted.register(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)
