"""A setting's Streamlit widget, drawn from its declaration (fed_core/settings.py): label, help, range, choices.

The Train page lays out groups of settings (``place`` in each declaration says group and column); the engine
and privacy views draw their own settings one at a time with :func:`setting_input`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from fed_core.settings import Setting, settings_of


def setting_input(container: Any, setting: Setting, key: str | None = None) -> Any:
    """The setting's widget in ``container`` (a column, an expander, ``st``); its value, of the setting's type."""
    if setting.widget in ("select", "radio"):
        options = setting.options()
        values = list(options)
        draw = container.selectbox if setting.widget == "select" else container.radio
        index = values.index(setting.default) if setting.default in options else 0
        return draw(
            setting.label, values, index=index, format_func=options.get, key=key, help=setting.help_text or None
        )
    if setting.widget in ("checkbox", "toggle"):
        draw = container.checkbox if setting.widget == "checkbox" else container.toggle
        return draw(setting.label, setting.default, key=key, help=setting.help_text or None)
    low, high = (setting.kind(bound) for bound in setting.bounds)
    draw = container.slider if setting.widget == "slider" else container.number_input
    extra = {"format": setting.format} if setting.format else {}
    value = draw(setting.label, low, high, setting.default, step=setting.step, key=key, help=setting.help_text, **extra)
    return setting.kind(value)


def settings_group(config_class: type, group: str, columns: Sequence[Any], values: dict | None = None) -> dict:
    """The widgets of every setting placed in ``group``, each in its column, in declaration order.

    A setting that applies only under another's value (``when``) is drawn only then, and otherwise keeps its
    default. ``values`` are the settings chosen so far (a ``when`` may name one from an earlier group); the
    result holds this group's.
    """
    chosen = dict(values or {})
    out = {}
    for setting in settings_of(config_class).values():
        if setting.place is None or setting.place[0] != group:
            continue
        if setting.when and chosen.get(setting.when[0]) != setting.when[1]:
            out[setting.name] = setting.default
            continue
        # A default that follows another setting gets a widget per default, so it starts afresh when that changes.
        setting = replace(setting, default=setting.default_under(chosen))
        key = f"{setting.name}_{setting.default}" if setting.default_by else None
        out[setting.name] = chosen[setting.name] = setting_input(columns[setting.place[1]], setting, key)
    return out
