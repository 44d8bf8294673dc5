"""The ServerApp and ClientApp of ``flwr run fed_core/flower_app`` (Flower's Deployment Engine).

``fed_core/flower_app/pyproject.toml`` names them; Flower imports this module in the SuperLink's and the
SuperNodes' processes. The run's settings arrive as the run config: every TrainConfig field, dashes for
underscores, plus ``out-dir`` (fed_core/flower_app/run_config.py). With ``secure-aggregation=true`` the rounds
run Flower's SecAgg+ (fed_core/engines/flower_secagg.py); the same ClientApp answers both kinds of round.
"""

from __future__ import annotations

import json
from logging import INFO
from pathlib import Path

from flwr.app import Context
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from fed_core.data.mnist import load_mnist
from fed_core.engines.flower_engine import SHARD_FILE, client_app_for, flower_pool_factory
from fed_core.federation.server import FederatedRun, RoundRecord, run_federated
from fed_core.flower_app.run_config import OUT_DIR, config_from_run_config
from fed_core.models import save_model

server_app = ServerApp()


@server_app.main()
def deployed_main(grid: Grid, context: Context) -> None:
    config = config_from_run_config(dict(context.run_config))
    run = run_federated(config, load_mnist(), flower_pool_factory(grid), on_round=_log_round)
    out_dir = str(context.run_config.get(OUT_DIR, ""))
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "run.json").write_text(json.dumps(run.to_dict(), indent=1))
        meta = {"config": config.to_dict(), "test_accuracy": run.history[-1].test_accuracy}
        save_model(run.model, Path(out_dir) / "model.pt", config.model, meta)


def _log_round(run: FederatedRun, record: RoundRecord) -> None:
    log(INFO, "round %d: test accuracy %.4f (%.1f s)", record.round, record.test_accuracy, record.seconds)


client_app = client_app_for(lambda context: str(context.node_config[SHARD_FILE]))
