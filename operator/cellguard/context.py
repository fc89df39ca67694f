"""Everything the kopf handlers share: settings, the cache, the gate, metrics, the client.

The handlers stay thin: they translate events into calls on this context. The only I/O
here is `apply_children` (run in a worker thread), so the rest can be driven from tests.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cellguard.api.v1alpha1 import Isolation
from cellguard.budget import CellKey, is_pool_label, pool_label_key, pool_label_value
from cellguard.constants import LABEL_CELL
from cellguard.metrics import CellFiguresRow, FleetReport, OperatorMetrics
from cellguard.resources import builders
from cellguard.settings import Settings
from cellguard.state.gate import ScaleGate
from cellguard.state.reservations import ReservationLedger
from cellguard.state.store import CellRecord, ClusterState

Applier = Callable[[dict[str, Any]], dict[str, Any]]
# (node name, labels to set, None to remove) -> the node as stored.
NodeLabeler = Callable[[str, dict[str, str | None]], dict[str, Any]]

log = logging.getLogger(__name__)


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
        label_node: NodeLabeler | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.state = ClusterState()
        self.ledger = ReservationLedger()
        self.now = now
        self.gate = ScaleGate(self.state, self.ledger, metrics, now=now)
        self._apply = apply
        self._label_node = label_node
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

    # ------------------------------------------------------------------ reservations

    def release_if_placed(self, cell: CellKey) -> bool:
        """Drop the cell's reservation once nothing it holds threads for is still to come.

        That is when the cell's pods are all bound, none is terminating, at least the
        reserved size (or the smaller size the cell asks for now) of them run, and the
        Deployment asks for at least that many. Counting bound pods alone is not enough:
        after 8 -> 2 -> 5 the terminating pods of the scale-down make 8 bound while 3 new
        pods are still to come, and a release then would let another cell spend their
        threads (seen as an overcommit in the concurrent scale-up test).
        """
        held = self.ledger.get(cell)
        if held is None:
            return False
        record = self.state.cells.get(cell)
        target = held.target_replicas
        if record is not None:
            target = min(target, record.spec.replicas)
        placed = self._pods_in_place(cell)
        settled = (
            placed is not None
            and placed >= target
            and self.deployment_replicas.get(cell, 0) >= target
        )
        if settled:
            self.ledger.release(cell)
        return settled

    def _pods_in_place(self, cell: CellKey) -> int | None:
        """How many pods of the cell run, when every one is bound and none is terminating
        (None while any is pending or leaving)."""
        state = self.state
        if state.terminating.get(cell):
            return None
        bound = sum(state.placement.get(cell, {}).values())
        return bound if state.pods_by_cell.get(cell, 0) == bound else None

    # ------------------------------------------------------------------ node pools

    async def join_pool(self, record: CellRecord, nodes: Iterable[str]) -> list[str]:
        """Label `nodes` into the cell's pool (those not labelled yet); the nodes labelled."""
        key = pool_label_key(record.spec.service)
        value = pool_label_value(record.namespace, record.name)
        todo = [
            name
            for name in sorted(nodes)
            if name in self.state.nodes and self.state.nodes[name].labels.get(key) != value
        ]
        for name in todo:
            await self._set_node_labels(name, {key: value})
            log.info("node %s joined the pool of %s/%s", name, record.namespace, record.name)
        return todo

    async def tend_pools(self) -> list[tuple[str, str]]:
        """Take nodes out of pools their cell no longer needs; the (node, label) removed.

        Decided under the gate's lock, so no decision plans with a node while it leaves.
        """
        if not self.state.synced or self._label_node is None:
            return []
        async with self.gate.exclusive():
            released = self.releasable_pool_labels()
            for name, key in released:
                await self._set_node_labels(name, {key: None})
                log.info("node %s left pool %s", name, key)
        return released

    def releasable_pool_labels(self) -> list[tuple[str, str]]:
        """(node, pool label) pairs whose node its cell no longer needs.

        A node leaves a pool when no NodeExclusive cell of that name exists any more, or
        when its cell is settled - every pod it asked for exists, is bound and none is
        terminating, its Deployment is at its size, no reservation holds - and has no pod
        on the node. With maxSkew 1 a settled cell with an empty pool node has at most one
        pod a node, so a rollout or a replaced pod still finds room in the rest of its pool.
        """
        state = self.state
        owners = {
            (pool_label_key(r.spec.service), pool_label_value(r.namespace, r.name)): r
            for r in state.cells.values()
            if r.spec.isolation is Isolation.NODE_EXCLUSIVE
        }
        unreadable = {pool_label_value(k.namespace, k.name) for k in state.cell_errors}
        hosted: dict[str, set[str]] = {}  # node -> pool values of the cells with pods there
        for cell, per_node in state.placement.items():
            value = pool_label_value(cell.namespace, cell.name)
            for name, count in per_node.items():
                if count > 0:
                    hosted.setdefault(name, set()).add(value)
        now = self.now()
        released = []
        for name, node in sorted(state.nodes.items()):
            for key, value in node.labels.items():
                if not is_pool_label(key) or value in unreadable:
                    continue
                if value in hosted.get(name, ()):
                    continue
                record = owners.get((key, value))
                if record is None or self._settled(record.key, record.spec.replicas, now):
                    released.append((name, key))
        return released

    def _settled(self, key: CellKey, replicas: int, now: datetime.datetime) -> bool:
        held = self.ledger.get(key)
        return (
            (held is None or held.expires_at <= now)
            and self.deployment_replicas.get(key) == replicas
            and self._pods_in_place(key) == replicas
        )

    async def _set_node_labels(self, name: str, labels: dict[str, str | None]) -> None:
        if self._label_node is None:
            raise RuntimeError("this operator context cannot label nodes")
        stored = await asyncio.to_thread(self._label_node, name, labels)
        self.state.upsert_node(stored)  # decide on the new labels before the watch says so

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
