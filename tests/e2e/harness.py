"""End-to-end helpers: the operator as a real local process, node pools, budgets, cells.

Each test gets its own node pool (kwok nodes with a pool label and a matching NoSchedule
taint), so cells of one test never land on another test's nodes and the budgets a test
sets are the only ones its cells see.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cellguard.budget.threads import threads_per_pod
from cellguard.devcluster.cluster import ClusterError, LocalCluster, NodeSpec, free_port
from cellguard.devcluster.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = "cellguard-system"
OPERATOR_SA = "cellguard-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SA}"
POOL_LABEL = "cellguard.test/pool"

T = TypeVar("T")


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def rfc3339(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------- the operator


@dataclass
class OperatorProcess:
    cluster: LocalCluster
    kubeconfig: Path
    log_path: Path
    webhook_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    popen: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> None:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cellguard",
                "run",
                f"--kubeconfig={self.kubeconfig}",
                "--webhook-mode=url",
                "--webhook-host=127.0.0.1",
                f"--webhook-port={self.webhook_port}",
                "--probe-host=127.0.0.1",
                f"--health-port={self.health_port}",
                f"--metrics-port={self.metrics_port}",
                f"--operator-namespace={OPERATOR_NAMESPACE}",
                "--identity=e2e-operator",
                "--status-interval=2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        if wait:
            self.wait_ready()

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.health_port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        def check() -> bool:
            if self.popen is not None and self.popen.poll() is not None:
                raise AssertionError(
                    f"operator exited ({self.popen.returncode}):\n{self.log_tail()}"
                )
            return self.ready()

        wait_for(check, timeout=timeout, what="the operator to be ready")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text: str = response.read().decode()
            return text

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no operator log)"


def install_cellguard(cluster: LocalCluster) -> Path:
    """CRDs, the operator's namespace, identity and RBAC; returns its kubeconfig."""
    for crd in sorted((REPO / "crds").glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "-f", str(crd))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    cluster.apply(
        [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": OPERATOR_SA, "namespace": OPERATOR_NAMESPACE},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "cellguard-e2e-operator"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "cluster-admin",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NAMESPACE}
                ],
            },
        ]
    )
    return cluster.user_kubeconfig(
        OPERATOR_USER, ("system:serviceaccounts", f"system:serviceaccounts:{OPERATOR_NAMESPACE}")
    )


def apply_policy(cluster: LocalCluster, name: str = "default", **spec: Any) -> None:
    body = {"safetyMargin": 0.2, "staleAfterSeconds": 3600, **spec}
    cluster.apply(
        [
            {
                "apiVersion": "cellguard.io/v1alpha1",
                "kind": "ThreadBudgetPolicy",
                "metadata": {"name": name},
                "spec": body,
            }
        ]
    )


# ---------------------------------------------------------------------- node pools


def budget_manifest(
    node: str,
    *,
    threads_max: int = 32_768,
    pid_max: int = 32_768,
    threads_in_use: int = 1_000,
    observed_at: datetime.datetime | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "cellguard.io/v1alpha1",
        "kind": "NodeBudget",
        "metadata": {"name": node},
        "spec": {
            "nodeName": node,
            "threadsMax": threads_max,
            "pidMax": pid_max,
            "threadsInUse": threads_in_use,
            "kubepods": {"cgroupVersion": "v2", "unlimited": True},
            "observedAt": rfc3339(observed_at or utc_now()),
        },
    }


@dataclass
class NodePool:
    cluster: LocalCluster
    name: str
    nodes: list[str]

    @property
    def placement(self) -> dict[str, Any]:
        return {
            "nodeSelector": {POOL_LABEL: self.name},
            "tolerations": [
                {"key": POOL_LABEL, "operator": "Equal", "value": self.name, "effect": "NoSchedule"}
            ],
        }

    def set_budgets(self, **figures: Any) -> None:
        self.cluster.apply([budget_manifest(n, **figures) for n in self.nodes])


