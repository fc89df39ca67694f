"""The local control plane is real: nodes, scheduling, controllers, CRDs."""

from __future__ import annotations

import json

import pytest
import yaml

from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.waiting import wait_for

pytestmark = pytest.mark.e2e


def test_nodes_are_ready(cluster: LocalCluster) -> None:
    out = cluster.kubectl("get", "nodes", "-o", "json").stdout
    nodes = json.loads(out)["items"]
    assert len(nodes) == 6
    for node in nodes:
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True", node["metadata"]["name"]
    table = cluster.kubectl("get", "nodes").stdout
    assert table.count(" Ready ") == 6


def test_version_is_stamped(cluster: LocalCluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.3")
    assert version["clientVersion"]["gitVersion"] == version["serverVersion"]["gitVersion"]


def test_deployment_pods_run_spread_over_nodes(cluster: LocalCluster) -> None:
    cluster.kubectl("create", "namespace", "cp-smoke")
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "cp-smoke"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{"name": "web", "image": "example.invalid/web:1"}],
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "DoNotSchedule",
                            "labelSelector": {"matchLabels": {"app": "web"}},
                        }
                    ],
                },
            },
        },
    }
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(deployment))

    def running_pods() -> list[dict] | None:  # type: ignore[type-arg]
        out = cluster.kubectl("get", "pods", "-n", "cp-smoke", "-o", "json").stdout
        pods = json.loads(out)["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        return running if len(running) == 3 else None

    pods = wait_for(running_pods, what="3 running pods")
    assert len({p["spec"]["nodeName"] for p in pods}) == 3, "spread constraint not honoured"
    status = wait_for(
        lambda: (
            d
            if (
                d := json.loads(
                    cluster.kubectl("get", "deploy", "web", "-n", "cp-smoke", "-o", "json").stdout
                )["status"]
            ).get("readyReplicas")
            == 3
            else None
        ),
        what="3 ready replicas",
    )
    assert status["availableReplicas"] == 3


def test_custom_resource_definition_becomes_established(cluster: LocalCluster) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.smoke.example.com"},
        "spec": {
            "group": "smoke.example.com",
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer", "minimum": 1}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(crd))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.smoke.example.com", "--timeout=60s"
    )
    widget = {
        "apiVersion": "smoke.example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w1", "namespace": "default"},
        "spec": {"size": 3},
    }
    # Discovery of a fresh CRD can lag a moment behind Established.
    wait_for(
        lambda: (
            cluster.kubectl(
                "apply", "-f", "-", input_text=yaml.safe_dump(widget), check=False
            ).returncode
            == 0
        ),
        what="the Widget to be served",
        timeout=30,
    )
    got = json.loads(cluster.kubectl("get", "widget", "w1", "-o", "json").stdout)
    assert got["spec"]["size"] == 3
    bad = {**widget, "metadata": {"name": "w2", "namespace": "default"}, "spec": {"size": 0}}
    refused = cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(bad), check=False)
    assert refused.returncode != 0
    assert "spec.size" in refused.stderr
