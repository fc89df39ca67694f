"""The cache's one way in: a kind's listing or one watch event, and what follows from it.

A pod event may let the cell's reservation go; a cell that is gone takes its reservation
and remembered refusal with it. The lists and watches themselves live at the edge
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
    ) -> None:
        self.state = state
        self.ledger = ledger
        self.gate = gate
        # Told of a cell whose pods or Deployment changed (its status may follow).
        self.on_cell_changed = on_cell_changed

    def changed(self, kind: Kind, event_type: str, key: Key, parsed: Parsed) -> None:
        """One watch event (ADDED, MODIFIED or DELETED) of an object of `kind`."""
        if event_type == DELETED:
            self.state.remove(kind, key)
        else:
            self.state.put(kind, key, parsed)
        if kind is Kind.CELLS and event_type == DELETED:
            self._forget_cell(CellKey(*key))
        elif kind is Kind.PODS and isinstance(parsed, PodRecord):
            release_if_placed(self.state, self.ledger, parsed.cell)
            self.on_cell_changed(parsed.cell)
        elif kind is Kind.DEPLOYMENTS:
            self.on_cell_changed(CellKey(*key))

    def replaced(self, kind: Kind, items: Mapping[Key, Parsed], namespace: str | None) -> None:
        """A complete listing of `kind` (in `namespace`, or everywhere)."""
        self.state.replace(kind, items, namespace)
        held = [CellKey(*r.cell) for r in self.ledger.live(self.gate.now())]
        if kind is Kind.CELLS:
            for cell in held:
                if cell not in self.state.cells and cell not in self.state.cell_errors:
                    self._forget_cell(cell)  # deleted while the watch was away
        elif kind is Kind.PODS:
            for cell in held:
                release_if_placed(self.state, self.ledger, cell)

    def _forget_cell(self, cell: CellKey) -> None:
        self.ledger.release(cell)
        self.gate.forget(cell)
