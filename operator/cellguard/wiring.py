"""The parts one operator process wires together, handed to its handlers and loops.

No behaviour of its own: the cache and what the operator last saw (`state.store`), the
decisions (`state.gate`), reservations (`state.reservations`, `state.settling`), node
pools (`state.pools`), the gauges (`metrics`). The only I/O is injected: `apply` (server-
side apply of a manifest) and the node labeller, so the rest can be driven from tests.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cellguard.budget import CellKey
from cellguard.metrics import Fleet, OperatorMetrics
from cellguard.settings import Settings
from cellguard.state.gate import ScaleGate
from cellguard.state.pools import NodeLabeler, NodePools
from cellguard.state.reservations import ReservationLedger
from cellguard.state.store import CellRecord, ClusterState

# A manifest -> the object as stored (server-side apply).
Applier = Callable[[dict[str, Any]], dict[str, Any]]
# Merge-patch a cell's status subresource with the changed fields.
StatusPatcher = Callable[[CellRecord, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class EventSubject:
    """The cell an Event is about (a CellRecord is one too)."""

    namespace: str
    name: str
    uid: str


# Post a Kubernetes Event about a cell: type (Normal/Warning), reason, message.
EventPoster = Callable[[CellRecord | EventSubject, str, str, str], None]


def _not_wired(*_: Any) -> None:
    raise RuntimeError("this Operator was created without an API client to write with")


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass(eq=False)
class Operator:
    settings: Settings
    metrics: OperatorMetrics
    apply: Applier
    state: ClusterState
    ledger: ReservationLedger
    gate: ScaleGate
    pools: NodePools
    fleet: Fleet
    now: Callable[[], datetime.datetime] = utc_now
    patch_status: StatusPatcher = _not_wired
    post_event: EventPoster = _not_wired
    # Who the operator is to the API server (its own writes pass its webhooks).
    own_username: str | None = field(default=None)
    # One lock a cell: it is never converged twice at once.
    _cell_locks: dict[CellKey, asyncio.Lock] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        settings: Settings,
        metrics: OperatorMetrics,
        apply: Applier,
        *,
        now: Callable[[], datetime.datetime] = utc_now,
        label_node: NodeLabeler | None = None,
        patch_status: StatusPatcher = _not_wired,
        post_event: EventPoster = _not_wired,
    ) -> Operator:
        state = ClusterState(clock=now)
        ledger = ReservationLedger()
        gate = ScaleGate(state, ledger, metrics, now=now)
        return cls(
            settings=settings,
            metrics=metrics,
            apply=apply,
            state=state,
            ledger=ledger,
            gate=gate,
            pools=NodePools(state, ledger, gate, label_node, now=now),
            fleet=Fleet(lambda: gate.snapshot() if state.synced else None),
            now=now,
            patch_status=patch_status,
            post_event=post_event,
        )

    def cell_lock(self, cell: CellKey) -> asyncio.Lock:
        return self._cell_locks.setdefault(cell, asyncio.Lock())

    def forget_cell_locks(self) -> None:
        """Drop the locks of cells that are gone (and not held)."""
        for cell in [c for c, lock in self._cell_locks.items() if not lock.locked()]:
            if cell not in self.state.cells:
                del self._cell_locks[cell]

    def is_own_request(self, userinfo: Mapping[str, Any]) -> bool:
        """True for the operator's own writes (it alone may change a cell's Deployment)."""
        return self.own_username is not None and userinfo.get("username") == self.own_username
