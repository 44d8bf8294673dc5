"""The ServerApp and ClientApp of ``flwr run fed_core/flower_app``, for both of Flower's runtimes.

``fed_core/flower_app/pyproject.toml`` names them; Flower imports this module in the processes that run them
(``flwr-simulation`` and its Ray actors, or the SuperLink's ServerApp process and the SuperNodes). The run's
settings arrive as the run config (fed_core/flower_app/run_config.py): every TrainConfig field, dashes for
underscores, plus

- ``engine-dir``: set by the flower engine (simulation): the run's private folder, where the virtual
  SuperNodes find their shards and the rounds go back to the app (fed_core/engines/flower_progress.py);
- ``out-dir``: where a deployed run writes run.json and model.pt.

With ``secure-aggregation=true`` the rounds run Flower's SecAgg+ (fed_core/engines/flower_secagg.py); the same
ClientApp answers both kinds of round.
"""

from __future__ import annotations

import json
from logging import INFO
from pathlib import Path

from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fed_core.config import TrainConfig
from fed_core.data.mnist import load_mnist
from fed_core.engines.flower_engine import client_app_for, flower_pool_factory, node_shard_file, serve_simulation
from fed_core.federation.server import FederatedRun, RoundRecord, run_federated
from fed_core.flower_app.run_config import ENGINE_DIR, OUT_DIR, config_from_run_config
from fed_core.models import save_model

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    config = config_from_run_config(dict(context.run_config))
    engine_dir = str(context.run_config.get(ENGINE_DIR, ""))
    if engine_dir:
        serve_simulation(grid, config, Path(engine_dir))
    else:
        deployed_main(grid, config, str(context.run_config.get(OUT_DIR, "")))


def deployed_main(grid: Grid, config: TrainConfig, out_dir: str) -> None:
    """Every round on the deployed SuperNodes, logged; the run and the model saved to ``out_dir`` if given."""
    run = run_federated(config, load_mnist(), flower_pool_factory(grid), on_round=_log_round)
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "run.json").write_text(json.dumps(run.to_dict(), indent=1))
        meta = {"config": config.to_dict(), "test_accuracy": run.history[-1].test_accuracy}
        save_model(run.model, Path(out_dir) / "model.pt", config.model, meta)


def _log_round(run: FederatedRun, record: RoundRecord) -> None:
    log(INFO, "round %d: test accuracy %.4f (%.1f s)", record.round, record.test_accuracy, record.seconds)


client_app = client_app_for(node_shard_file)
