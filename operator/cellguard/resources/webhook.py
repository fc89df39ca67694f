"""Pure builder of cellguard's ValidatingWebhookConfiguration.

kopf's own managed configuration has a fixed 30 s timeout and no namespace selector; ours
is scoped so that it can never block kube-system or cellguard's own namespace, and the
Deployment and ReplicaSet rules only see objects that belong to a cell.
"""

from __future__ import annotations

from typing import Any

from cellguard.constants import (
    DEPLOYMENT_CONTROLLER_USERS,
    GROUP,
    LABEL_CELL,
    LABEL_EXEMPT,
    NAMESPACE_NAME_LABEL,
    SCALE_WEBHOOK_TIMEOUT_SECONDS,
    STREAMCELL_PLURAL,
    VERSION,
    WEBHOOK_CONFIGURATION_NAME,
    WEBHOOK_DEPLOYMENT,
    WEBHOOK_DEPLOYMENT_SCALE,
    WEBHOOK_REPLICASET,
    WEBHOOK_REPLICASET_SCALE,
    WEBHOOK_STREAMCELL,
    WEBHOOK_STREAMCELL_SCALE,
)

ClientConfig = dict[str, Any]

# matchConditions (CEL, evaluated by the API server): the webhook is called only for
# requests that can raise a node's thread count. A scale-down or a metadata-only update never
# waits on cellguard, so an operator outage cannot stop anyone from shrinking a cell.
_SAME_SHAPE = " && ".join(
    f"object.spec.{field} == oldObject.spec.{field}"
    for field in ("threads", "placement", "template", "isolation", "policyRef", "service")
)
CELL_MAY_GROW = (
    "request.operation == 'CREATE' || (object.spec != oldObject.spec && "
    f"!(object.spec.replicas < oldObject.spec.replicas && {_SAME_SHAPE}))"
)
# An autoscaling/v1 Scale omits spec.replicas when it is 0 (omitempty): read it with has(),
# or a scale from zero fails the condition's evaluation and the request is refused.
_NEW_SCALE = "(has(object.spec.replicas) ? object.spec.replicas : 0)"
_OLD_SCALE = "(has(oldObject.spec.replicas) ? oldObject.spec.replicas : 0)"
SCALE_GROWS = f"{_NEW_SCALE} > {_OLD_SCALE}"
SPEC_CHANGES = "object.spec != oldObject.spec"
REPLICAS_CHANGE = f"{_NEW_SCALE} != {_OLD_SCALE}"
# A cell's ReplicaSets are the deployment controller's to scale: its requests never reach
# the webhook (so an operator outage cannot stall a rollout), anyone else's are refused.
_CONTROLLERS = ", ".join(f"'{user}'" for user in DEPLOYMENT_CONTROLLER_USERS)
NOT_DEPLOYMENT_CONTROLLER = f"!(request.userInfo.username in [{_CONTROLLERS}])"
REPLICASET_REPLICAS_CHANGE = f"{REPLICAS_CHANGE} && {NOT_DEPLOYMENT_CONTROLLER}"


def url_client_config(base_url: str, ca_bundle_b64: str) -> ClientConfig:
    """Webhook reached by URL (the operator runs outside the cluster, e.g. on loopback)."""
    return {"url": base_url.rstrip("/"), "caBundle": ca_bundle_b64}


def service_client_config(
    namespace: str, service: str, port: int, ca_bundle_b64: str
) -> ClientConfig:
    """Webhook reached through an in-cluster Service."""
    return {
        "service": {"namespace": namespace, "name": service, "port": port, "path": ""},
        "caBundle": ca_bundle_b64,
    }


def _with_path(client: ClientConfig, handler_id: str) -> ClientConfig:
    if "url" in client:
        return {**client, "url": f"{client['url']}/{handler_id}"}
    service = {**client["service"], "path": f"{client['service'].get('path', '')}/{handler_id}"}
    return {**client, "service": service}


