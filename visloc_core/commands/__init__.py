"""CLI subcommands (see visloc_core/cli.py); shared argument types live here."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """argparse type for counts that must be >= 1 (0 would otherwise read as 'not given')."""
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
