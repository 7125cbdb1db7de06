"""argparse types shared by the CLI commands: each error becomes one line naming the flag (exit status 2)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from skillorchestra.handbook.models import ID_MAX, MAX_LAMBDA, MAX_SEED, MAX_SKILL_DEPTH, MAX_USD, encodable


def _number(text: str, *, low: float, high: float, what: str, high_included: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value) or value < low or value > high or (value == high and not high_included):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def lambda_arg(text: str) -> float:
    """The MCP tools' bound too: one lambda range everywhere."""
    return _number(text, low=0.0, high=MAX_LAMBDA, high_included=True, what=f"a number in [0, {MAX_LAMBDA:g}]")


def price_arg(text: str) -> float:
    """USD per million tokens, bounded like every amount of the handbook's models."""
    return _number(text, low=0.0, high=MAX_USD, high_included=True, what=f"a price in USD in [0, {MAX_USD:g}]")


def fraction_arg(text: str) -> float:
    return _number(text, low=0.0, high=1.0, what="a fraction in [0, 1)")


def _integer(text: str, minimum: int, expected: str, not_a_number: str | None = None) -> int:
    """An int >= minimum; the messages say what was expected and repeat the value given."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {not_a_number or expected}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def seed_arg(text: str) -> int:
    value = _integer(text, 0, "an integer >= 0")
    if value > MAX_SEED:  # the tools' bound: one seed range everywhere
        raise argparse.ArgumentTypeError(f"expected an integer <= {MAX_SEED}, got {text!r}")
    return value


def name_arg(text: str) -> str:
    """A name as the MCP tools take one: stripped (QA: learn stored '  Padded  ', which consult, stripping the name
    it is sent, never found)."""
    if not text.strip() or len(text.strip()) > ID_MAX:
        raise argparse.ArgumentTypeError(f"expected a non-empty name of at most {ID_MAX} characters")
    if not encodable(text):  # bytes that are not UTF-8 reach Python as lone surrogates (review: stored, they broke
        raise argparse.ArgumentTypeError(f"expected a name of valid UTF-8 text, got {text!r}")  # every read)
    return text.strip()


def depth_arg(text: str) -> int:
    """A skill depth as a selection stores one: 0 (mode level) to MAX_SKILL_DEPTH."""
    expected = f"a depth in [0, {MAX_SKILL_DEPTH}] (0: mode level, 1: top-level skills)"
    value = _integer(text, 0, expected)
    if value > MAX_SKILL_DEPTH:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def version_arg(text: str) -> int:
    return _integer(text, 1, "a version number >= 1", "a version number (see `handbook versions`)")


def positive_int(text: str) -> int:
    return _integer(text, 1, "an integer >= 1")


def count_arg(maximum: int) -> Callable[[str], int]:
    """An integer in [1, maximum]: a count the command works through (QA: --episodes 1e11 ran until killed)."""

    def count(text: str) -> int:
        value = _integer(text, 1, f"an integer in [1, {maximum}]")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"expected an integer in [1, {maximum}], got {text!r}")
        return value

    return count


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def path_arg(text: str) -> Path:
    """A file or folder path: never empty (QA: `--plot-dir ''` wrote into the working folder, as Path('') is '.'),
    `~` expanded as for --db (hosts pass arguments without a shell)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a path, got {text!r}")
    return Path(text).expanduser()


def db_arg(text: str) -> Path:
    """--db: a database file, new or existing; a directory is refused here, where the message can name the flag
    (SQLite itself only says "unable to open database file"). `~` is expanded as for SKILLORCHESTRA_DB: hosts pass
    arguments without a shell, and `~/h.db` made a folder named `~` in the host's working directory."""
    if not text.strip() or text != text.strip():  # a stray space pasted into a host's JSON made a folder named ' ~'
        raise argparse.ArgumentTypeError(f"expected a database file path without blanks at its ends, got {text!r}")
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a database file path, got {text!r}, which is a directory")
    if path.exists() and not path.is_file():
        raise argparse.ArgumentTypeError(f"expected a database file path, got {text!r}, which is not a regular file")
    return path
