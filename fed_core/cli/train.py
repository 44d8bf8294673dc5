"""``python -m fed_core train``: a federated run, as the Train page starts it.

An interrupted (Ctrl-C) or failed run keeps what it has: the metrics so far and the model of its last good round.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from fed_core.cli.common import check_writable
from fed_core.config import DP_MODES, TrainConfig
from fed_core.data.mnist import load_mnist
from fed_core.data.partition import PARTITIONS
from fed_core.engines import ENGINES, EngineError, engine_for
from fed_core.federation.server import FederatedRun, RoundRecord
from fed_core.federation.strategies import STRATEGIES
from fed_core.limits.budget import batch_problem
from fed_core.limits.memory import give_back
from fed_core.limits.threads import threads_for
from fed_core.models import INIT_METHODS, MODELS, save_model
from fed_core.privacy.dp import Epsilon
from fed_core.privacy.policy import privacy_for
from fed_core.report import json_text
from fed_core.vocabulary import TrainingDiverged

DEFAULTS = TrainConfig()
RUN_FAILED, INTERRUPTED = 1, 130
RESCUE_ROOT = Path("runs")  # where an interrupted or failed run's results go when no --out/--save-model was given


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="run federated training on MNIST")
    p.add_argument("--workers", type=int, default=DEFAULTS.workers, help="number of workers (1-100)")
    p.add_argument("--rounds", type=int, default=DEFAULTS.rounds, help="number of rounds (1-200)")
    p.add_argument("--fraction", type=float, default=DEFAULTS.fraction, help="share C of workers sampled per round")
    p.add_argument("--local-epochs", type=int, default=DEFAULTS.local_epochs)
    p.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--lr", type=float, default=DEFAULTS.lr, help="local learning rate")
    p.add_argument("--momentum", type=float, default=DEFAULTS.momentum, help="local SGD momentum")
    p.add_argument("--clip-norm", type=float, default=DEFAULTS.clip_norm, help="per-worker gradient norm cap")
    p.add_argument(
        "--server-lr",
        type=float,
        help="server learning rate (eta of FedAdam and FedYogi); default: the strategy's, "
        + ", ".join(f"{name} {cls.default_server_lr:g}" for name, cls in STRATEGIES.items()),
    )
    p.add_argument("--server-momentum", type=float, default=DEFAULTS.server_momentum)
    p.add_argument(
        "--strategy",
        choices=list(STRATEGIES),
        default=DEFAULTS.strategy,
        help="; ".join(f"{name}: {cls.label}" for name, cls in STRATEGIES.items()),
    )
    p.add_argument("--prox-mu", type=float, default=DEFAULTS.prox_mu, help="FedProx proximal weight mu")
    p.add_argument(
        "--augment",
        action="store_true",
        help="train on randomly redrawn digits (stroke width, rotation, shear, scale, shift, elastic): "
        "reads bold or slanted drawings better, costs more time",
    )
    p.add_argument("--partition", choices=PARTITIONS, default=DEFAULTS.partition)
    p.add_argument("--alpha", type=float, default=DEFAULTS.alpha, help="Dirichlet concentration")
    p.add_argument("--shards-per-worker", type=int, default=DEFAULTS.shards_per_worker)
    p.add_argument("--init", choices=INIT_METHODS, default=DEFAULTS.init)
    p.add_argument("--dropout", type=float, default=DEFAULTS.dropout, help="chance a sampled worker fails to report")
    p.add_argument("--model", choices=list(MODELS), default=DEFAULTS.model)
    p.add_argument("--engine", choices=list(ENGINES), default=DEFAULTS.engine)
    p.add_argument("--train-size", type=int, default=DEFAULTS.train_size, help="use the first N training images")
    p.add_argument("--contribution-subset", type=int, default=DEFAULTS.contribution_subset)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--no-shapley", dest="shapley", action="store_false", help="skip the Shapley values of the workers")
    p.add_argument(
        "--secure-agg",
        dest="secure_aggregation",
        action="store_true",
        help="the server holds only masked updates and learns only their sum",
    )
    p.add_argument(
        "--dp", choices=DP_MODES, default=DEFAULTS.dp, help="example: DP-SGD in each worker; client: DP-FedAvg"
    )
    p.add_argument("--clip", dest="dp_clip", type=float, default=DEFAULTS.dp_clip, help="DP clip norm S")
    p.add_argument("--noise", dest="dp_noise", type=float, default=DEFAULTS.dp_noise, help="DP noise multiplier z")
    p.add_argument("--delta", dest="dp_delta", type=float, default=DEFAULTS.dp_delta, help="DP delta")
    p.add_argument(
        "--dp-distributed",
        action="store_true",
        help="with --dp client --secure-agg: the workers add the noise in discrete Gaussian shares inside the "
        "masked sum, so the server never sees the sum without it",
    )
    p.add_argument(
        "--dp-colluding",
        type=int,
        default=DEFAULTS.dp_colluding,
        help="workers that may collude with the server whose noise shares are not counted on (default 0)",
    )
    p.add_argument("--out", type=Path, help="write every round's metrics as JSON here")
    p.add_argument("--save-model", type=Path, help="save the trained global model (.pt) here")
    p.set_defaults(func=train_command)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    names = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in names}
    if values.get("server_lr") is None:  # the strategy's own: FedAvg's 1.0 would wreck FedAdam's model
        values["server_lr"] = STRATEGIES[values.get("strategy", DEFAULTS.strategy)].default_server_lr
    return TrainConfig(**values)


def train_command(args: argparse.Namespace) -> int:
    engine = engine_for(config_from_args(args))
    # The in-process trainer sizes its worker groups from the memory budget; one worker must fit it alone.
    problem = batch_problem(engine.config) if engine.config.engine == "inprocess" else None
    if problem:
        raise ValueError(problem[0].upper() + problem[1:])
    for flag, path in (("--out", args.out), ("--save-model", args.save_model)):
        check_writable(flag, path)
    started: list[FederatedRun] = []
    bar = tqdm(total=engine.config.rounds, desc="rounds", unit="round", file=sys.stderr)

    def show(run: FederatedRun, record: RoundRecord) -> None:
        give_back()  # the round's training, scoring and evaluation are over: their free heap pages can go
        bar.set_postfix(accuracy=f"{record.test_accuracy:.4f}")
        bar.update(1)

    torch.set_num_threads(threads_for("training"))
    try:
        run = engine.run(load_mnist(), on_start=started.append, on_round=show)
    except KeyboardInterrupt:
        bar.close()
        return rescue(started, args, "interrupted", "Stopped by Ctrl-C", INTERRUPTED)
    except (TrainingDiverged, EngineError) as exc:
        bar.close()
        return rescue(started, args, "failed", str(exc), RUN_FAILED)
    bar.close()
    last = run.history[-1]
    print(
        f"{run.config.workers} workers x {run.config.rounds} rounds ({run.config.engine}, {run.config.model}): "
        f"test accuracy {last.test_accuracy:.2%}, loss {last.test_loss:.4f}, wall time {run.wall_seconds:.1f} s"
    )
    privacy = privacy_for(run.config)
    if last.epsilon is not None:
        print(*privacy.epsilon_lines(Epsilon(last.epsilon_rdp, last.epsilon_prv)), sep="\n")
    if not privacy.publishes_workers:
        print("client-level DP: the run record names no participant and has no per-worker figure (epsilon assumes so)")
    save_results(run, args.out, args.save_model, "done")
    return 0


def rescue(started: list[FederatedRun], args: argparse.Namespace, status: str, reason: str, code: int) -> int:
    """Keep what an unfinished run has: the metrics so far and the model of its last good round."""
    run = started[0] if started else None
    if run is None or not run.history:
        print(f"error: {reason.rstrip('.')}. No round had finished, so there is nothing to save.", file=sys.stderr)
        return code
    out, model = args.out, args.save_model
    if out is None and model is None:
        folder = RESCUE_ROOT / time.strftime(f"{status}-%Y%m%d-%H%M%S")
        folder.mkdir(parents=True, exist_ok=True)
        out, model = folder / "run.json", folder / "model.pt"
    saved = save_results(run, out, model, status, reason)
    print(
        f"error: {reason.rstrip('.')}. Kept the {len(run.history)} finished round(s): {', '.join(map(str, saved))} "
        f"(the model is the one of round {run.history[-1].round}).",
        file=sys.stderr,
    )
    return code


def save_results(
    run: FederatedRun, out: Path | None, model_path: Path | None, status: str, error: str | None = None
) -> list[Path]:
    """Write the metrics and the model, each on its own: a failure to write one does not lose the other."""
    saved, failures = [], []
    last = run.history[-1]
    if out is not None:
        try:
            out.write_text(json_text({**run.to_dict(), "status": status, "error": error}))
            saved.append(out)
        except OSError as exc:
            failures.append(f"could not write {out} ({exc.strerror})")
    if model_path is not None:
        meta = {"config": run.config.to_dict(), "test_accuracy": last.test_accuracy, "round": last.round}
        try:
            save_model(run.model, model_path, run.config.model, meta)
            saved.append(model_path)
        except OSError as exc:
            failures.append(f"could not write {model_path} ({exc.strerror})")
    if failures:
        raise OSError("; ".join(failures))
    return saved
