"""How long 1,000 new cells take to reach Ready=True.

A local real control plane with a pool of kwok nodes (NodeBudgets on all), the operator
running as a local process with the production status interval (10 s, --status-interval
to change it). 1,000 small cells (1 replica each; 10 cells per service, NodeExclusive, so
each service's cells land on distinct nodes) are created at once from 16 client threads,
each through the admission webhook. Polled every second: pods Running (what the control
plane and kwok deliver) and cells whose Ready condition is True (what the operator reports).

Target: all 1,000 Ready within 60 s of the first create.

    .venv/bin/python bench/cells_ready.py [--cells 1000] [--nodes 120] [--status-interval 10]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import time
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from _support import (
    add_pool,
    cellguard_cluster,
    load,
    rss_kib,
    say,
    start_operator,
    summary_ms,
    write_result,
)
from cellguard.constants import GROUP, LABEL_CELL, STREAMCELL_PLURAL, VERSION
from cellguard.devcluster.cells import cell_manifest, ensure_namespace

NS = "bench-ready"


def is_ready(cell: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (cell.get("status") or {}).get("conditions") or []
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=1_000)
    parser.add_argument("--nodes", type=int, default=120)
    parser.add_argument("--cells-per-service", type=int, default=10)
    parser.add_argument("--status-interval", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--profile", type=Path, help="cProfile the operator into this file")
    args = parser.parse_args()

    with cellguard_cluster() as (cluster, kubeconfig):
        operator = start_operator(
            cluster, kubeconfig, status_interval=args.status_interval, profile=args.profile
        )
        try:
            ensure_namespace(cluster, NS)
            pool = add_pool(cluster, "rdy", args.nodes)
            time.sleep(2)  # the operator folds budget reports in at most once a second
            api = client.CustomObjectsApi(cluster.api_client())
            core = client.CoreV1Api(cluster.api_client())
            names = [f"cell-{i:04d}" for i in range(args.cells)]
            manifests = [
                cell_manifest(
                    NS,
                    name,
                    service=f"svc-{i // args.cells_per_service:03d}",
                    replicas=1,
                    base=50,
                    per_peer=0,
                    pool=pool,
                )
                for i, name in enumerate(names)
            ]
            created_at: dict[str, float] = {}
            refused: list[str] = []

            def create(manifest: dict[str, Any]) -> None:
                name = manifest["metadata"]["name"]
                # Refusals while earlier cells' reservations are held (worst case on every
                # node, until their pods are bound) are retried for up to two minutes.
                for _attempt in range(240):
                    try:
                        api.create_namespaced_custom_object(
                            GROUP, VERSION, NS, STREAMCELL_PLURAL, manifest, _request_timeout=60
                        )
                        created_at[name] = time.monotonic()
                        return
                    except ApiException as exc:
                        if exc.status == 409:
                            created_at[name] = time.monotonic()
                            return
                        if exc.status not in (403, 429, 500, 503, 504):
                            raise
                        time.sleep(0.5)
                refused.append(name)

            say(f"creating {args.cells} cells on {args.nodes} nodes")
            started = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool_exec:
                submitting = [pool_exec.submit(create, m) for m in manifests]
                ready_at: dict[str, float] = {}
                pods_running_at: float | None = None
                timeline: list[tuple[float, int, int]] = []
                while time.monotonic() - started < args.timeout:
                    if all(f.done() for f in submitting) and len(ready_at) >= len(created_at):
                        break  # every cell that was admitted is Ready
                    time.sleep(1.0)
                    now = time.monotonic()
                    listed: Any = api.list_namespaced_custom_object(
                        GROUP, VERSION, NS, STREAMCELL_PLURAL, _request_timeout=60
                    )
                    cells = listed["items"]
                    for item in cells:
                        name = item["metadata"]["name"]
                        if name not in ready_at and is_ready(item):
                            ready_at[name] = now
                    pods = core.list_namespaced_pod(
                        NS, label_selector=LABEL_CELL, _request_timeout=60
                    ).items
                    running = sum(1 for p in pods if p.status and p.status.phase == "Running")
                    timeline.append((round(now - started, 1), running, len(ready_at)))
                    if pods_running_at is None and running >= args.cells:
                        pods_running_at = now
                    if int(now - started) % 10 == 0:
                        say(f"{running} pods running, {len(ready_at)} cells Ready")
                for future in submitting:
                    future.result()
            submitted_at = max(created_at.values()) if created_at else started
            memory = rss_kib(operator.popen.pid) if operator.popen else {}
            end_load = load()
        finally:
            operator.stop()

    all_ready = max(ready_at.values()) - started if len(ready_at) == args.cells else None
    latencies = [ready_at[n] - created_at[n] for n in ready_at if n in created_at]
    per_cell = summary_ms(latencies)
    result = {
        "cells": args.cells,
        "nodes": args.nodes,
        "status_interval_s": args.status_interval,
        "submit_all_s": round(submitted_at - started, 1),
        "pods_all_running_s": round(pods_running_at - started, 1) if pods_running_at else None,
        "cells_all_ready_s": round(all_ready, 1) if all_ready is not None else None,
        "cells_ready": len(ready_at),
        "refused_after_retries": refused,
        "create_to_ready": per_cell,
        "operator_rss_kib": memory,
        "load_average": end_load,
        "timeline_s_running_ready": timeline,
    }
    out = write_result(f"cells_ready_{args.cells}", result)
    print(
        f"\n{args.cells} cells x 1 replica on {args.nodes} nodes, status interval "
        f"{args.status_interval:g} s (load average 1/5/15 min at end: {end_load})"
    )
    print(f"{'all created (webhook admitted)':<38} {result['submit_all_s']:>8} s")
    print(f"{'all pods Running':<38} {result['pods_all_running_s'] or 'never':>8} s")
    print(
        f"{'all cells Ready=True':<38} {result['cells_all_ready_s'] or 'never':>8} s   "
        "(target <= 60 s)"
    )
    print(
        f"{'per cell, create -> Ready':<38} p50 {per_cell['p50_ms'] / 1000:.1f} s, "
        f"p99 {per_cell['p99_ms'] / 1000:.1f} s, max {per_cell['max_ms'] / 1000:.1f} s"
    )
    print(
        f"{'operator RSS / peak':<38} {memory.get('VmRSS', 0) / 1024:.0f} MiB / "
        f"{memory.get('VmHWM', 0) / 1024:.0f} MiB"
    )
    print(f"{'cells never admitted (refused 2 min)':<38} {len(refused):>8}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
