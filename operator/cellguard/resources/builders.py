"""Pure builders of the objects the operator keeps for a cell: Deployment, Service, PDB.

The Deployment carries exactly the placement rules the budget planner assumes: a hostname
topology spread (maxSkew 1, DoNotSchedule, node affinity and taints honoured, over every
pod of the cell), the cell's node pool (a NodeExclusive cell's pods select its pool label;
a Shared cell's keep off every pool of the service, see budget.pools), required
anti-affinity against other cells of the same service under NodeExclusive, and a rollout
that never surges above the budgeted replica count.
"""

from __future__ import annotations

import copy
from typing import Any

from cellguard.api.v1alpha1 import Isolation, StreamCellSpec
from cellguard.budget import pool_label_key, pool_label_value
from cellguard.constants import (
    ANNOTATION_THREADS_PER_POD,
    API_VERSION,
    LABEL_CELL,
    LABEL_MANAGED_BY,
    LABEL_SERVICE,
    MANAGED_BY_VALUE,
    STREAMCELL_KIND,
)

HOSTNAME_TOPOLOGY_KEY = "kubernetes.io/hostname"

Manifest = dict[str, Any]


def cell_labels(cell_name: str, service: str) -> dict[str, str]:
    """Labels on every object of a cell and on its pods."""
    return {LABEL_CELL: cell_name, LABEL_SERVICE: service, LABEL_MANAGED_BY: MANAGED_BY_VALUE}


def cell_selector(cell_name: str) -> dict[str, str]:
    return {LABEL_CELL: cell_name}


def selector_string(cell_name: str) -> str:
    """The label selector in string form, as status.selector (the scale subresource) wants."""
    return f"{LABEL_CELL}={cell_name}"


def owner_reference(cell_name: str, cell_uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": STREAMCELL_KIND,
        "name": cell_name,
        "uid": cell_uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(
    namespace: str, cell_name: str, cell_uid: str, spec: StreamCellSpec
) -> dict[str, Any]:
    return {
        "name": cell_name,
        "namespace": namespace,
        "labels": cell_labels(cell_name, spec.service),
        "ownerReferences": [owner_reference(cell_name, cell_uid)],
    }


def spread_constraint(cell_name: str) -> dict[str, Any]:
    """The hostname spread the planner's water-filling bound relies on."""
    return {
        "maxSkew": 1,
        "topologyKey": HOSTNAME_TOPOLOGY_KEY,
        "whenUnsatisfiable": "DoNotSchedule",
        # Every pod of the cell counts, whatever its template: with matchLabelKeys
        # [pod-template-hash] a rollout's new pods would ignore the old ones and could double
        # up on a node, beyond the ceil(M/E) a node that the planner bounds.
        "labelSelector": {"matchLabels": cell_selector(cell_name)},
        "nodeAffinityPolicy": "Honor",
        "nodeTaintsPolicy": "Honor",
    }


def exclusive_anti_affinity(cell_name: str, service: str) -> dict[str, Any]:
    """Required anti-affinity: no node hosts pods of two cells of the same service."""
    return {
        "labelSelector": {
            "matchExpressions": [
                {"key": LABEL_SERVICE, "operator": "In", "values": [service]},
                {"key": LABEL_CELL, "operator": "NotIn", "values": [cell_name]},
            ]
        },
        "topologyKey": HOSTNAME_TOPOLOGY_KEY,
    }


def _keep_off_pools(pod_spec: dict[str, Any], service: str) -> None:
    """Require that the node is in no pool of `service`. (A template's own nodeAffinity is
    refused by the API model, so this is the only node affinity the pods carry.)"""
    outside = {"key": pool_label_key(service), "operator": "DoesNotExist"}
    pod_spec.setdefault("affinity", {})["nodeAffinity"] = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [outside]}]
        }
    }


