"""StreamCells on the local control plane, through kubectl as a user would: manifests,
reads, waits, and `cell_world` - a namespace and a node pool of one's own, cleaned up after.

Used by the e2e tests, the benchmarks and the scenarios under scenarios/.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from cellguard.budget import threads_per_pod
from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.pools import NodePool, node_pool
from cellguard.devcluster.waiting import wait_for

IMAGE = "example.invalid/stream:1"


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
    """A StreamCell on `pool`; `spec` adds or overrides spec fields (e.g. policyRef)."""
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
                "spec": {"containers": [{"name": "server", "image": IMAGE}]},
            },
            **spec,
        },
    }


def apply_yaml(
    cluster: LocalCluster, manifest: dict[str, Any], *extra: str
) -> subprocess.CompletedProcess[str]:
    """`kubectl apply` of one object; the result is not checked (a refusal is an answer)."""
    return cluster.kubectl(
        "apply", *extra, "-f", "-", input_text=yaml.safe_dump(manifest), check=False
    )


def apply_admitted(
    cluster: LocalCluster,
    manifest: dict[str, Any],
    timeout: float = 60,
    error: type[Exception] = AssertionError,
) -> None:
    """Apply a cell, retrying while the operator has not caught up with a pool just made
    (new nodes carry the not-ready taint for a moment; budget reports are folded into its
    snapshot at most once a second); `error` with kubectl's answer after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = apply_yaml(cluster, manifest)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise error(f"{manifest['metadata']['name']} refused: {result.stderr}")
        time.sleep(0.5)


def get_json(cluster: LocalCluster, *args: str) -> Any:
    """`kubectl get ARGS -o json`, parsed."""
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def ensure_namespace(cluster: LocalCluster, name: str) -> None:
    cluster.kubectl("create", "namespace", name, check=False)


def cell(cluster: LocalCluster, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = get_json(cluster, "streamcell", name, "-n", namespace)
    return result


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """The status condition of `type_` of any object (a cell, an HPA ...), or None."""
    for item in obj.get("status", {}).get("conditions", []):
        if item["type"] == type_:
            found: dict[str, Any] = item
            return found
    return None


def running_pods(cluster: LocalCluster, namespace: str, cell_name: str) -> list[dict[str, Any]]:
    """The cell's pods that are Running and not being deleted."""
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
    """Until the cell has exactly `count` pods, all Running; those pods."""

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


# ---------------------------------------------------------------------- a world of one's own


@dataclass
class CellWorld:
    """A namespace and a node pool of one's own (see `cell_world`), and cells made in them."""

    cluster: LocalCluster
    namespace: str
    pool: NodePool

    def manifest(
        self,
        name: str,
        *,
        replicas: int,
        base: int,
        per_peer: int,
        service: str | None = None,
        **spec: Any,
    ) -> dict[str, Any]:
        """`cell_manifest` in this namespace and pool; the service defaults to the name."""
        return cell_manifest(
            self.namespace,
            name,
            service=service or name,
            replicas=replicas,
            base=base,
            per_peer=per_peer,
            pool=self.pool,
            **spec,
        )

    def apply(self, manifest: dict[str, Any], *, retry: bool = False) -> None:
        """Apply a cell that must be admitted (AssertionError with kubectl's answer if not);
        `retry`: while the operator folds in the budgets of a pool just made."""
        if retry:
            apply_admitted(self.cluster, manifest)
            return
        created = apply_yaml(self.cluster, manifest)
        if created.returncode != 0:
            raise AssertionError(created.stderr)

    def create(
        self,
        name: str,
        *,
        replicas: int,
        base: int,
        per_peer: int,
        retry: bool = False,
        timeout: float = 60,
        **spec: Any,
    ) -> list[dict[str, Any]]:
        """Apply a cell (see `manifest`, `apply`) and wait for its pods, which it returns."""
        manifest = self.manifest(name, replicas=replicas, base=base, per_peer=per_peer, **spec)
        self.apply(manifest, retry=retry)
        return wait_cell_pods(self.cluster, self.namespace, name, replicas, timeout=timeout)


@contextlib.contextmanager
def cell_world(
    cluster: LocalCluster,
    namespace: str,
    pool: str,
    nodes: int,
    *,
    budgets: bool = True,
    delete_namespace: bool = False,
    **figures: Any,
) -> Iterator[CellWorld]:
    """Create `namespace` (if missing) and a pool of `nodes` nodes named `pool` (with
    budgets of `figures`, see `node_pool`); afterwards, whatever happened, delete every
    StreamCell of the namespace (waiting up to a minute for them to go) - or, with
    `delete_namespace`, the namespace itself (not waiting) - and then the pool."""
    ensure_namespace(cluster, namespace)
    with node_pool(cluster, pool, nodes, budgets=budgets, **figures) as made:
        try:
            yield CellWorld(cluster, namespace, made)
        finally:
            if delete_namespace:
                cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
            else:
                cluster.kubectl(
                    "delete", "streamcells", "--all", "-n", namespace, "--timeout=60s", check=False
                )
