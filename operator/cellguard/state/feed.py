"""The cache's one way in: a kind's listing or one watch event, and what follows from it.

A pod event may let the cell's reservation go; a cell that is gone takes its reservation
and remembered refusal with it; a cell's new spec (created, changed, or first seen by this
process) is handed to the reconciler. The lists and watches themselves live at the edge
(`runtime.informer`); this is what the event loop does with what they bring.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from cellguard.budget import CellKey
from cellguard.state.gate import ScaleGate
from cellguard.state.records import Key, Kind, Parsed, PodRecord
from cellguard.state.reservations import ReservationLedger
from cellguard.state.settling import release_if_placed
from cellguard.state.store import ClusterState

DELETED = "DELETED"


class CacheFeed:
    """Applies listings and watch events to the cache. Call from the event loop only."""

    def __init__(
        self,
        state: ClusterState,
        ledger: ReservationLedger,
        gate: ScaleGate,
        on_cell_changed: Callable[[CellKey], None] = lambda _cell: None,
        on_cell_spec: Callable[[CellKey], None] = lambda _cell: None,
    ) -> None:
        self.state = state
        self.ledger = ledger
        self.gate = gate
        # Told of a cell whose pods or Deployment changed (its status may follow).
        self.on_cell_changed = on_cell_changed
        # Told of a cell whose spec this process has not converged yet: a new cell, a new
        # generation or uid, every cell of the first listing (a restart), and a cell changed
        # while the watch was away. Not of its status patches (same generation).
        self.on_cell_spec = on_cell_spec

    def changed(self, kind: Kind, event_type: str, key: Key, parsed: Parsed) -> None:
        """One watch event (ADDED, MODIFIED or DELETED) of an object of `kind`."""
        if kind is Kind.CELLS:
            self._cell_changed(CellKey(*key), event_type, parsed)
            return
        if event_type == DELETED:
            self.state.remove(kind, key)
        else:
            self.state.put(kind, key, parsed)
        if kind is Kind.PODS and isinstance(parsed, PodRecord):
            release_if_placed(self.state, self.ledger, parsed.cell)
            self.on_cell_changed(parsed.cell)
        elif kind is Kind.DEPLOYMENTS:
            self.on_cell_changed(CellKey(*key))

    def replaced(self, kind: Kind, items: Mapping[Key, Parsed], namespace: str | None) -> None:
        """A complete listing of `kind` (in `namespace`, or everywhere)."""
        held_specs = (
            {CellKey(*key): self.state.cell_spec_version(CellKey(*key)) for key in items}
            if kind is Kind.CELLS
            else {}
        )
        self.state.replace(kind, items, namespace)
        for cell, before in held_specs.items():
            if self.state.cell_spec_version(cell) != before:
                self.on_cell_spec(cell)
        held = [CellKey(*r.cell) for r in self.ledger.live(self.gate.now())]
        if kind is Kind.CELLS:
            for cell in held:
                if cell not in self.state.cells and cell not in self.state.cell_errors:
                    self._forget_cell(cell)  # deleted while the watch was away
        elif kind is Kind.PODS:
            for cell in held:
                release_if_placed(self.state, self.ledger, cell)

    def _cell_changed(self, cell: CellKey, event_type: str, parsed: Parsed) -> None:
        if event_type == DELETED:
            self.state.remove(Kind.CELLS, cell)
            self._forget_cell(cell)
            return
        before = self.state.cell_spec_version(cell)
        self.state.put(Kind.CELLS, cell, parsed)
        if self.state.cell_spec_version(cell) != before:
            self.on_cell_spec(cell)

    def _forget_cell(self, cell: CellKey) -> None:
        self.ledger.release(cell)
        self.gate.forget(cell)
