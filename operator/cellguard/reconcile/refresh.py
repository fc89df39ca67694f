"""The reconciler: every few seconds, every cell converged and its status patched where it
changed; a cell with a spec this process has not converged yet (new, changed, or found at
start-up: the cache feed says which) at once, its children applied whatever their size. One
writer of every cell's status, so that no stale write can land after a newer one.

Backstop rules (reconcile.converge): never apply a replica count the budget refuses (if the
webhook was bypassed, the Deployment stays where it is and the cell says why), and never
scale down on its own when limits shrink (the cell reports WithinBudget=False instead).

The cells come from the operator's own watch (runtime.informer), not from kopf's: kopf's
handlers cost every new cell a second watch event, a deep copy and a patch of progress
annotations, for what the informer already knew (kopf serves the webhook only).

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
from cellguard.state.records import Invalid
from cellguard.wiring import EventSubject, Operator

log = logging.getLogger(__name__)


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
        # Cells whose spec is not converged yet: their children are applied whatever their
        # size at their next refresh (a failed one leaves the cell here for the next).
        self._new_specs: set[CellKey] = set()
        self._woken = asyncio.Event()

    def poke(self, cell: CellKey) -> None:
        """The cell's pods or Deployment changed: refresh it soon, not at the next round
        (its Ready condition follows its Deployment's ready pods). Event loop only."""
        self._poked.add(cell)
        self._woken.set()

    def spec_changed(self, cell: CellKey) -> None:
        """The cell is new, its spec changed, or this process has not converged it yet:
        apply its children at its next refresh, soon. Event loop only."""
        self._new_specs.add(cell)
        self.poke(cell)

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
            await self._refresh_all(list(poked))

    async def round(self) -> int:
        """Converge every cell once; returns how many statuses were patched."""
        cells = self.op.state.cells
        patched = await self._refresh_all(
            [*cells, *(key for key in self._new_specs if key not in cells)]
        )
        for key in set(self._written).difference(self.op.state.cells):
            del self._written[key]
        self.op.forget_cell_locks()
        return patched

    async def _refresh_all(self, keys: list[CellKey]) -> int:
        # One cell is never converged twice at once (its lock).
        slots = asyncio.Semaphore(self.op.settings.converge_workers)

        async def one(key: CellKey) -> bool:
            async with slots:
                try:
                    return await self.refresh(key)
                except Exception as exc:  # one cell's failure must not starve the others
                    log.warning("refreshing %s/%s failed: %s", key.namespace, key.name, exc)
                    return False

        return sum(await asyncio.gather(*(one(key) for key in keys)))

    async def refresh(self, key: CellKey) -> bool:
        """Converge the cell and write what changed in its status (True: a patch was sent);
        a cell marked by `spec_changed` has its children applied whatever their size."""
        async with self.op.cell_lock(key):
            new_spec = key in self._new_specs
            self._new_specs.discard(key)
            record = self.op.state.cells.get(key)
            if record is None:
                invalid = self.op.state.cell_errors.get(key)
                if invalid is not None and new_spec:
                    await self._say_invalid(key, invalid)
                return False
            seen = record.status
            mine = self._written.get(key)
            previous = mine[1] if mine is not None and mine[0] is seen else seen
            try:
                result = await converge(
                    self.op,
                    key,
                    previous,
                    spec_changed=new_spec,
                    planning=self._planning,
                )
            except BaseException:
                if new_spec:
                    self._new_specs.add(key)  # its children are still to apply
                raise
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

    async def _say_invalid(self, key: CellKey, invalid: Invalid) -> None:
        """A spec the API server let through that the operator cannot use (the webhook was
        bypassed, or the operator is newer than the object): nothing is applied; said once a
        spec, where `kubectl describe` shows it."""
        message = f"invalid spec, nothing applied: {invalid.error}"
        log.warning("%s/%s: %s", key.namespace, key.name, message)
        subject = EventSubject(key.namespace, key.name, invalid.uid)
        await asyncio.to_thread(self.op.post_event, subject, "Warning", "InvalidSpec", message)
