"""Argument types for the command-line parsers: a bad number is a usage error saying why.

>>> whole(1)("3"), finite(0)("2.5"), finite(0, above=True, unit="seconds")("0.5")
(3, 2.5, 0.5)
>>> finite(0, above=True, unit="seconds")("nan")
Traceback (most recent call last):
argparse.ArgumentTypeError: must be a finite number of seconds > 0, got 'nan'
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole(minimum: int) -> Callable[[str], int]:
    """A whole number ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def finite(minimum: float, *, above: bool = False, unit: str = "") -> Callable[[str], float]:
    """A finite number ``>= minimum`` (``> minimum`` with ``above``), of ``unit`` if given."""
    of = f" of {unit}" if unit else ""
    bound = f"{'>' if above else '>='} {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number{of}: {text!r}") from None
        if not (math.isfinite(value) and (value > minimum if above else value >= minimum)):
            raise argparse.ArgumentTypeError(f"must be a finite number{of} {bound}, got {text!r}")
        return value

    return parse
