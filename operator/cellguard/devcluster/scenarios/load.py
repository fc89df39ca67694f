"""Load helpers shared by tests/e2e/test_load_faults.py and bench/storm.py: a storm of
concurrent scale requests over many cells, waiting for the cells to settle, and the per-node
check against each node's own NodeBudget."""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import random
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Iterator
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

    def record(self, cell: str, replicas: int, status: int, message: str, seconds: float) -> None:
        """One request's answer (the caller serialises concurrent calls)."""
        self.statuses[status] += 1
        self.latencies_s.append(seconds)
        if status == 200:
            self.admitted[cell].add(replicas)
        elif status == 403:
            self.refusal_messages.append(message)
        else:
            self.unexpected.append(f"{cell} -> {replicas}: HTTP {status}: {message}")


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
            result.record(name, replicas, status, message, elapsed)

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


# ---------------------------------------------------------------------- bulk population


class AdminHttp:
    """JSON over HTTPS to the local API server as the cluster admin, one keep-alive
    connection per thread: cheap enough per request for bulk writes from one process
    (the kubernetes client spends several times the API server's own time per object)."""

    def __init__(self, cluster: LocalCluster, timeout: float = 60.0) -> None:
        assert cluster.ca is not None and cluster.admin is not None
        self.port = cluster.apiserver_port
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=str(cluster.ca.cert_path))
        self.context.load_cert_chain(str(cluster.admin.cert_path), str(cluster.admin.key_path))
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.port, context=self.context, timeout=self.timeout
            )
            self._local.conn = conn
        return conn

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        accept: str = "application/json",
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        """One request; (status, body). A broken connection is reopened once."""
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                return response.status, response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def get_json(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:300]!r}")
        return json.loads(body)


