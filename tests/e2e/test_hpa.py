"""A real HorizontalPodAutoscaler scales a StreamCell through its /scale subresource.

kube-controller-manager's HPA controller reads an external metric from a test adapter
(through the aggregation layer, see metrics_adapter.py) and writes the cell's /scale: a
step within the budget is admitted and the pods come up; a step beyond the cell's
status.maxSafeReplicas is refused by cellguard's webhook, which the HPA reports as a
`FailedRescale` Warning event (and its AbleToScale condition as `FailedUpdateScale`) and
cellguard records in the cell's status.lastRefusal.

The HPA controller's built-in role (system:controller:horizontal-pod-autoscaler) already
grants get/update on `*/scale` in every group and get/list on external.metrics.k8s.io, so
nothing beyond the CRD's scale subresource is needed for an HPA to drive a StreamCell.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.waiting import wait_for

from .harness import (
    OperatorProcess,
    apply_yaml,
    cell,
    cell_world,
    condition,
    deployment_replicas,
    get_json,
    wait_cell_pods,
)
from .metrics_adapter import external_metrics_adapter

pytestmark = pytest.mark.e2e

NS = "e2e-hpa"
CELL = "ingest"
METRIC = "cell_backlog"
HPA_USER = "system:serviceaccount:kube-system:horizontal-pod-autoscaler"


def hpa_manifest(max_replicas: int) -> dict[str, Any]:
    """Wanted replicas = ceil(metric / 1): the metric picks the size exactly."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": CELL, "namespace": NS},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "cellguard.io/v1alpha1",
                "kind": "StreamCell",
                "name": CELL,
            },
            "minReplicas": 1,
            "maxReplicas": max_replicas,
            "metrics": [
                {
                    "type": "External",
                    "external": {
                        "metric": {"name": METRIC},
                        "target": {"type": "AverageValue", "averageValue": "1"},
                    },
                }
            ],
            # No stabilisation and no rate limit on the way up (without a behavior the HPA
            # would at most double per step): each step goes straight to the metric's size.
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "selectPolicy": "Max",
                    "policies": [{"type": "Pods", "value": 100, "periodSeconds": 15}],
                }
            },
        },
    }


def hpa_events(cluster: LocalCluster, reason: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = get_json(
        cluster,
        "events",
        "-n",
        NS,
        "--field-selector",
        f"involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name={CELL},reason={reason}",
    )["items"]
    return events


def hpa_condition(cluster: LocalCluster, type_: str) -> dict[str, Any] | None:
    return condition(get_json(cluster, "hpa", CELL, "-n", NS), type_)


def test_hpa_scales_a_cell_within_budget_and_is_refused_beyond(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    with (
        cell_world(cluster, NS, "hpa", 4, delete_namespace=True) as world,
        external_metrics_adapter(cluster, NS) as adapter,
    ):
        try:
            # 500 threads per peer: 4 nodes fit at most 12 pods (3 a node).
            world.create(CELL, replicas=4, base=200, per_peer=500)
            max_safe = int(
                wait_for(
                    lambda: cell(cluster, NS, CELL).get("status", {}).get("maxSafeReplicas"),
                    what="status.maxSafeReplicas",
                )
            )
            safe, unsafe = 8, max_safe + 4
            assert 4 < safe <= max_safe

            # (a) a safe step: the HPA writes /scale, cellguard admits it, pods run.
            adapter.set(NS, METRIC, safe)
            hpa = apply_yaml(cluster, hpa_manifest(max_replicas=unsafe + 10))
            assert hpa.returncode == 0, hpa.stderr
            # Up to ~35 s when this test runs first: kube-controller-manager's REST
            # mapper learns of CRDs created after it started only at its 30-second
            # refresh (until then the HPA reports FailedGetScale, "no matches for kind
            # StreamCell"); then one 5 s HPA sync.
            wait_for(
                lambda: cell(cluster, NS, CELL)["spec"]["replicas"] == safe,
                what=f"the HPA to scale the cell to {safe}",
                timeout=60,
            )
            wait_cell_pods(cluster, NS, CELL, safe)
            assert deployment_replicas(cluster, NS, CELL) == safe
            rescaled = hpa_events(cluster, "SuccessfulRescale")
            assert any(f"New size: {safe};" in e["message"] for e in rescaled), rescaled
            # The HPA really read the adapter, through the aggregator, as itself.
            assert any(
                r.metric == METRIC and r.namespace == NS and r.user == HPA_USER
                for r in adapter.requests()
            ), adapter.requests()[-5:]

            # (b) an unsafe step: cellguard's webhook refuses the HPA's /scale write.
            adapter.set(NS, METRIC, unsafe)

            def refused_event() -> dict[str, Any] | None:
                for event in hpa_events(cluster, "FailedRescale"):
                    if f"New size: {unsafe};" in event["message"]:
                        return event
                return None

            event = wait_for(refused_event, what="the HPA's FailedRescale event", timeout=30)
            assert event["type"] == "Warning"
            message = event["message"]
            assert (
                'admission webhook "validate-streamcell-scale.cellguard.io" denied the '
                f"request: scaling {NS}/{CELL} from {safe} to {unsafe} replicas would put "
                "node hpa-"
            ) in message, message
            assert f"at most {max_safe} replicas fit" in message, message
            wanted = int(re.search(r"New size: (\d+);", message).group(1))  # type: ignore[union-attr]

            refusal = wait_for(
                lambda: cell(cluster, NS, CELL).get("status", {}).get("lastRefusal"),
                what="status.lastRefusal",
            )
            assert refusal["requestedReplicas"] == wanted == unsafe
            assert refusal["reason"] == "NodeThreadLimit"
            assert refusal["message"] in message, (refusal["message"], message)

            able = hpa_condition(cluster, "AbleToScale")
            assert able is not None and able["status"] == "False", able
            assert able["reason"] == "FailedUpdateScale"
            assert refusal["message"] in able["message"]

            # Nothing moved: the cell, its Deployment and its pods stay at the safe size.
            assert cell(cluster, NS, CELL)["spec"]["replicas"] == safe
            assert deployment_replicas(cluster, NS, CELL) == safe
            wait_cell_pods(cluster, NS, CELL, safe)
        finally:
            cluster.kubectl("delete", "hpa", CELL, "-n", NS, "--ignore-not-found", check=False)
            cluster.kubectl(
                "delete", "streamcell", CELL, "-n", NS, "--ignore-not-found", check=False
            )
