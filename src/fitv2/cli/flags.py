"""Command-line flags from the typed option dataclasses: one argparse argument per field.

The field's declaration (:func:`fitv2.schema.opt`) gives the flag's type, choices, default and help,
so what ``--help`` shows is what :func:`fitv2.schema.check_fields` checks."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import MISSING
from typing import Any, Literal

from ..schema import _hints, _is_union, flag_name


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: ... (see `fitv2 CMD --help`)`` and exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _default_text(f: dataclasses.Field) -> str:
    if f.default_factory is not MISSING:
        value = f.default_factory()
    else:
        value = f.default
    if value is None:
        return "not set"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return " ".join(map(str, value))
    return str(value)


def add_options(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One argparse argument per field of ``cls``. Flags not given are absent from the namespace."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        md = f.metadata
        if f.name in skip or not md.get("flag", True):
            continue
        hint = hints[f.name]
        if _is_union(hint):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        text = md.get("help", "")
        kwargs: dict[str, Any] = {}
        if md.get("positional"):
            parser.add_argument(f.name, help=text.replace("%", "%%"), metavar=md.get("metavar"))
            continue
        text = f"{text} (default: {_default_text(f)})".strip()
        origin = typing.get_origin(hint)
        if hint is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is Literal:
            choices = typing.get_args(hint)
            kwargs.update(type=type(choices[0]), choices=choices)
        elif origin is tuple:
            args = typing.get_args(hint)
            kwargs.update(type=args[0], nargs=len(args))
        elif origin is list:
            kwargs.update(type=typing.get_args(hint)[0], action="append")
        elif origin is dict or hint is dict:
            continue
        else:
            kwargs["type"] = hint
            if md.get("choices") is not None:  # long name lists: in the help text, not the usage line
                kwargs.update(choices=md["choices"], metavar=f.name.upper())
                text += f"; one of: {', '.join(md['choices'])}"
        if md.get("metavar"):
            kwargs["metavar"] = md["metavar"]
        flags = (flag_name(f.name), *md.get("aliases", ()))
        parser.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, help=text.replace("%", "%%"), **kwargs)


def given(namespace: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` present in a parsed namespace (the flags the user gave, and positionals)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(namespace).items() if k in names}
