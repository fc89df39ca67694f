"""The operator on the real control plane, driven through kubectl as a user would."""

from __future__ import annotations

import concurrent.futures
import json
import re
from typing import Any

import pytest

from cellguard.devcluster.cluster import LocalCluster

from .harness import (
    CellWorld,
    OperatorProcess,
    cell,
    cell_world,
    condition,
    deployment_replicas,
    get_json,
    node_threads,
    wait_cell_pods,
    wait_for,
)

pytestmark = pytest.mark.e2e

ALLOWED = 26_214  # 32,768 less the 20 % margin
BASELINE = 1_000  # threads in use the pools' NodeBudgets report


def assert_within_budget(world: CellWorld) -> None:
    """Every node of the pool within its allowance, by the cells really on it."""
    threads = node_threads(world.cluster, world.pool, world.namespace, BASELINE)
    for node, count in threads.items():
        assert count <= ALLOWED, f"{node} at {count}"


def test_apply_creates_children_and_fills_status(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    with cell_world(cluster, "e2e-basic", "basic", 3) as world:
        operator.wait_knows_budgets(world.pool.nodes)  # else it may claim two of the three
        pods = world.create("web", replicas=3, base=50, per_peer=10)
        assert {p["spec"]["nodeName"] for p in pods} == set(world.pool.nodes)
        deployment = get_json(cluster, "deployment", "web", "-n", "e2e-basic")
        assert deployment["metadata"]["ownerReferences"][0]["kind"] == "StreamCell"
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
        service = get_json(cluster, "service", "web", "-n", "e2e-basic")
        assert service["spec"]["clusterIP"] == "None"
        pdb = get_json(cluster, "pdb", "web", "-n", "e2e-basic")
        assert pdb["spec"]["maxUnavailable"] == 1

        def status_filled() -> dict | None:  # type: ignore[type-arg]
            status = cell(cluster, "e2e-basic", "web").get("status", {})
            ready = condition({"status": status}, "Ready")
            return status if ready and ready["status"] == "True" else None

        status = wait_for(status_filled, what="Ready status")
        assert status["threadsPerPod"] == 70
        assert status["maxSafeReplicas"] > 3
        assert status["limitingNode"] in world.pool.nodes
        assert status["selector"] == "cellguard.io/cell=web"
        within = condition({"status": status}, "WithinBudget")
        assert within is not None and within["status"] == "True"
        table = cluster.kubectl("get", "streamcells", "-n", "e2e-basic").stdout
        header, row = table.splitlines()[:2]
        assert header.split()[:6] == [
            "NAME",
            "REPLICAS",
            "READY",
            "MAXSAFE",
            "HEADROOM",
            "LIMITINGNODE",
        ]
        assert row.split()[:3] == ["web", "3", "3"]
        assert row.split()[5] in world.pool.nodes
        # A template change (same replicas) reaches the Deployment: a new image rolls out.
        container = {"name": "server", "image": "example.invalid/stream:2"}
        patch = json.dumps({"spec": {"template": {"spec": {"containers": [container]}}}})
        changed = cluster.kubectl(
            "patch",
            "streamcell",
            "web",
            "-n",
            "e2e-basic",
            "--type=merge",
            "-p",
            patch,
            check=False,
        )
        assert changed.returncode == 0, changed.stderr

        def image() -> str:
            deployment = get_json(cluster, "deployment", "web", "-n", "e2e-basic")
            return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])

        wait_for(
            lambda: image() == "example.invalid/stream:2", what="the new image in the Deployment"
        )
        assert deployment_replicas(cluster, "e2e-basic", "web") == 3


