"""Load helpers shared by tests/e2e/test_load_faults.py and bench/storm.py: a storm of
concurrent scale requests over many cells, waiting for the cells to settle, and the per-node
check against each node's own NodeBudget."""

from __future__ import annotations

import concurrent.futures
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cellguard.budget import allowed_threads
from cellguard.constants import GROUP, LABEL_CELL, STREAMCELL_PLURAL, VERSION
from cellguard.devcluster.cells import cell_manifest, get_json, node_threads
from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.pools import NodePool, budget_manifest

# A storm's pool mixes two node sizes, so "the limit" is each node's own.
STORM_PID_MAX = (32_768, 24_576)


def storm_budgets(pool: NodePool, baseline: int) -> None:
    """NodeBudgets of two sizes, alternating over the pool's nodes."""
    pool.cluster.apply(
        [
            budget_manifest(
                node,
                threads_max=32_768,
                pid_max=STORM_PID_MAX[index % len(STORM_PID_MAX)],
                threads_in_use=baseline,
            )
            for index, node in enumerate(pool.nodes)
        ]
    )


def allowed_by_node(cluster: LocalCluster, pool: NodePool, margin: Fraction) -> dict[str, int]:
    """Each node's allowed threads from its NodeBudget: min of the limits, less the margin."""
    budgets = {b["metadata"]["name"]: b["spec"] for b in get_json(cluster, "nodebudgets")["items"]}
    allowed = {}
    for node in pool.nodes:
        spec = budgets[node]
        limits = [spec.get("threadsMax"), spec.get("pidMax"), spec.get("kubepods", {}).get("max")]
        allowed[node] = allowed_threads(min(x for x in limits if x), margin)
    return allowed


def over_limit(
    cluster: LocalCluster, pool: NodePool, namespace: str, baseline: int, allowed: dict[str, int]
) -> dict[str, tuple[int, int]]:
    """Nodes whose modelled threads exceed what their budget allows: node -> (threads, allowed)."""
    threads = node_threads(cluster, pool, namespace, baseline)
    return {n: (t, allowed[n]) for n, t in threads.items() if t > allowed[n]}


@dataclass
class StormResult:
    requests: int
    seconds: float
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_s: list[float] = field(default_factory=list)
    admitted: dict[str, set[int]] = field(default_factory=dict)
    refusal_messages: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)  # any answer but 200 or 403

    @property
    def admitted_fraction(self) -> float:
        return self.statuses.get(200, 0) / self.requests if self.requests else 0.0


def scale_storm(
    cluster: LocalCluster,
    namespace: str,
    cells: list[str],
    *,
    requests: int,
    workers: int,
    max_replicas: int,
    seed: int,
) -> StormResult:
    """`requests` concurrent PATCHes of /scale, random cells and sizes 1..max_replicas.

    Scale-downs need no budget check (the webhook's match conditions skip them); every
    scale-up is decided by the operator, concurrently with the others.
    """
    rng = random.Random(seed)
    plan = [(rng.choice(cells), rng.randint(1, max_replicas)) for _ in range(requests)]
    api = client.CustomObjectsApi(cluster.api_client())
    result = StormResult(requests=requests, seconds=0.0)
    result.admitted = {c: set() for c in cells}
    lock = threading.Lock()

    def one(item: tuple[str, int]) -> None:
        name, replicas = item
        started = time.perf_counter()
        try:
            api.patch_namespaced_custom_object_scale(
                GROUP,
                VERSION,
                namespace,
                STREAMCELL_PLURAL,
                name,
                {"spec": {"replicas": replicas}},
                _request_timeout=60,
            )
            status, message = 200, ""
        except ApiException as exc:
            status = int(exc.status or 0)
            message = _message(exc.body) or str(exc.reason)
        except Exception as exc:  # a broken connection is an unexpected answer too
            status, message = 0, f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - started
        with lock:
            result.statuses[status] += 1
            result.latencies_s.append(elapsed)
            if status == 200:
                result.admitted[name].add(replicas)
            elif status == 403:
                result.refusal_messages.append(message)
            else:
                result.unexpected.append(f"{name} -> {replicas}: HTTP {status}: {message}")

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, plan))
    result.seconds = time.monotonic() - started
    return result


def _message(body: object) -> str:
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    if not isinstance(body, str):
        return ""
    try:
        return str(json.loads(body).get("message", body))
    except ValueError:
        return body


def settle(cluster: LocalCluster, namespace: str, timeout: float = 180.0) -> dict[str, int]:
    """Wait until every cell of the namespace runs exactly spec.replicas pods, its
    Deployment asks for that many, and no pod is pending or terminating; cell -> replicas."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        cells = {
            c["metadata"]["name"]: c["spec"]["replicas"]
            for c in get_json(cluster, "streamcells", "-n", namespace)["items"]
        }
        deployments = {
            d["metadata"]["name"]: d["spec"]["replicas"]
            for d in get_json(cluster, "deployments", "-n", namespace)["items"]
        }
        running: Counter[str] = Counter()
        other = 0
        for pod in get_json(cluster, "pods", "-n", namespace)["items"]:
            owner = pod["metadata"].get("labels", {}).get(LABEL_CELL)
            if owner not in cells:
                continue
            if pod["status"].get("phase") == "Running" and not pod["metadata"].get(
                "deletionTimestamp"
            ):
                running[owner] += 1
            else:
                other += 1
        off = {
            n: (r, deployments.get(n), running[n])
            for n, r in cells.items()
            if deployments.get(n) != r or running[n] != r
        }
        if not off and not other:
            return cells
        last = f"{len(off)} cells off (spec, deployment, running): {dict(list(off.items())[:5])}"
        last += f"; {other} pods pending or terminating"
        time.sleep(1.0)
    raise AssertionError(f"cells did not settle in {timeout:.0f} s: {last}")


def storm_cell(
    namespace: str, name: str, pool: NodePool, *, replicas: int, base: int, per_peer: int
) -> dict[str, Any]:
    """A Shared cell (so every cell may use every node of the pool: the most contention)."""
    return cell_manifest(
        namespace,
        name,
        service=name,
        replicas=replicas,
        base=base,
        per_peer=per_peer,
        pool=pool,
        isolation="Shared",
    )
