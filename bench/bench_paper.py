"""The FedAvg paper's MNIST CNN setting, next to the paper's numbers (McMahan et al. 2017, Table 2).

100 workers, C=0.1, E=5, B=10, the paper's CNN (fedavg_cnn), IID and 2-shard non-IID splits.
Prints, for every split, the rounds to reach the target test accuracy (99%) and the wall time,
beside the paper's rounds (CNN, E=5, B=10: FedAvg 20 IID / 229 non-IID; FedSGD 626 / 483).
Saves the curves as JSON and draws them with plotly (HTML, and a PNG drawn by kaleido or headless Chromium).

python bench/bench_paper.py                                   # FedAvg, IID then non-IID, up to 300 rounds
python bench/bench_paper.py --splits iid --max-rounds 40
python bench/bench_paper.py --splits shards --strategy scaffold --max-rounds 229
python bench/bench_paper.py --splits shards --strategy fedprox --prox-mu 0.01
python bench/bench_paper.py --plot runs/paper/*.json   # summary of saved (partial) runs; runs/paper/paper_curves.*

A round's time is split into training (the sampled workers' local epochs) and the rest (aggregation
and the 10k-image test evaluation). The run stops at the target unless --keep-going.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import torch

from fed_core.config import TrainConfig
from fed_core.data.mnist import load_mnist
from fed_core.engines.inprocess import InProcessPool
from fed_core.federation.server import FederatedRun, RoundRecord, run_federated
from fed_core.federation.strategies import STRATEGIES
from fed_core.limits.budget import env_name
from fed_core.vocabulary import TrainingDiverged, TrainingStopped

# Table 2 of the paper, CNN, E=5, B=10 (FedAvg) and FedSGD: communication rounds to reach 99% test accuracy.
PAPER_ROUNDS = {"iid": {"FedAvg": 20, "FedSGD": 626}, "shards": {"FedAvg": 229, "FedSGD": 483}}
SPLIT_LABELS = {"iid": "IID", "shards": "non-IID (2 shards per worker)"}


class TimedPool(InProcessPool):
    """The in-process pool, also timing each round's local training."""

    train_seconds: ClassVar[list[float]] = []

    def train(self, global_vector, workers, round_idx):
        start = time.perf_counter()
        updates = super().train(global_vector, workers, round_idx)
        TimedPool.train_seconds.append(time.perf_counter() - start)
        return updates


# The paper's CNN setting: 100 workers, C=0.1, E=5, B=10; no contribution scoring (a paper round is training
# and aggregation). lr 0.05 without momentum, untuned.
PAPER = TrainConfig(
    workers=100,
    fraction=0.1,
    local_epochs=5,
    batch_size=10,
    lr=0.05,
    momentum=0.0,
    clip_norm=10.0,
    model="fedavg_cnn",
    shards_per_worker=2,
    contribution_subset=0,
)


def paper_config(args: argparse.Namespace, split: str) -> TrainConfig:
    return replace(
        PAPER,
        lr=args.lr,
        clip_norm=args.clip_norm,
        partition=split,
        rounds=args.max_rounds,
        strategy=args.strategy,
        prox_mu=args.prox_mu,
        server_lr=STRATEGIES[args.strategy].default_server_lr,  # FedAvg's 1.0; FedAdam's and FedYogi's eta 0.01
        server_momentum=args.server_momentum,
        seed=args.seed,
    )


def run_split(args: argparse.Namespace, split: str, save: Callable[[dict], None]) -> dict:
    """Train one split round by round; stop at the target unless asked to keep going. Saves after every round."""
    config = paper_config(args, split)
    TimedPool.train_seconds = []
    curve: list[dict] = []
    result = {
        "split": split,
        "config": config.to_dict(),
        "target": args.target,
        "rounds_to_target": None,
        "seconds_to_target": None,
        "paper_rounds": PAPER_ROUNDS[split],
        "curve": curve,
    }

    def record(run: FederatedRun, rec: RoundRecord) -> None:
        train = TimedPool.train_seconds[-1]
        curve.append(
            {
                "round": rec.round,
                "test_accuracy": rec.test_accuracy,
                "test_loss": rec.test_loss,
                "round_seconds": rec.seconds,
                "train_seconds": train,
                "elapsed": rec.elapsed,
            }
        )
        print(
            f"  {split} round {rec.round}: {rec.test_accuracy:.2%} (round {rec.seconds:.1f} s, training {train:.1f} s, "
            f"elapsed {rec.elapsed:.0f} s)",
            flush=True,
        )
        hit = next((p for p in curve if p["test_accuracy"] >= args.target), None)
        if hit:
            result["rounds_to_target"], result["seconds_to_target"] = hit["round"], hit["elapsed"]
        save(result)

    def reached() -> bool:
        return not args.keep_going and bool(curve) and curve[-1]["test_accuracy"] >= args.target

    # run_federated, not engine_for: the paper's non-IID run needs more rounds than the Train page allows.
    try:
        run_federated(config, load_mnist(), TimedPool, on_round=record, should_stop=reached)
    except TrainingStopped:  # at the target
        pass
    except TrainingDiverged as exc:  # keep the curve so far
        print(f"  {split}: {exc}", flush=True)
    return result


