"""Operator memory and start-to-ready time on the real control plane, 100 to 5,000 nodes.

On the real control plane (one cluster, grown): a pool of kwok nodes with a NodeBudget
each and 30 cell pods a node, in the operator's own StreamCells (50 replicas a cell,
Shared). Once every pod runs, a fresh operator is started: time from spawn to /readyz 200,
and its RSS (VmRSS) and peak RSS (VmHWM) from /proc/<pid>/status at ready and after the
start-up wave (kopf's own listing of every object, the first status rounds) has passed.
Then the same at the next size. Targets: <= 250 MiB at 5,000 nodes; RSS and start-to-ready
growing <= 1.2x per node from 1,000 to 5,000 (the growth per node is printed).

Population (`--populate bound`, the default; see populate_bound): the cells are created
through the webhook with the operator running, which writes their Deployments; the
Deployment controller makes the ReplicaSets; then, with the operator stopped and the
controller manager running without its ReplicaSet controller (and the EndpointSlice,
PDB-status and garbage-collector controllers), every pod is written as the ReplicaSet
controller would write it (same template, labels, owner, generateName, field manager) but
already bound, spread over the new nodes as the scheduler spreads them; kwok runs them, the
controllers are switched back on and reconcile once. The operator then sees exactly what
it would see had the controllers made every pod - about ten times faster than
`--populate scheduled` (every pod made by the ReplicaSet controller and placed by the
scheduler, as before: 15-35 pods a second on this machine). The control plane's own memory
(each process, etcd's data on tmpfs, the API server's live heap) and the CPU seconds each
process spent per pod are recorded with every size.

In process (a fresh interpreter per size, no cluster): synthetic listings shaped like the
API's (one real node, budget, cell and pod captured from the cluster as templates when
there is one) at 1,000 and 5,000 nodes, loaded into ClusterState and a ScaleGate snapshot
as the operator does at start-up, with the first decision and the per-node metrics: RSS
and tracemalloc figures for the raw listing, what is kept after it is dropped, and the
peak.

    .venv/bin/python bench/operator_scale.py [--nodes 100 300] [--in-process 1000 5000]
        [--populate bound|scheduled] [--node-lease-seconds 40] [--workers 16]
        [--skip-cluster] [--skip-in-process]

The full-size run is `--nodes 1000 5000 --skip-in-process` on a quiet machine.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from _support import (
    RESULTS,
    add_pool,
    cellguard_cluster,
    control_plane_cpu,
    control_plane_memory,
    cpu_used,
    load,
    process_cpu_s,
    rss_kib,
    say,
    start_operator,
    summary_ms,
    write_result,
)
from cellguard.constants import LABEL_CELL
from cellguard.devcluster.cells import cell_manifest, ensure_namespace, get_json
from cellguard.devcluster.cluster import NodeSpec
from cellguard.devcluster.pools import NodePool, budget_manifest
from cellguard.devcluster.scenarios import load as load_helpers

NS = "bench-scale"
REPLICAS = 50
TEMPLATES = RESULTS / "operator_scale_templates.json"
MiB = 1024 * 1024


# ---------------------------------------------------------------------- on the real cluster


def populate(cluster: Any, pool: Any, cells: list[str], api: Any) -> None:
    from kubernetes.client.exceptions import ApiException

    from cellguard.constants import GROUP, STREAMCELL_PLURAL, VERSION

    def create(name: str) -> None:
        manifest = cell_manifest(
            NS, name, service=name, replicas=REPLICAS, base=20, per_peer=1, pool=pool
        )
        manifest["spec"]["isolation"] = "Shared"
        last = ""
        for _ in range(60):
            try:
                api.create_namespaced_custom_object(
                    GROUP, VERSION, NS, STREAMCELL_PLURAL, manifest, _request_timeout=60
                )
                return
            except ApiException as exc:
                if exc.status == 409:
                    return
                if exc.status not in (403, 429, 500, 503, 504):
                    raise
                last = str(exc.body)[:600]
                time.sleep(1.0)
        raise RuntimeError(f"{name} never admitted: {last}")

    # Few at once: every admission is decided one at a time, and a webhook call that waits
    # past the API server's 10 s timeout fails (and is retried here).
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool_exec:
        list(pool_exec.map(create, cells))


def ready_pods(cluster: Any) -> tuple[int, int]:
    """Ready replicas by the Deployments' status, and the replicas they ask for (raw JSON:
    thousands of Deployments are slow to turn into the kubernetes client's models)."""
    http_ = load_helpers.AdminHttp(cluster)
    deployments = http_.get_json(f"/apis/apps/v1/namespaces/{NS}/deployments")["items"]
    return (
        sum((d.get("status") or {}).get("readyReplicas") or 0 for d in deployments),
        sum(d["spec"].get("replicas") or 0 for d in deployments),
    )


