"""Typed option dataclasses: one declaration gives the checks, the CLI flags and the help text.

A field declared with :func:`opt` carries its help line and its range; its type hint gives
the kind (``int``, ``float``, ``bool``, ``str``, ``Literal[...]`` choices, ``X | None``,
tuples). :func:`check_fields` (call it from ``__post_init__``) checks every field, so a
config built from flags, a ``--config`` file or a saved checkpoint is checked the same way,
and raises :class:`~fitv2.errors.ConfigError` naming the option. :func:`add_options` turns
the fields into argparse flags whose choices and help come from the same declaration.

This module and :mod:`fitv2.options` import no torch, so ``fitv2 --help`` is fast.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, field
from typing import Any, Literal, Union

from .errors import ConfigError


def opt(
    default: Any = MISSING,
    *,
    help: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    factory: Any = None,
    flag: bool = True,
    positional: bool = False,
    metavar: str | None = None,
    choices: tuple | None = None,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A dataclass field with its help line, bounds (ge/gt/le/lt) and CLI settings.

    ``choices`` lists valid values of a ``str`` field whose choices are not a ``Literal``
    (e.g. names defined elsewhere); ``flag=False`` keeps the field off the command line;
    ``aliases``: more flags for it.
    """
    metadata = dict(
        help=help,
        ge=ge,
        gt=gt,
        le=le,
        lt=lt,
        flag=flag,
        positional=positional,
        metavar=metavar,
        choices=choices,
        aliases=aliases,
    )
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _coerce(where: str, value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` describes (ints widen to floats, lists to tuples), or a ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if _is_union(hint):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(where, value, option)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false; got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be a whole number; got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number; got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number; got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string; got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where} must be {len(args)} values; got {value!r}")
        return tuple(_coerce(where, v, a) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list; got {value!r}")
        return [_coerce(where, v, args[0]) for v in value]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping of names to values; got {value!r}")
        return value
    return value


def _check_bounds(where: str, value: Any, md: Mapping[str, Any]) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, tuple):
            for v in value:
                _check_bounds(where, v, md)
        return
    for key, ok, word in (
        ("ge", lambda v, b: v >= b, "at least"),
        ("gt", lambda v, b: v > b, "greater than"),
        ("le", lambda v, b: v <= b, "at most"),
        ("lt", lambda v, b: v < b, "less than"),
    ):
        bound = md.get(key)
        if bound is not None and not ok(value, bound):
            raise ConfigError(f"{where} must be {word} {bound:g}; got {value:g}")


def check_fields(obj: Any, label: Callable[[str], str] = flag_name) -> None:
    """Check (and normalise in place) every field of a dataclass instance against its declaration.

    ``label(name)`` is how messages name a field: ``--batch-size`` for command options.
    """
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        where = label(f.name)
        value = _coerce(where, getattr(obj, f.name), hints[f.name])
        object.__setattr__(obj, f.name, value)
        choices = f.metadata.get("choices")
        if choices is not None and value is not None and value not in choices:
            raise ConfigError(f"{where} must be one of {', '.join(map(str, choices))}; got {value!r}")
        _check_bounds(where, value, f.metadata)


def refuse_unknown(cls: type, values: Mapping[str, Any], what: str, list_known: bool = False) -> None:
    """A ConfigError naming the keys of ``values`` that are not fields of the dataclass ``cls``."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        hint = f"; known: {', '.join(known)}" if list_known else ""
        raise ConfigError(f"unknown {what}: {', '.join(unknown)}{hint}")


def build(cls: type, values: dict[str, Any], source: str = "options") -> Any:
    """An instance of the option dataclass ``cls`` from a mapping; unknown keys are an error."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source} must be a mapping of option names to values")
    refuse_unknown(cls, values, f"option(s) in {source}")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is MISSING and f.default_factory is MISSING and f.name not in values
    ]
    if missing:
        raise ConfigError(f"{source} lacks required option(s): {', '.join(missing)}")
    return cls(**values)


class Options:
    """Shared behaviour of the option dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "options"):
        return build(cls, dict(data), source)


__all__ = ["Options", "build", "check_fields", "flag_name", "opt", "refuse_unknown"]
