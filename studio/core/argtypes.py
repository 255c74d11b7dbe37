"""argparse types for numbers with a range: a wrong value is refused by the parser, before anything starts,
with the flag's name and the values it takes (`argument --port: 99999 is out of range: use 1 to 65535`)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _ranged(kind: type, word: str, low: float, high: float | None) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not {word}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"'{text}' is not {word}")
        if value < low or (high is not None and value > high):
            allowed = f"use {low:g} to {high:g}" if high is not None else f"use {low:g} or more"
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: {allowed}")
        return value

    parse.__name__ = word  # argparse names the type in its own messages
    return parse


def whole(low: int, high: int | None = None) -> Callable[[str], int]:
    """A whole number from `low` (to `high`)."""
    return _ranged(int, "a whole number", low, high)


def seconds(low: float = 0.0) -> Callable[[str], float]:
    """A number of seconds, at least `low`."""
    return _ranged(float, "a number of seconds", low, None)


PORT = whole(1, 65535)
