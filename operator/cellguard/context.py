"""Everything the kopf handlers share: settings, the cache, the gate, metrics, the client.

The handlers stay thin: they translate events into calls on this context. The only I/O
here is `apply_children` (run in a worker thread), so the rest can be driven from tests.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any

from cellguard.budget.snapshot import CellKey
from cellguard.constants import LABEL_CELL
from cellguard.metrics import CellFiguresRow, FleetReport, OperatorMetrics
from cellguard.resources import builders
from cellguard.settings import Settings
from cellguard.state.gate import ScaleGate
from cellguard.state.reservations import ReservationLedger
from cellguard.state.store import CellRecord, ClusterState

Applier = Callable[[dict[str, Any]], dict[str, Any]]


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class OperatorContext:
    def __init__(
        self,
        settings: Settings,
        metrics: OperatorMetrics,
        apply: Applier,
        *,
        now: Callable[[], datetime.datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state = ClusterState()
        self.ledger = ReservationLedger()
        self.now = now
        self.gate = ScaleGate(self.state, self.ledger, metrics, now=now)
        self._apply = apply
        self.own_username: str | None = None
        # What the operator last saw of each cell's Deployment.
        self.deployment_replicas: dict[CellKey, int] = {}
        self.deployment_existing: dict[CellKey, int] = {}
        self.deployment_ready: dict[CellKey, int] = {}
        self.cell_rows: dict[tuple[str, str], CellFiguresRow] = {}
        self._budget_listeners: list[Callable[[], None]] = []

    # ------------------------------------------------------------------ identity

    def is_own_request(self, userinfo: Mapping[str, Any]) -> bool:
        """True for the operator's own writes (it alone may change a cell's Deployment)."""
        return self.own_username is not None and userinfo.get("username") == self.own_username

    def cell_of_deployment(self, namespace: str, name: str) -> str | None:
        # A cell's Deployment is named after the cell.
        return name if CellKey(namespace, name) in self.state.cells else None

    # ------------------------------------------------------------------ children

    def note_deployment(self, raw: dict[str, Any]) -> None:
        """Remember what a cell's Deployment asks for and has (from a listing or an event)."""
        metadata = raw.get("metadata", {})
        key = CellKey(metadata.get("namespace", ""), metadata.get("labels", {}).get(LABEL_CELL, ""))
        status = raw.get("status", {}) or {}
        self.deployment_replicas[key] = int((raw.get("spec", {}) or {}).get("replicas", 0) or 0)
        self.deployment_existing[key] = int(status.get("replicas", 0) or 0)
        self.deployment_ready[key] = int(status.get("readyReplicas", 0) or 0)

    def forget_deployment(self, key: CellKey) -> None:
        for table in (self.deployment_replicas, self.deployment_existing, self.deployment_ready):
            table.pop(key, None)

    def has_children(self, key: CellKey) -> bool:
        return key in self.deployment_replicas

    def apply_children(self, record: CellRecord, replicas: int, threads_per_pod: int) -> None:
        """Server-side apply the cell's Deployment, Service and PDB (blocking)."""
        args = (record.namespace, record.name, record.uid, record.spec)
        self._apply(builders.deployment(*args, replicas=replicas, threads_per_pod=threads_per_pod))
        self._apply(builders.headless_service(*args))
        self._apply(builders.disruption_budget(*args))

    # ------------------------------------------------------------------ notifications

    def on_budget_change(self, listener: Callable[[], None]) -> None:
        self._budget_listeners.append(listener)

    def budget_changed(self) -> None:
        for listener in self._budget_listeners:
            listener()

    # ------------------------------------------------------------------ metrics

    def fleet_report(self) -> FleetReport:
        if not self.state.synced:
            # A follower (or a leader still listing) knows nothing: no series rather than
            # zeros that would read as "every budget unknown".
            return FleetReport()
        live = {
            key: row for key, row in self.cell_rows.items() if CellKey(*key) in self.state.cells
        }
        self.cell_rows = live
        return FleetReport(nodes=self.gate.node_figures(), cells=dict(live))