def pod_template(namespace: str, cell_name: str, spec: StreamCellSpec) -> dict[str, Any]:
    """The cell's pod template with cellguard's labels and placement rules merged in: its
    node selection includes the cell's pool (NodeExclusive) or keeps off every pool of its
    service (Shared)."""
    template = copy.deepcopy(spec.template)
    metadata = template.setdefault("metadata", {})
    metadata["labels"] = {**metadata.get("labels", {}), **cell_labels(cell_name, spec.service)}
    pod_spec = template.setdefault("spec", {})
    if spec.placement.node_selector:
        pod_spec["nodeSelector"] = {
            **pod_spec.get("nodeSelector", {}),
            **spec.placement.node_selector,
        }
    if spec.placement.tolerations:
        pod_spec["tolerations"] = [
            *pod_spec.get("tolerations", []),
            *(
                t.model_dump(by_alias=True, exclude_none=True, mode="json")
                for t in spec.placement.tolerations
            ),
        ]
    if spec.isolation is Isolation.NODE_EXCLUSIVE:
        pod_spec["nodeSelector"] = {
            **pod_spec.get("nodeSelector", {}),
            pool_label_key(spec.service): pool_label_value(namespace, cell_name),
        }
    else:
        _keep_off_pools(pod_spec, spec.service)
    constraints = [
        c
        for c in pod_spec.get("topologySpreadConstraints", [])
        if c.get("topologyKey") != HOSTNAME_TOPOLOGY_KEY
    ]
    pod_spec["topologySpreadConstraints"] = [*constraints, spread_constraint(cell_name)]
    if spec.isolation is Isolation.NODE_EXCLUSIVE:
        affinity = pod_spec.setdefault("affinity", {})
        anti = affinity.setdefault("podAntiAffinity", {})
        required = anti.setdefault("requiredDuringSchedulingIgnoredDuringExecution", [])
        required.append(exclusive_anti_affinity(cell_name, spec.service))
    return template


def deployment(
    namespace: str,
    cell_name: str,
    cell_uid: str,
    spec: StreamCellSpec,
    *,
    replicas: int,
    threads_per_pod: int,
) -> Manifest:
    """The cell's Deployment at `replicas` (the approved size, never more)."""
    metadata = _metadata(namespace, cell_name, cell_uid, spec)
    # On the Deployment, not the pod template: a scale must never trigger a rollout.
    metadata["annotations"] = {ANNOTATION_THREADS_PER_POD: str(threads_per_pod)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": cell_selector(cell_name)},
            # maxSurge 0: a rollout never runs more pods (so more peer threads) than budgeted.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
            },
            "template": pod_template(namespace, cell_name, spec),
        },
    }


def _service_ports(spec: StreamCellSpec) -> list[dict[str, Any]]:
    ports = []
    for container in spec.template.get("spec", {}).get("containers", []):
        for port in container.get("ports", []):
            name = port.get("name") or f"port-{port['containerPort']}"
            ports.append(
                {
                    "name": name,
                    "port": port["containerPort"],
                    "targetPort": port["containerPort"],
                    "protocol": port.get("protocol", "TCP"),
                }
            )
    return ports


def headless_service(
    namespace: str, cell_name: str, cell_uid: str, spec: StreamCellSpec
) -> Manifest:
    """Headless Service: peers find each other by DNS, ready or not."""
    service_spec: dict[str, Any] = {
        "clusterIP": "None",
        "selector": cell_selector(cell_name),
        "publishNotReadyAddresses": True,
    }
    ports = _service_ports(spec)
    if ports:
        service_spec["ports"] = ports
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(namespace, cell_name, cell_uid, spec),
        "spec": service_spec,
    }


def disruption_budget(
    namespace: str, cell_name: str, cell_uid: str, spec: StreamCellSpec
) -> Manifest:
    """At most one pod of the cell voluntarily disrupted at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(namespace, cell_name, cell_uid, spec),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": cell_selector(cell_name)}},
    }
