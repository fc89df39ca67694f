"""A fleet of real thread-holding servers on the real node, and the chart installed there.

The test image's `/peers SERVICE BASE PER_PEER` (toolchain/images/peers) holds BASE threads
plus PER_PEER for every other endpoint of its headless Service, learnt from the API every
second with its ServiceAccount: the Kinesis pattern with real OS threads. Past the pod's
pids.max the kernel refuses the next clone (EAGAIN) and the Go runtime exits 2 with "failed
to create new OS thread". Shared by tests/e2e/test_real_install.py and `cellguard demo
--real-node`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from cellguard.devcluster.images import BuiltImage, build_cellguard_image, build_kubectl_image
from cellguard.devcluster.ociimage import import_image
from cellguard.devcluster.realnode import TEST_IMAGE, RealNode

PEER_SERVICE_ACCOUNT = "peer"
PEER_PORT = 7000
# What the Go runtime prints when clone() fails (errno=11: EAGAIN, the pod's pids.max).
THREAD_FAILURE = "failed to create new OS thread"


def peer_rbac(namespace: str) -> list[dict[str, Any]]:
    """A ServiceAccount whose pods may list EndpointSlices (how /peers finds its fleet)."""
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": PEER_SERVICE_ACCOUNT, "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": PEER_SERVICE_ACCOUNT, "namespace": namespace},
            "rules": [
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": PEER_SERVICE_ACCOUNT, "namespace": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": PEER_SERVICE_ACCOUNT,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": PEER_SERVICE_ACCOUNT, "namespace": namespace}
            ],
        },
    ]


def peers_pod_spec(service: str, base: int, per_peer: int) -> dict[str, Any]:
    """A pod spec running /peers for `service` (a cell's headless Service is its name)."""
    return {
        "serviceAccountName": PEER_SERVICE_ACCOUNT,
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {
                "name": "server",
                "image": TEST_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/peers", service, str(base), str(per_peer)],
                "ports": [{"name": "peer", "containerPort": PEER_PORT}],
            }
        ],
    }


def holding_line(base: int, per_peer: int, count: int) -> str:
    """What each of `count` servers logs once it holds its threads for `count - 1` peers."""
    return f"{count - 1} peers, holding {base + per_peer * (count - 1)} threads"


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def restarts(pods: list[dict[str, Any]]) -> int:
    return sum(
        status.get("restartCount", 0)
        for pod in pods
        for status in pod.get("status", {}).get("containerStatuses") or []
    )


def last_exit_code(pod: dict[str, Any]) -> int | None:
    """The exit code of the pod's first container's last termination, if it terminated."""
    statuses = pod.get("status", {}).get("containerStatuses") or []
    if not statuses:
        return None
    last = statuses[0].get("lastState", {}).get("terminated") or statuses[0]["state"].get(
        "terminated"
    )
    return None if last is None else int(last["exitCode"])


def all_restarted(pods: list[dict[str, Any]], names: set[str]) -> bool:
    """Every pod named in `names` still there and restarted at least once."""
    by_name = {p["metadata"]["name"]: p for p in pods}
    return all(name in by_name and restarts([by_name[name]]) > 0 for name in names)


def crash_log(previous_logs: Callable[[str], str], names: set[str]) -> str | None:
    """The first of `names` whose previous container died of a thread failure: its log."""
    for name in sorted(names):
        logs = previous_logs(name)
        if THREAD_FAILURE in logs:
            return logs
    return None


def thread_failure_lines(logs: str) -> list[str]:
    """The Go runtime's lines about the failed clone(): "failed to create new OS thread
    (have N already; errno=11)", "fatal error: newosproc", ..."""
    return [line for line in logs.splitlines() if "OS thread" in line or "newosproc" in line]


def import_cellguard_images(
    node: RealNode, progress: Callable[[str], None] = lambda _m: None
) -> tuple[BuiltImage, BuiltImage]:
    """The cellguard image (the Dockerfile, built by buildah; cached) and the chart's kubectl
    image, built and imported into the real node's containerd for `imagePullPolicy: Never`."""
    cellguard = build_cellguard_image(progress=progress)
    kubectl = build_kubectl_image(node.cluster.bin_dir / "kubectl", progress=progress)
    progress(
        f"image {cellguard.reference}: {cellguard.size_bytes / 1e6:.0f} MB, "
        f"built (or found) in {cellguard.seconds:.1f} s"
    )
    for built in (cellguard, kubectl):
        started = time.monotonic()
        import_image(built.packed(), node.socket, timeout=300)
        progress(f"imported {built.reference} in {time.monotonic() - started:.1f} s")
    return cellguard, kubectl


def real_node_chart_values(node: RealNode, images: tuple[BuiltImage, BuiltImage]) -> dict[str, Any]:
    """Helm values for the chart in its normal in-cluster mode on the real node."""
    cellguard, kubectl = images
    repository, tag = cellguard.reference.rsplit(":", 1)
    kubectl_repository, kubectl_tag = kubectl.reference.rsplit(":", 1)
    return {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "kubectl": {
            "image": {
                "repository": kubectl_repository,
                "tag": kubectl_tag,
                "pullPolicy": "Never",
            }
        },
        # The real node's kubelet reads its configuration from its working directory. And
        # kernel.pid_max is per PID namespace on this kernel (6.14 and later): the agent
        # reads the host's in the host's PID namespace only.
        "agent": {
            "hostPID": True,
            "intervalSeconds": 5,
            "kubeletConfig": {"hostPath": str(node.workdir / "kubelet-config.yaml")},
        },
        "operator": {"statusIntervalSeconds": 2},
    }
