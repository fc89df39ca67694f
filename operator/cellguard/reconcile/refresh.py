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


class StatusLoop:
    def __init__(self, op: Operator) -> None:
        self.op = op
        # cell -> (the status the cache held when we wrote, what we wrote over it): until
        # the watch brings our write back, compare with what we wrote, not what we saw.
        self._written: dict[CellKey, tuple[Mapping[str, Any], dict[str, Any]]] = {}

    async def run(self, stop: asyncio.Event) -> None:
        interval = self.op.settings.status_interval_seconds
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)
            if stop.is_set():
                return
            await self.round()

    async def round(self) -> int:
        """Converge every cell once; returns how many statuses were patched."""
        patched = 0
        for key in list(self.op.state.cells):
            try:
                patched += await self.refresh(key)
            except Exception as exc:  # one cell's failure must not starve the others
                log.warning("refreshing %s/%s failed: %s", key.namespace, key.name, exc)
            await asyncio.sleep(0)  # admission reviews go between cells
        for key in set(self._written).difference(self.op.state.cells):
            del self._written[key]
        self.op.forget_cell_locks()
        return patched

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
            result = await converge(self.op, key, previous, spec_changed=spec_changed)
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
