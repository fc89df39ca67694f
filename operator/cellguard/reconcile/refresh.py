"""The status loop: every few seconds, every cell converged and its status patched where
it changed - and the one writer of every cell's status (the kopf handlers converge a
changed spec through `refresh` too), so that no stale write can land after a newer one.

Nodes, budgets and other cells move a cell's figures, and a scale the backstop held back
is carried out once it fits. One loop for the fleet instead of a kopf timer per cell: a
timer run costs a deep copy of the body, a JSON patch and progress annotations even when
nothing changed; here an unchanged cell costs its figures and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from cellguard.budget import CellKey
from cellguard.reconcile import status as status_model
from cellguard.reconcile.converge import converge
from cellguard.wiring import Operator

log = logging.getLogger(__name__)


# Cells converged at once: their status patches and applies overlap (each waits on the API
# server in a thread), while one cell is never converged twice at once (its lock).
CONCURRENCY = 16
# A poked cell waits this long for others to gather, so a burst costs one pass, not many.
POKE_DELAY_SECONDS = 0.5


class OnePlanAStep:
    """Held while a cell is planned: one holder at a time, and never two plans in one step
    of the event loop. A plan runs to its end without yielding, and every task ready in a
    step runs before a waiting admission request's next step: with the loop's 16 cells in
    flight, a webhook decision waited behind 16 plans a step (about a second at 5,000
    nodes). Released at the next step, a request's steps interleave with one plan each
    (bench/status_round.py)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slot = asyncio.Semaphore(1)

    def _bound(self) -> asyncio.AbstractEventLoop:
        """The running loop; a new one (tests run a loop per round) gets a new slot."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._loop, self._slot = loop, asyncio.Semaphore(1)
        return loop

    async def __aenter__(self) -> None:
        self._bound()
        await self._slot.acquire()

    async def __aexit__(self, *_: object) -> None:
        self._bound().call_soon(self._slot.release)


class StatusLoop:
    def __init__(self, op: Operator, *, paced: bool = True) -> None:
        self.op = op
        # `paced=False`: plans run as their tasks come (as before; for the benchmark).
        self._planning: contextlib.AbstractAsyncContextManager[None] = (
            OnePlanAStep() if paced else contextlib.nullcontext()
        )
        # cell -> (the status the cache held when we wrote, what we wrote over it): until
        # the watch brings our write back, compare with what we wrote, not what we saw.
        self._written: dict[CellKey, tuple[Mapping[str, Any], dict[str, Any]]] = {}
        # Cells whose own pods or Deployment changed since their last refresh.
        self._poked: set[CellKey] = set()
        self._woken = asyncio.Event()

    def poke(self, cell: CellKey) -> None:
        """The cell's pods or Deployment changed: refresh it soon, not at the next round
        (its Ready condition follows its Deployment's ready pods). Event loop only."""
        self._poked.add(cell)
        self._woken.set()

    async def run(self, stop: asyncio.Event) -> None:
        """A full round every interval (nodes, budgets and other cells move every cell's
        figures), and the poked cells in between."""
        interval = self.op.settings.status_interval_seconds
        loop = asyncio.get_running_loop()
        next_round = loop.time() + interval
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), timeout=next_round - loop.time())
            if stop.is_set():
                return
            if loop.time() >= next_round:
                self._poked.clear()
                self._woken.clear()
                await self.round()
                next_round = loop.time() + interval
                continue
            await asyncio.sleep(POKE_DELAY_SECONDS)
            poked, self._poked = self._poked, set()
            self._woken.clear()
            await self._refresh_all([c for c in poked if c in self.op.state.cells])

    async def round(self) -> int:
        """Converge every cell once; returns how many statuses were patched."""
        patched = await self._refresh_all(list(self.op.state.cells))
        for key in set(self._written).difference(self.op.state.cells):
            del self._written[key]
        self.op.forget_cell_locks()
        return patched

    async def _refresh_all(self, keys: list[CellKey]) -> int:
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(key: CellKey) -> bool:
            async with slots:
                try:
                    return await self.refresh(key)
                except Exception as exc:  # one cell's failure must not starve the others
                    log.warning("refreshing %s/%s failed: %s", key.namespace, key.name, exc)
                    return False

        return sum(await asyncio.gather(*(one(key) for key in keys)))

    async def refresh(self, key: CellKey, *, spec_changed: bool = False) -> bool:
        """Converge the cell and write what changed in its status (True: a patch was sent).
        `spec_changed`: apply its children whatever their size (a new or changed spec)."""
        async with self.op.cell_lock(key):
            record = self.op.state.cells.get(key)
            if record is None:
                return False
            seen = record.status
            mine = self._written.get(key)
            previous = mine[1] if mine is not None and mine[0] is seen else seen
            result = await converge(
                self.op, key, previous, spec_changed=spec_changed, planning=self._planning
            )
            if result is None:
                return False
            changes: dict[str, Any] = {}
            if status_model.write_changed(changes, previous, result.status):
                await asyncio.to_thread(self.op.patch_status, result.record, changes)
                self._written[key] = (seen, {**previous, **changes})
        for event in result.events:
            if event.reason == "ScaleRefused":
                log.warning("%s/%s: scale refused: %s", key.namespace, key.name, event.message)
            await asyncio.to_thread(
                self.op.post_event, result.record, event.type, event.reason, event.message
            )
        return bool(changes)
