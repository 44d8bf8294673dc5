"""The Flower App's run config, derived from the settings' declarations (fed_core/settings.py).

``flwr run`` refuses a ``--run-config`` key that pyproject.toml's ``[tool.flwr.app.config]`` table does not
declare, so that table lists every setting (dashes for underscores) with TrainConfig's defaults on the flower
engine, plus ``out-dir``. It is written from the declarations, not by hand: ``python -m
fed_core.flower_app.run_config`` rewrites it, ``--check`` says whether it is out of date (and a test does).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fed_core.config import TrainConfig, validate
from fed_core.settings import settings_of

OUT_DIR = "out-dir"  # where the ServerApp writes run.json and model.pt; empty: nowhere
PYPROJECT = Path(__file__).with_name("pyproject.toml")
TABLE = "[tool.flwr.app.config]"  # the file's last table: everything after its header is generated


def config_from_run_config(run_config: dict) -> TrainConfig:
    """The TrainConfig of a ``flwr run``: every declared key but out-dir, dashes for underscores."""
    keys = {setting.flower_key: name for name, setting in settings_of(TrainConfig).items()}
    values = {keys[key]: value for key, value in run_config.items() if key in keys}
    return validate(TrainConfig(**{**values, "engine": "flower"}))


def run_config_of(config: TrainConfig) -> dict:
    """The inverse of :func:`config_from_run_config`: what ``flwr run --run-config`` must carry."""
    return {setting.flower_key: getattr(config, name) for name, setting in settings_of(type(config)).items()}


def run_config_table(config_class: type[TrainConfig] = TrainConfig) -> str:
    """The ``[tool.flwr.app.config]`` table: every setting with its default on the flower engine, then out-dir."""
    pairs = run_config_of(config_class(engine="flower"))
    lines = [f"{key} = {toml_value(value)}" for key, value in pairs.items()]
    return "\n".join(
        [TABLE, *lines, f'{OUT_DIR} = ""  # where the ServerApp writes run.json and model.pt; empty: nowhere']
    )


def toml_value(value: bool | int | float | str) -> str:
    """A setting's value as TOML writes it (a JSON string is a TOML basic string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def with_table(text: str, table: str) -> str:
    """The pyproject text with everything from the run-config table's header on replaced by ``table``."""
    head, found, _ = text.partition(TABLE)
    if not found:
        raise ValueError(f"{PYPROJECT} has no {TABLE} table")
    return head + table + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fed_core.flower_app.run_config", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if pyproject.toml differs, write nothing")
    args = parser.parse_args(argv)
    text = PYPROJECT.read_text()
    wanted = with_table(text, run_config_table())
    if args.check:
        if wanted != text:
            print(f"{PYPROJECT} is out of date: run python -m fed_core.flower_app.run_config", file=sys.stderr)
        return int(wanted != text)
    PYPROJECT.write_text(wanted)
    print(f"wrote {TABLE} of {PYPROJECT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