def test_kubectl_scale_within_and_beyond_budget(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    ns = "e2e-scale"
    with cell_world(cluster, ns, "scale", 4) as world:
        # 500 threads per peer: 4 nodes fit at most 12 pods (3 a node at 5,700 threads each).
        world.create("ingest", replicas=4, base=200, per_peer=500)
        max_safe = wait_for(
            lambda: cell(cluster, ns, "ingest").get("status", {}).get("maxSafeReplicas"),
            what="status.maxSafeReplicas",
        )

        ok = cluster.kubectl("scale", "streamcell/ingest", "-n", ns, "--replicas=8", check=False)
        assert ok.returncode == 0, ok.stderr
        wait_cell_pods(cluster, ns, "ingest", 8)

        refused = cluster.kubectl(
            "scale", "streamcell/ingest", "-n", ns, "--replicas=20", check=False
        )
        assert refused.returncode != 0
        message = refused.stderr
        assert "scaling e2e-scale/ingest from 8 to 20 replicas would put node scale-" in message
        assert re.search(r"at [\d,]+ threads \(limit 32,768 less 20% margin = 26,214\)", message)
        assert f"at most {max_safe} replicas fit" in message
        assert cell(cluster, ns, "ingest")["spec"]["replicas"] == 8
        assert deployment_replicas(cluster, ns, "ingest") == 8

        dry_refused = cluster.kubectl(
            "scale", "streamcell/ingest", "-n", ns, "--replicas=20", "--dry-run=server", check=False
        )
        assert dry_refused.returncode != 0
        assert "would put node" in dry_refused.stderr
        dry_ok = cluster.kubectl(
            "scale",
            "streamcell/ingest",
            "-n",
            ns,
            f"--replicas={max_safe}",
            "--dry-run=server",
            check=False,
        )
        assert dry_ok.returncode == 0, dry_ok.stderr
        assert cell(cluster, ns, "ingest")["spec"]["replicas"] == 8

        direct = cluster.kubectl(
            "scale", "deployment/ingest", "-n", ns, "--replicas=12", check=False
        )
        assert direct.returncode != 0
        assert "scale the StreamCell instead" in direct.stderr
        patched = cluster.kubectl(
            "patch", "deployment/ingest", "-n", ns, "-p", '{"spec":{"replicas":12}}', check=False
        )
        assert patched.returncode != 0
        assert "scale the StreamCell instead" in patched.stderr
        assert deployment_replicas(cluster, ns, "ingest") == 8

        def refusal_recorded() -> dict[str, Any] | None:
            status = cell(cluster, ns, "ingest").get("status", {})
            found: dict[str, Any] | None = status.get("lastRefusal")
            return found

        refusal = wait_for(refusal_recorded, what="status.lastRefusal")
        assert refusal["requestedReplicas"] == 20
        assert refusal["reason"] == "NodeThreadLimit"
        events = cluster.kubectl(
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            "involvedObject.name=ingest,reason=ScaleRefused",
        ).stdout
        assert "would put node" in events
        assert_within_budget(world)


def test_cells_of_one_service_never_share_a_node(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    ns = "e2e-isolation"
    with cell_world(cluster, ns, "iso", 6) as world:
        for name in ("orders-a", "orders-b"):
            world.apply(world.manifest(name, service="orders", replicas=3, base=100, per_peer=50))
        a = {p["spec"]["nodeName"] for p in wait_cell_pods(cluster, ns, "orders-a", 3)}
        b = {p["spec"]["nodeName"] for p in wait_cell_pods(cluster, ns, "orders-b", 3)}
        assert len(a) == 3 and len(b) == 3
        assert a.isdisjoint(b), f"cells share nodes: {a & b}"


def test_kinesis_replay_refuses_the_add_and_admits_a_second_cell(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    """One fleet where every server holds a thread per peer, close to the limit: a small
    capacity add is refused; the same capacity as a second cell is admitted."""
    ns = "e2e-kinesis"
    with cell_world(cluster, ns, "kin", 16) as world:
        # 12 front-end servers, one a node, each holding 1,200 threads + 2,000 per peer:
        # 23,200 threads + 1,000 in use = 24,200 a node against 26,214 allowed (92 %).
        # The pool was made a moment ago: retry while the operator folds its budgets in.
        world.create(
            "frontend-1", service="frontend", replicas=12, base=1_200, per_peer=2_000, retry=True
        )
        # Adding 3 servers adds 6,000 threads to *every* server: 30,200 a node.
        grow = cluster.kubectl(
            "scale", "streamcell/frontend-1", "-n", ns, "--replicas=15", check=False
        )
        assert grow.returncode != 0
        assert (
            "scaling e2e-kinesis/frontend-1 from 12 to 15 replicas would put node kin-"
            in grow.stderr
        )
        assert "at 30,200 threads (limit 32,768 less 20% margin = 26,214)" in grow.stderr
        assert "at most 13 replicas fit; add a cell" in grow.stderr
        assert deployment_replicas(cluster, ns, "frontend-1") == 12
        # The same capacity as a second cell of the service: 3 servers at 5,200 threads.
        world.apply(
            world.manifest("frontend-2", service="frontend", replicas=3, base=1_200, per_peer=2_000)
        )
        a = {p["spec"]["nodeName"] for p in wait_cell_pods(cluster, ns, "frontend-1", 12)}
        b = {p["spec"]["nodeName"] for p in wait_cell_pods(cluster, ns, "frontend-2", 3)}
        assert a.isdisjoint(b)
        assert_within_budget(world)


def test_concurrent_scale_ups_never_overcommit(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    ns = "e2e-race"
    with cell_world(cluster, ns, "race", 2) as world:
        # Two Shared cells on the same 2 nodes; each alone may grow to 6 (3 a node), together
        # they may not: a pod costs 1,000 + 100 per peer.
        for name in ("left", "right"):
            world.create(name, replicas=2, base=3_000, per_peer=100, isolation="Shared")

        def scale(name: str, replicas: int) -> int:
            return cluster.kubectl(
                "scale", f"streamcell/{name}", "-n", ns, f"--replicas={replicas}", check=False
            ).returncode

        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool_exec:
            results = list(pool_exec.map(scale, ["left", "right"], [8, 8]))
        assert sorted(results) == [0, 1], f"exactly one of two must pass, got {results}"

        # A burst of 50 scale requests at once over both cells.
        sizes = [(("left", "right")[i % 2], 2 + (i * 7) % 9) for i in range(50)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool_exec:
            list(pool_exec.map(lambda args: scale(*args), sizes))
        for name in ("left", "right"):
            replicas = cell(cluster, ns, name)["spec"]["replicas"]
            wait_cell_pods(cluster, ns, name, replicas)
        assert_within_budget(world)
