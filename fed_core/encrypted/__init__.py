"""Encrypted inference: the model on data its server cannot read, under each scheme of ``SCHEMES``.

A scheme (:class:`~fed_core.encrypted.base.Scheme`) evaluates a test set, classifies one digit, estimates its
time and describes itself for the page; its results are typed (:class:`~fed_core.encrypted.base.EvalResult`,
:class:`~fed_core.encrypted.base.DigitResult`, and its own communication and server-view dataclasses).
:func:`scheme_for` is the one place a scheme is chosen by name (the CLI's ``--scheme``, the pages' choice).

To add a scheme, write a module with a subclass of :class:`~fed_core.encrypted.base.Scheme` and its
communication and server-view dataclasses, and add it to ``SCHEMES``.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from fed_core.encrypted.base import DigitResult, EvalResult, NotEncryptableError, Scheme, require_encryptable
from fed_core.encrypted.he import HeScheme
from fed_core.encrypted.mpc import MpcScheme
from fed_core.vocabulary import UserError

SCHEMES: dict[str, type[Scheme]] = {scheme.name: scheme for scheme in (HeScheme, MpcScheme)}

__all__ = [
    "SCHEMES",
    "DigitResult",
    "EvalResult",
    "NotEncryptableError",
    "Scheme",
    "UnknownSchemeError",
    "require_encryptable",
    "scheme_for",
]


class UnknownSchemeError(UserError, ValueError):
    """No scheme has that name; the message lists those that do."""


def scheme_for(name: str, **options: Any) -> Scheme:
    """The scheme called ``name``, set up with those of ``options`` it takes.

    One caller may hold every scheme's options (the CLI has ``--parties`` for MPC and ``--he-packing`` for HE):
    each scheme takes its own and leaves the others', so no caller branches on the name. An option that no
    scheme takes is a mistake in the caller and is refused.
    """
    if name not in SCHEMES:
        raise UnknownSchemeError(f"Unknown encryption scheme {name!r}; choose one of {', '.join(SCHEMES)}.")
    known = {f.name for scheme in SCHEMES.values() for f in fields(scheme)}
    if unknown := set(options) - known:
        raise TypeError(
            f"No encryption scheme takes {', '.join(sorted(unknown))}; they take {', '.join(sorted(known))}."
        )
    taken = {f.name for f in fields(SCHEMES[name])}
    return SCHEMES[name](**{key: value for key, value in options.items() if key in taken})
