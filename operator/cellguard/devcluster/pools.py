"""Node pools on the local control plane, and the NodeBudgets their agents would report.

A pool is a set of kwok nodes with a pool label and a matching NoSchedule taint, so the
cells of one test (or benchmark) never land on another's nodes, and the budgets it sets are
the only ones its cells see. Cells reach a pool through `NodePool.placement`.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cellguard.devcluster.cluster import LocalCluster, NodeSpec

POOL_LABEL = "cellguard.test/pool"
# Nodes are created, and budgets applied, this many at a time (large benchmark pools).
NODE_BATCH = 500
BUDGET_BATCH = 200


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def budget_manifest(
    node: str,
    *,
    threads_max: int = 32_768,
    pid_max: int = 32_768,
    threads_in_use: int = 1_000,
    observed_at: datetime.datetime | None = None,
) -> dict[str, Any]:
    """A node's NodeBudget as its agent would apply it (kubepods unlimited, cgroup v2)."""
    return {
        "apiVersion": "cellguard.io/v1alpha1",
        "kind": "NodeBudget",
        "metadata": {"name": node},
        "spec": {
            "nodeName": node,
            "threadsMax": threads_max,
            "pidMax": pid_max,
            "threadsInUse": threads_in_use,
            "kubepods": {"cgroupVersion": "v2", "unlimited": True},
            "observedAt": rfc3339(observed_at or utc_now()),
        },
    }


def pool_node_specs(
    name: str, count: int, *, first: int = 1, digits: int = 0, pods: str = "110"
) -> list[NodeSpec]:
    """Nodes NAME-FIRST ... of a pool (numbers zero-padded to `digits`), labelled and
    tainted for it."""
    return [
        NodeSpec(
            name=f"{name}-{i:0{digits}d}",
            labels={POOL_LABEL: name},
            taints=({"key": POOL_LABEL, "value": name, "effect": "NoSchedule"},),
            pods=pods,
        )
        for i in range(first, first + count)
    ]


@dataclass
class NodePool:
    cluster: LocalCluster
    name: str
    nodes: list[str]

    @property
    def placement(self) -> dict[str, Any]:
        """A StreamCell's spec.placement that puts it on this pool."""
        return {
            "nodeSelector": {POOL_LABEL: self.name},
            "tolerations": [
                {"key": POOL_LABEL, "operator": "Equal", "value": self.name, "effect": "NoSchedule"}
            ],
        }

    def set_budgets(self, **figures: Any) -> None:
        """Every node's NodeBudget, fresh, with `figures` (see `budget_manifest`)."""
        for start in range(0, len(self.nodes), BUDGET_BATCH):
            batch = self.nodes[start : start + BUDGET_BATCH]
            self.cluster.apply([budget_manifest(n, **figures) for n in batch])

    def delete(self) -> None:
        """Delete the nodes and their budgets (without waiting)."""
        for node in self.nodes:
            self.cluster.kubectl("delete", "node", node, "--wait=false", check=False)
            self.cluster.kubectl("delete", "nodebudget", node, "--wait=false", check=False)


def make_pool(
    cluster: LocalCluster,
    name: str,
    count: int,
    *,
    first: int = 1,
    digits: int = 0,
    pods: str = "110",
    budgets: bool = True,
    ready_timeout: float = 60.0,
    **figures: Any,
) -> NodePool:
    """Create `count` Ready nodes of a pool (numbered on from `first` when a pool grows),
    with a NodeBudget each unless `budgets` is false (figures as keyword arguments)."""
    specs = pool_node_specs(name, count, first=first, digits=digits, pods=pods)
    for start in range(0, len(specs), NODE_BATCH):
        cluster.add_nodes(specs[start : start + NODE_BATCH])
    cluster.wait_nodes_ready([s.name for s in specs], timeout=ready_timeout)
    pool = NodePool(cluster, name, [s.name for s in specs])
    if budgets:
        pool.set_budgets(**figures)
    return pool


@contextlib.contextmanager
def node_pool(
    cluster: LocalCluster, name: str, count: int, *, budgets: bool = True, **figures: Any
) -> Iterator[NodePool]:
    """A pool of `count` nodes NAME-1 ... (see `make_pool`), deleted again afterwards."""
    pool = make_pool(cluster, name, count, budgets=budgets, **figures)
    try:
        yield pool
    finally:
        pool.delete()
