"""End-to-end helpers: the operator as a real local process, node pools, budgets, cells.

They live in the package (cellguard.devcluster: processes, install, pools, cells), where the
benchmarks and the demo use them too; this module keeps the names the tests import.

Each test gets its own node pool (kwok nodes with a pool label and a matching NoSchedule
taint), so cells of one test never land on another test's nodes and the budgets a test
sets are the only ones its cells see: `cell_world` makes the namespace and the pool and
cleans both up.
"""

from __future__ import annotations

from pathlib import Path

from cellguard.devcluster.cells import (
    CellWorld,
    apply_admitted,
    apply_yaml,
    cell,
    cell_manifest,
    cell_world,
    condition,
    deployment_replicas,
    ensure_namespace,
    get_json,
    node_threads,
    running_pods,
    wait_cell_pods,
)
from cellguard.devcluster.cluster import ClusterError
from cellguard.devcluster.install import (
    OPERATOR_NAMESPACE,
    OPERATOR_SA,
    OPERATOR_USER,
    apply_policy,
    install_cellguard,
)
from cellguard.devcluster.pools import (
    POOL_LABEL,
    NodePool,
    budget_manifest,
    node_pool,
    rfc3339,
    utc_now,
)
from cellguard.devcluster.processes import OperatorOptions, OperatorProcess
from cellguard.devcluster.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]

__all__ = [
    "OPERATOR_NAMESPACE",
    "OPERATOR_SA",
    "OPERATOR_USER",
    "POOL_LABEL",
    "REPO",
    "CellWorld",
    "ClusterError",
    "NodePool",
    "OperatorOptions",
    "OperatorProcess",
    "apply_admitted",
    "apply_policy",
    "apply_yaml",
    "budget_manifest",
    "cell",
    "cell_manifest",
    "cell_world",
    "condition",
    "deployment_replicas",
    "ensure_namespace",
    "get_json",
    "install_cellguard",
    "node_pool",
    "node_threads",
    "rfc3339",
    "running_pods",
    "utc_now",
    "wait_cell_pods",
    "wait_for",
]
