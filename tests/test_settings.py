"""Each setting declared once (fed_core/settings.py): the command line, the Train page, the Flower run config, the
budget's refusals and the validation all read it; a new field shows up in every one of them."""

import argparse
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import fed_core.config
from fed_core.cli.train import add_setting_options, config_from_args
from fed_core.config import MORE, SETTINGS, TrainConfig, problems
from fed_core.flower_app import run_config
from fed_core.limits.budget import setting_label
from fed_core.settings import WIDGETS, Interval, declare, settings_of
from ui import session

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class WithKnob(TrainConfig):
    """TrainConfig and one setting more, declared as a new field would be: the only edit adding a setting needs."""

    knob: int = declare(3, "Knob K", help="a setting added by a test", valid=Interval(1, 9), place=(MORE, 0))


def test_every_field_has_exactly_one_declaration():
    assert list(SETTINGS) == [f.name for f in fields(TrainConfig)]
    assert all(s.default == f.default for s, f in zip(SETTINGS.values(), fields(TrainConfig)))


def test_a_field_without_a_declaration_is_refused():
    @dataclass(frozen=True)
    class Undeclared(TrainConfig):
        knob: int = 3

    with pytest.raises(TypeError, match=r"Undeclared\.knob has no Setting"):
        settings_of(Undeclared)


@pytest.mark.parametrize("setting", SETTINGS.values(), ids=list(SETTINGS))
def test_each_declaration_holds_together(setting):
    """Its default is valid, its page bounds lie inside the valid range, its condition names a real choice."""
    assert setting.widget in WIDGETS and setting.label
    if setting.valid is not None:
        assert setting.default in setting.valid
        low, high = setting.bounds
        assert low in setting.valid and high in setting.valid and low <= setting.default <= high
    if setting.choices is not None:
        assert setting.default in setting.options()
    if setting.when:
        other, value = setting.when
        assert value in SETTINGS[other].options()
    assert setting.place is None or setting.place[1] in range(4)  # the page's groups have four columns


def test_the_page_shows_what_the_default_config_runs():
    assert problems(TrainConfig()) == []


def test_validation_reads_the_declared_ranges():
    found = problems(TrainConfig(workers=101, fraction=0.0, dp_delta=0.5, lr=float("inf")))
    assert "workers must be between 1 and 100, got 101." in found
    assert "fraction C must be in (0, 1], got 0.0." in found
    assert "DP delta must be in (0, 0.1], got 0.5." in found
    assert "learning rate must be a finite number, got inf." in found
    assert "knob must be between 1 and 9, got 12." in problems(WithKnob(knob=12))


def test_strategy_choices_come_from_the_registry(monkeypatch):
    """Another strategy registered is offered by the command line and the page without touching the declaration."""
    from fed_core.federation.strategies import STRATEGIES, FedAvg

    class FedNova(FedAvg):
        label = "FedNova (normalised averaging)"

    monkeypatch.setitem(STRATEGIES, "fednova", FedNova)
    parser = argparse.ArgumentParser()
    add_setting_options(parser, TrainConfig)
    assert parser.parse_args(["--strategy", "fednova"]).strategy == "fednova"
    assert SETTINGS["strategy"].options()["fednova"] == "FedNova (normalised averaging)"


def test_the_command_line_keeps_its_flags_and_defaults():
    parser = argparse.ArgumentParser()
    add_setting_options(parser, TrainConfig)
    assert config_from_args(parser.parse_args([])) == TrainConfig()
    args = ["--secure-agg", "--dp", "client", "--clip", "2", "--noise", "0.5", "--delta", "1e-6", "--no-shapley"]
    config = config_from_args(parser.parse_args([*args, "--local-epochs", "2", "--prox-mu", "0.1"]))
    assert (config.secure_aggregation, config.dp, config.dp_clip, config.dp_noise) == (True, "client", 2.0, 0.5)
    assert (config.dp_delta, config.shapley, config.local_epochs, config.prox_mu) == (1e-6, False, 2, 0.1)
    with pytest.raises(SystemExit):  # nobody at a terminal could press Approve: the page only
        parser.parse_args(["--manual-approval"])


def test_the_flower_app_declares_the_settings_as_generated():
    """pyproject.toml's run-config table is what ``python -m fed_core.flower_app.run_config`` writes."""
    text = run_config.PYPROJECT.read_text()
    assert run_config.with_table(text, run_config.run_config_table()) == text, (
        "run python -m fed_core.flower_app.run_config"
    )
    assert run_config.main(["--check"]) == 0


def test_a_new_setting_appears_on_the_command_line_the_page_the_flower_app_and_the_budget(monkeypatch):
    # The command line: a flag with the declared default and help, mapped back to the field.
    parser = argparse.ArgumentParser()
    add_setting_options(parser, WithKnob)
    assert config_from_args(parser.parse_args(["--knob", "7"]), WithKnob).knob == 7
    assert "a setting added by a test (1-9)" in parser.format_help()
    # The Flower App's run config: a key with the default, read back into the config.
    table = tomllib.loads(run_config.run_config_table(WithKnob))["tool"]["flwr"]["app"]["config"]
    assert table["knob"] == 3
    # The budget's refusals name it as the page does.
    assert setting_label(WithKnob(), "knob") == "Knob K"
    # The Train page draws its widget where the declaration places it.
    monkeypatch.setattr(fed_core.config, "TrainConfig", WithKnob)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.switch_page("pages/1_Train.py")
    at.run()
    assert not at.exception
    knob = next(w for w in at.number_input if w.label == "Knob K")
    assert knob.value == 3 and knob.help == "a setting added by a test (1-9)"
    knob.set_value(7)
    next(w for w in at.button if w.label == "Start").click()
    at.run()
    job = at.session_state[session.JOB]
    job.stop()
    job.join(60)
    assert isinstance(job.config, WithKnob) and job.config.knob == 7
