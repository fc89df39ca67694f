"""What the planner answers: a node's projected row, the cell projected at a size, and the
decision on a change (with the figures behind it). Plain frozen values."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from cellguard.api.v1alpha1 import AllowedReason, RefusalReason
from cellguard.budget.limits import BudgetStatus
from cellguard.budget.snapshot import CellKey, Reservation

__all__ = ["AllowedReason", "Decision", "DecisionReason", "NodeRow", "Projection"]

DecisionReason = RefusalReason | AllowedReason


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node as a decision projects it."""

    node: str
    pods: int  # the cell's pods on the node now
    new_pods: int  # new pods of the cell it may receive (worst case)
    now: int | None  # threads counted as in use: max(observed, others + modelled)
    reserved: int  # threads other cells' admitted changes hold there
    projected: int | None
    limit: int | None
    allowed: int | None  # limit less margin
    headroom: float | None  # 1 - projected / limit
    budget: BudgetStatus
    from_defaults: bool

    @property
    def fits(self) -> bool:
        return (
            self.projected is not None
            and self.allowed is not None
            and (self.projected <= self.allowed)
        )


@dataclass(frozen=True, slots=True)
class Projection:
    """The cell at one size, as the decision projects it (whatever its current size)."""

    cell: CellKey
    replicas: int
    threads_per_pod: int
    fits: bool
    reason: RefusalReason | None  # why it does not fit
    refused_node: str | None  # the node the refusal names, if any
    limiting: NodeRow | None  # the node with the least headroom
    rows: tuple[NodeRow, ...]  # nodes hosting the cell + tightest receiving node per limit
    receiving_nodes: int  # nodes that may receive new pods
    claimed_nodes: frozenset[str] = frozenset()  # to label into the cell's pool first

    @property
    def headroom(self) -> float | None:
        return self.limiting.headroom if self.limiting else None


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to 'may this cell go from N to M replicas?', with the figures behind it."""

    allowed: bool
    reason: DecisionReason
    cell: CellKey
    from_replicas: int
    to_replicas: int
    threads_per_pod: int  # at to_replicas
    max_safe_replicas: int
    cell_size_cap: int | None
    margin: float | None
    limiting: NodeRow | None  # least headroom among the nodes the cell uses at M
    refused_node: str | None  # the node a refusal names (unknown budget, PID limit ...)
    # Every node hosting the cell, and of the nodes that may receive its first pods the
    # tightest one per distinct limit (they stand for the rest); tightest first.
    nodes: tuple[NodeRow, ...]
    receiving_nodes: int  # how many nodes may receive new pods
    reservation: Mapping[str, int]  # threads per node to hold until the change is applied
    message: str
    # Nodes to label into the cell's pool before its pods can land (NodeExclusive cells).
    claimed_nodes: frozenset[str] = frozenset()
    # node -> new pods it may receive at worst (allowed scale-ups): where the pods the
    # reservation holds threads for may land.
    new_pods: Mapping[str, int] | None = None

    # The limiting node's figures, as the webhook, the CLI and the status show them.
    @property
    def limiting_node(self) -> str | None:
        return self.limiting.node if self.limiting else None

    @property
    def projected(self) -> int | None:
        return self.limiting.projected if self.limiting else None

    @property
    def limit(self) -> int | None:
        return self.limiting.limit if self.limiting else None

    @property
    def allowed_threads(self) -> int | None:
        return self.limiting.allowed if self.limiting else None

    @property
    def headroom(self) -> float | None:
        return self.limiting.headroom if self.limiting else None

    def reservation_until(
        self, expires_at: datetime, *, generation: int | None = None
    ) -> Reservation:
        """The reservation the operator holds for this (allowed) change; `generation`: the
        cell's generation from which the cache holds the spec it was admitted for."""
        return Reservation(
            cell=self.cell,
            threads_by_node=self.reservation,
            expires_at=expires_at,
            target_replicas=self.to_replicas,
            claimed_nodes=self.claimed_nodes,
            generation=generation,
            new_pods=self.new_pods,
        )