def pod_from_replicaset(rs: dict[str, Any], node: str) -> dict[str, Any]:
    """The pod the ReplicaSet controller would create for `rs` (its GetPodFromTemplate:
    the template's labels, annotations, finalizers and spec, generateName "<rs>-", the RS as
    controlling owner), bound to `node` as the scheduler would bind it."""
    meta = rs["metadata"]
    template = rs["spec"]["template"]
    tmeta = template.get("metadata") or {}
    pod_meta: dict[str, Any] = {
        "generateName": f"{meta['name']}-",
        "namespace": meta["namespace"],
        "labels": dict(tmeta.get("labels") or {}),
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": meta["name"],
                "uid": meta["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if tmeta.get("annotations"):
        pod_meta["annotations"] = dict(tmeta["annotations"])
    if tmeta.get("finalizers"):
        pod_meta["finalizers"] = list(tmeta["finalizers"])
    spec = json.loads(json.dumps(template["spec"]))
    spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": spec}


@dataclass
class BulkResult:
    created: int = 0
    retried: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def create_bound_pods(
    cluster: LocalCluster,
    replicasets: list[dict[str, Any]],
    nodes: list[str],
    *,
    workers: int = 16,
    field_manager: str = "kube-controller-manager",
    progress: Any = None,
) -> BulkResult:
    """Create every ReplicaSet's spec.replicas pods (see `pod_from_replicaset`) bound to
    `nodes` round robin: the k-th pod of the whole batch on nodes[k % len(nodes)], so each
    RS's pods are on distinct nodes (when it has no more replicas than there are nodes) and
    the nodes end up evenly filled - as the scheduler places them under a hostname spread
    constraint of maxSkew 1. For a benchmark's population with the ReplicaSet controller
    off (see LocalCluster.restart_component): when it runs again it finds every RS at its
    replicas and only writes their status. Retries 429/5xx and broken connections.

    `workers` threads take the pods one by one (bodies are made as they go: 150,000 of
    them at once would be half a gigabyte)."""
    http_ = AdminHttp(cluster)

    def bodies() -> Iterator[tuple[str, dict[str, Any], str]]:
        k = 0
        for rs in replicasets:
            path = (
                f"/api/v1/namespaces/{rs['metadata']['namespace']}/pods"
                f"?fieldManager={field_manager}"
            )
            for _ in range(int(rs["spec"].get("replicas") or 0)):
                yield path, rs, nodes[k % len(nodes)]
                k += 1

    total = sum(int(rs["spec"].get("replicas") or 0) for rs in replicasets)
    work = bodies()
    result = BulkResult()
    lock = threading.Lock()
    started = time.monotonic()

    def one(path: str, body: bytes) -> None:
        last = ""
        for attempt in range(30):
            try:
                status, answer = http_.request("POST", path, body)
            except (OSError, http.client.HTTPException) as exc:
                status, answer = 0, str(exc).encode()
            if status == 201:
                with lock:
                    result.created += 1
                    result.retried += attempt > 0
                    if progress is not None and result.created % 10_000 == 0:
                        progress(f"{result.created}/{total} pods created")
                return
            last = f"HTTP {status}: {answer[:300]!r}"
            if status not in (0, 429, 500, 503, 504):
                break
            time.sleep(min(5.0, 0.2 * (attempt + 1)))
        with lock:
            result.errors.append(last)

    def worker() -> None:
        while True:
            with lock:
                item = next(work, None)
            if item is None:
                return
            path, rs, node = item
            one(path, json.dumps(pod_from_replicaset(rs, node)).encode())

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - started
    return result


def count_pods(cluster: LocalCluster, namespace: str, field_selector: str = "") -> int:
    """How many pods of the namespace match `field_selector` (metadata only, from the API
    server's cache: cheap even for many thousands)."""
    http_ = AdminHttp(cluster)
    query = "resourceVersion=0"
    if field_selector:
        query += "&fieldSelector=" + urllib.parse.quote(field_selector)
    status, body = http_.request(
        "GET",
        f"/api/v1/namespaces/{namespace}/pods?{query}",
        accept="application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
    )
    if status != 200:
        raise RuntimeError(f"listing pods: {status} {body[:300]!r}")
    return len(json.loads(body).get("items") or [])


def scale_burst(
    cluster: LocalCluster,
    namespace: str,
    plan: list[tuple[str, int]],
    *,
    concurrent: bool,
) -> StormResult:
    """PATCHes of the cells' /scale (cell, replicas), each answered 200 or refused.

    `concurrent`: every request from its own thread and connection, connected first and
    released together (a barrier), so all of them are in flight at once; otherwise one
    at a time in the plan's order, each sent when the last was answered."""
    http_ = AdminHttp(cluster)
    result = StormResult(requests=len(plan), seconds=0.0)
    result.admitted = {name: set() for name, _ in plan}
    lock = threading.Lock()
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{STREAMCELL_PLURAL}"

    def send(item: tuple[str, int]) -> None:
        name, replicas = item
        body = json.dumps({"spec": {"replicas": replicas}}).encode()
        started = time.perf_counter()
        try:
            status, answer = http_.request(
                "PATCH", f"{base}/{name}/scale", body, content_type="application/merge-patch+json"
            )
            message = _message(answer) if status != 200 else ""
        except (OSError, http.client.HTTPException) as exc:
            status, message = 0, f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - started
        with lock:
            result.record(name, replicas, status, message, elapsed)

    if not concurrent:
        started = time.monotonic()
        for item in plan:
            send(item)
        result.seconds = time.monotonic() - started
        return result
    barrier = threading.Barrier(len(plan) + 1)

    def ready_then_send(item: tuple[str, int]) -> None:
        with contextlib.suppress(OSError, http.client.HTTPException):
            http_.request("GET", f"{base}/{item[0]}")  # connect (TLS) before the barrier
        barrier.wait()
        send(item)

    threads = [threading.Thread(target=ready_then_send, args=(item,)) for item in plan]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.monotonic()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - started
    return result
