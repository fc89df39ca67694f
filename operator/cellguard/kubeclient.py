"""The Kubernetes client as cellguard's edges use it: loading config, server-side apply,
and one-line error descriptions. (The pure core never imports this.)
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client import rest
from kubernetes.client.exceptions import ApiException

APPLY_PATCH_CONTENT_TYPE = "application/apply-patch+yaml"
MERGE_PATCH_CONTENT_TYPE = "application/merge-patch+json"

# Core kinds the operator applies, by (apiVersion, kind) -> (URL prefix, plural, namespaced).
_KNOWN_KINDS: dict[tuple[str, str], tuple[str, str, bool]] = {
    ("apps/v1", "Deployment"): ("/apis/apps/v1", "deployments", True),
    ("v1", "Service"): ("/api/v1", "services", True),
    ("policy/v1", "PodDisruptionBudget"): ("/apis/policy/v1", "poddisruptionbudgets", True),
    ("coordination.k8s.io/v1", "Lease"): ("/apis/coordination.k8s.io/v1", "leases", True),
    ("v1", "Event"): ("/api/v1", "events", True),
    (
        "admissionregistration.k8s.io/v1",
        "ValidatingWebhookConfiguration",
    ): ("/apis/admissionregistration.k8s.io/v1", "validatingwebhookconfigurations", False),
}


def load_api_client(
    kubeconfig: Path | None = None, pool_size: int = 16, retries: int | None = None
) -> client.ApiClient:
    """An API client from `kubeconfig` if given, else in-cluster, else the default
    kubeconfig (~/.kube/config or $KUBECONFIG). `retries`: urllib3 connection retries."""
    configuration = client.Configuration()
    # kubernetes.config is untyped, unlike kubernetes.client: hence the ignores.
    if kubeconfig is not None:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig), client_configuration=configuration
        )
    else:
        try:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except config.ConfigException:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
    configuration.connection_pool_maxsize = pool_size
    if retries is not None:
        configuration.retries = retries
    return client.ApiClient(configuration)


# Where a pod finds its own namespace (kubectl's in-cluster default namespace, too).
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def kubeconfig_paths(kubeconfig: Path | None = None) -> str | None:
    """The kubeconfig files to read, as kubectl finds them: `--kubeconfig`, else
    $KUBECONFIG (a `:`-separated list, merged), else ~/.kube/config. None when there is
    none (then only in-cluster configuration is left). Read at call time, not import time."""
    if kubeconfig is not None:
        if not kubeconfig.expanduser().is_file():
            raise ValueError(f"kubeconfig {kubeconfig} not found")
        return str(kubeconfig)
    listed = os.environ.get("KUBECONFIG", "")
    paths = [p for p in listed.split(os.pathsep) if p and Path(p).expanduser().is_file()]
    if paths:
        return os.pathsep.join(paths)
    default = Path("~/.kube/config").expanduser()
    return str(default) if default.is_file() else None


def _contexts(paths: str) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The contexts of a kubeconfig path list by name, and its current-context, merged as
    kubectl merges files: the first file to name a context, or a current-context, wins."""
    contexts: dict[str, dict[str, Any]] = {}
    current: str | None = None
    for path in paths.split(os.pathsep):
        document = yaml.safe_load(Path(path).expanduser().read_text()) or {}
        if not isinstance(document, dict):
            raise ValueError(f"{path}: not a kubeconfig")
        for entry in document.get("contexts") or []:
            contexts.setdefault(str(entry.get("name")), entry.get("context") or {})
        current = current or document.get("current-context") or None
    return contexts, current


def load_cli_client(
    kubeconfig: Path | None = None, context: str | None = None
) -> tuple[client.ApiClient, str]:
    """An API client the way kubectl chooses one, and the namespace to default to.

    The kubeconfig as `kubeconfig_paths` finds it; `context` (kubectl's `--context`), else
    its current-context; the namespace is that context's (`kubectl config set-context
    --current --namespace ...`), else `default`. With no kubeconfig at all, inside a pod:
    the pod's ServiceAccount and namespace. Unlike `load_api_client`, which the operator
    and agent use, a kubeconfig wins over in-cluster configuration, as with kubectl."""
    configuration = client.Configuration()
    paths = kubeconfig_paths(kubeconfig)
    if paths is None:
        if context is not None:
            raise ValueError(
                f"--context {context}: no kubeconfig found "
                "(--kubeconfig, $KUBECONFIG, ~/.kube/config)"
            )
        try:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
        except config.ConfigException as error:
            raise ValueError(
                "no kubeconfig found (--kubeconfig, $KUBECONFIG, ~/.kube/config) "
                f"and not in a pod: {error}"
            ) from None
        try:
            namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
        except OSError:
            namespace = "default"
        return client.ApiClient(configuration), namespace
    contexts, current = _contexts(paths)
    name = context if context is not None else current
    if name is None:
        raise ValueError(f"{paths}: no current-context; choose one with --context")
    if name not in contexts:
        known = ", ".join(sorted(contexts)) or "none"
        raise ValueError(f"context {name!r} not found in {paths} (contexts: {known})")
    config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=paths, context=name, client_configuration=configuration
    )
    return client.ApiClient(configuration), str(contexts[name].get("namespace") or "default")


