"""The cache as a planner snapshot, rebuilt no more than needed.

The gate decides on it, the CLI plans on it and the metrics read their node figures from
it, so it is built in one place.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from cellguard.budget import (
    CellView,
    ClusterSnapshot,
    PodPlacement,
    seen_at,
    with_pods,
    with_reserved,
)
from cellguard.state.reservations import ReservationLedger
from cellguard.state.store import CellRecord, ClusterState


@dataclass
class _Built:
    snapshot: ClusterSnapshot
    structure: tuple[int, int]  # (node_version, cell_version) it was built at
    budget_version: int
    pod_version: int
    ledger_version: int
    built_at: float


def build_snapshot(
    state: ClusterState, ledger: ReservationLedger, now: datetime.datetime
) -> ClusterSnapshot:
    """A fresh snapshot of the cache and the live reservations, at `now`."""
    bare = ClusterSnapshot.build(
        nodes=state.nodes.values(),
        cells=[_observed_view(state, record) for record in state.cells.values()],
        pods=_placement(state),
        policies=state.policies,
        now=now,
    )
    return with_reserved(bare, ledger.held(), ledger.reserved)


def _observed_view(state: ClusterState, record: CellRecord) -> CellView:
    """The cell as the planner sees it: with what its pods were observed to hold."""
    seen = state.observation(record.key)
    return record.view if seen is None else replace(record.view, observed=seen)


def _placement(state: ClusterState) -> PodPlacement:
    return PodPlacement(
        {k: dict(v) for k, v in state.placement.items()},
        {k: dict(v) for k, v in state.terminating.items()},
    )


class SnapshotCache:
    """The latest snapshot of a cache and a ledger, kept between decisions.

    A full build costs tens of milliseconds at thousands of nodes, so: nodes, cells and
    policies changing rebuild it (the set of nodes a pod may land on must be exact); budget
    reports - thousands a minute in a big fleet - rebuild it at most once every
    `budget_refresh_seconds` (a figure one second older is still an observation); pods and
    reservations are swapped into the existing snapshot.
    """

    def __init__(
        self,
        state: ClusterState,
        ledger: ReservationLedger,
        *,
        now: Callable[[], datetime.datetime],
        budget_refresh_seconds: float = 1.0,
    ) -> None:
        self.state = state
        self.ledger = ledger
        self.now = now
        self.budget_refresh_seconds = budget_refresh_seconds
        self._built: _Built | None = None

    def snapshot(self) -> ClusterSnapshot:
        now = self.now()
        state = self.state
        built = self._built
        wall = time.monotonic()
        if (
            built is None
            or built.structure != (state.node_version, state.cell_version)
            or (
                built.budget_version != state.budget_version
                and wall - built.built_at >= self.budget_refresh_seconds
            )
        ):
            snapshot = build_snapshot(state, self.ledger, now)
            self._built = _Built(
                snapshot=snapshot,
                structure=(state.node_version, state.cell_version),
                budget_version=state.budget_version,
                pod_version=state.pod_version,
                ledger_version=self.ledger.version,
                built_at=wall,
            )
            return snapshot
        snapshot = built.snapshot
        if built.pod_version != state.pod_version:
            snapshot = with_pods(snapshot, _placement(state))
            built.pod_version = state.pod_version
        if built.ledger_version != self.ledger.version:
            # The ledger's own figures, as they are now: nothing re-summed or copied.
            snapshot = with_reserved(snapshot, self.ledger.held(), self.ledger.reserved)
            built.ledger_version = self.ledger.version
        built.snapshot = snapshot
        return seen_at(snapshot, now)

    @property
    def last_built(self) -> ClusterSnapshot | None:
        """The snapshot kept between calls (before it is seen at a later moment)."""
        return self._built.snapshot if self._built else None
