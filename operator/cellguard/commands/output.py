"""How the CLI prints: a table on a terminal, JSON or YAML for scripts."""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml
from rich.console import Console

OUTPUTS = ("table", "json", "yaml")
ERROR = 2  # the exit code of a command that could not answer

# What a person can act on from its message alone; anything else is named by its type.
_PLAIN_ERRORS = (ValueError, OSError, KeyError)


def failed(error: Exception) -> int:
    """Say why a command could not answer (on stderr) and return its exit code: a bad
    argument or file, an unknown cell, an unreachable API server - answered, not crashed."""
    if isinstance(error, _PLAIN_ERRORS):
        print(f"error: {error}", file=sys.stderr)
    else:
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
    return ERROR


def console() -> Console:
    """The terminal's width on a terminal; wide enough for every column when piped."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def figure(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def emit(data: Any, output: str) -> None:
    if output == "json":
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        yaml.safe_dump(data, sys.stdout, sort_keys=False, default_flow_style=False)
