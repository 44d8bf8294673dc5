"""One base for every error a user can fix (fed_core.vocabulary.UserError): the command line and the pages both
show its message as it is, and anything else as one sentence, never a traceback."""

import pytest

import ui.common
from fed_core.cli.common import USER_ERRORS
from fed_core.config import ConfigError
from fed_core.data.mnist import MnistFileError
from fed_core.drawing.preprocess import DrawingError
from fed_core.engines import EngineError
from fed_core.mpc.ranges import FixedPointRangeError
from fed_core.vocabulary import TrainingDiverged, UserError


@pytest.mark.parametrize(
    "error", [ConfigError, MnistFileError, DrawingError, EngineError, FixedPointRangeError, TrainingDiverged]
)
def test_every_user_facing_error_is_a_user_error_the_cli_catches(error):
    assert issubclass(error, UserError)
    assert issubclass(error, USER_ERRORS)


def test_a_page_shows_a_user_error_as_written_and_anything_else_as_one_sentence(monkeypatch):
    shown = []
    monkeypatch.setattr(ui.common.st, "error", shown.append)
    with ui.common.shown_safely("training"):
        raise ConfigError("workers must be between 1 and 100, got 0.")
    with ui.common.shown_safely("training"):
        raise KeyError("internal detail")
    assert shown == [
        "workers must be between 1 and 100, got 0.",
        "Something went wrong while training. The details are in the server log.",
    ]
