"""The cluster as the decision sees it: plain frozen values, no API objects, no I/O.

The operator builds a `ClusterSnapshot` from its caches (nodes, NodeBudgets, StreamCells,
policies, pod counts, reservations) and asks the planner about it. Snapshots are
immutable; what the planner derives from one (indexes by label, taint, policy ...) is
computed once, on first use, and kept with it under a typed `Index`. A snapshot that
differs by one change (see `changes`) keeps every derived index the change does not touch,
so a burst of decisions does not rebuild the world each time.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from cellguard.api.v1alpha1 import (
    Isolation,
    NodeBudgetSpec,
    StreamCell,
    TaintEffect,
    ThreadBudgetPolicySpec,
    Toleration,
)
from cellguard.constants import DEFAULT_POLICY_NAME


class CellKey(NamedTuple):
    """A cell's identity. A plain `(namespace, name)` tuple compares and hashes equal."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Taint:
    """A core/v1 node taint."""

    key: str
    value: str = ""
    effect: str = TaintEffect.NO_SCHEDULE


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node: what decides where pods may land, and its observed budget."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    ready: bool = True
    unschedulable: bool = False
    budget: NodeBudgetSpec | None = None
    # When the operator received that budget report, by its own clock (None: not known).
    budget_received_at: datetime | None = None
    # The threads that report's per-pod readings give the cell pods it names (the rest of
    # its threads in use are the node's others).
    cell_pod_threads: int = 0

    @classmethod
    def from_manifest(
        cls,
        node: Mapping[str, Any],
        budget: NodeBudgetSpec | None,
        budget_received_at: datetime | None = None,
    ) -> NodeView:
        """From a core/v1 Node as the API returns it (a dict)."""
        metadata = node.get("metadata") or {}
        spec = node.get("spec") or {}
        conditions = (node.get("status") or {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        taints = tuple(
            Taint(key=t.get("key", ""), value=t.get("value") or "", effect=t.get("effect", ""))
            for t in spec.get("taints") or []
        )
        return cls(
            name=metadata["name"],
            labels=dict(metadata.get("labels") or {}),
            taints=taints,
            ready=ready,
            unschedulable=bool(spec.get("unschedulable", False)),
            budget=budget,
            budget_received_at=budget_received_at,
        )


@dataclass(frozen=True, slots=True)
class ObservedThreads:
    """What the node agents read of a cell's running pods: the most threads one holds, and
    how many of its pods ran then (each holds threads for the others)."""

    per_pod: int
    replicas: int


@dataclass(frozen=True, slots=True)
class CellView:
    """One StreamCell as the decision needs it."""

    namespace: str
    name: str
    service: str
    base: int
    per_peer: int
    replicas: int
    max_replicas: int | None = None
    isolation: Isolation = Isolation.NODE_EXCLUSIVE
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    policy_name: str = DEFAULT_POLICY_NAME
    # The pods' threads as observed; the planner budgets with the larger of it and the model.
    observed: ObservedThreads | None = None

    @property
    def key(self) -> CellKey:
        return CellKey(self.namespace, self.name)

    @classmethod
    def from_streamcell(cls, cell: StreamCell, *, replicas: int | None = None) -> CellView:
        """From a validated StreamCell; `replicas` overrides spec.replicas.

        Placement is what the pods will carry: the template's own nodeSelector and
        tolerations merged with spec.placement's, as the Deployment builder merges them.
        """
        spec = cell.spec
        pod_spec = spec.template.get("spec") or {}
        node_selector = {**(pod_spec.get("nodeSelector") or {}), **spec.placement.node_selector}
        tolerations = tuple(
            Toleration.model_validate(t) for t in pod_spec.get("tolerations") or []
        ) + tuple(spec.placement.tolerations)
        return cls(
            namespace=cell.metadata.get("namespace", "default"),
            name=cell.metadata["name"],
            service=spec.service,
            base=spec.threads.base,
            per_peer=spec.threads.per_peer,
            replicas=spec.replicas if replicas is None else replicas,
            max_replicas=spec.max_replicas,
            isolation=spec.isolation,
            node_selector=node_selector,
            tolerations=tolerations,
            policy_name=spec.policy_ref,
        )


class ReservationLike(Protocol):
    """Anything that holds threads for an admitted change (the operator's ledger entries)."""

    @property
    def cell(self) -> tuple[str, str]: ...

    @property
    def threads_by_node(self) -> Mapping[str, int]: ...

    @property
    def expires_at(self) -> datetime: ...

    @property
    def claimed_nodes(self) -> frozenset[str]: ...


@dataclass(frozen=True, slots=True)
class Reservation:
    """Threads an admitted, not yet applied change holds on each node until it expires."""

    cell: CellKey
    threads_by_node: Mapping[str, int]
    expires_at: datetime
    target_replicas: int = 0
    # Free nodes the change takes into the cell's pool (NodeExclusive cells): no other
    # cell of the service may take them while the reservation holds.
    claimed_nodes: frozenset[str] = frozenset()
    # The cell's generation from which its spec in the operator's cache is the one this
    # change was admitted for (None: not known, taken as seen). Until then the cache still
    # counts the cell's pods at the old size, and the reservation holds all it has.
    generation: int | None = None
    # node -> new pods of the change the node may receive at worst: the only nodes its
    # pods still to come can land on (None: not known; the reservation is then held
    # whole until the change is in place). See `pending.still_needed`.
    new_pods: Mapping[str, int] | None = None


# A cell's claims: (expires at, free nodes claimed) of each of its reservations claiming any.
Claimed = tuple[tuple[datetime, frozenset[str]], ...]


@dataclass(frozen=True)
class PodPlacement:
    """How many pods of each cell run on each node: cell -> node -> count.

    Pods not yet bound to a node are not counted here (the planner treats the cell's
    missing pods as pods still to place). Terminating pods are counted (their threads are
    there until they are gone) and also kept apart in `terminating`: the scheduler's spread
    constraint does not count them.
    """

    by_cell: Mapping[CellKey, Mapping[str, int]] = field(default_factory=dict)
    terminating: Mapping[CellKey, Mapping[str, int]] = field(default_factory=dict)

    @classmethod
    def from_pairs(cls, pods: Iterable[tuple[tuple[str, str], str]]) -> PodPlacement:
        """From (cell key, node name) pairs, one per bound pod."""
        by_cell: dict[CellKey, dict[str, int]] = {}
        for cell, node in pods:
            nodes = by_cell.setdefault(CellKey(*cell), {})
            nodes[node] = nodes.get(node, 0) + 1
        return cls(by_cell)

    def of_cell(self, cell: tuple[str, str]) -> Mapping[str, int]:
        return self.by_cell.get(CellKey(*cell), {})

    def live_of_cell(self, cell: tuple[str, str]) -> Mapping[str, int]:
        """node -> the cell's pods there that the scheduler's spread counts (not terminating)."""
        key = CellKey(*cell)
        pods = self.by_cell.get(key, {})
        leaving = self.terminating.get(key)
        if not leaving:
            return pods
        return {node: count - leaving.get(node, 0) for node, count in pods.items()}

    def on_node(self, node: str) -> dict[CellKey, int]:
        """Pods per cell on one node (a scan; the planner never needs it in a hot path)."""
        return {cell: nodes[node] for cell, nodes in self.by_cell.items() if node in nodes}


_T = TypeVar("_T")


class Input(Enum):
    """A part of the snapshot a derived index is computed from."""

    NODES = "nodes"
    CELLS = "cells"
    PODS = "pods"
    POLICIES = "policies"
    RESERVATIONS = "reservations"
    NOW = "now"


@dataclass(frozen=True, slots=True)
class Index(Generic[_T]):
    """The key of a derived index: what it is, what it is computed from, and (for a family
    of indexes, one per policy or per service) which one. Typed: `derived` returns a `_T`.
    """

    name: str
    inputs: frozenset[Input]
    of_what: Hashable = ""

    def of(self, what: Hashable) -> Index[_T]:
        """The member of this family for `what` (a policy name, a service ...)."""
        return Index(self.name, self.inputs, what)


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True, eq=False)
class ClusterSnapshot:
    """Everything one decision looks at, at one moment.

    A leaf: it knows nothing of what is derived from it. `changes` makes snapshots that
    differ by one change and carries the usage figures over.
    """

    nodes: Mapping[str, NodeView]
    cells: Mapping[CellKey, CellView]
    pods: PodPlacement
    policies: Mapping[str, ThreadBudgetPolicySpec]
    now: datetime
    reservations: tuple[ReservationLike, ...] = ()
    # Derived indexes, filled lazily by `derived`; a derived snapshot keeps the ones whose
    # inputs did not change.
    _derived: dict[Index[Any], Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "now", _utc(self.now))

    @classmethod
    def build(
        cls,
        *,
        nodes: Iterable[NodeView],
        cells: Iterable[CellView],
        pods: PodPlacement | Iterable[tuple[tuple[str, str], str]],
        policies: Mapping[str, ThreadBudgetPolicySpec],
        now: datetime,
        reservations: Iterable[ReservationLike] = (),
    ) -> ClusterSnapshot:
        placement = pods if isinstance(pods, PodPlacement) else PodPlacement.from_pairs(pods)
        return cls(
            nodes={node.name: node for node in nodes},
            cells={cell.key: cell for cell in cells},
            pods=placement,
            policies=dict(policies),
            now=now,
            reservations=tuple(reservations),
        )

    def derived(self, index: Index[_T], compute: Callable[[], _T]) -> _T:
        """A derived index, computed on first use and kept for the snapshot's lifetime."""
        try:
            value: _T = self._derived[index]
        except KeyError:
            value = self._derived[index] = compute()
        return value

    def peek(self, index: Index[_T]) -> _T | None:
        """A derived index if it was computed already, else None (never computes)."""
        found: _T | None = self._derived.get(index)
        return found

    def seed(self, index: Index[_T], value: _T) -> None:
        """Set a derived index of a new snapshot from its parent's (see `changes`)."""
        self._derived[index] = value

    def replaced(self, changed: AbstractSet[Input], **fields: Any) -> ClusterSnapshot:
        """A new snapshot with `fields` replaced, keeping the derived indexes that depend on
        none of the `changed` inputs."""
        return self.keeping(lambda index: not index.inputs & changed, **fields)

    def keeping(self, keep: Callable[[Index[Any]], bool], **fields: Any) -> ClusterSnapshot:
        """A new snapshot with `fields` replaced, keeping the derived indexes `keep` says
        the change leaves as they are (for changes finer than a whole input)."""
        kept = {index: value for index, value in self._derived.items() if keep(index)}
        return replace(self, _derived=kept, **fields)
