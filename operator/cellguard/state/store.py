"""What the operator knows of the cluster: nodes, budgets, cells, policies, cell pods.

Fed with raw Kubernetes objects (dicts) from the initial listing and then from watch
events; answers with parsed, typed records. Pure: no client, no kopf. Pod counts per
(node, cell) are kept incrementally so that a decision never walks every pod.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from cellguard.api.v1alpha1 import NodeBudgetSpec, StreamCellSpec, ThreadBudgetPolicySpec
from cellguard.constants import LABEL_CELL

CellKey = tuple[str, str]  # (namespace, name)
PodKey = tuple[str, str]


@dataclass(frozen=True)
class NodeRecord:
    name: str
    labels: Mapping[str, str]
    taints: tuple[Mapping[str, str], ...]
    ready: bool
    unschedulable: bool


@dataclass(frozen=True)
class CellRecord:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: StreamCellSpec

    @property
    def key(self) -> CellKey:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class PodRecord:
    cell: CellKey
    node: str | None
    terminating: bool


def parse_node(raw: Mapping[str, Any]) -> NodeRecord:
    metadata = raw.get("metadata", {})
    spec = raw.get("spec", {}) or {}
    conditions = (raw.get("status", {}) or {}).get("conditions", []) or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    taints = tuple(
        {k: str(v) for k, v in taint.items() if k in ("key", "value", "effect")}
        for taint in spec.get("taints", []) or []
    )
    return NodeRecord(
        name=metadata["name"],
        labels=dict(metadata.get("labels", {}) or {}),
        taints=taints,
        ready=ready,
        unschedulable=bool(spec.get("unschedulable", False)),
    )


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
        cell=(namespace, cell_name),
        node=node,
        terminating=metadata.get("deletionTimestamp") is not None,
    )
    return (namespace, metadata["name"]), record


class ClusterState:
    """The operator's cache. Not thread-safe: mutate it from the event loop only."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeRecord] = {}
        self.budgets: dict[str, NodeBudgetSpec] = {}
        self.budget_errors: dict[str, str] = {}
        self.cells: dict[CellKey, CellRecord] = {}
        self.cell_errors: dict[CellKey, str] = {}
        self.policies: dict[str, ThreadBudgetPolicySpec] = {}
        self.pods: dict[PodKey, PodRecord] = {}
        # node -> cell -> pods of that cell bound to that node (terminating ones included:
        # their threads are still there until they are gone).
        self.pods_by_node: dict[str, dict[CellKey, int]] = defaultdict(dict)
        self.pods_by_cell: dict[CellKey, int] = defaultdict(int)
        self.synced = False
        self.version = 0  # bumped on every change that can move a decision

    # ------------------------------------------------------------------ nodes and budgets

    def upsert_node(self, raw: Mapping[str, Any]) -> None:
        record = parse_node(raw)
        if self.nodes.get(record.name) != record:
            self.nodes[record.name] = record
            self.version += 1

    def delete_node(self, name: str) -> None:
        if self.nodes.pop(name, None) is not None:
            self.version += 1

    def upsert_budget(self, raw: Mapping[str, Any]) -> None:
        name = raw["metadata"]["name"]
        try:
            spec = NodeBudgetSpec.model_validate(raw.get("spec", {}))
        except ValidationError as error:
            # An unreadable budget is an unknown budget: the planner fails closed on it.
            self.budgets.pop(name, None)
            self.budget_errors[name] = _first_error(error)
        else:
            self.budgets[name] = spec
            self.budget_errors.pop(name, None)
        self.version += 1

    def delete_budget(self, name: str) -> None:
        self.budgets.pop(name, None)
        self.budget_errors.pop(name, None)
        self.version += 1

    # ------------------------------------------------------------------ cells and policies

    def upsert_cell(self, raw: Mapping[str, Any]) -> CellRecord | None:
        metadata = raw["metadata"]
        key = (metadata["namespace"], metadata["name"])
        try:
            spec = StreamCellSpec.model_validate(raw.get("spec", {}))
        except ValidationError as error:
            self.cells.pop(key, None)
            self.cell_errors[key] = _first_error(error)
            self.version += 1
            return None
        record = CellRecord(
            namespace=key[0],
            name=key[1],
            uid=metadata.get("uid", ""),
            generation=int(metadata.get("generation", 0)),
            spec=spec,
        )
        self.cells[key] = record
        self.cell_errors.pop(key, None)
        self.version += 1
        return record

    def delete_cell(self, key: CellKey) -> None:
        self.cells.pop(key, None)
        self.cell_errors.pop(key, None)
        self.version += 1

    def upsert_policy(self, raw: Mapping[str, Any]) -> None:
        name = raw["metadata"]["name"]
        try:
            self.policies[name] = ThreadBudgetPolicySpec.model_validate(raw.get("spec", {}) or {})
        except ValidationError:
            self.policies.pop(name, None)  # a broken policy is a missing one: cells refuse
        self.version += 1

    def delete_policy(self, name: str) -> None:
        self.policies.pop(name, None)
        self.version += 1

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

    def delete_pod(self, key: PodKey) -> None:
        previous = self.pods.pop(key, None)
        if previous is not None:
            self._count(previous, -1)
            self.version += 1

    def _count(self, record: PodRecord, delta: int) -> None:
        self.pods_by_cell[record.cell] += delta
        if self.pods_by_cell[record.cell] <= 0:
            del self.pods_by_cell[record.cell]
        if record.node is None:
            return
        per_cell = self.pods_by_node[record.node]
        per_cell[record.cell] = per_cell.get(record.cell, 0) + delta
        if per_cell[record.cell] <= 0:
            del per_cell[record.cell]
        if not per_cell:
            del self.pods_by_node[record.node]

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
        fresh = ClusterState()
        for raw in nodes:
            fresh.upsert_node(raw)
        for raw in budgets:
            fresh.upsert_budget(raw)
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
        self.cells, self.cell_errors, self.policies = fresh.cells, fresh.cell_errors, fresh.policies
        self.pods, self.pods_by_node, self.pods_by_cell = (
            fresh.pods,
            fresh.pods_by_node,
            fresh.pods_by_cell,
        )
        self.version += 1
        self.synced = True

    def cells_of_service(self, namespace: str, service: str) -> list[CellRecord]:
        return [
            c for c in self.cells.values() if c.namespace == namespace and c.spec.service == service
        ]


def _first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(p) for p in first.get("loc", ()))
    return f"{location}: {first.get('msg', 'invalid')}" if location else str(first.get("msg"))
