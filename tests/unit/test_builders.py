"""The cell's Deployment, Service and PDB carry the rules the budget planner assumes."""

from __future__ import annotations

from typing import Any

from cellguard.api.v1alpha1 import StreamCellSpec
from cellguard.constants import ANNOTATION_THREADS_PER_POD, LABEL_CELL, LABEL_SERVICE
from cellguard.resources import builders


def _spec(**overrides: Any) -> StreamCellSpec:
    raw: dict[str, Any] = {
        "replicas": 4,
        "service": "ingest",
        "threads": {"base": 40, "perPeer": 2},
        "template": {
            "metadata": {"labels": {"app": "ingest"}},
            "spec": {
                "containers": [
                    {
                        "name": "server",
                        "image": "example.invalid/ingest:1",
                        "ports": [{"containerPort": 7000, "name": "peer"}],
                    }
                ],
                "nodeSelector": {"disk": "ssd"},
            },
        },
    }
    raw.update(overrides)
    return StreamCellSpec.model_validate(raw)


def test_deployment_has_spread_rollout_and_owner() -> None:
    spec = _spec()
    dep = builders.deployment("prod", "ingest-a", "uid-1", spec, replicas=4, threads_per_pod=46)
    assert dep["spec"]["replicas"] == 4
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    owner = dep["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "uid-1" and owner["controller"] is True
    assert dep["metadata"]["annotations"][ANNOTATION_THREADS_PER_POD] == "46"
    pod = dep["spec"]["template"]
    assert "annotations" not in pod["metadata"], "a scale must not change the pod template"
    assert pod["metadata"]["labels"] == {
        "app": "ingest",
        LABEL_CELL: "ingest-a",
        LABEL_SERVICE: "ingest",
        "app.kubernetes.io/managed-by": "cellguard",
    }
    (spread,) = pod["spec"]["topologySpreadConstraints"]
    assert spread["maxSkew"] == 1
    assert spread["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["nodeAffinityPolicy"] == "Honor" and spread["nodeTaintsPolicy"] == "Honor"
    assert "matchLabelKeys" not in spread  # old and new pods count alike during a rollout
    assert dep["spec"]["selector"]["matchLabels"] == {LABEL_CELL: "ingest-a"}


def test_node_exclusive_adds_required_anti_affinity_against_sibling_cells() -> None:
    dep = builders.deployment("prod", "ingest-a", "u", _spec(), replicas=1, threads_per_pod=40)
    (term,) = dep["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    exprs = {e["key"]: e for e in term["labelSelector"]["matchExpressions"]}
    assert exprs[LABEL_SERVICE] == {"key": LABEL_SERVICE, "operator": "In", "values": ["ingest"]}
    assert exprs[LABEL_CELL]["operator"] == "NotIn" and exprs[LABEL_CELL]["values"] == ["ingest-a"]


def test_shared_isolation_has_no_anti_affinity_and_keeps_off_every_pool() -> None:
    dep = builders.deployment(
        "prod", "c", "u", _spec(isolation="Shared"), replicas=1, threads_per_pod=40
    )
    affinity = dep["spec"]["template"]["spec"]["affinity"]
    assert "podAntiAffinity" not in affinity
    (term,) = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term["matchExpressions"] == [
        {"key": "cellpool.cellguard.io/ingest", "operator": "DoesNotExist"}
    ]
    assert "cellpool.cellguard.io/ingest" not in dep["spec"]["template"]["spec"]["nodeSelector"]


def test_node_exclusive_pods_select_their_cell_pool() -> None:
    pod = builders.pod_template("prod", "ingest-a", _spec())
    assert pod["spec"]["nodeSelector"] == {
        "disk": "ssd",
        "cellpool.cellguard.io/ingest": "prod.ingest-a",
    }


def test_placement_merges_into_pod_spec_without_mutating_the_cell() -> None:
    spec = _spec(
        placement={
            "nodeSelector": {"pool": "stream"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "stream"}],
        }
    )
    before = spec.model_dump()
    pod = builders.pod_template("ns", "c", spec)
    assert pod["spec"]["nodeSelector"] == {
        "disk": "ssd",
        "pool": "stream",
        "cellpool.cellguard.io/ingest": "ns.c",
    }
    assert pod["spec"]["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "stream"}
    ]
    assert spec.model_dump() == before


def test_existing_hostname_spread_is_replaced_not_duplicated() -> None:
    template = _spec().template
    template["spec"]["topologySpreadConstraints"] = [
        {
            "maxSkew": 5,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
        },
        {
            "maxSkew": 1,
            "topologyKey": "topology.kubernetes.io/zone",
            "whenUnsatisfiable": "ScheduleAnyway",
        },
    ]
    pod = builders.pod_template("ns", "c", _spec(template=template))
    keys = [(c["topologyKey"], c["maxSkew"]) for c in pod["spec"]["topologySpreadConstraints"]]
    assert keys == [("topology.kubernetes.io/zone", 1), ("kubernetes.io/hostname", 1)]


def test_headless_service_and_pdb() -> None:
    spec = _spec()
    svc = builders.headless_service("prod", "ingest-a", "u", spec)
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["ports"] == [
        {"name": "peer", "port": 7000, "targetPort": 7000, "protocol": "TCP"}
    ]
    pdb = builders.disruption_budget("prod", "ingest-a", "u", spec)
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {LABEL_CELL: "ingest-a"}},
    }
    assert builders.selector_string("ingest-a") == f"{LABEL_CELL}=ingest-a"
