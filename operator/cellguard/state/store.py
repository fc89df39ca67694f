"""What the operator knows of the cluster: nodes, budgets, cells, policies, cell pods and
the cells' Deployments.

Fed with raw Kubernetes objects (dicts) from the initial listing and then from watch
events; answers with parsed, typed records. Pure: no client, no kopf. Pod counts per
(node, cell) are kept incrementally so that a decision never walks every pod.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from cellguard.api.v1alpha1 import (
    NodeBudgetSpec,
    StreamCell,
    StreamCellSpec,
    ThreadBudgetPolicySpec,
)
from cellguard.budget import CellKey, CellView, NodeView, ObservedThreads
from cellguard.constants import LABEL_CELL

PodKey = tuple[str, str]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CellRecord:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: StreamCellSpec
    view: CellView

    @property
    def key(self) -> CellKey:
        return CellKey(self.namespace, self.name)


@dataclass(frozen=True)
class DeploymentSeen:
    """What a cell's Deployment asks for and has, as last seen (listing, event, or apply)."""

    replicas: int  # spec.replicas
    existing: int = 0  # status.replicas
    ready: int = 0  # status.readyReplicas


@dataclass(frozen=True)
class PodRecord:
    cell: CellKey
    node: str | None
    terminating: bool
    uid: str = ""


