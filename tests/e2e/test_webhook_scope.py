"""Which namespaces the webhooks see (issue 17 item 6): a namespace labelled
cellguard.io/exempt=true is not cellguard's to guard, like one listed by name."""

from __future__ import annotations

import pytest

from cellguard.devcluster.cluster import LocalCluster

from .harness import OperatorProcess, apply_yaml, cell_world, ensure_namespace, wait_for

pytestmark = pytest.mark.e2e


def test_a_namespace_labelled_exempt_is_not_seen_by_the_webhooks(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    guarded, exempt = "e2e-scope", "e2e-scope-exempt"
    ensure_namespace(cluster, exempt)
    cluster.kubectl("label", "namespace", exempt, "cellguard.io/exempt=true", "--overwrite")
    with cell_world(cluster, guarded, "scope", 2) as world:
        # 40 pods of 5,000 threads on 2 nodes: far over any node's budget.
        oversized = world.manifest("big", replicas=40, base=5_000, per_peer=0)
        refused = apply_yaml(cluster, oversized)
        assert refused.returncode != 0
        assert 'admission webhook "validate-streamcell.cellguard.io" denied' in refused.stderr
        elsewhere = {**oversized, "metadata": {"name": "big", "namespace": exempt}}
        # The API server applies the webhook configuration's selectors: no webhook call.
        admitted = wait_for(
            lambda: (r := apply_yaml(cluster, elsewhere)).returncode == 0 and r,
            what="the cell in the exempt namespace to be admitted without cellguard",
        )
        assert admitted
        cluster.kubectl("delete", "streamcell", "big", "-n", exempt, "--wait=false")
    cluster.kubectl("delete", "namespace", exempt, "--wait=false")
