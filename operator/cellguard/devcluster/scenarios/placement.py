"""Randomized placement scenarios: the planner's promise checked against the real scheduler.

Each scenario builds a small pool of kwok nodes (some tainted against the cells), sibling
cells of one service (NodeExclusive and Shared, uneven starting sizes), then makes random
changes: `kubectl scale` of a random cell to a random size, or a rollout (a new image).
Before a scale-up it asks `cellguard plan` (from the live cluster) what each node may
receive. After each admitted change:
- every pod of every cell is Running within a bounded time (never admitted and Pending);
- every node holds no more of the cell's pods than the plan assumed for it.
A refused change must leave the cell's Deployment where it was.

Shared by tests/e2e/test_placement.py (a few seeded scenarios in the test command) and
bench/placement.py (a hundred or more, with timings).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from cellguard.devcluster.cells import (
    apply_yaml,
    cell_world,
    deployment_replicas,
    get_json,
)
from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.processes import cellguard_command
from cellguard.devcluster.waiting import wait_for

SERVICE = "stream"
SETTLE_SECONDS = 45.0  # every pod of an admitted change Running within this
EXTRA_TAINT = "cellguard-e2e/unwanted"


@dataclass
class Outcome:
    seed: int
    changes: int = 0
    admitted: int = 0
    refused: int = 0
    mismatches: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _pods(cluster: LocalCluster, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get_json(cluster, "pods", "-n", namespace)["items"]
    return items


def _per_node(pods: list[dict[str, Any]], cell: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pod in pods:
        if pod["metadata"].get("labels", {}).get("cellguard.io/cell") != cell:
            continue
        if pod["metadata"].get("deletionTimestamp"):
            continue
        node = pod["spec"].get("nodeName")
        if node:
            counts[node] = counts.get(node, 0) + 1
    return counts


def plan(cluster: LocalCluster, namespace: str, cell: str, replicas: int) -> dict[str, Any]:
    """`cellguard plan -o json` against the live cluster."""
    result = subprocess.run(
        cellguard_command(
            "plan",
            f"streamcell/{cell}",
            "-n",
            namespace,
            "--replicas",
            str(replicas),
            "--kubeconfig",
            str(cluster.kubeconfig),
            "-o",
            "json",
        ),
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )
    if result.returncode not in (0, 1):
        raise AssertionError(f"cellguard plan failed: {result.stderr}")
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def assumed_per_node(planned: dict[str, Any]) -> tuple[dict[str, int], int]:
    """node -> pods of the cell the plan assumed there, and the water line for the rest."""
    rows = planned["nodes"]
    level = max((row["newPods"] for row in rows if row["pods"] == 0), default=0)
    level = max([level] + [row["pods"] + row["newPods"] for row in rows if row["newPods"]])
    return {row["node"]: row["pods"] + row["newPods"] for row in rows}, level


def settled(cluster: LocalCluster, namespace: str, cells: dict[str, int]) -> str | None:
    """None when every cell has exactly its replicas as Running pods, else what is not."""
    pods = _pods(cluster, namespace)
    for cell, replicas in cells.items():
        mine = [p for p in pods if p["metadata"]["labels"].get("cellguard.io/cell") == cell]
        live = [p for p in mine if not p["metadata"].get("deletionTimestamp")]
        running = [p for p in live if p["status"].get("phase") == "Running"]
        if len(running) != replicas or len(live) != replicas:
            pending = [p["metadata"]["name"] for p in live if p["status"].get("phase") != "Running"]
            return f"{cell}: {len(running)}/{replicas} Running, not running: {pending}"
    return None


def _wait_settled(
    cluster: LocalCluster, namespace: str, cells: dict[str, int], outcome: Outcome, what: str
) -> None:
    deadline = time.monotonic() + SETTLE_SECONDS
    problem = settled(cluster, namespace, cells)
    while problem is not None and time.monotonic() < deadline:
        time.sleep(0.5)
        problem = settled(cluster, namespace, cells)
    if problem is not None:
        outcome.mismatches.append(f"seed {outcome.seed}: after {what}: {problem}")


def run_scenario(cluster: LocalCluster, seed: int) -> Outcome:
    """One random scenario in a namespace and node pool of its own, all removed after."""
    rng = random.Random(seed)
    outcome = Outcome(seed)
    started = time.monotonic()
    namespace = f"place-{seed}"
    node_count = rng.randint(3, 7)
    # Threads: the budget allows 26,214 a node; pods cost base + perPeer x (N - 1).
    with cell_world(cluster, namespace, f"pl{seed}", node_count, delete_namespace=True) as world:
        pool = world.pool
        tainted = rng.sample(pool.nodes, k=rng.randint(0, 1))
        for node in tainted:
            cluster.kubectl("taint", "node", node, f"{EXTRA_TAINT}=yes:NoSchedule")
        cells: dict[str, int] = {}
        try:
            for index in range(rng.randint(2, 3)):
                name = f"c{index}"
                isolation = rng.choice(["NodeExclusive", "NodeExclusive", "Shared"])
                replicas = rng.randint(0, 3)
                manifest = world.manifest(
                    name,
                    service=SERVICE,
                    replicas=0,
                    base=rng.choice([500, 2_000, 4_000]),
                    per_peer=rng.choice([0, 100, 600]),
                    isolation=isolation,
                    maxReplicas=40,
                )
                created = apply_yaml(cluster, manifest)
                if created.returncode != 0:
                    raise AssertionError(f"creating {name}: {created.stderr}")
                cells[name] = 0
                wait_for(
                    partial(_has_deployment, cluster, namespace, name),
                    timeout=30,
                    what=f"the Deployment of {namespace}/{name}",
                )
                _change(cluster, namespace, name, replicas, cells, outcome)
            for _ in range(rng.randint(2, 4)):
                name = rng.choice(sorted(cells))
                if rng.random() < 0.25 and cells[name]:
                    _rollout(cluster, namespace, name, rng, cells, outcome)
                else:
                    target = cells[name] + rng.randint(1, 8)
                    _change(cluster, namespace, name, target, cells, outcome)
        finally:
            for node in tainted:
                cluster.kubectl("taint", "node", node, f"{EXTRA_TAINT}-", check=False)
    outcome.seconds = time.monotonic() - started
    return outcome


def _has_deployment(cluster: LocalCluster, namespace: str, name: str) -> bool:
    found = cluster.kubectl("get", "deployment", name, "-n", namespace, check=False)
    return found.returncode == 0


def _change(
    cluster: LocalCluster,
    namespace: str,
    name: str,
    target: int,
    cells: dict[str, int],
    outcome: Outcome,
) -> None:
    before = cells[name]
    if target == before:
        return
    outcome.changes += 1
    planned = plan(cluster, namespace, name, target) if target > before else None
    scaled = cluster.kubectl(
        "scale", "streamcell", name, "-n", namespace, f"--replicas={target}", check=False
    )
    what = f"scaling {name} {before} -> {target}"
    if scaled.returncode != 0:
        outcome.refused += 1
        if "denied the request" not in scaled.stderr:
            raise AssertionError(f"{what}: {scaled.stderr}")
        time.sleep(0.5)
        if deployment_replicas(cluster, namespace, name) != before:
            outcome.mismatches.append(f"seed {outcome.seed}: {what} refused, Deployment moved")
        return
    outcome.admitted += 1
    cells[name] = target
    _wait_settled(cluster, namespace, cells, outcome, what)
    if planned is None:
        return
    assumed, level = assumed_per_node(planned)
    for node, count in _per_node(_pods(cluster, namespace), name).items():
        bound = assumed.get(node, level)
        if count > bound:
            outcome.mismatches.append(
                f"seed {outcome.seed}: {what}: node {node} holds {count} pods of {name}, "
                f"the plan assumed at most {bound}"
            )


def _rollout(
    cluster: LocalCluster,
    namespace: str,
    name: str,
    rng: random.Random,
    cells: dict[str, int],
    outcome: Outcome,
) -> None:
    outcome.changes += 1
    image = f"example.invalid/stream:{rng.randint(2, 10_000)}"
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "server", "image": image}]}}}}
    patched = cluster.kubectl(
        "patch",
        "streamcell",
        name,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps(patch),
        check=False,
    )
    what = f"rolling out {name} ({cells[name]} pods)"
    if patched.returncode != 0:
        outcome.refused += 1
        return
    outcome.admitted += 1

    def rolled_out() -> bool:
        pods = _pods(cluster, namespace)
        images = {
            p["spec"]["containers"][0]["image"]
            for p in pods
            if p["metadata"]["labels"].get("cellguard.io/cell") == name
            and not p["metadata"].get("deletionTimestamp")
        }
        return images == {image} or (cells[name] == 0 and not images)

    deadline = time.monotonic() + SETTLE_SECONDS
    while not rolled_out() and time.monotonic() < deadline:
        time.sleep(0.5)
    if not rolled_out():
        problem = settled(cluster, namespace, cells)
        outcome.mismatches.append(f"seed {outcome.seed}: {what} did not finish: {problem}")
        return
    _wait_settled(cluster, namespace, cells, outcome, what)
