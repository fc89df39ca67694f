"""No side doors: a cell's ReplicaSets are as closed as its Deployment (issue 17, item 5).

The built-in `edit` ClusterRole may scale ReplicaSets. Scaling a cell's ReplicaSet from 3
to 10 would make the ReplicaSet controller start 7 pods - each starting its threads, every
old one growing its peer threads - before the deployment controller scales it back: the
outage's mechanics. Such a change is refused, pointing at the StreamCell; the deployment
controller itself still scales the cell's ReplicaSets (a StreamCell scale goes through).
"""

from __future__ import annotations

import json

import pytest

from cellguard.devcluster.cluster import LocalCluster

from .harness import OperatorProcess, cell_world, get_json, wait_cell_pods

pytestmark = pytest.mark.e2e

EDITOR = "e2e-editor@example.com"


def test_an_editor_cannot_scale_a_cells_replicaset(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    ns = "e2e-side-doors"
    with cell_world(cluster, ns, "sidedoor", 3, delete_namespace=True) as world:
        cluster.kubectl(
            "create",
            "rolebinding",
            "editor",
            "--clusterrole=edit",
            f"--user={EDITOR}",
            "-n",
            ns,
        )
        # Retried while the new pool's budgets fold in.
        world.create("feed", replicas=3, base=200, per_peer=100, retry=True)
        (replicaset,) = get_json(cluster, "rs", "-n", ns, "-l", "cellguard.io/cell=feed")["items"]
        rs = replicaset["metadata"]["name"]
        as_editor = (f"--as={EDITOR}", "-n", ns)
        allowed = cluster.kubectl(
            "auth", "can-i", "update", "replicasets.apps", "--subresource=scale", *as_editor
        )
        assert allowed.stdout.strip() == "yes"  # RBAC lets them: the webhook must not

        scaled = cluster.kubectl("scale", f"rs/{rs}", "--replicas=10", *as_editor, check=False)
        assert scaled.returncode != 0
        assert "this ReplicaSet belongs to StreamCell feed" in scaled.stderr
        assert "kubectl scale streamcell/feed --replicas=10" in scaled.stderr

        patch = json.dumps({"spec": {"replicas": 10}})
        patched = cluster.kubectl(
            "patch", f"rs/{rs}", "--type=merge", "-p", patch, *as_editor, check=False
        )
        assert patched.returncode != 0
        assert "scale the StreamCell instead" in patched.stderr
        assert get_json(cluster, "rs", rs, "-n", ns)["spec"]["replicas"] == 3

        # The deployment controller still scales them: the StreamCell's own path works.
        grown = cluster.kubectl("scale", "streamcell/feed", "--replicas=4", "-n", ns)
        assert grown.returncode == 0, grown.stderr
        wait_cell_pods(cluster, ns, "feed", 4)
