"""Small builders for budget tests: a cluster in a few lines."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from cellguard.api.v1alpha1 import (
    DefaultLimits,
    Isolation,
    KubepodsPids,
    NodeBudgetSpec,
    ThreadBudgetPolicySpec,
    Toleration,
    UnknownBudgetAction,
)
from cellguard.budget import (
    CellKey,
    CellView,
    ClusterSnapshot,
    NodeView,
    PodPlacement,
    Reservation,
    Taint,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PID_MAX = 32_768  # the usual kernel.pid_max, and the binding limit in most tests
ALLOWED_AT_20 = 26_214  # 32,768 less 20%, rounded down


def budget(
    name: str,
    *,
    in_use: int = 1_000,
    threads_max: int = 4_194_304,
    pid_max: int = PID_MAX,
    kubepods_max: int | None = None,
    pod_pids_limit: int | None = None,
    age: timedelta = timedelta(seconds=30),
) -> NodeBudgetSpec:
    return NodeBudgetSpec(
        node_name=name,
        threads_max=threads_max,
        pid_max=pid_max,
        threads_in_use=in_use,
        kubepods=KubepodsPids(max=kubepods_max, unlimited=kubepods_max is None),
        pod_pids_limit=pod_pids_limit,
        observed_at=NOW - age,
    )


def node(
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    taints: Iterable[Taint] = (),
    ready: bool = True,
    unschedulable: bool = False,
    no_budget: bool = False,
    pods_read: int = 0,
    **budget_fields: Any,
) -> NodeView:
    """A node; its budget's `in_use` counts `pods_read` threads the report read for the
    cell pods on it (the rest are the node's other threads, to which the planner adds the
    pods' modelled threads)."""
    return NodeView(
        name=name,
        labels=dict(labels or {}),
        taints=tuple(taints),
        ready=ready,
        unschedulable=unschedulable,
        budget=None if no_budget else budget(name, **budget_fields),
        cell_pod_threads=pods_read,
    )


def cell(
    name: str,
    *,
    replicas: int,
    base: int = 100,
    per_peer: int = 0,
    namespace: str = "prod",
    service: str = "ingest",
    isolation: Isolation = Isolation.NODE_EXCLUSIVE,
    max_replicas: int | None = None,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Iterable[Toleration] = (),
    policy: str = "default",
) -> CellView:
    return CellView(
        namespace=namespace,
        name=name,
        service=service,
        base=base,
        per_peer=per_peer,
        replicas=replicas,
        max_replicas=max_replicas,
        isolation=isolation,
        node_selector=dict(node_selector or {}),
        tolerations=tuple(tolerations),
        policy_name=policy,
    )


def policy(**fields: Any) -> ThreadBudgetPolicySpec:
    return ThreadBudgetPolicySpec.model_validate(fields)


def use_defaults(**defaults: Any) -> ThreadBudgetPolicySpec:
    return ThreadBudgetPolicySpec(
        unknown_budget=UnknownBudgetAction.USE_DEFAULTS,
        defaults=DefaultLimits.model_validate(
            {"threadsMax": 100_000, "pidMax": PID_MAX, **defaults}
        ),
    )


def spread(cell_view: CellView, nodes: Iterable[str], pods: int) -> dict[str, int]:
    """`pods` pods of the cell round-robin over `nodes`: node -> count."""
    names = list(nodes)
    counts: dict[str, int] = {}
    for index in range(pods):
        counts[names[index % len(names)]] = counts.get(names[index % len(names)], 0) + 1
    return counts


def snapshot(
    nodes: Iterable[NodeView],
    cells: Iterable[CellView] = (),
    pods: Mapping[CellKey, Mapping[str, int]] | None = None,
    *,
    policies: Mapping[str, ThreadBudgetPolicySpec] | None = None,
    reservations: Iterable[Reservation] = (),
    now: datetime = NOW,
) -> ClusterSnapshot:

    placement = PodPlacement(dict(pods or {}))
    return ClusterSnapshot.build(
        nodes=nodes,
        cells=cells,
        pods=placement,
        policies={"default": ThreadBudgetPolicySpec()} if policies is None else policies,
        now=now,
        reservations=reservations,
    )


def reservation(
    cell_view: CellView, threads_by_node: Mapping[str, int], *, ttl: int = 60
) -> Reservation:
    return Reservation(
        cell=cell_view.key,
        threads_by_node=dict(threads_by_node),
        expires_at=NOW + timedelta(seconds=ttl),
    )
