"""The agent's pace: read, publish, wait an interval, until told to stop.

Knows nothing of Kubernetes: `publish` is any callable (the API writer, or a printer), and
it signals a failure it expects (API down, refused) by raising `PublishError`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from cellguard.agent.reading import describe
from cellguard.api.v1alpha1 import NodeBudgetSpec

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PublishError(Exception):
    """Publishing a report failed in a way worth retrying next interval; one line."""


class ReportAbandoned(BaseException):
    """A second stop signal: give up the report in progress and exit now.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way out
    swallows it.
    """


class Reporter:
    """One report per call: read the host, publish the figures. Never raises an Exception:
    a failed report is logged and the next interval tries again."""

    def __init__(
        self,
        read: Callable[[], NodeBudgetSpec],
        publish: Callable[[NodeBudgetSpec], None],
    ) -> None:
        self._read = read
        self._publish = publish
        self._last_read_errors: list[str] = []

    def __call__(self) -> bool:
        """True when the report was published."""
        try:
            spec = self._read()
            self._warn_on_new_read_errors(spec.errors)
            self._publish(spec)
        except PublishError as exc:
            log.warning("report not published, next attempt in one interval: %s", exc)
            return False
        except Exception:
            # A bug, not the weather: keep the traceback, keep the agent alive. The budget
            # goes stale, and a stale budget is refused, which is the safe side.
            log.exception("report failed")
            return False
        log.debug("reported %s", describe(spec))
        return True

    def _warn_on_new_read_errors(self, errors: list[str]) -> None:
        # A missing file stays missing: warn when the set of problems changes, not every
        # interval on every node.
        if errors != self._last_read_errors:
            for error in errors:
                log.warning("cannot read %s", error)
            if not errors:
                log.info("all figures readable again")
            self._last_read_errors = list(errors)


def run_reports(
    report: Callable[[], bool],
    *,
    interval: float,
    stop: threading.Event,
    once: bool = False,
    monotonic: Callable[[], float] = time.monotonic,
) -> bool:
    """Report every `interval` seconds (start to start) until `stop` is set, or once.

    Returns whether the last report was published.
    """
    while True:
        started = monotonic()
        published = report()
        if once or stop.is_set():
            return published
        if stop.wait(max(0.0, interval - (monotonic() - started))):
            return published


@contextmanager
def stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM/SIGINT set `stop`: the report in progress finishes (each API call is bounded
    by its timeout), then the loop ends. A second signal abandons the report at once.

    Signal handlers can only be installed from the main thread; elsewhere (an embedding
    caller, a test) this does nothing and the caller owns `stop`.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise ReportAbandoned
        log.info("%s received: stopping after this report", signal.Signals(signum).name)
        stop.set()

    previous = {signum: signal.signal(signum, handle) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