@contextlib.contextmanager
def node_pool(
    cluster: LocalCluster, name: str, count: int, *, budgets: bool = True, **figures: Any
) -> Iterator[NodePool]:
    specs = [
        NodeSpec(
            name=f"{name}-{i}",
            labels={POOL_LABEL: name},
            taints=({"key": POOL_LABEL, "value": name, "effect": "NoSchedule"},),
        )
        for i in range(1, count + 1)
    ]
    cluster.add_nodes(specs)
    cluster.wait_nodes_ready([s.name for s in specs])
    pool = NodePool(cluster, name, [s.name for s in specs])
    if budgets:
        pool.set_budgets(**figures)
    try:
        yield pool
    finally:
        for node in pool.nodes:
            cluster.kubectl("delete", "node", node, "--wait=false", check=False)
            cluster.kubectl("delete", "nodebudget", node, "--wait=false", check=False)


# ---------------------------------------------------------------------- cells


def cell_manifest(
    namespace: str,
    name: str,
    *,
    service: str,
    replicas: int,
    base: int,
    per_peer: int,
    pool: NodePool,
    isolation: str = "NodeExclusive",
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "cellguard.io/v1alpha1",
        "kind": "StreamCell",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "service": service,
            "isolation": isolation,
            "threads": {"base": base, "perPeer": per_peer},
            "placement": pool.placement,
            "template": {
                "metadata": {"labels": {"app": service}},
                "spec": {"containers": [{"name": "server", "image": "example.invalid/stream:1"}]},
            },
            **spec,
        },
    }


def apply_yaml(
    cluster: LocalCluster, manifest: dict[str, Any], *extra: str
) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl(
        "apply", *extra, "-f", "-", input_text=yaml.safe_dump(manifest), check=False
    )


def get_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def cell(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = get_json(cluster, "streamcell", name, "-n", namespace)
    return result


def running_pods(cluster: LocalCluster, namespace: str, cell_name: str) -> list[dict[str, Any]]:
    pods = get_json(cluster, "pods", "-n", namespace, "-l", f"cellguard.io/cell={cell_name}")[
        "items"
    ]
    return [
        p
        for p in pods
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]


def wait_cell_pods(
    cluster: LocalCluster, namespace: str, name: str, count: int, timeout: float = 60
) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]] | None:
        pods = running_pods(cluster, namespace, name)
        all_pods = get_json(cluster, "pods", "-n", namespace, "-l", f"cellguard.io/cell={name}")[
            "items"
        ]
        return pods if len(pods) == count and len(all_pods) == count else None

    return wait_for(check, timeout=timeout, what=f"{count} running pods of {namespace}/{name}")


def deployment_replicas(cluster: LocalCluster, namespace: str, name: str) -> int:
    return int(get_json(cluster, "deployment", name, "-n", namespace)["spec"]["replicas"])


def node_threads(
    cluster: LocalCluster, pool: NodePool, namespace: str, baseline: int
) -> dict[str, int]:
    """Threads per node of the pool by the thread model of the cells really on it."""
    cells = {
        c["metadata"]["name"]: c for c in get_json(cluster, "streamcells", "-n", namespace)["items"]
    }
    pods = [
        p
        for p in get_json(cluster, "pods", "-n", namespace)["items"]
        if p["metadata"].get("labels", {}).get("cellguard.io/cell") in cells
    ]
    peers: dict[str, int] = {}
    for pod in pods:
        owner = pod["metadata"]["labels"]["cellguard.io/cell"]
        peers[owner] = peers.get(owner, 0) + 1
    totals = dict.fromkeys(pool.nodes, baseline)
    for pod in pods:
        node = pod["spec"].get("nodeName")
        if node not in totals:
            continue
        owner = pod["metadata"]["labels"]["cellguard.io/cell"]
        spec = cells[owner]["spec"]
        # A pod holds a thread per peer that really exists (or is about to).
        replicas = max(spec["replicas"], peers[owner])
        totals[node] += threads_per_pod(
            spec["threads"]["base"], spec["threads"]["perPeer"], replicas
        )
    return totals


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """The status condition of `type_` of any object (a cell, an HPA ...), or None."""
    for item in obj.get("status", {}).get("conditions", []):
        if item["type"] == type_:
            found: dict[str, Any] = item
            return found
    return None


def ensure_namespace(cluster: LocalCluster, name: str) -> None:
    cluster.kubectl("create", "namespace", name, check=False)


__all__ = ["ClusterError"]
