"""Acting as a ServiceAccount the way its pods do: with a real TokenRequest token.

A client certificate with the account's name (`LocalCluster.user_kubeconfig`) is enough for
RBAC, but not for what the API server learns only from a token: a token bound to a pod
carries the pod's node (userInfo.extra "authentication.kubernetes.io/node-name"), which
admission policies may check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cellguard.devcluster.cluster import LocalCluster


def token_kubeconfig(
    cluster: LocalCluster,
    namespace: str,
    service_account: str,
    path: Path,
    *,
    bound_pod: str | None = None,
    duration: str = "10m",
) -> Path:
    """A kubeconfig at `path` that authenticates with a fresh token of the ServiceAccount
    alone (no client certificate); `bound_pod`: bound to that pod (and so to its node), as
    the kubelet's projected tokens are."""
    bound: list[str] = []
    if bound_pod is not None:
        pod: dict[str, Any] = yaml.safe_load(
            cluster.kubectl("get", "pod", bound_pod, "-n", namespace, "-o", "yaml").stdout
        )
        bound = [
            "--bound-object-kind=Pod",
            f"--bound-object-name={bound_pod}",
            f"--bound-object-uid={pod['metadata']['uid']}",
        ]
    token = cluster.kubectl(
        "create", "token", service_account, "-n", namespace, f"--duration={duration}", *bound
    ).stdout.strip()
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    config["users"] = [{"name": service_account, "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = service_account
    path.write_text(yaml.safe_dump(config))
    return path
