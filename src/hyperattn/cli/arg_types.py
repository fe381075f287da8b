"""argparse types: bounded numbers, named numbers and comma-separated lists."""

from __future__ import annotations

import argparse


def numbers(kind, low, high=None, many=False, what="integer"):
    """An argparse type: one number (or a comma-separated list) of ``kind`` in [low, high]."""
    bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
    article = "an " if what[0] in "aeiou" else "a "
    expected = f"{'comma-separated ' if many else article}{what}{'s' if many else ''} {bounds}"

    def parse(text: str):
        try:
            values = [kind(part) for part in text.split(",") if part] if many else [kind(text)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not values or min(values) < low or (high is not None and max(values) > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return values if many else values[0]

    return parse


positive_int = numbers(int, 1)
seed = numbers(int, 0, what="seed")
seed_list = numbers(int, 0, many=True, what="seed")
int_list = numbers(int, 1, many=True)
float_list = numbers(float, 0, 1, many=True, what="number")


def str_list(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def named_number(text: str) -> tuple[str, float]:
    """``NAME=X`` with X a number > 0 -> (name, X)."""
    name, _, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not name or not number > 0:
        raise argparse.ArgumentTypeError(f"expected NAME=NUMBER with a number > 0 (e.g. default=0.09), got {text!r}")
    return name, number