def object_path(manifest: dict[str, Any]) -> str:
    """The URL path of a manifest's object, for the kinds cellguard writes."""
    key = (manifest["apiVersion"], manifest["kind"])
    if key not in _KNOWN_KINDS:
        raise ValueError(f"cellguard does not apply {key[1]} ({key[0]}) objects")
    prefix, plural, namespaced = _KNOWN_KINDS[key]
    name = manifest["metadata"]["name"]
    if namespaced:
        return f"{prefix}/namespaces/{manifest['metadata']['namespace']}/{plural}/{name}"
    return f"{prefix}/{plural}/{name}"


def request_json(
    api_client: client.ApiClient,
    method: str,
    path: str,
    *,
    query: list[tuple[str, str]] | None = None,
    body: Any = None,
    content_type: str = "application/json",
    accept: str = "application/json",
    timeout: float = 30.0,
) -> dict[str, Any]:
    """One raw API request; the response body as JSON. Non-2xx raises ApiException."""
    response = _send(api_client, method, path, query, body, content_type, accept, timeout)
    data = response.read()  # type: ignore[no-untyped-call]
    _raise_unless_ok(response, data)
    result: dict[str, Any] = json.loads(data) if data else {}
    return result


def open_stream(
    api_client: client.ApiClient,
    path: str,
    query: list[tuple[str, str]],
    *,
    read_timeout: float,
) -> Any:
    """A streaming GET (a watch): the urllib3 response, its body unread (release its
    connection when done). Non-2xx raises ApiException, as request_json does."""
    response = _send(
        api_client, "GET", path, query, None, "application/json", "application/json",
        (10, read_timeout),
    )  # fmt: skip
    if not 200 <= response.status <= 299:
        _raise_unless_ok(response, response.read())  # type: ignore[no-untyped-call]
    return response.response


def _send(
    api_client: client.ApiClient,
    method: str,
    path: str,
    query: list[tuple[str, str]] | None,
    body: Any,
    content_type: str,
    accept: str,
    timeout: float | tuple[float, float],
) -> rest.RESTResponse:
    """The request, authenticated as the client is; the response, its body unread."""
    _method, url, headers, serialized, _post = api_client.param_serialize(
        method=method,
        resource_path=path,
        query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": accept},
        body=body,
        auth_settings=["BearerToken"],
    )
    return api_client.call_api(
        method, url, header_params=headers, body=serialized, _request_timeout=timeout
    )


def _raise_unless_ok(response: rest.RESTResponse, data: Any) -> None:
    if not 200 <= response.status <= 299:
        text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else str(data)
        raise ApiException.from_response(http_resp=response, body=text, data=None)


def server_side_apply(
    api_client: client.ApiClient,
    manifest: dict[str, Any],
    field_manager: str,
    *,
    force: bool = True,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Apply `manifest` with server-side apply; returns the object as stored."""
    return request_json(
        api_client,
        "PATCH",
        object_path(manifest),
        query=[("fieldManager", field_manager), ("force", "true" if force else "false")],
        body=manifest,
        content_type=APPLY_PATCH_CONTENT_TYPE,
        timeout=timeout,
    )


def label_node(
    api_client: client.ApiClient, name: str, labels: dict[str, str | None]
) -> dict[str, Any]:
    """Set (or, with None, remove) labels of a node; returns the node as stored."""
    return _merge_labels(api_client, f"/api/v1/nodes/{name}", labels)


def label_pod(
    api_client: client.ApiClient, namespace: str, name: str, labels: dict[str, str | None]
) -> dict[str, Any]:
    """Set (or, with None, remove) labels of a pod; returns the pod as stored."""
    return _merge_labels(api_client, f"/api/v1/namespaces/{namespace}/pods/{name}", labels)


def _merge_labels(
    api_client: client.ApiClient, path: str, labels: dict[str, str | None]
) -> dict[str, Any]:
    """A JSON merge patch of the object's `metadata.labels` and nothing else."""
    return request_json(
        api_client,
        "PATCH",
        path,
        body={"metadata": {"labels": labels}},
        content_type="application/merge-patch+json",
    )


def merge_patch_status(
    api_client: client.ApiClient, path: str, status: dict[str, Any]
) -> dict[str, Any]:
    """A JSON merge patch of an object's status subresource (`path` is the object's)."""
    return request_json(
        api_client,
        "PATCH",
        f"{path}/status",
        body={"status": status},
        content_type=MERGE_PATCH_CONTENT_TYPE,
    )


def post_event(
    api_client: client.ApiClient,
    involved: dict[str, str],
    *,
    type_: str,
    reason: str,
    message: str,
    component: str,
    instance: str,
) -> dict[str, Any]:
    """A core/v1 Event about `involved` (apiVersion, kind, namespace, name, uid), as
    `kubectl describe` shows them."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    namespace = involved["namespace"]
    return request_json(
        api_client,
        "POST",
        f"/api/v1/namespaces/{namespace}/events",
        body={
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": namespace},
            "involvedObject": involved,
            "type": type_,
            "reason": reason,
            "message": message[:1024],  # the API caps it; say the start of it
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": instance,
        },
    )


def describe_api_error(exc: ApiException) -> str:
    """`HTTP 422 Unprocessable Entity: <the Status message>` on one line."""
    summary = f"HTTP {exc.status} {exc.reason or ''}".rstrip()
    message = status_message(exc.body)
    return f"{summary}: {message}" if message else summary


def status_message(body: object) -> str | None:
    """The `message` of a Kubernetes Status body, if the body is one."""
    if not isinstance(body, str | bytes) or not body:
        return None
    try:
        status = json.loads(body)
    except ValueError:
        return None
    message = status.get("message") if isinstance(status, dict) else None
    return message if isinstance(message, str) else None