def measure_start(
    cluster: Any, kubeconfig: Path, settle_s: float, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Start a fresh operator (with `env` over the bench's environment); time to ready, RSS
    at ready and after the start-up wave."""
    started = time.monotonic()
    operator = start_operator(
        cluster, kubeconfig, log_name="operator-measured.log", wait=False, env=env
    )
    assert operator.popen is not None
    pid = operator.popen.pid
    peak_rss = 0
    while not operator.ready():
        if operator.popen.poll() is not None:
            raise RuntimeError(f"operator exited:\n{operator.log_tail()}")
        peak_rss = max(peak_rss, rss_kib(pid).get("VmRSS", 0))
        time.sleep(0.1)
    ready_s = time.monotonic() - started
    at_ready = rss_kib(pid)
    cpu_at_ready = process_cpu_s(pid)
    # The start-up wave: kopf lists every watched object and calls the handlers for each,
    # resumes every cell, and runs the first status rounds. Sample until it has passed.
    trace = []
    end = time.monotonic() + settle_s
    while time.monotonic() < end:
        time.sleep(2.0)
        figures = rss_kib(pid)
        trace.append(
            (round(time.monotonic() - started, 1), figures["VmRSS"] // 1024, process_cpu_s(pid))
        )
    after = rss_kib(pid)
    log = operator.log_path.read_text(errors="replace")
    # The log of every size's measured start, appended: this start's line is the last.
    synced = next((line for line in reversed(log.splitlines()) if "cache synced" in line), "")
    # A few decisions at this size, as a user would ask (dry run: nothing changes).
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.CustomObjectsApi(cluster.api_client())
    decisions = []
    for index in range(20):
        began = time.perf_counter()
        with contextlib.suppress(ApiException):  # a refusal is an answer too
            api.patch_namespaced_custom_object_scale(
                "cellguard.io",
                "v1alpha1",
                NS,
                "streamcells",
                f"cell-{index:04d}",
                {"spec": {"replicas": REPLICAS + 1}},
                dry_run="All",
            )
        decisions.append(time.perf_counter() - began)
    operator.stop()
    return {
        "start_to_ready_s": round(ready_s, 2),
        "rss_at_ready_mib": round(at_ready["VmRSS"] / 1024, 1),
        "peak_rss_at_ready_mib": round(at_ready["VmHWM"] / 1024, 1),
        "rss_after_startup_wave_mib": round(after["VmRSS"] / 1024, 1),
        "peak_rss_after_startup_wave_mib": round(after["VmHWM"] / 1024, 1),
        "cpu_s_at_ready": round(cpu_at_ready, 1),
        "cpu_s_after_startup_wave": round(trace[-1][2], 1) if trace else None,
        "rss_trace_s_mib_cpu": trace,
        "cache_synced_log_line": synced[-120:],
        "dry_run_scale_up_latency": summary_ms(decisions),
        "load_average": load(),
    }


def capture_templates(cluster: Any) -> None:
    """One real node, budget, cell and pod, for the in-process listings."""
    pods = get_json(cluster, "pods", "-n", NS, "-l", "cellguard.io/cell=cell-0000")
    cells = get_json(cluster, "streamcell", "cell-0000", "-n", NS)
    nodes = get_json(cluster, "nodes", "-l", "cellguard.test/pool=scale")
    budgets = get_json(cluster, "nodebudgets")
    deployment = get_json(cluster, "deployment", "cell-0000", "-n", NS)
    TEMPLATES.parent.mkdir(parents=True, exist_ok=True)
    TEMPLATES.write_text(
        json.dumps(
            {
                "pod": pods["items"][0],
                "cell": cells,
                "node": nodes["items"][0],
                "budget": budgets["items"][0],
                "deployment": deployment,
            }
        )
    )


# kwok's workers (4 of each by default): pods started, and node leases renewed (every
# quarter of the lease duration: 500 a second at 5,000 nodes and 40 s), 16 at a time.
KWOK_OPTIONS = {"podPlayStageParallelism": 16, "nodeLeaseParallelism": 16}

# The controller manager while pods are written in bulk (see populate_bound): without the
# ReplicaSet controller (the pods are written for it), and without the controllers that
# would rewrite an object on every pod event during the fill - each cell's EndpointSlice
# and PDB status - and the garbage collector's graph; switched back on afterwards, each
# reconciles once from what is there, as after a controller-manager restart.
POPULATING_CONTROLLERS = [
    "--controllers=*,-replicaset-controller,-endpointslice-controller,-endpoints-controller,"
    "-endpointslice-mirroring-controller,-disruption-controller,-garbage-collector-controller"
]


def wait_replicasets(http_: Any, names: set[str], timeout: float = 1_800) -> list[dict[str, Any]]:
    """The ReplicaSets of the cells `names`, once the Deployment controller has made every
    one (at its full replicas)."""
    deadline = time.monotonic() + timeout
    while True:
        items = http_.get_json(f"/apis/apps/v1/namespaces/{NS}/replicasets")["items"]
        mine = [
            rs
            for rs in items
            if rs["spec"]["template"]["metadata"]["labels"].get(LABEL_CELL) in names
            and rs["spec"].get("replicas") == REPLICAS
        ]
        if len(mine) >= len(names):
            return mine
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(mine)} of {len(names)} ReplicaSets after {timeout} s")
        say(f"{len(mine)}/{len(names)} ReplicaSets")
        time.sleep(2)


# A wait whose count has not moved for this long is given up (see wait_for).
STALL_S = 300.0


def wait_for(what: str, left: Callable[[], int], *, every: float) -> int:
    """Poll `left()` (how many are still to come) until it is 0, or until it has not moved
    for STALL_S; returns what was left (0: all done). At 150,000 pods kwok once stopped
    making the last 8% Running: the operator's view of a bound pod does not depend on its
    phase (it counts bound pods, finished ones aside), so the measurement goes on and the
    figure is recorded with it instead of waiting forever."""
    asked = time.monotonic()
    last = left()
    cost = time.monotonic() - asked
    moved = time.monotonic()
    while last > 0:
        if time.monotonic() - moved > STALL_S:
            say(f"{last} {what}: no progress for {STALL_S:.0f} s, going on without them")
            return last
        say(f"{last} {what}")
        # Counting 100,000 pods is a list the API server serializes whole: polled every few
        # seconds it took most of the server (pods went Running at 11 a second instead of
        # 110), so the wait between polls is at least 20 times what a poll costs.
        time.sleep(max(every, 20 * cost))
        asked = time.monotonic()
        now_left = left()
        cost = time.monotonic() - asked
        if now_left != last:
            last, moved = now_left, time.monotonic()
    return 0


def populate_bound(
    cluster: Any,
    populating: Any,
    pool: Any,
    new_nodes: list[str],
    names: list[str],
    target_pods: int,
    *,
    workers: int,
    kcm_flags: list[str],
) -> dict[str, Any]:
    """Cells as the operator makes them, their pods written in bulk, bound.

    The cells are created through the webhook with the operator running (it admits them
    and creates each one's Deployment, Service and PDB; the Deployment controller creates
    the ReplicaSets at their full replicas) while the controller manager runs without its
    ReplicaSet controller. Then the operator is stopped and every ReplicaSet's pods are
    created as that controller would create them (its pod template, labels, owner
    reference, generateName, field manager) but already bound to the new nodes, spread as
    the scheduler spreads them (a cell's pods on distinct nodes, 30 a node); kwok runs them.
    Last the ReplicaSet controller is switched back on: it finds every ReplicaSet at its
    replicas and writes their status, and the Deployments turn Available.
    """
    from kubernetes import client

    phases: dict[str, Any] = {}
    http_ = load_helpers.AdminHttp(cluster)
    began = time.monotonic()
    cluster.restart_component("kube-controller-manager", [*POPULATING_CONTROLLERS, *kcm_flags])
    if populating.popen is None or populating.popen.poll() is not None:
        populating.start(wait=True, timeout=1_800)
    time.sleep(2)  # the operator folds budget reports in at most once a second
    say(f"creating {len(names)} cells x {REPLICAS} replicas (ReplicaSet controller off)")
    populate(cluster, pool, names, client.CustomObjectsApi(cluster.api_client()))
    phases["cells_created_s"] = round(time.monotonic() - began, 1)
    replicasets = wait_replicasets(http_, set(names))
    phases["replicasets_s"] = round(time.monotonic() - began, 1)
    populating.stop()
    say(f"writing {len(replicasets) * REPLICAS} pods bound to {len(new_nodes)} nodes")
    cpu_before = control_plane_cpu(cluster)
    client_cpu_before = time.process_time()
    written = load_helpers.create_bound_pods(
        cluster, replicasets, new_nodes, workers=workers, progress=say
    )
    if written.errors:
        raise RuntimeError(f"{len(written.errors)} pods not created: {written.errors[:3]}")
    phases["pods_written_s"] = round(time.monotonic() - began, 1)
    phases["client_cpu_s_writing"] = round(time.process_time() - client_cpu_before, 1)
    phases["pods_written_per_s"] = round(written.created / written.seconds, 1)
    phases["pod_writes_retried"] = written.retried
    phases["pods_not_running_when_given_up"] = wait_for(
        "pods not Running yet",
        lambda: load_helpers.count_pods(cluster, NS, "status.phase!=Running"),
        every=3,
    )
    phases["pods_running_s"] = round(time.monotonic() - began, 1)
    phases["cpu_s_writing_to_running"] = cpu_used(cpu_before, control_plane_cpu(cluster))
    cluster.restart_component("kube-controller-manager", kcm_flags)
    phases["pods_not_ready_by_deployments_when_given_up"] = wait_for(
        f"of {target_pods} pods not ready by the Deployments' status",
        lambda: target_pods - ready_pods(cluster)[0],
        every=2,
    )
    phases["deployments_ready_s"] = round(time.monotonic() - began, 1)

    # The disruption controller, back on, rewrites every PDB's status once: let it finish
    # so that the measured start does not see that wave.
    def pdbs_behind() -> int:
        pdbs = http_.get_json(f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets")["items"]
        return sum(
            1
            for b in pdbs
            if ((b.get("status") or {}).get("currentHealthy") or 0) < REPLICAS
            and (b["metadata"].get("labels") or {}).get(LABEL_CELL)
        )

    phases["pdbs_behind_when_given_up"] = wait_for(
        "PodDisruptionBudgets not up to date yet", pdbs_behind, every=2
    )
    phases["settled_s"] = round(time.monotonic() - began, 1)
    return phases


def populate_scheduled(
    cluster: Any, populating: Any, pool: Any, names: list[str], target_pods: int
) -> dict[str, Any]:
    """The slow way, as a user's cluster would fill (kept for comparison): the cells
    created with the operator running, every pod created by the ReplicaSet controller and
    placed by the scheduler; 15-35 pods a second on this machine."""
    from kubernetes import client

    began = time.monotonic()
    if populating.popen is None or populating.popen.poll() is not None:
        populating.start(wait=True, timeout=1_800)
    time.sleep(2)
    say(f"creating {len(names)} cells x {REPLICAS} replicas")
    populate(cluster, pool, names, client.CustomObjectsApi(cluster.api_client()))
    created_s = time.monotonic() - began
    while True:
        ready, wanted = ready_pods(cluster)
        if ready >= target_pods:
            break
        say(f"{ready}/{target_pods} pods ready (deployments ask {wanted})")
        time.sleep(10)
    populating.stop()
    return {
        "cells_created_s": round(created_s, 1),
        "deployments_ready_s": round(time.monotonic() - began, 1),
    }


def cluster_runs(
    sizes: list[int],
    pods_per_node: int,
    settle_s: float,
    *,
    how: str = "bound",
    workers: int = 16,
    lease_s: int = 40,
    compact: bool = True,
    memory_limits: dict[str, str] | None = None,
    compare_env: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    flags: dict[str, list[str]] = {}
    if lease_s != 40:
        # Fewer node lease renewals (kwok renews every quarter of the duration: 500 writes
        # a second at 5,000 nodes and 40 s); the node lifecycle controller's grace period
        # must cover the longer lease. Nothing the operator watches changes.
        flags["kwok"] = [f"--node-lease-duration-seconds={lease_s}"]
        flags["kube-controller-manager"] = [f"--node-monitor-grace-period={lease_s * 2}s"]
    results = []
    env = {name: {"GOMEMLIMIT": limit} for name, limit in (memory_limits or {}).items()}
    with cellguard_cluster(extra_flags=flags, kwok_options=KWOK_OPTIONS, extra_env=env) as (
        cluster,
        kubeconfig,
    ):
        ensure_namespace(cluster, NS)
        populating = start_operator(
            cluster,
            kubeconfig,
            status_interval=600,  # populating only: few status rounds
            log_name="operator-populate.log",
        )
        nodes_so_far = 0
        cells_so_far = 0
        try:
            for size in sizes:
                say(f"growing the pool to {size} nodes")
                began = time.monotonic()
                grown = add_pool(
                    cluster,
                    "scale",
                    size - nodes_so_far,
                    pods="250",
                    first=nodes_so_far + 1,
                    threads_max=4_194_304,
                    pid_max=4_194_304,
                    threads_in_use=2_000,
                )
                nodes_so_far = size
                nodes_s = time.monotonic() - began
                pool = NodePool(cluster, "scale", [f"scale-{i:05d}" for i in range(1, size + 1)])
                target_cells = size * pods_per_node // REPLICAS
                names = [f"cell-{i:04d}" for i in range(cells_so_far, target_cells)]
                target_pods = target_cells * REPLICAS
                if how == "bound":
                    phases = populate_bound(
                        cluster,
                        populating,
                        pool,
                        grown.nodes,
                        names,
                        target_pods,
                        workers=workers,
                        kcm_flags=flags.get("kube-controller-manager", []),
                    )
                else:
                    phases = populate_scheduled(cluster, populating, pool, names, target_pods)
                cells_so_far = target_cells
                populated_s = time.monotonic() - began
                new_pods = len(names) * REPLICAS
                compacted = cluster.compact_etcd() if compact else None
                memory = control_plane_memory(cluster)
                say(
                    f"{target_pods} pods running after {populated_s:.0f} s "
                    f"({new_pods / populated_s:.1f} new pods/s); control plane "
                    f"{memory}; measuring a start"
                )
                measured = measure_start(cluster, kubeconfig, settle_s)
                # The same start again on the same cluster with other settings (e.g. glibc's
                # MALLOC_ARENA_MAX): what they change, in one run.
                compared = (
                    {
                        "env": dict(compare_env),
                        **measure_start(cluster, kubeconfig, settle_s, compare_env),
                    }
                    if compare_env
                    else None
                )
                if size == sizes[-1]:
                    capture_templates(cluster)
                results.append(
                    {
                        "nodes": size,
                        "cells": target_cells,
                        "pods": target_pods,
                        "populate": how,
                        "populate_s": round(populated_s, 1),
                        "nodes_s": round(nodes_s, 1),
                        "new_pods_per_s": round(new_pods / populated_s, 1),
                        "populate_phases_s": phases,
                        "control_plane_mib": memory,
                        "etcd_db_bytes_compacted": compacted,
                        "control_plane_mib_after_measuring": control_plane_memory(cluster),
                        **measured,
                        "compared_env": compared,
                    }
                )
                say(
                    f"{size} nodes: ready in {measured['start_to_ready_s']} s, RSS "
                    f"{measured['rss_after_startup_wave_mib']} MiB, peak "
                    f"{measured['peak_rss_after_startup_wave_mib']} MiB"
                )
        finally:
            populating.stop()
    return results


# ---------------------------------------------------------------------- in process


def builtin_templates() -> dict[str, Any]:
    node = NodeSpec(name="n").manifest()
    node["status"]["conditions"] = [
        {"type": t, "status": "False" if t != "Ready" else "True", "reason": "Kwok"}
        for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")
    ]
    return {
        "node": node,
        "budget": budget_manifest("n"),
        "cell": {
            "metadata": {"name": "c", "namespace": NS, "uid": "u", "generation": 1},
            "spec": {
                "replicas": REPLICAS,
                "service": "c",
                "isolation": "Shared",
                "threads": {"base": 20, "perPeer": 1},
                "template": {"spec": {"containers": [{"name": "s", "image": "i"}]}},
            },
        },
        "pod": {
            "metadata": {"name": "p", "namespace": NS, "labels": {"cellguard.io/cell": "c"}},
            "spec": {"nodeName": "n", "containers": [{"name": "s", "image": "i"}]},
            "status": {"phase": "Running"},
        },
    }


def synthetic_listing(nodes: int, pods_per_node: int, t: dict[str, Any]) -> dict[str, Any]:
    """A listing like list_cluster's: every object its own dicts (parsed from JSON, as the
    client parses the API's answer), names and placement varied."""
    text = {kind: json.dumps(value) for kind, value in t.items()}
    node_names = [f"node-{i:05d}" for i in range(nodes)]
    listing: dict[str, list[Any]] = {
        "nodes": [],
        "budgets": [],
        "cells": [],
        "policies": [
            {"metadata": {"name": "default"}, "spec": {"safetyMargin": 0.2}},
        ],
        "pods": [],
        "deployments": [],
    }
    for name in node_names:
        node = json.loads(text["node"])
        node["metadata"]["name"] = name
        node["metadata"]["labels"]["kubernetes.io/hostname"] = name
        listing["nodes"].append(node)
        budget = json.loads(text["budget"])
        budget["metadata"]["name"] = name
        budget["spec"]["nodeName"] = name
        listing["budgets"].append(budget)
    cell_count = nodes * pods_per_node // REPLICAS
    for c in range(cell_count):
        cell_name = f"cell-{c:05d}"
        cell = json.loads(text["cell"])
        cell["metadata"]["name"] = cell_name
        cell["spec"]["service"] = cell_name
        listing["cells"].append(cell)
        if "deployment" in text:
            deployment = json.loads(text["deployment"])
            deployment["metadata"]["name"] = cell_name
            deployment["metadata"]["labels"]["cellguard.io/cell"] = cell_name
            listing["deployments"].append(deployment)
        for r in range(REPLICAS):
            pod = json.loads(text["pod"])
            pod["metadata"]["name"] = f"{cell_name}-{r:03d}"
            pod["metadata"]["labels"]["cellguard.io/cell"] = cell_name
            pod["spec"]["nodeName"] = node_names[(c * REPLICAS + r) % nodes]
            listing["pods"].append(pod)
    return listing


def in_process_child(nodes: int, pods_per_node: int) -> dict[str, Any]:
    """Runs in a fresh interpreter: load a synthetic listing as the operator does."""
    import datetime

    from cellguard.settings import Settings

    def rss() -> float:
        return rss_kib(os.getpid())["VmRSS"] / 1024

    templates = json.loads(TEMPLATES.read_text()) if TEMPLATES.exists() else builtin_templates()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    templates["budget"]["spec"]["observedAt"] = now
    from cellguard.metrics import OperatorMetrics, node_figures
    from cellguard.wiring import Operator

    gc.collect()
    base_rss = rss()
    tracemalloc.start()
    listing = synthetic_listing(nodes, pods_per_node, templates)
    listing_bytes = tracemalloc.get_traced_memory()[0]
    listing_rss = rss()

    op = Operator.create(Settings(), OperatorMetrics(), lambda m: m)
    began = time.perf_counter()
    op.state.replace_all(**listing)
    load_s = time.perf_counter() - began
    began = time.perf_counter()
    snapshot = op.gate.snapshot()
    from cellguard.budget import decide

    first = next(iter(op.state.cells))
    decision = decide(snapshot, first, REPLICAS + 1)
    build_s = time.perf_counter() - began
    began = time.perf_counter()
    rows = node_figures(op.gate.snapshot())
    figures_s = time.perf_counter() - began
    with_listing_bytes, peak_bytes = tracemalloc.get_traced_memory()
    del listing
    gc.collect()
    kept_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "nodes": nodes,
        "cells": len(op.state.cells),
        "pods": len(op.state.pods),
        "templates": "captured" if TEMPLATES.exists() else "builtin",
        "listing_mib": round(listing_bytes / MiB, 1),
        "listing_rss_growth_mib": round(listing_rss - base_rss, 1),
        "state_and_snapshot_kept_mib": round(kept_bytes / MiB, 1),
        "peak_traced_mib": round(peak_bytes / MiB, 1),
        "with_listing_traced_mib": round(with_listing_bytes / MiB, 1),
        "rss_growth_after_drop_mib": round(rss() - base_rss, 1),
        "peak_rss_mib": round(rss_kib(os.getpid())["VmHWM"] / 1024, 1),
        "base_rss_mib": round(base_rss, 1),
        "load_listing_s_traced": round(load_s, 2),
        "snapshot_and_first_decide_s_traced": round(build_s, 2),
        "node_figures_s_traced": round(figures_s, 2),
        "decision_allowed": decision.allowed,
        "node_rows": len(rows),
    }


def in_process_runs(sizes: list[int], pods_per_node: int) -> list[dict[str, Any]]:
    results = []
    for size in sizes:
        say(f"in process: {size} nodes")
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(size), "--pods-per-node", str(pods_per_node)],
            capture_output=True,
            text=True,
            check=True,
        )
        results.append({**json.loads(out.stdout.strip().splitlines()[-1]), "load_average": load()})
    return results


