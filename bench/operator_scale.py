"""Operator memory and start-to-ready time at 100 and 1,000 nodes, and in process to 5,000.

On the real control plane (one cluster, grown): a pool of kwok nodes with a NodeBudget
each and 30 cell pods a node, created as the operator's own StreamCells (50 replicas a
cell, Shared, spread over the pool by the real scheduler; kwok runs the pods). Once every
pod runs, the operator that created them is stopped and a fresh one started: time from
spawn to /readyz 200, and its RSS (VmRSS) and peak RSS (VmHWM) from /proc/<pid>/status at
ready and after the start-up wave (kopf's own listing of every object, the first status
rounds) has passed. Then the same at the next size.

In process (a fresh interpreter per size, no cluster): synthetic listings shaped like the
API's (one real node, budget, cell and pod captured from the cluster as templates when
there is one) at 1,000 and 5,000 nodes, loaded into ClusterState and a ScaleGate snapshot
as the operator does at start-up, with the first decision and the per-node metrics: RSS
and tracemalloc figures for the raw listing, what is kept after it is dropped, and the
peak. Target: <= 250 MiB at 5,000 nodes; growth linear or better.

    .venv/bin/python bench/operator_scale.py [--nodes 100 300] [--in-process 1000 5000]
        [--skip-cluster] [--skip-in-process]

The reported figures are from `--nodes 100 1000` (about 40 minutes on 2 shared cores).
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
from pathlib import Path
from typing import Any

from _support import (
    RESULTS,
    add_pool,
    cellguard_cluster,
    load,
    rss_kib,
    say,
    start_operator,
    summary_ms,
    write_result,
)
from cellguard.devcluster.cells import cell_manifest, ensure_namespace, get_json
from cellguard.devcluster.cluster import NodeSpec
from cellguard.devcluster.pools import NodePool, budget_manifest

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


def ready_pods(apps: Any) -> tuple[int, int]:
    deployments = apps.list_namespaced_deployment(NS, _request_timeout=120).items
    return (
        sum(d.status.ready_replicas or 0 for d in deployments),
        sum(d.spec.replicas or 0 for d in deployments),
    )


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_start(cluster: Any, kubeconfig: Path, settle_s: float) -> dict[str, Any]:
    """Start a fresh operator; time to ready, RSS at ready and after the start-up wave."""
    started = time.monotonic()
    operator = start_operator(cluster, kubeconfig, log_name="operator-measured.log", wait=False)
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
    cpu_at_ready = cpu_seconds(pid)
    # The start-up wave: kopf lists every watched object and calls the handlers for each,
    # resumes every cell, and runs the first status rounds. Sample until it has passed.
    trace = []
    end = time.monotonic() + settle_s
    while time.monotonic() < end:
        time.sleep(2.0)
        figures = rss_kib(pid)
        trace.append(
            (round(time.monotonic() - started, 1), figures["VmRSS"] // 1024, cpu_seconds(pid))
        )
    after = rss_kib(pid)
    log = operator.log_path.read_text(errors="replace")
    synced = next((line for line in log.splitlines() if "cache synced" in line), "")
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


def cluster_runs(sizes: list[int], pods_per_node: int, settle_s: float) -> list[dict[str, Any]]:
    from kubernetes import client

    results = []
    with cellguard_cluster() as (cluster, kubeconfig):
        ensure_namespace(cluster, NS)
        core_api = client.CustomObjectsApi(cluster.api_client())
        apps = client.AppsV1Api(cluster.api_client())
        populating = start_operator(
            cluster,
            kubeconfig,
            status_interval=600,  # populating only: few status rounds
            log_name="operator-populate.log",
        )
        nodes_so_far = 0
        cells_so_far = 0
        pool = None
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
                pool = NodePool(cluster, "scale", grown.nodes)
                time.sleep(2)
                target_cells = size * pods_per_node // REPLICAS
                names = [f"cell-{i:04d}" for i in range(cells_so_far, target_cells)]
                say(f"creating {len(names)} cells x {REPLICAS} replicas")
                populate(cluster, pool, names, core_api)
                cells_so_far = target_cells
                target_pods = target_cells * REPLICAS
                while True:
                    ready, wanted = ready_pods(apps)
                    if ready >= target_pods:
                        break
                    say(f"{ready}/{target_pods} pods ready (deployments ask {wanted})")
                    time.sleep(10)
                populated_s = time.monotonic() - began
                say(f"{target_pods} pods running after {populated_s:.0f} s; measuring a start")
                if populating.popen is not None and populating.popen.poll() is None:
                    populating.stop()
                measured = measure_start(cluster, kubeconfig, settle_s)
                if size == sizes[-1]:
                    capture_templates(cluster)
                results.append(
                    {
                        "nodes": size,
                        "cells": target_cells,
                        "pods": target_pods,
                        "populate_s": round(populated_s, 1),
                        **measured,
                    }
                )
                say(
                    f"{size} nodes: ready in {measured['start_to_ready_s']} s, RSS "
                    f"{measured['rss_after_startup_wave_mib']} MiB, peak "
                    f"{measured['peak_rss_after_startup_wave_mib']} MiB"
                )
                if size != sizes[-1]:
                    populating.start()  # creates the next size's children
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
    return f"{ratio:.2f}x for {scale:.0f}x nodes"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 1,000 nodes (30,000 pods) is the reported size; it takes ~40 min on 2 shared cores,
    # most of it the control plane creating the pods, so the default stays under ~15 min.
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--in-process", type=int, nargs="+", default=[1_000, 5_000])
    parser.add_argument("--pods-per-node", type=int, default=30)
    parser.add_argument("--settle", type=float, default=120.0, help="seconds after ready")
    parser.add_argument("--skip-cluster", action="store_true")
    parser.add_argument("--skip-in-process", action="store_true")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(in_process_child(args.child, args.pods_per_node)))
        return 0

    real = [] if args.skip_cluster else cluster_runs(args.nodes, args.pods_per_node, args.settle)
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
            print(f"  growth of {key}: {growth(real, key)}")
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
