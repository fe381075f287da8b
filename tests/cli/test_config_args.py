"""The HyperAttention flags: one per config field, with its default shown, giving the config back."""

import re
from dataclasses import fields

import pytest

from hyperattn.cli import build_parser, main
from hyperattn.cli.config_args import CHOICES, config_from_args, flag
from hyperattn.config import HyperAttentionConfig

COMMANDS = [["demo"], ["eval", "ppl"], ["eval", "needle"], ["bench", "attention"], ["bench", "model"]]


def _help(command: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal width


def _non_default(field) -> object:
    if field.name == "selection_coarse_size":  # a multiple of selected_block_size (default + 1 = 9) above it
        return 4 * 9
    if field.name == "selection_tile":  # a power of two >= 16
        return 32
    choices = CHOICES.get(field.name)
    return next(c for c in choices if c != field.default) if choices else field.default + 1


def test_help_shows_the_block_size_default(capsys):
    help_text = _help(["eval", "ppl"], capsys)
    assert re.search(r"--block-size BLOCK_SIZE [^-]*\(default: 256\)", help_text)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_flag_with_a_help_and_default_for_every_config_field(command, capsys):
    help_text = _help(command, capsys)
    for field in fields(HyperAttentionConfig):
        assert re.search(rf"{flag(field.name)} \S+ [^-]*\(default: ", help_text), field.name


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_config_from_args_round_trips_every_field(command):
    config = HyperAttentionConfig(**{field.name: _non_default(field) for field in fields(HyperAttentionConfig)})
    argv = [arg for f in fields(config) for arg in (flag(f.name), str(getattr(config, f.name)))]
    assert config_from_args(build_parser().parse_args([*command, *argv])) == config


def test_exact_window_flag_keeps_the_default_executor():
    args = build_parser().parse_args(["eval", "ppl", "--exact-sinks", "4", "--exact-window", "64"])
    config = config_from_args(args)
    assert (config.exact_sinks, config.exact_window, config.impl) == (4, 64, "auto")


def test_bad_choices_are_rejected_by_the_parser():
    for argv in (["demo", "--sampling", "norm"], ["bench", "model", "--impl", "cuda"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)
