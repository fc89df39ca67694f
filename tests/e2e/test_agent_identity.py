"""An agent speaks only for its own node (issue 17 item 4): the chart's
ValidatingAdmissionPolicy, enforced by the real API server, lets the agent's identity write
only the NodeBudget of the node its token is bound to.

Tokens here are real TokenRequests bound to a pod on a kwok node, as the kubelet would give
the agent's DaemonSet pod: the API server puts the node's name into the request's userInfo.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.identities import token_kubeconfig
from helm_support import Helm, is_hook

from .harness import OperatorProcess, budget_manifest, node_pool, wait_for

pytestmark = pytest.mark.e2e

NAMESPACE = "cg-agent-identity"
RELEASE = NAMESPACE  # cluster-scoped names carry the release name
AGENT_SA = f"{RELEASE}-cellguard-agent"
KINDS = (
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
)


def _agent_parts(cluster: LocalCluster) -> list[dict[str, Any]]:
    """The chart's agent identity: its ServiceAccount, RBAC and node policy."""
    helm = Helm(cluster.bin_dir / "helm", kubeconfig=cluster.kubeconfig)
    manifests = helm.template(release=RELEASE, namespace=NAMESPACE)
    agent = [
        m
        for m in manifests
        if m["kind"] in KINDS
        and not is_hook(m)
        and m["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "agent"
    ]
    assert {m["kind"] for m in agent} == set(KINDS), [m["kind"] for m in agent]
    return agent


@pytest.fixture
def agent_identity(
    cluster: LocalCluster,
    operator: OperatorProcess,  # cellguard's CRDs installed; NodeBudgets decided on
) -> Iterator[list[dict[str, Any]]]:
    parts = _agent_parts(cluster)
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(parts))
    try:
        yield parts
    finally:
        for part in reversed(parts):
            kind, name = part["kind"].lower(), part["metadata"]["name"]
            cluster.kubectl("delete", kind, name, "-n", NAMESPACE, "--wait=false", check=False)
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def test_an_agent_may_write_only_its_own_nodes_budget(
    cluster: LocalCluster, agent_identity: list[dict[str, Any]], tmp_path: Path
) -> None:
    with node_pool(cluster, "ident", 2, budgets=False) as pool:
        own, other = pool.nodes
        # The agent's pod on `own`, as the DaemonSet would place it (kwok runs it).
        cluster.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": "agent-own", "namespace": NAMESPACE},
                    "spec": {
                        "serviceAccountName": AGENT_SA,
                        "nodeName": own,
                        "containers": [{"name": "agent", "image": "cellguard:e2e"}],
                    },
                }
            ]
        )
        bound = token_kubeconfig(
            cluster, NAMESPACE, AGENT_SA, tmp_path / "bound.kubeconfig", bound_pod="agent-own"
        )
        unbound = token_kubeconfig(cluster, NAMESPACE, AGENT_SA, tmp_path / "unbound.kubeconfig")

        def write(node: str, kubeconfig: Path) -> subprocess.CompletedProcess[str]:
            return cluster.kubectl(
                f"--kubeconfig={kubeconfig}",
                "apply",
                "--server-side",
                "--field-manager=cellguard-agent",
                "-f",
                "-",
                input_text=yaml.safe_dump(budget_manifest(node)),
                check=False,
            )

        # The policy is enforced once the API server has compiled it.
        def refused_for_other() -> subprocess.CompletedProcess[str] | None:
            answer = write(other, bound)
            if answer.returncode == 0:  # before the policy: undo and try again
                cluster.kubectl("delete", "nodebudget", other, check=False)
                return None
            return answer

        answer = wait_for(refused_for_other, timeout=60, what="the agent node policy")
        assert (
            f"cellguard's agent on node {own} may write only the NodeBudget of its own node, "
            f"not {other}"
        ) in " ".join(answer.stderr.split())
        mine = write(own, bound)
        assert mine.returncode == 0, mine.stderr
        again = write(own, bound)  # an update, as every report after the first
        assert again.returncode == 0, again.stderr
        nameless = write(own, unbound)
        assert nameless.returncode != 0
        assert "must write with the token of its pod" in " ".join(nameless.stderr.split())
        # Anyone else (here the admin) is not this policy's business.
        assert cluster.kubectl("get", "nodebudget", other, check=False).returncode != 0
        cluster.kubectl("delete", "pod", "agent-own", "-n", NAMESPACE, "--wait=false")