def growth(rows: list[dict[str, Any]], key: str) -> str:
    if len(rows) < 2 or not rows[0].get(key):
        return "-"
    ratio = rows[-1][key] / rows[0][key]
    scale = rows[-1]["nodes"] / rows[0]["nodes"]
    return f"{ratio:.2f}x for {scale:.0f}x nodes, {ratio / scale:.2f}x per node"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 1,000 nodes (30,000 pods) is the reported size; it takes ~40 min on 2 shared cores,
    # most of it the control plane creating the pods, so the default stays under ~15 min.
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--in-process", type=int, nargs="+", default=[1_000, 5_000])
    parser.add_argument("--pods-per-node", type=int, default=30)
    parser.add_argument("--settle", type=float, default=120.0, help="seconds after ready")
    parser.add_argument(
        "--populate",
        choices=("bound", "scheduled"),
        default="bound",
        help="bound: pods written in bulk, already bound (default); scheduled: every pod "
        "made by the ReplicaSet controller and placed by the scheduler (15-35 pods/s)",
    )
    parser.add_argument("--workers", type=int, default=16, help="client threads writing pods")
    parser.add_argument(
        "--node-lease-seconds",
        type=int,
        default=40,
        help="kwok's node lease duration (renewed every quarter of it; 40: as a kubelet)",
    )
    parser.add_argument(
        "--no-compact-etcd",
        action="store_true",
        help="keep etcd's history after populating (by default it is compacted and "
        "defragmented: on tmpfs its database is memory)",
    )
    parser.add_argument(
        "--go-memory-limit",
        action="append",
        default=[],
        metavar="PROCESS=LIMIT",
        help="GOMEMLIMIT of a control-plane process, e.g. kube-apiserver=8GiB (repeatable)",
    )
    parser.add_argument(
        "--compare-env",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="measure each size's start a second time with these in the operator's "
        "environment (e.g. MALLOC_ARENA_MAX=2)",
    )
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(in_process_child(args.child, args.pods_per_node)))
        return 0

    real = (
        []
        if args.skip_cluster
        else cluster_runs(
            args.nodes,
            args.pods_per_node,
            args.settle,
            how=args.populate,
            workers=args.workers,
            lease_s=args.node_lease_seconds,
            compact=not args.no_compact_etcd,
            memory_limits=dict(item.split("=", 1) for item in args.go_memory_limit),
            compare_env=dict(item.split("=", 1) for item in args.compare_env),
        )
    )
    synthetic = [] if args.skip_in_process else in_process_runs(args.in_process, args.pods_per_node)

    if real:
        print(f"\nthe operator on the real control plane ({args.pods_per_node} cell pods a node)")
        print(
            f"{'nodes':>6} {'cells':>6} {'pods':>7} {'ready s':>8} {'RSS@ready':>10} "
            f"{'RSS after':>10} {'peak RSS':>9} {'CPU s':>6} {'dry-run p50':>12} {'load':>6}"
        )
        for r in real:
            print(
                f"{r['nodes']:>6} {r['cells']:>6} {r['pods']:>7} {r['start_to_ready_s']:>8.1f} "
                f"{r['rss_at_ready_mib']:>8.0f}Mi {r['rss_after_startup_wave_mib']:>8.0f}Mi "
                f"{r['peak_rss_after_startup_wave_mib']:>7.0f}Mi "
                f"{r['cpu_s_after_startup_wave'] or 0:>6.0f} "
                f"{r['dry_run_scale_up_latency']['p50_ms']:>10.1f}ms {r['load_average'][0]:>6}"
            )
        for key in (
            "start_to_ready_s",
            "rss_after_startup_wave_mib",
            "peak_rss_after_startup_wave_mib",
        ):
            print(f"  growth of {key}: {growth(real, key)}  (target <= 1.2x per node)")
        for r in real:
            other = r.get("compared_env")
            if other:
                env = " ".join(f"{k}={v}" for k, v in sorted(other["env"].items()))
                print(
                    f"{r['nodes']:>6} nodes, {env}: ready in {other['start_to_ready_s']:.1f} s, "
                    f"RSS at ready {other['rss_at_ready_mib']:.0f}Mi, after the wave "
                    f"{other['rss_after_startup_wave_mib']:.0f}Mi "
                    f"({other['rss_after_startup_wave_mib'] / r['rss_after_startup_wave_mib']:.2f}x"
                    " the default start's)"
                )
        print("\ncontrol plane after populating (MiB; etcd's data on tmpfs counted once)")
        for r in real:
            print(f"{r['nodes']:>6} {r['pods']:>7}  {r['control_plane_mib']}")
        print("populating (s from the start of each size; new pods a second)")
        for r in real:
            print(
                f"{r['nodes']:>6} {r['pods']:>7}  {r['populate_s']:>7.0f} s "
                f"{r['new_pods_per_s']:>7.1f}/s  {r['populate_phases_s']}"
            )
        if len(real) >= 2:
            a, b = real[0], real[-1]
            for key in ("rss_after_startup_wave_mib", "peak_rss_after_startup_wave_mib"):
                slope = (b[key] - a[key]) / (b["nodes"] - a["nodes"])
                print(
                    f"  {key} extrapolated linearly to 5,000 nodes: "
                    f"{b[key] + slope * (5_000 - b['nodes']):.0f} MiB"
                )
    if synthetic:
        print(f"\nin process, synthetic listings ({synthetic[0]['templates']} object templates)")
        print(
            f"{'nodes':>6} {'pods':>7} {'listing':>9} {'kept':>8} {'peak':>8} "
            f"{'RSS kept':>9} {'peak RSS':>9} {'load s':>7} {'build s':>8}"
        )
        for r in synthetic:
            print(
                f"{r['nodes']:>6} {r['pods']:>7} {r['listing_mib']:>7.0f}Mi "
                f"{r['state_and_snapshot_kept_mib']:>6.0f}Mi {r['peak_traced_mib']:>6.0f}Mi "
                f"{r['rss_growth_after_drop_mib']:>7.0f}Mi {r['peak_rss_mib']:>7.0f}Mi "
                f"{r['load_listing_s_traced']:>7.2f} "
                f"{r['snapshot_and_first_decide_s_traced']:>8.2f}"
            )
        for key in ("state_and_snapshot_kept_mib", "peak_traced_mib", "listing_mib"):
            print(f"  growth of {key}: {growth(synthetic, key)}")
    out = write_result(
        "operator_scale",
        {"pods_per_node": args.pods_per_node, "cluster": real, "in_process": synthetic},
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
