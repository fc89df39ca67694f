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
    with_cell,
    with_node_labels,
    with_pods,
    with_reserved,
    without_cell,
)
from cellguard.state.reservations import ReservationLedger
from cellguard.state.store import CellRecord, ClusterState


@dataclass
class _Built:
    snapshot: ClusterSnapshot
    # The cache's versions it reflects.
    node_version: int
    cell_version: int
    policy_version: int
    budget_version: int
    pod_version: int
    ledger_version: int
    built_at: float


# Past this many nodes and cells changed since the last snapshot, a rebuild is cheaper
# than following them one by one (each step copies the cells or nodes mapping).
FOLLOW_AT_MOST = 256


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

    A full build costs tens of milliseconds at thousands of nodes, and a burst of new cells
    (or of NodeExclusive cells labelling nodes into their pools) changes the cache between
    any two decisions, so the snapshot follows the cache instead: each cell added, changed
    or removed, and each node relabelled, is applied to the kept snapshot with its figures
    carried over (see `budget.changes`); pods and reservations are swapped in. Any other
    node change (taints, readiness, a node added or removed), a policy change, or more
    than FOLLOW_AT_MOST changes at once rebuild it (the set of nodes a pod may land on
    must be exact). Budget reports - thousands a minute in a big fleet - rebuild it at
    most once every `budget_refresh_seconds` (a figure one second older is still an
    observation).
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
        self.rebuilds = 0  # full builds so far (the tests read it)

    def snapshot(self, *, current_budgets: bool = False) -> ClusterSnapshot:
        """The snapshot now; `current_budgets`: with every budget report the cache holds,
        however recent the last build (for a refusal: its reason must be the cluster's now).
        """
        now = self.now()
        state = self.state
        built = self._built
        wall = time.monotonic()
        followed = None
        if (
            built is not None
            and built.policy_version == state.policy_version
            and (
                built.budget_version == state.budget_version
                or (not current_budgets and wall - built.built_at < self.budget_refresh_seconds)
            )
        ):
            followed = self._follow(built)
        if built is None or followed is None:
            snapshot = build_snapshot(state, self.ledger, now)
            self.rebuilds += 1
            self._built = _Built(
                snapshot=snapshot,
                node_version=state.node_version,
                cell_version=state.cell_version,
                policy_version=state.policy_version,
                budget_version=state.budget_version,
                pod_version=state.pod_version,
                ledger_version=self.ledger.version,
                built_at=wall,
            )
            return snapshot
        snapshot = followed
        if built.pod_version != state.pod_version:
            snapshot = with_pods(snapshot, _placement(state))
            built.pod_version = state.pod_version
        if built.ledger_version != self.ledger.version:
            # The ledger's own figures, as they are now: nothing re-summed or copied.
            snapshot = with_reserved(snapshot, self.ledger.held(), self.ledger.reserved)
            built.ledger_version = self.ledger.version
        # Kept as seen now: the figures the caller's plans fill in (each policy's node
        # limits, the slack) are there for the next call, which moves on from this moment.
        built.snapshot = snapshot = seen_at(snapshot, now)
        return snapshot

    def _follow(self, built: _Built) -> ClusterSnapshot | None:
        """The kept snapshot with the cells and node labels changed since it was made
        (None: something else changed, rebuild)."""
        state = self.state
        cells = state.cell_changes.since(built.cell_version)
        nodes = state.node_changes.since(built.node_version)
        if cells is None or nodes is None or len(cells) + len(nodes) > FOLLOW_AT_MOST:
            return None
        snapshot = built.snapshot
        for name in nodes:
            kept, current = snapshot.nodes.get(name), state.nodes.get(name)
            if kept is None or current is None or replace(kept, labels=current.labels) != current:
                return None
            snapshot = with_node_labels(snapshot, name, current.labels)
        for key in cells:
            record = state.cells.get(key)
            if record is None:
                snapshot = without_cell(snapshot, key)
            else:
                snapshot = with_cell(snapshot, _observed_view(state, record))
        built.node_version, built.cell_version = state.node_version, state.cell_version
        return snapshot

    def behind_on_budgets(self) -> bool:
        """Whether budget reports came in that the kept snapshot does not hold yet."""
        return self._built is not None and self._built.budget_version != self.state.budget_version

    @property
    def last_built(self) -> ClusterSnapshot | None:
        """The snapshot kept between calls (as of the last call)."""
        return self._built.snapshot if self._built else None