def parse_pod(raw: Mapping[str, Any]) -> tuple[PodKey, PodRecord] | None:
    """A cell pod's record, or None for pods that are not a cell's or are finished."""
    metadata = raw.get("metadata", {})
    cell_name = (metadata.get("labels", {}) or {}).get(LABEL_CELL)
    if not cell_name:
        return None
    phase = (raw.get("status", {}) or {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        return None  # a finished pod holds no threads
    namespace = metadata["namespace"]
    node = (raw.get("spec", {}) or {}).get("nodeName") or None
    record = PodRecord(
        cell=CellKey(namespace, cell_name),
        node=node,
        terminating=metadata.get("deletionTimestamp") is not None,
        uid=metadata.get("uid", ""),
    )
    return (namespace, metadata["name"]), record


class ClusterState:
    """The operator's cache. Not thread-safe: mutate it from the event loop only."""

    def __init__(self, clock: Callable[[], datetime] = utc_now) -> None:
        self.clock = clock
        # Node views carry their current budget, so a snapshot takes them as they are.
        self.nodes: dict[str, NodeView] = {}
        self.budgets: dict[str, NodeBudgetSpec] = {}
        # node -> when the operator received its current budget report (its own clock).
        self.budget_received: dict[str, datetime] = {}
        self.budget_errors: dict[str, str] = {}
        self.cells: dict[CellKey, CellRecord] = {}
        self.cell_errors: dict[CellKey, str] = {}
        self.policies: dict[str, ThreadBudgetPolicySpec] = {}
        self.pods: dict[PodKey, PodRecord] = {}
        # cell -> node -> pods of that cell bound to that node (terminating ones included:
        # their threads are there until the pods are gone); the planner's PodPlacement shape.
        self.placement: dict[CellKey, dict[str, int]] = defaultdict(dict)
        # The terminating ones among them (the scheduler's spread does not count them).
        self.terminating: dict[CellKey, dict[str, int]] = defaultdict(dict)
        # cell -> pods of the cell, bound or not.
        self.pods_by_cell: dict[CellKey, int] = defaultdict(int)
        # cell -> uid -> node of its bound, running pods (not terminating): whose threads
        # the node agents' per-pod readings tell.
        self.running_uids: dict[CellKey, dict[str, str]] = defaultdict(dict)
        # node -> pod uid -> threads its agent last read (NodeBudget spec.pods).
        self.pod_threads: dict[str, dict[str, int]] = {}
        # cell -> its Deployment as last seen.
        self.deployments: dict[CellKey, DeploymentSeen] = {}
        self.synced = False
        self.version = 0  # bumped on every change that can move a decision
        # What changed, by kind, so the gate rebuilds only what it must.
        self.node_version = 0
        # Node events seen, and the count at each node's last one: a listing taken when
        # the count was lower is older than what the cache knows of that node.
        self.node_events = 0
        self.node_touched: dict[str, int] = {}
        self.budget_version = 0
        self.cell_version = 0
        self.pod_version = 0

    # ------------------------------------------------------------------ nodes and budgets

    def upsert_node(self, raw: Mapping[str, Any]) -> None:
        name = raw["metadata"]["name"]
        view = NodeView.from_manifest(raw, self.budgets.get(name), self.budget_received.get(name))
        self.node_events += 1
        self.node_touched[name] = self.node_events
        if self.nodes.get(name) != view:
            self.nodes[name] = view
            self.version += 1
            self.node_version += 1

    def forget_absent_nodes(self, listed: set[str], events_before_listing: int) -> list[str]:
        """Drop nodes a listing no longer has, unless an event about them came after it.

        A watch that broke (an API server restart) is resumed by re-listing, which replays
        what exists but says nothing of what was deleted in the gap: a deleted node would
        stay here as a place for new pods - an unsafe ghost. A cheap name listing, taken
        often, settles it.
        """
        gone = [
            name
            for name in self.nodes
            if name not in listed and self.node_touched.get(name, 0) <= events_before_listing
        ]
        for name in gone:
            self.delete_node(name)
        return gone

    def _attach_budget(self, name: str) -> None:
        view = self.nodes.get(name)
        if view is not None:
            self.nodes[name] = replace(
                view,
                budget=self.budgets.get(name),
                budget_received_at=self.budget_received.get(name),
            )

    def delete_node(self, name: str) -> None:
        self.node_events += 1
        self.node_touched[name] = self.node_events
        if self.nodes.pop(name, None) is not None:
            self.version += 1
            self.node_version += 1

    def upsert_budget(self, raw: Mapping[str, Any]) -> None:
        name = raw["metadata"]["name"]
        try:
            spec = NodeBudgetSpec.model_validate(raw.get("spec", {}))
        except ValidationError as error:
            # An unreadable budget is an unknown budget: the planner fails closed on it.
            self.budgets.pop(name, None)
            self.budget_errors[name] = _first_error(error)
        else:
            self._note_receipt(name, spec)
            self.budgets[name] = spec
            self.budget_errors.pop(name, None)
        self._note_pod_threads(name)
        self._attach_budget(name)
        self.version += 1
        self.budget_version += 1

    def _note_receipt(self, name: str, spec: NodeBudgetSpec) -> None:
        """A new report (another observedAt) counts as received now, by the operator's
        clock; the first one seen (a listing: when it arrived is not known) as received when
        it says it was observed, or now if that is later."""
        previous = self.budgets.get(name)
        if previous is not None and previous.observed_at == spec.observed_at:
            return
        now = self.clock()
        observed = spec.observed_at
        observed = observed if observed.tzinfo is not None else observed.replace(tzinfo=UTC)
        self.budget_received[name] = now if previous is not None else min(observed, now)

    def _note_pod_threads(self, name: str) -> None:
        budget = self.budgets.get(name)
        if budget is None or not budget.pods:
            self.pod_threads.pop(name, None)
        else:
            self.pod_threads[name] = {pod.uid: pod.threads for pod in budget.pods}

    def delete_budget(self, name: str) -> None:
        self.budgets.pop(name, None)
        self.budget_received.pop(name, None)
        self.budget_errors.pop(name, None)
        self._note_pod_threads(name)
        self._attach_budget(name)
        self.version += 1
        self.budget_version += 1

    # ------------------------------------------------------------------ cells and policies

    def upsert_cell(self, raw: Mapping[str, Any]) -> CellRecord | None:
        metadata = raw["metadata"]
        key = CellKey(metadata["namespace"], metadata["name"])
        try:
            cell = StreamCell.model_validate(
                {
                    "metadata": {"name": key.name, "namespace": key.namespace},
                    "spec": raw.get("spec", {}),
                }
            )
        except ValidationError as error:
            self.cells.pop(key, None)
            self.cell_errors[key] = _first_error(error)
            self.version += 1
            self.cell_version += 1
            return None
        record = CellRecord(
            namespace=key[0],
            name=key[1],
            uid=metadata.get("uid", ""),
            generation=int(metadata.get("generation", 0)),
            spec=cell.spec,
            view=CellView.from_streamcell(cell),
        )
        previous = self.cells.get(key)
        self.cells[key] = record
        self.cell_errors.pop(key, None)
        # Most cell events are the operator's own status patches and kopf's annotations:
        # the decision's inputs did not move, so neither do the versions (a bump would
        # make the gate rebuild its whole planner snapshot for nothing).
        if previous is None or previous.view != record.view or previous.uid != record.uid:
            self.version += 1
            self.cell_version += 1
        return record

    def delete_cell(self, key: CellKey) -> None:
        self.cells.pop(key, None)
        self.cell_errors.pop(key, None)
        self.version += 1
        self.cell_version += 1

    def upsert_policy(self, raw: Mapping[str, Any]) -> None:
        name = raw["metadata"]["name"]
        try:
            self.policies[name] = ThreadBudgetPolicySpec.model_validate(raw.get("spec", {}) or {})
        except ValidationError:
            self.policies.pop(name, None)  # a broken policy is a missing one: cells refuse
        self.version += 1
        self.cell_version += 1

    def delete_policy(self, name: str) -> None:
        self.policies.pop(name, None)
        self.version += 1
        self.cell_version += 1

    # ------------------------------------------------------------------ pods

    def upsert_pod(self, raw: Mapping[str, Any]) -> None:
        parsed = parse_pod(raw)
        metadata = raw.get("metadata", {})
        key = (metadata.get("namespace", ""), metadata.get("name", ""))
        if parsed is None:
            self.delete_pod(key)
            return
        key, record = parsed
        previous = self.pods.get(key)
        if previous == record:
            return
        if previous is not None:
            self._count(previous, -1)
        self.pods[key] = record
        self._count(record, +1)
        self.version += 1
        self.pod_version += 1

    def delete_pod(self, key: PodKey) -> None:
        previous = self.pods.pop(key, None)
        if previous is not None:
            self._count(previous, -1)
            self.version += 1
            self.pod_version += 1

    def _count(self, record: PodRecord, delta: int) -> None:
        self.pods_by_cell[record.cell] += delta
        if self.pods_by_cell[record.cell] <= 0:
            del self.pods_by_cell[record.cell]
        if record.node is None:
            return
        _add(self.placement, record.cell, record.node, delta)
        if record.terminating:
            _add(self.terminating, record.cell, record.node, delta)
        elif record.uid:
            running = self.running_uids[record.cell]
            if delta > 0:
                running[record.uid] = record.node
            else:
                running.pop(record.uid, None)
                if not running:
                    del self.running_uids[record.cell]

    def observation(self, cell: CellKey) -> ObservedThreads | None:
        """The most threads a running pod of the cell holds, and how many of them run."""
        readings = self.observed_threads(cell)
        if not readings:
            return None
        return ObservedThreads(per_pod=max(readings), replicas=len(self.running_uids[cell]))

    def observed_threads(self, cell: CellKey) -> list[int]:
        """Threads each running pod of the cell holds, as its node's agent last read them
        (pods not read yet are missing)."""
        readings = self.pod_threads
        found = []
        for uid, node in self.running_uids.get(cell, {}).items():
            threads = readings.get(node, {}).get(uid)
            if threads is not None:
                found.append(threads)
        return found

    # ------------------------------------------------------------------ deployments

    def note_deployment(self, raw: Mapping[str, Any]) -> None:
        """Remember what a cell's Deployment asks for and has (from a listing or an event)."""
        metadata = raw.get("metadata", {})
        key = CellKey(metadata.get("namespace", ""), metadata.get("labels", {}).get(LABEL_CELL, ""))
        status = raw.get("status", {}) or {}
        self.deployments[key] = DeploymentSeen(
            replicas=int((raw.get("spec", {}) or {}).get("replicas", 0) or 0),
            existing=int(status.get("replicas", 0) or 0),
            ready=int(status.get("readyReplicas", 0) or 0),
        )

    def note_applied(self, key: CellKey, replicas: int) -> None:
        """The operator applied the cell's Deployment at `replicas` (before the watch says)."""
        seen = self.deployments.get(key)
        self.deployments[key] = (
            replace(seen, replicas=replicas) if seen else DeploymentSeen(replicas=replicas)
        )

    def forget_deployment(self, key: CellKey) -> None:
        self.deployments.pop(key, None)

    def deployment_replicas(self, key: CellKey) -> int | None:
        """spec.replicas of the cell's Deployment (None: it has none yet)."""
        seen = self.deployments.get(key)
        return seen.replicas if seen else None

    def cell_of_deployment(self, namespace: str, name: str) -> str | None:
        """The cell a Deployment belongs to: a cell's Deployment is named after the cell."""
        return name if CellKey(namespace, name) in self.cells else None

    def pods_in_place(self, cell: CellKey) -> int | None:
        """How many pods of the cell run, when every one is bound and none is terminating
        (None while any is pending or leaving)."""
        if self.terminating.get(cell):
            return None
        bound = sum(self.placement.get(cell, {}).values())
        return bound if self.pods_by_cell.get(cell, 0) == bound else None

    # ------------------------------------------------------------------ bulk

    def replace_all(
        self,
        *,
        nodes: Iterable[Mapping[str, Any]],
        budgets: Iterable[Mapping[str, Any]],
        cells: Iterable[Mapping[str, Any]],
        policies: Iterable[Mapping[str, Any]],
        pods: Iterable[Mapping[str, Any]],
    ) -> None:
        """Load a complete listing (start-up and periodic resync); then the cache is synced."""
        fresh = ClusterState(self.clock)
        # A report already seen keeps when it was received: a resync must not make an old
        # report new again.
        known = {name: spec for name, spec in self.budgets.items()}
        fresh.budgets, fresh.budget_received = known, dict(self.budget_received)
        listed = []
        for raw in budgets:
            fresh.upsert_budget(raw)
            listed.append(raw["metadata"]["name"])
        for name in set(known).difference(listed):  # deleted during a watch gap
            fresh.delete_budget(name)
        for raw in nodes:
            fresh.upsert_node(raw)
        for raw in cells:
            fresh.upsert_cell(raw)
        for raw in policies:
            fresh.upsert_policy(raw)
        for raw in pods:
            fresh.upsert_pod(raw)
        self.nodes, self.budgets, self.budget_errors = (
            fresh.nodes,
            fresh.budgets,
            fresh.budget_errors,
        )
        self.budget_received = fresh.budget_received
        self.cells, self.cell_errors, self.policies = fresh.cells, fresh.cell_errors, fresh.policies
        self.pods, self.placement, self.pods_by_cell = (
            fresh.pods,
            fresh.placement,
            fresh.pods_by_cell,
        )
        self.running_uids, self.pod_threads = fresh.running_uids, fresh.pod_threads
        self.terminating = fresh.terminating
        self.version += 1
        self.node_version += 1
        self.budget_version += 1
        self.cell_version += 1
        self.pod_version += 1
        self.synced = True

    def cells_of_service(self, namespace: str, service: str) -> list[CellRecord]:
        return [
            c for c in self.cells.values() if c.namespace == namespace and c.spec.service == service
        ]


def _add(table: dict[CellKey, dict[str, int]], cell: CellKey, node: str, delta: int) -> None:
    per_node = table[cell]
    per_node[node] = per_node.get(node, 0) + delta
    if per_node[node] <= 0:
        del per_node[node]
    if not per_node:
        del table[cell]


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(p) for p in first.get("loc", ()))
    return f"{location}: {first.get('msg', 'invalid')}" if location else str(first.get("msg"))
