"""The training options of `alphasel train` and `alphasel study` come from TrainConfig's fields:
one flag per field, no flag without a field, the field's default and docstring as its help."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

import pytest

from alphasel.cli import build_parser
from alphasel.study.spec import STUDY_OWNED
from alphasel.training.config import TrainConfig, config_options, options_of

#: The group each command puts its TrainConfig options in.
TRAIN_GROUP = "training (TrainConfig; defaults as shown)"
STUDY_GROUP = "training (every run; TrainConfig, defaults as shown)"


def command(name: str) -> argparse.ArgumentParser:
    subparsers = next(action for action in build_parser()._actions
                      if isinstance(action, argparse._SubParsersAction))
    return subparsers.choices[name]


def group_dests(parser: argparse.ArgumentParser, title: str) -> list[str]:
    [group] = [group for group in parser._action_groups if group.title == title]
    return [action.dest for action in group._group_actions]


def test_every_field_has_one_train_flag_and_every_flag_a_field():
    dests = group_dests(command("train"), TRAIN_GROUP)
    assert sorted(dests) == sorted(item.name for item in fields(TrainConfig))
    assert len(dests) == len(set(dests))


def test_study_flags_are_the_fields_the_study_does_not_decide():
    dests = group_dests(command("study"), STUDY_GROUP)
    expected = {item.name for item in fields(TrainConfig)} - STUDY_OWNED - {"method"}
    assert sorted(dests) == sorted(expected)


def test_a_flag_is_named_typed_and_explained_by_its_field():
    parser = command("train")
    actions = {action.dest: action for action in parser._actions}
    by_field = {option.field: option for option in config_options()}
    assert actions["max_steps"].option_strings == ["--max-steps"]
    assert actions["max_steps"].type is int and actions["lr"].type is float
    assert actions["generate"].option_strings == ["--no-generate"]
    assert actions["generate"].const is False and actions["bf16"].const is True
    assert "(default 512)" in actions["max_seq_len"].help
    assert by_field["max_seq_len"].help.rstrip(".") in actions["max_seq_len"].help
    for option in config_options():
        assert actions[option.field].default is None  # not given: TrainConfig's own default


def test_given_flags_build_the_config_and_the_rest_keeps_its_defaults():
    args = build_parser().parse_args(["train", "--model", "m", "--data", "d", "--max-steps",
                                      "7", "--no-save", "--bf16", "--report-to", "tensorboard"])
    from alphasel.cli.train import _config

    config = _config(args)
    assert (config.max_steps, config.save_adapter, config.bf16) == (7, False, True)
    assert config.report_to == ["tensorboard"]
    default = TrainConfig()
    assert (config.max_seq_len, config.batch_size, config.generate) == (
        default.max_seq_len, default.batch_size, default.generate)


def test_a_field_without_a_flag_in_its_docstring_is_refused():
    @dataclass
    class Options:
        steps: int = 1
        """Steps to take (--steps)."""
        rate: float = 0.1
        """A rate without its flag."""

    with pytest.raises(TypeError, match="rate: its docstring must name its command-line flag"):
        options_of(Options)
