"""TrainConfig's fields as command-line options, for `alphasel train` and `alphasel study`.

Every option comes from its field (:func:`alphasel.training.config.config_options`): the flag
its docstring names, the field's type, its docstring as the help and its default in the help.
The options themselves default to None, "not given", so a TrainConfig built from what was
given (:func:`given_config`) takes every other value from its own defaults.
"""

from __future__ import annotations

import argparse
from typing import Any

from alphasel.training.config import config_options


def _help(text: str, default: Any) -> str:
    """The field's docstring as help (code marks dropped, % escaped for argparse), with the
    default when the flag takes a value."""
    text = text.replace("``", "").replace("%", "%%")
    if default is None or isinstance(default, bool):
        return text
    shown = ",".join(map(str, default)) if isinstance(default, list) else str(default)
    return f"{text.rstrip('.')} (default {shown})."


def add_config_options(group: argparse._ActionsContainer,
                       skip: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Add an option for every TrainConfig field not in ``skip``; returns their dests."""
    dests = []
    for option in config_options():
        if option.field in skip:
            continue
        help_text = _help(option.help, option.default)
        if option.type is None:  # on/off: the flag sets the other value than the default
            group.add_argument(option.flag, dest=option.field, action="store_const",
                               const=not option.default, default=None, help=help_text)
        else:
            group.add_argument(option.flag, dest=option.field, type=option.type, default=None,
                               metavar=option.field.upper(), help=help_text)
        dests.append(option.field)
    return dests


def given_config(args: argparse.Namespace, dests: list[str]) -> dict[str, Any]:
    """The TrainConfig fields among ``dests`` that the command line gave, by name."""
    return {dest: getattr(args, dest) for dest in dests if getattr(args, dest) is not None}


def given_flags(parser: argparse.ArgumentParser, args: argparse.Namespace,
                among: list[str] | None = None, skip: tuple[str, ...] = ()) -> list[str]:
    """The flags the command line set to something else than their default (those of the
    dests ``among``, else of all but ``skip``), as the user would write them."""
    return [action.option_strings[0] for action in parser._actions
            if action.option_strings and action.dest != "help" and action.dest not in skip
            and (among is None or action.dest in among)
            and getattr(args, action.dest, action.default) != action.default]
