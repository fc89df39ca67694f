"""What the operator knows of the cluster: nodes, budgets, cells, policies, cell pods and
the cells' Deployments.

Fed with records (`state.records`) from each kind's list and watch, or with raw objects
(dicts) by the CLI and the tests; answers with parsed, typed records. Pure: no client, no
kopf. Pod counts per (node, cell) are kept incrementally so that a decision never walks
every pod. A kind's listing replaces what the cache holds of it (within the namespace
listed): what a watch gap hid - a node, a budget, a cell deleted meanwhile - is forgotten.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from cellguard.api.v1alpha1 import NodeBudgetSpec, ThreadBudgetPolicySpec
from cellguard.budget import CellKey, NodeView, ObservedThreads
from cellguard.state.journal import ChangeJournal
from cellguard.state.records import (
    CellRecord,
    DeploymentSeen,
    Invalid,
    Key,
    Kind,
    Parsed,
    PodKey,
    PodRecord,
    intern,
    key_of,
    parse,
    parse_pod,
)

__all__ = ["CellRecord", "ClusterState", "DeploymentSeen", "PodKey", "PodRecord", "utc_now"]


def utc_now() -> datetime:
    return datetime.now(UTC)


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
        self.cell_errors: dict[CellKey, Invalid] = {}
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
        # The uids of the cell pods bound to a node (terminating ones included): which of a
        # report's per-pod readings are the cell pods' (the planner models those) and which
        # are the node's other threads.
        self.bound_uids: set[str] = set()
        # cell -> its Deployment as last seen.
        self.deployments: dict[CellKey, DeploymentSeen] = {}
        # The kinds listed at least once: the cache is complete when every kind is.
        self.listed: set[Kind] = set()
        self.version = 0  # bumped on every change that can move a decision
        # What changed, by kind, so the gate rebuilds only what it must; for nodes and
        # cells also which ones, so that it can follow them one by one.
        self.node_changes: ChangeJournal[str] = ChangeJournal()
        self.cell_changes: ChangeJournal[CellKey] = ChangeJournal()
        self.budget_version = 0
        self.policy_version = 0
        self.pod_version = 0

    @property
    def node_version(self) -> int:
        return self.node_changes.version

    @property
    def cell_version(self) -> int:
        return self.cell_changes.version

    @property
    def synced(self) -> bool:
        return self.listed >= set(Kind)

    # ------------------------------------------------------------------ by kind

    def put(self, kind: Kind, key: Key, parsed: Parsed) -> None:
        """An object of `kind` as listed or watched (ADDED or MODIFIED), already parsed."""
        if kind is Kind.NODES:
            assert isinstance(key, str) and isinstance(parsed, NodeView)
            self._put_node(parsed)
        elif kind is Kind.BUDGETS:
            assert isinstance(key, str) and isinstance(parsed, NodeBudgetSpec | Invalid)
            self._put_budget(key, parsed)
        elif kind is Kind.POLICIES:
            assert isinstance(key, str)
            assert isinstance(parsed, ThreadBudgetPolicySpec | Invalid)
            self._put_policy(key, parsed)
        elif kind is Kind.CELLS:
            assert isinstance(parsed, CellRecord | Invalid)
            self._put_cell(CellKey(*key), parsed)
        elif kind is Kind.PODS:
            assert isinstance(key, tuple) and isinstance(parsed, PodRecord | None)
            self._put_pod(key, parsed)
        else:
            assert isinstance(parsed, DeploymentSeen)
            self.deployments[CellKey(*key)] = parsed

    def remove(self, kind: Kind, key: Key) -> None:
        """An object of `kind` is gone (a DELETED event, or absent from a new listing)."""
        if kind is Kind.NODES:
            self.delete_node(str(key))
        elif kind is Kind.BUDGETS:
            self.delete_budget(str(key))
        elif kind is Kind.POLICIES:
            self.delete_policy(str(key))
        elif kind is Kind.CELLS:
            self.delete_cell(CellKey(*key))
        elif kind is Kind.PODS:
            assert isinstance(key, tuple)
            self.delete_pod(key)
        else:
            self.forget_deployment(CellKey(*key))

    def keys(self, kind: Kind) -> list[Key]:
        """The keys the cache holds of `kind` (invalid objects included)."""
        if kind is Kind.NODES:
            return list(self.nodes)
        if kind is Kind.BUDGETS:
            return [*self.budgets, *self.budget_errors]
        if kind is Kind.POLICIES:
            return list(self.policies)
        if kind is Kind.CELLS:
            return [*self.cells, *self.cell_errors]
        if kind is Kind.PODS:
            return list(self.pods)
        return list(self.deployments)

    def replace(
        self, kind: Kind, items: Mapping[Key, Parsed], namespace: str | None = None
    ) -> None:
        """A complete listing of `kind` (in `namespace`, or everywhere): what it lacks is
        forgotten, what it has is put. A report seen before keeps when it was received,
        so a relisting does not make an old budget fresh again."""
        for key in self.keys(kind):
            if key not in items and (namespace is None or key[0] == namespace):
                self.remove(kind, key)
        for key, parsed in items.items():
            self.put(kind, key, parsed)
        self.listed.add(kind)
        if kind is Kind.PODS:
            self._reattach_budgets()

    def _reattach_budgets(self) -> None:
        """Which readings are cell pods', again: pods listed after their nodes' reports
        (the first listing lists every kind at once) are known now."""
        before = {name: self.nodes.get(name) for name in self.pod_threads}
        for name in self.pod_threads:
            self._attach_budget(name)
        # A resync that finds what the cache held changes nothing: no snapshot rebuild.
        if any(self.nodes.get(name) != view for name, view in before.items()):
            self.version += 1
            self.budget_version += 1

    # ------------------------------------------------------------------ nodes and budgets

    def upsert_node(self, raw: Mapping[str, Any]) -> None:
        self.put(Kind.NODES, key_of(Kind.NODES, raw), parse(Kind.NODES, raw))

    def _put_node(self, parsed: NodeView) -> None:
        name = parsed.name
        held = self.nodes.get(name)
        view = replace(
            parsed,
            budget=self.budgets.get(name),
            budget_received_at=self.budget_received.get(name),
            # A figure of the report, kept until the next one.
            cell_pod_threads=(
                held.cell_pod_threads if held is not None else self._cell_pod_threads(name)
            ),
        )
        if self.nodes.get(name) != view:
            self.nodes[name] = view
            self.version += 1
            self.node_changes.bump(name)

    def _attach_budget(self, name: str) -> None:
        view = self.nodes.get(name)
        if view is not None:
            self.nodes[name] = replace(
                view,
                budget=self.budgets.get(name),
                budget_received_at=self.budget_received.get(name),
                cell_pod_threads=self._cell_pod_threads(name),
            )

    def _cell_pod_threads(self, node: str) -> int:
        """What the node's report reads for the cell pods the cache knows: a reading of a
        pod not known yet counts among the node's other threads (counted twice, with its
        model, until the next report - never left out)."""
        bound = self.bound_uids
        return sum(t for uid, t in self.pod_threads.get(node, {}).items() if uid in bound)

    def delete_node(self, name: str) -> None:
        if self.nodes.pop(name, None) is not None:
            self.version += 1
            self.node_changes.bump(name)

    def upsert_budget(self, raw: Mapping[str, Any]) -> None:
        self.put(Kind.BUDGETS, key_of(Kind.BUDGETS, raw), parse(Kind.BUDGETS, raw))

    def _put_budget(self, name: str, parsed: NodeBudgetSpec | Invalid) -> None:
        if isinstance(parsed, Invalid):
            # An unreadable budget is an unknown budget: the planner fails closed on it.
            self.budgets.pop(name, None)
            self.budget_errors[name] = parsed.error
            self.pod_threads.pop(name, None)
        else:
            self._note_receipt(name, parsed)
            # The per-pod readings are kept once, as uid -> threads, not as models.
            if parsed.pods:
                self.pod_threads[name] = {intern(pod.uid): pod.threads for pod in parsed.pods}
                parsed = parsed.model_copy(update={"pods": []})
            else:
                self.pod_threads.pop(name, None)
            self.budgets[name] = parsed
            self.budget_errors.pop(name, None)
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

    def delete_budget(self, name: str) -> None:
        self.budgets.pop(name, None)
        self.budget_received.pop(name, None)
        self.budget_errors.pop(name, None)
        self.pod_threads.pop(name, None)
        self._attach_budget(name)
        self.version += 1
        self.budget_version += 1

    # ------------------------------------------------------------------ cells and policies

    def upsert_cell(self, raw: Mapping[str, Any]) -> CellRecord | None:
        key = key_of(Kind.CELLS, raw)
        parsed = parse(Kind.CELLS, raw)
        self.put(Kind.CELLS, key, parsed)
        return parsed if isinstance(parsed, CellRecord) else None

    def _put_cell(self, key: CellKey, parsed: CellRecord | Invalid) -> None:
        if isinstance(parsed, Invalid):
            self.cells.pop(key, None)
            self.cell_errors[key] = parsed
            self.version += 1
            self.cell_changes.bump(key)
            return
        previous = self.cells.get(key)
        self.cells[key] = parsed
        self.cell_errors.pop(key, None)
        # Most cell events are the operator's own status patches and kopf's annotations:
        # the decision's inputs did not move, so neither do the versions (a bump would
        # make the gate rebuild its whole planner snapshot for nothing).
        if previous is None or previous.view != parsed.view or previous.uid != parsed.uid:
            self.version += 1
            self.cell_changes.bump(key)

    def cell_spec_version(self, key: CellKey) -> tuple[str, int] | None:
        """Which spec of the cell the cache holds, valid or not: (uid, generation)."""
        held = self.cells.get(key) or self.cell_errors.get(key)
        return None if held is None else (held.uid, held.generation)

    def delete_cell(self, key: CellKey) -> None:
        self.cells.pop(key, None)
        self.cell_errors.pop(key, None)
        self.version += 1
        self.cell_changes.bump(key)

    def upsert_policy(self, raw: Mapping[str, Any]) -> None:
        self.put(Kind.POLICIES, key_of(Kind.POLICIES, raw), parse(Kind.POLICIES, raw))

    def _put_policy(self, name: str, parsed: ThreadBudgetPolicySpec | Invalid) -> None:
        if isinstance(parsed, Invalid):
            self.policies.pop(name, None)  # a broken policy is a missing one: cells refuse
        else:
            self.policies[name] = parsed
        self.version += 1
        self.policy_version += 1

    def delete_policy(self, name: str) -> None:
        self.policies.pop(name, None)
        self.version += 1
        self.policy_version += 1

    # ------------------------------------------------------------------ pods

    def upsert_pod(self, raw: Mapping[str, Any]) -> None:
        key = key_of(Kind.PODS, raw)
        assert isinstance(key, tuple)
        self._put_pod(key, parse_pod(raw))

    def _put_pod(self, key: PodKey, record: PodRecord | None) -> None:
        if record is None:
            self.delete_pod(key)
            return
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
        if record.uid:
            (self.bound_uids.add if delta > 0 else self.bound_uids.discard)(record.uid)
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
        self.put(Kind.DEPLOYMENTS, key_of(Kind.DEPLOYMENTS, raw), parse(Kind.DEPLOYMENTS, raw))

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
        deployments: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        """Load a complete listing of raw objects (the CLI, a snapshot file); then the
        cache is synced. Budgets before nodes, so that each node gets its budget at once."""
        listing = {
            Kind.BUDGETS: budgets,
            Kind.NODES: nodes,
            Kind.POLICIES: policies,
            Kind.CELLS: cells,
            Kind.PODS: pods,
            Kind.DEPLOYMENTS: deployments,
        }
        for kind, objects in listing.items():
            self.replace(kind, {key_of(kind, raw): parse(kind, raw) for raw in objects})

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
