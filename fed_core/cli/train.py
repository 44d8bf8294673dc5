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
from fed_core.config import TrainConfig
from fed_core.data.mnist import load_mnist
from fed_core.engines import EngineError, engine_for
from fed_core.federation.server import FederatedRun, RoundRecord
from fed_core.limits.budget import batch_problem
from fed_core.limits.memory import give_back
from fed_core.limits.threads import threads_for
from fed_core.models import save_model
from fed_core.privacy.dp import Epsilon
from fed_core.privacy.policy import privacy_for
from fed_core.report import json_text
from fed_core.settings import Setting, settings_of
from fed_core.vocabulary import TrainingDiverged

RUN_FAILED, INTERRUPTED = 1, 130
RESCUE_ROOT = Path("runs")  # where an interrupted or failed run's results go when no --out/--save-model was given


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="run federated training on MNIST")
    add_setting_options(p, TrainConfig)
    p.add_argument("--out", type=Path, help="write every round's metrics as JSON here")
    p.add_argument("--save-model", type=Path, help="save the trained global model (.pt) here")
    p.set_defaults(func=train_command)


def add_setting_options(parser: argparse.ArgumentParser, config_class: type[TrainConfig]) -> None:
    """One option per setting, as its declaration says (fed_core/settings.py); the option's dest is the field.

    A switch off by default is turned on by its flag, one on by default (``--no-shapley``) turned off; the
    range is checked by :func:`fed_core.config.problems`, which says it in the user's words.
    """
    for setting in (s for s in settings_of(config_class).values() if s.cli):
        parser.add_argument(setting.cli_flag, dest=setting.name, help=_help(setting), **_kind(setting))


def _kind(setting: Setting) -> dict:
    if setting.kind is bool:
        return {"action": "store_false" if setting.default else "store_true", "default": setting.default}
    choices = {"choices": list(setting.options())} if setting.choices is not None else {}
    default = None if setting.default_by else setting.default  # config_from_args fills it in from the other's
    return {"type": setting.kind, "default": default, **choices}


def _help(setting: Setting) -> str:
    text = f"turn off {setting.label}: {setting.help_text}" if setting.default is True else setting.help_text
    if setting.when:
        text += f" (with --{setting.when[0].replace('_', '-')} {setting.when[1]} only)"
    return text.replace("%", "%%")  # argparse formats help with %


def config_from_args(args: argparse.Namespace, config_class: type[TrainConfig] = TrainConfig) -> TrainConfig:
    settings = settings_of(config_class)
    values = {k: v for k, v in vars(args).items() if k in settings}
    for name in (name for name, value in values.items() if value is None and settings[name].default_by):
        values[name] = settings[name].default_under(values)
    return config_class(**values)


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
