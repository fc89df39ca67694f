"""The agent's only contact with the API server: apply the NodeBudget, find the Node."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTResponse

from cellguard import kubeclient
from cellguard.agent.loop import PublishError
from cellguard.agent.manifest import nodebudget_manifest
from cellguard.api.v1alpha1 import NodeBudgetSpec
from cellguard.constants import FIELD_MANAGER_AGENT, GROUP, NODEBUDGET_PLURAL, VERSION
from cellguard.kubeclient import describe_api_error

log = logging.getLogger(__name__)

APPLY_PATCH_CONTENT_TYPE = "application/apply-patch+yaml"
# (connect, read) seconds: bounds how long a stop signal waits for the write in progress.
REQUEST_TIMEOUT = (5.0, 15.0)
# One quick reconnect covers a keep-alive connection the server dropped between reports;
# anything longer is the next interval's job.
CONNECT_RETRIES = 1


def load_api_client(kubeconfig: Path | None) -> client.ApiClient:
    """The shared client set-up, with one quick reconnect (see CONNECT_RETRIES)."""
    return kubeclient.load_api_client(kubeconfig, pool_size=2, retries=CONNECT_RETRIES)


class NodeBudgetPublisher:
    """Applies a node's NodeBudget by server-side apply as field manager `cellguard-agent`.

    The agent is the budget's only writer, so it applies with force: a conflict could only
    come from someone editing the budget by hand, and the host's figures win.
    """

    def __init__(self, api_client: client.ApiClient, node_name: str) -> None:
        self._api_client = api_client
        self._custom = client.CustomObjectsApi(api_client)
        self._node_name = node_name
        self._node_uid: str | None = None
        self._node_lookup_forbidden = False

    def __call__(self, spec: NodeBudgetSpec) -> None:
        try:
            body = nodebudget_manifest(spec, node_uid=self._owner_uid())
            self._custom.patch_cluster_custom_object(
                group=GROUP,
                version=VERSION,
                plural=NODEBUDGET_PLURAL,
                name=spec.node_name,
                body=body,
                field_manager=FIELD_MANAGER_AGENT,
                force=True,
                _content_type=APPLY_PATCH_CONTENT_TYPE,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as exc:
            raise PublishError(f"nodebudgets/{spec.node_name}: {describe_api_error(exc)}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise PublishError(f"nodebudgets/{spec.node_name}: {exc}") from exc

    def _owner_uid(self) -> str | None:
        """The Node's uid, looked up until found, then kept: a Node deleted and created
        again under the same name takes its DaemonSet pod with it, so a running agent never
        sees its node's uid change."""
        if self._node_uid is not None or self._node_lookup_forbidden:
            return self._node_uid
        response = self._get_node()
        if response.status == 404:
            log.debug("node %s not found: NodeBudget written without owner", self._node_name)
            return None
        if response.status == 403:
            log.warning(
                "not allowed to get node %s: NodeBudget written without owner, so it "
                "outlives the node (grant get on nodes, then restart the agent)",
                self._node_name,
            )
            self._node_lookup_forbidden = True
            return None
        if not 200 <= response.status < 300:
            raise ApiException(http_resp=response)
        self._node_uid = _uid_of(response.data)
        return self._node_uid

    def _get_node(self) -> RESTResponse:
        # A bare GET rather than CoreV1Api.read_node: that one builds the client's pydantic
        # validators for V1Node and all its parts, ~22 MB of resident memory on every node
        # (a third of the agent), to hand back one string.
        method, url, headers, body, post_params = self._api_client.param_serialize(
            method="GET",
            resource_path="/api/v1/nodes/{name}",
            path_params={"name": self._node_name},
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        response = self._api_client.call_api(
            method, url, headers, body, post_params, _request_timeout=REQUEST_TIMEOUT
        )
        response.read()  # type: ignore[no-untyped-call]  # untyped in the client
        return response


def _uid_of(node_json: bytes | None) -> str | None:
    try:
        node = json.loads(node_json or b"")
        uid = node["metadata"]["uid"]
    except (ValueError, TypeError, KeyError):
        return None
    return uid if isinstance(uid, str) and uid else None
