"""The chart's tenant roles on the real control plane: a person bound only to Kubernetes'
built-in `edit` ClusterRole in one namespace (a RoleBinding) works with StreamCells there."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cellguard.devcluster.cluster import LocalCluster
from helm_support import Helm, Manifest, all_of

from .harness import OperatorProcess, cell_world, deployment_replicas, wait_cell_pods, wait_for

pytestmark = pytest.mark.e2e

NAMESPACE = "e2e-tenant"
USER = "tenant-alice"
TENANT_ROLES = ("cellguard-view", "cellguard-edit", "cellguard-budget-reader")


def _binding(kind: str, name: str, role: str, namespace: str | None = None) -> Manifest:
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}],
    }


def _delete(cluster: LocalCluster, manifests: list[Manifest]) -> None:
    cluster.kubectl(
        "delete", "--ignore-not-found", "--wait=false", "-f", "-",
        input_text=yaml.safe_dump_all(manifests), check=False,
    )  # fmt: skip


@pytest.fixture
def tenant_roles(cluster: LocalCluster) -> Iterator[list[Manifest]]:
    """The chart's tenant ClusterRoles (release `cellguard`), applied; deleted afterwards."""
    manifests = Helm(cluster.bin_dir / "helm").template(release="cellguard")
    roles = [m for m in all_of(manifests, "ClusterRole") if m["metadata"]["name"] in TENANT_ROLES]
    assert sorted(r["metadata"]["name"] for r in roles) == sorted(TENANT_ROLES)
    try:
        yield roles
    finally:
        _delete(cluster, roles)


def test_a_namespace_editor_creates_scales_and_lists_streamcells(
    cluster: LocalCluster,
    operator: OperatorProcess,
    tenant_roles: list[Manifest],
    tmp_path: Path,
) -> None:
    kubeconfig = cluster.user_kubeconfig(USER)

    def as_user(*args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(cluster.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
            input=input_text, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def can(check: str) -> bool:
        return as_user("auth", "can-i", *check.split()).stdout.strip() == "yes"

    binding = _binding("RoleBinding", "tenant-alice-edit", "edit", NAMESPACE)
    readers = _binding("ClusterRoleBinding", "e2e-tenant-alice-budgets", "cellguard-budget-reader")
    with cell_world(cluster, NAMESPACE, "tenant", 3) as world:
        try:
            cluster.apply([binding])
            # Without the chart's roles, the built-in edit role knows nothing of StreamCells,
            # and `kubectl get all` (StreamCell is in the `all` category) is Forbidden.
            wait_for(lambda: can(f"list pods -n {NAMESPACE}"), timeout=30, what="the binding")
            assert not can(f"list streamcells.cellguard.io -n {NAMESPACE}")
            forbidden = as_user("get", "all", "-n", NAMESPACE)
            assert "forbidden" in forbidden.stderr.lower(), forbidden.stderr

            cluster.apply(tenant_roles)
            # The cluster role aggregation controller folds them into view, edit and admin.
            wait_for(
                lambda: can(f"patch streamcells.cellguard.io --subresource=scale -n {NAMESPACE}"),
                timeout=30,
                what="the tenant roles to be aggregated into edit",
            )

            # ---- create (retried while the operator folds in the new pool's budgets).
            manifest = world.manifest("tenant-web", replicas=2, base=50, per_peer=10)
            deadline = time.monotonic() + 60
            while True:
                created = as_user("apply", "-f", "-", input_text=yaml.safe_dump(manifest))
                if created.returncode == 0 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            assert created.returncode == 0, created.stderr
            # Its pods running: a scale of a cell the operator does not know yet is refused.
            wait_cell_pods(cluster, NAMESPACE, "tenant-web", 2)

            # ---- scale through /scale: admitted, reaches the Deployment.
            scaled = as_user("scale", "streamcell/tenant-web", "-n", NAMESPACE, "--replicas=3")
            assert scaled.returncode == 0, scaled.stderr
            wait_for(
                lambda: deployment_replicas(cluster, NAMESPACE, "tenant-web") == 3,
                timeout=60,
                what="the tenant's scale-up to reach the Deployment",
            )
            # cellguard still decides for tenants: an impossible scale-up is refused with
            # the webhook's reason, not by RBAC.
            refused = as_user(
                "scale", "streamcell/tenant-web", "-n", NAMESPACE, "--replicas=100000"
            )
            assert refused.returncode != 0
            assert "denied the request" in refused.stderr and "forbidden" not in (
                refused.stderr.lower()
            ), refused.stderr

            # ---- `kubectl get all` answers, the cell among the rest.
            listed = as_user("get", "all", "-n", NAMESPACE)
            assert listed.returncode == 0, listed.stderr
            assert "forbidden" not in listed.stderr.lower(), listed.stderr
            assert "streamcell.cellguard.io/tenant-web" in listed.stdout, listed.stdout
            assert "deployment.apps/tenant-web" in listed.stdout, listed.stdout
            shown = as_user("get", "streamcell", "tenant-web", "-n", NAMESPACE, "-o", "name")
            assert shown.stdout.strip() == "streamcell.cellguard.io/tenant-web", shown.stderr

            # ---- and nothing beyond: other namespaces, status, policies and budgets.
            assert not can("list streamcells.cellguard.io -n default")
            assert not can(f"patch streamcells.cellguard.io --subresource=status -n {NAMESPACE}")
            assert not can("list threadbudgetpolicies.cellguard.io")
            assert not can("create threadbudgetpolicies.cellguard.io")
            # Cluster-scoped budget data: read once an admin binds budget-reader cluster-wide.
            cluster.apply([readers])
            wait_for(lambda: can("list nodebudgets.cellguard.io"), timeout=30, what="budget-reader")
            policies = as_user("get", "threadbudgetpolicies", "-o", "name")
            assert "threadbudgetpolicy.cellguard.io/default" in policies.stdout, policies.stderr
            assert not can("patch nodebudgets.cellguard.io")

            # ---- and deletes what is theirs.
            deleted = as_user("delete", "streamcell", "tenant-web", "-n", NAMESPACE)
            assert deleted.returncode == 0, deleted.stderr
        finally:
            _delete(cluster, [binding, readers])