def summary(result: dict) -> str:
    curve, split = result["curve"], result["split"]
    train = [p["train_seconds"] for p in curve]
    rounds = [p["round_seconds"] for p in curve]
    reached = (
        f"{result['target']:.0%} after {result['rounds_to_target']} rounds, {result['seconds_to_target']:.0f} s"
        if result["rounds_to_target"]
        else f"{result['target']:.0%} not reached in {len(curve)} rounds "
        f"(best {max((p['test_accuracy'] for p in curve), default=0):.2%})"
    )
    paper = result["paper_rounds"]
    return (
        f"{SPLIT_LABELS[split]}, {result['config']['strategy']}: {reached}; "
        f"paper FedAvg {paper['FedAvg']} rounds, FedSGD {paper['FedSGD']}. "
        f"Per round: mean {sum(rounds) / max(1, len(rounds)):.1f} s, of which training "
        f"{sum(train) / max(1, len(train)):.1f} s (min {min(train, default=0):.1f} s)"
    )


def plot(results: list[dict], path: Path) -> list[Path]:
    """Test accuracy per round for every split, the target, and the paper's FedAvg rounds."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for result in results:
        label = f"{SPLIT_LABELS[result['split']]}, {result['config']['strategy']}"
        rounds = [p["round"] for p in result["curve"]]
        fig.add_scatter(x=rounds, y=[p["test_accuracy"] for p in result["curve"]], mode="lines+markers", name=label)
    for split in sorted({result["split"] for result in results}):
        paper = PAPER_ROUNDS[split]["FedAvg"]
        fig.add_vline(x=paper, line_dash="dot", annotation_text=f"paper FedAvg, {SPLIT_LABELS[split]}: {paper}")
    fig.add_hline(y=results[0]["target"], line_dash="dash", annotation_text="target")
    fig.update_layout(
        title="FedAvg paper setting (100 workers, C=0.1, E=5, B=10, CNN): test accuracy per round",
        xaxis_title="communication round",
        yaxis_title="test accuracy",
        yaxis_range=[0.9, 1.0],
        showlegend=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    written = [path.with_suffix(".html")]
    fig.write_html(written[0])
    if importlib.util.find_spec("kaleido") is not None:
        fig.write_image(path.with_suffix(".png"))
        written.append(path.with_suffix(".png"))
    elif shutil.which("chromedriver"):
        screenshot(written[0], path.with_suffix(".png"))
        written.append(path.with_suffix(".png"))
    return written


def screenshot(html: Path, png: Path) -> None:
    """The HTML plot as a PNG, drawn by headless Chromium (kaleido is not installed here)."""
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--disable-background-networking")
    options.add_argument("--window-size=1100,600")
    options.binary_location = shutil.which("chromium") or ""
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        driver.get(html.resolve().as_uri())
        time.sleep(2)  # plotly draws after load
        driver.save_screenshot(str(png))
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", nargs="+", choices=list(PAPER_ROUNDS), default=list(PAPER_ROUNDS))
    parser.add_argument("--strategy", choices=list(STRATEGIES), default="fedavg")
    parser.add_argument("--prox-mu", type=float, default=0.01)
    parser.add_argument("--server-momentum", type=float, default=0.0)
    parser.add_argument("--lr", type=float, default=0.05, help="local learning rate")
    parser.add_argument("--clip-norm", type=float, default=10.0)
    parser.add_argument("--max-rounds", type=int, default=300)
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--keep-going", action="store_true", help="run every round, not only up to the target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the shared machine: 1)")
    parser.add_argument("--out", type=Path, default=Path("runs/paper"), help="folder for the JSON and the plots")
    parser.add_argument(
        "--plot", type=Path, nargs="+", help="only summarise and draw the curves of saved JSON files (even unfinished)"
    )
    args = parser.parse_args()
    if args.plot:
        saved = [result for path in args.plot for result in json.loads(path.read_text())]
        for result in saved:
            print(summary(result))
        for path in plot(saved, args.out / "paper_curves"):
            print(f"wrote {path}")
        return
    torch.set_num_threads(args.threads)
    # A local machine's budget, so all 10 sampled workers train in one group (the app's default, 400 MB, makes two).
    os.environ.setdefault(env_name("training_memory_mb"), "2000")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"paper_{args.strategy}_{'_'.join(args.splits)}"
    print(
        f"== FedAvg paper setting, {args.strategy}, lr {args.lr}, {args.threads} thread(s), "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    results: list[dict] = []
    json_path = args.out / f"{stem}.json"

    def save(current: dict) -> None:
        json_path.write_text(json.dumps([*results, current], indent=1))

    for split in args.splits:
        results.append(run_split(args, split, save))
        print(summary(results[-1]), flush=True)
    for path in plot(results, args.out / stem):
        print(f"wrote {path}")
    print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
