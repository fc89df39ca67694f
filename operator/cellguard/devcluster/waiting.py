"""Polling until something is true: for the local cluster's users (demo, tests, benchmarks)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T | None],
    *,
    what: str,
    timeout: float = 60.0,
    interval: float = 0.5,
    error: type[Exception] = AssertionError,
) -> T:
    """The first truthy value of `predicate`, polled every `interval`; `error` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