def validating_webhook_configuration(
    client: ClientConfig,
    *,
    exempt_namespaces: list[str],
    timeout_seconds: int = 10,
    name: str = WEBHOOK_CONFIGURATION_NAME,
    watched_namespaces: list[str] | None = None,
) -> dict[str, Any]:
    """Six webhooks: StreamCell writes, StreamCell /scale, cell Deployments and ReplicaSets
    and their /scale. They skip the exempt namespaces (by name, or labelled
    cellguard.io/exempt=true) and, when the operator watches some namespaces only, every
    other namespace: cells there are not cellguard's, and it could not answer for them."""
    if not 1 <= timeout_seconds <= 30:
        raise ValueError(f"webhook timeoutSeconds must be 1..30, got {timeout_seconds}")
    expressions: list[dict[str, Any]] = [
        {"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": sorted(exempt_namespaces)},
        {"key": LABEL_EXEMPT, "operator": "NotIn", "values": ["true"]},
    ]
    if watched_namespaces:
        expressions.append(
            {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": sorted(watched_namespaces)}
        )
    namespace_selector = {"matchExpressions": expressions}
    scale_timeout = min(timeout_seconds, SCALE_WEBHOOK_TIMEOUT_SECONDS)
    cell_objects = {"matchExpressions": [{"key": LABEL_CELL, "operator": "Exists"}]}

    def webhook(
        handler_id: str,
        group: str,
        version: str,
        resource: str,
        operations: list[str],
        match: str,
        object_selector: dict[str, Any] | None = None,
        failure_policy: str = "Fail",
    ) -> dict[str, Any]:
        hook: dict[str, Any] = {
            "name": f"{handler_id}.{GROUP}",
            "admissionReviewVersions": ["v1"],
            "clientConfig": _with_path(client, handler_id),
            # Fail closed: when cellguard cannot answer, no scale-up gets through unchecked.
            "failurePolicy": failure_policy,
            "matchPolicy": "Equivalent",
            # Dry runs reach the webhook and change nothing: `kubectl --dry-run=server` asks.
            "sideEffects": "None",
            "timeoutSeconds": timeout_seconds if failure_policy == "Fail" else scale_timeout,
            "namespaceSelector": namespace_selector,
            "matchConditions": [{"name": "may-add-threads", "expression": match}],
            "rules": [
                {
                    "apiGroups": [group],
                    "apiVersions": [version],
                    "resources": [resource],
                    "operations": operations,
                    "scope": "Namespaced",
                }
            ],
        }
        if object_selector is not None:
            hook["objectSelector"] = object_selector
        return hook

    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "cellguard"}},
        "webhooks": [
            webhook(
                WEBHOOK_STREAMCELL,
                GROUP,
                VERSION,
                STREAMCELL_PLURAL,
                ["CREATE", "UPDATE"],
                CELL_MAY_GROW,
            ),
            webhook(
                WEBHOOK_STREAMCELL_SCALE,
                GROUP,
                VERSION,
                f"{STREAMCELL_PLURAL}/scale",
                ["UPDATE"],
                SCALE_GROWS,
            ),
            webhook(
                WEBHOOK_DEPLOYMENT,
                "apps",
                "v1",
                "deployments",
                ["UPDATE"],
                SPEC_CHANGES,
                object_selector=cell_objects,
            ),
            # A Scale object carries no labels, so an objectSelector never matches it: this
            # webhook sees every Deployment scale and the handler picks out cells' own. So that
            # an operator outage cannot block scaling of every Deployment in the cluster, it
            # fails open; the reconciler puts a cell's Deployment back to the cell's size.
            webhook(
                WEBHOOK_DEPLOYMENT_SCALE,
                "apps",
                "v1",
                "deployments/scale",
                ["UPDATE"],
                REPLICAS_CHANGE,
                failure_policy="Ignore",
            ),
            # The side door below the Deployment: a cell's ReplicaSet scaled directly would
            # start pods (and peer threads) until the deployment controller scales it back.
            webhook(
                WEBHOOK_REPLICASET,
                "apps",
                "v1",
                "replicasets",
                ["UPDATE"],
                REPLICASET_REPLICAS_CHANGE,
                object_selector=cell_objects,
            ),
            # As for deployments/scale: a Scale carries no labels, so this one sees every
            # ReplicaSet scale and fails open.
            webhook(
                WEBHOOK_REPLICASET_SCALE,
                "apps",
                "v1",
                "replicasets/scale",
                ["UPDATE"],
                REPLICASET_REPLICAS_CHANGE,
                failure_policy="Ignore",
            ),
        ],
    }
