"""cellguard installed on a local control plane without its Helm chart, for an operator run
as a local process (see processes.py): the CRDs, the operator's namespace, its
ServiceAccount with cluster-admin, and a ThreadBudgetPolicy.

Used by the e2e tests and the benchmarks; the demo installs the Helm chart instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.processes import DEFAULT_OPERATOR_NAMESPACE
from cellguard.devcluster.toolchain import repo_root

OPERATOR_NAMESPACE = DEFAULT_OPERATOR_NAMESPACE
OPERATOR_SA = "cellguard-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"


def crds_dir() -> Path:
    """The checkout's crds/ (generated from the models by `python -m cellguard.crdgen`)."""
    root = repo_root()
    if root is None:
        raise RuntimeError("installing cellguard's CRDs needs a cellguard checkout")
    return root / "crds"


def install_cellguard(cluster: LocalCluster) -> Path:
    """CRDs, the operator's namespace, identity and RBAC; returns its kubeconfig."""
    for crd in sorted(crds_dir().glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    cluster.apply(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": OPERATOR_SA, "namespace": OPERATOR_NAMESPACE},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "cellguard-e2e-operator"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "cluster-admin",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NAMESPACE}
                ],
            },
        ]
    )
    return cluster.user_kubeconfig(
        OPERATOR_USER, ("system:serviceaccounts", f"system:serviceaccounts:{OPERATOR_NAMESPACE}")
    )


def apply_policy(cluster: LocalCluster, name: str = "default", **spec: Any) -> None:
    """A ThreadBudgetPolicy: 20 % margin, budgets stale after an hour, unless `spec` says."""
    body = {"safetyMargin": 0.2, "staleAfterSeconds": 3600, **spec}
    cluster.apply(
        [
            {
                "apiVersion": "cellguard.io/v1alpha1",
                "kind": "ThreadBudgetPolicy",
                "metadata": {"name": name},
                "spec": body,
            }
        ]
    )
