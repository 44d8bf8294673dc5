"""Each setting of a run declared once: its label, help, valid range, choices, widget and command-line flag.

A :class:`Setting` rides on its TrainConfig field as dataclass metadata (:func:`declare`), so a field cannot exist
without its declaration nor the other way round. Everything that shows or checks a setting reads it from here:
the command line's options (fed_core/cli/train.py), the Train page's widgets (ui/settings_form.py), the Flower
App's run config (fed_core/flower_app/run_config.py writes its pyproject.toml), the budget's refusals
(fed_core/limits/budget.py) and the validation messages (fed_core/config.py's ``problems``).

This module sits below ``fed_core.config`` and imports nothing of the project: the declarations name their
registries (models, partitions, strategies) as values, and the engines' registry, whose package imports
``fed_core.config``, by its "module:NAME" address, resolved only when the choices are read.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from importlib import import_module
from types import MappingProxyType
from typing import Any

WIDGETS = ("number", "slider", "select", "radio", "checkbox", "toggle")
METADATA_KEY = "setting"


@dataclass(frozen=True)
class Interval:
    """The values a number setting may take; an open end excludes its bound."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low < value if self.low_open else self.low <= value
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def text(self) -> str:
        """As a message says it: "in (0, 1]", or "positive" for (0, inf)."""
        if self.high == math.inf:
            return "positive" if self.low == 0 and self.low_open else f"at least {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


@dataclass(frozen=True)
class Setting:
    """One setting of a run. ``name``, ``default`` and ``kind`` come from its TrainConfig field (:func:`settings_of`).

    ``label`` is what the page and the budget's refusals call it; ``term`` the noun a validation message starts
    with (the name with spaces unless given). ``valid`` bounds a number; ``shown`` narrows the page widget's
    bounds where ``valid`` has an open or infinite end, or where the page offers a practical part of it.
    ``flag`` overrides the command line's option name; ``cli=False`` leaves the setting off the command line.
    ``place`` is the page group and column of its widget (None: not in the generic form; the engine and
    privacy views place theirs), ``when`` the (setting, value) it only applies under: the page hides it
    otherwise and the command line's help says so. ``default_by`` names another setting and maps its values to
    this one's default (the server learning rate starts where the chosen strategy wants it).
    """

    label: str
    help: str = ""
    term: str = ""
    valid: Interval | None = None
    widget: str = "number"
    shown: tuple[float, float] | None = None
    step: float | None = None
    format: str | None = None
    choices: Mapping[str, Any] | Sequence[str] | str | None = None
    labels: Mapping[str, str] | None = None
    flag: str = ""
    cli: bool = True
    place: tuple[str, int] | None = None
    when: tuple[str, str] | None = None
    default_by: tuple[str, Mapping[str, Any]] | None = None
    name: str = ""
    default: Any = None

    @property
    def kind(self) -> type:
        """int, float, str or bool: the type of the default (a float field's default is written as a float)."""
        return type(self.default)

    def default_under(self, chosen: Mapping[str, Any]) -> Any:
        """The default given the settings chosen so far (``default_by``), else the declared one."""
        if self.default_by is None:
            return self.default
        name, defaults = self.default_by
        return defaults.get(chosen.get(name), self.default)

    @property
    def noun(self) -> str:
        return self.term or self.name.replace("_", " ")

    def options(self) -> dict[str, str]:
        """The allowed values, each with the words the page shows for it."""
        choices = self.choices
        if isinstance(choices, str):  # "module:NAME" of a registry whose package imports fed_core.config
            module, _, attribute = choices.partition(":")
            choices = getattr(import_module(module), attribute)
        labels = self.labels or {}
        registry = choices if isinstance(choices, Mapping) else {}  # a registry's entries may carry their label
        return {value: labels.get(value) or getattr(registry.get(value), "label", value) for value in choices or ()}

    @property
    def bounds(self) -> tuple[float, float]:
        """The page widget's lowest and highest value."""
        return self.shown or (self.valid.low, self.valid.high)

    @property
    def help_text(self) -> str:
        """The help with the valid range, as the page's tooltip and the command line's help say it."""
        if self.valid is None:
            return self.help
        if self.kind is int:
            return f"{self.help} ({int(self.valid.low)}-{int(self.valid.high)})"
        return f"{self.help}: {self.valid.text()}"

    @property
    def cli_flag(self) -> str:
        """``--name-with-dashes``; a setting on by default is turned off with ``--no-name``."""
        return self.flag or f"--{'no-' if self.default is True else ''}{self.name.replace('_', '-')}"

    @property
    def flower_key(self) -> str:
        """The key of the Flower App's run config: the name with dashes (Flower's convention)."""
        return self.name.replace("_", "-")


def declare(default: Any, label: str, **declaration: Any) -> Any:
    """A dataclass field with this default that carries its Setting (see :class:`Setting` for the keywords)."""
    return field(default=default, metadata={METADATA_KEY: Setting(label, **declaration)})


@functools.cache
def settings_of(config_class: type) -> Mapping[str, Setting]:
    """Every field's Setting, in field order, with its name and default; refuses a field declared without one.

    Read-only: it is computed once per class and shared by every reader.
    """
    found = {}
    for f in fields(config_class):
        if METADATA_KEY not in f.metadata:
            raise TypeError(f"{config_class.__name__}.{f.name} has no Setting: declare it with settings.declare()")
        found[f.name] = replace(f.metadata[METADATA_KEY], name=f.name, default=f.default)
    return MappingProxyType(found)
