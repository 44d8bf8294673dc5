"""Run a federated job across processes with Flower's Deployment Engine, on this machine.

    python scripts/flower_deployment.py --workers 2 --rounds 3 --train-size 6000 --out /tmp/fed-deploy

It does what separate hosts would do (docs/engines.md shows the per-host commands):

1. each worker's data owner writes its shard to a file (here: cut from the shipped MNIST with the
   run's partition);
2. one ``flower-superlink`` and one ``flower-supernode`` per worker start, each SuperNode given its own
   shard file and partition id by ``--node-config``; all listen on 127.0.0.1 only, without TLS
   (``--insecure``);
3. ``flwr run fed_core/flower_app`` submits the job; the ServerApp writes run.json and model.pt to
   the output folder;
4. every process is stopped, whatever happened.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from fed_core.config import TrainConfig, validate
from fed_core.data.mnist import load_mnist
from fed_core.engines.flower_engine import shard_file_name
from fed_core.engines.flower_superlink import APP_DIR, CONNECTION, HOST, LocalSuperLink, free_port, toml_pairs
from fed_core.engines.worker_job import save_shard
from fed_core.federation.server import partition_for
from fed_core.flower_app.run_config import OUT_DIR, run_config_of

RESULT_SECONDS = 30.0  # how long the ServerApp may take to write its files after the run's log stream ends


def write_shards(config: TrainConfig, folder: Path) -> list[Path]:
    """Each owner's data file, cut with the partition the server will assume."""
    data = load_mnist()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for worker, shard in enumerate(partition_for(config, data)):
        paths.append(folder / shard_file_name(worker))
        save_shard(paths[-1], data.train_images[shard], data.train_labels[shard])
    return paths


class LocalFederation(LocalSuperLink):
    """A SuperLink (flower_superlink.py) and one SuperNode per shard file, as subprocesses; a context manager."""

    def __init__(self, shard_files: list[Path], workdir: Path) -> None:
        super().__init__(workdir)
        self.shard_files = shard_files

    def __enter__(self) -> LocalFederation:
        super().__enter__()
        try:
            for worker, shard in enumerate(self.shard_files):
                node_config = f'partition-id={worker} shard-file="{shard}"'
                command = ["flower-supernode", "--insecure", "--superlink", f"{HOST}:{self.port}"]
                self.start(
                    f"supernode-{worker}",
                    [*command, "--host", HOST, "--port", str(free_port()), "--node-config", node_config],
                )
        except BaseException:
            self.stop()
            raise
        return self

    def run(self, config: TrainConfig, out_dir: Path, timeout: float) -> dict:
        """Submit the job with `flwr run --stream`, which returns when the run ends, and return its run.json."""
        pairs = toml_pairs({**run_config_of(config), OUT_DIR: str(out_dir)})
        command = ["flwr", "run", str(APP_DIR), CONNECTION, "--run-config", pairs, "--stream"]
        with open(self.workdir / "flwr-run.log", "w") as log:
            subprocess.run(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.workdir,
                timeout=timeout,
                check=True,
            )
        result = out_dir / "run.json"
        deadline = time.monotonic() + RESULT_SECONDS
        while not result.exists():  # the log stream can end a moment before the ServerApp writes its files
            if time.monotonic() > deadline:
                raise RuntimeError(f"The run ended without writing {result}; see the logs in {self.workdir}.")
            time.sleep(0.2)
        return json.loads(result.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="folder for shards, logs, run.json and model.pt")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the run")
    args = parser.parse_args(argv)
    config = validate(
        TrainConfig(
            workers=args.workers, rounds=args.rounds, train_size=args.train_size, seed=args.seed, engine="flower"
        )
    )
    args.out.mkdir(parents=True, exist_ok=True)
    shards = write_shards(config, args.out / "shards")
    started = time.perf_counter()
    with LocalFederation(shards, args.out) as federation:
        run = federation.run(config, args.out / "result", args.timeout)
    for record in run["rounds"]:
        print(f"round {record['round']}: test accuracy {record['test_accuracy']:.2%} ({record['seconds']:.1f} s)")
    print(
        f"{config.workers} SuperNodes x {config.rounds} rounds in {time.perf_counter() - started:.1f} s; "
        f"model and metrics in {args.out / 'result'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
