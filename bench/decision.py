"""How long a budget decision takes on large clusters.

Synthetic clusters of 100 / 1,000 / 5,000 nodes with 30 managed pods a node on average,
spread over many cells (several cells a service, NodeExclusive, one pod a node each),
two node sizes (pid_max 32,768 and 65,536), 10% of nodes tainted, a fifth of the services
pinned to a zone, and a few live reservations. Measured per call, on a snapshot whose
indexes are already built (the operator keeps its snapshot between decisions):

- decide: a scale-up of a random cell by 1-10 replicas (the expensive path);
- max_safe_replicas: the same cells;
- at + decide: the same decision on `seen_at(snapshot, now)`, as the operator asks for its
  cached snapshot at the current moment first (figures carry over unless a budget
  turned stale or a reservation expired in between);
- hold + decide: holding the previous decision's reservation (with_reservation, which
  carries the parent's figures over, adjusted on the nodes the reservation covers) and
  deciding the next change on the derived snapshot, as a burst of HPA changes would;
- build: ClusterSnapshot.build plus the first decision (every index built from scratch);
- new cells: a burst of `--new-cells` NodeExclusive cells created one after another
  (CELLS_PER_SERVICE a service), as the webhook admits creates: the snapshot with the cell,
  its decision at 2 replicas, its reservation held (claiming free nodes into its pool) on
  the derived snapshot, the next. Timed per step, twice: the claims index carried as
  `changes` carries it, and dropped after each hold as before session 10 (rebuilt from
  every reservation on the next read: O(N) a step, O(N^2) a burst). The first and the
  last 100 steps are compared.

Prints a table and writes bench/results/decision.json. A benchmark, not a test: figures
depend on the machine (target: decide p99 <= 5 ms at 5,000 nodes).

    .venv/bin/python bench/decision.py [--nodes 100 1000 5000] [--calls 2000]
        [--new-cells 1000]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cellguard.api.v1alpha1 import (
    CgroupVersion,
    Isolation,
    KubepodsPids,
    NodeBudgetSpec,
    ThreadBudgetPolicySpec,
    Toleration,
)
from cellguard.budget import (
    CellKey,
    CellView,
    ClusterSnapshot,
    NodeView,
    PodPlacement,
    Reservation,
    Taint,
    decide,
    max_safe_replicas,
    seen_at,
    threads_per_pod,
    with_cell,
    with_reservation,
)
from cellguard.budget.eligibility import CLAIMS

RESULTS = Path(__file__).parent / "results"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PODS_PER_NODE = 30
CELLS_PER_SERVICE = 5
DEDICATED = Taint("dedicated", "stream", "NoSchedule")
EDGE = 100  # steps at each end of a burst compared
TOLERATE_DEDICATED = Toleration(key="dedicated", operator="Exists")


def build_inputs(node_count: int, rng: random.Random) -> dict[str, Any]:
    """Nodes, cells, pod placement and reservations of one synthetic cluster."""
    cell_size = 50 if node_count >= 1_000 else 10
    names = [f"node-{i:05d}" for i in range(node_count)]
    zone = {name: "abc"[i % 3] for i, name in enumerate(names)}
    tainted = set(rng.sample(names, node_count // 10))

    cells: list[CellView] = []
    placement: dict[CellKey, dict[str, int]] = {}
    cell_count = node_count * PODS_PER_NODE // cell_size
    service = 0
    while len(cells) < cell_count:
        pinned = rng.random() < 0.2
        tolerant = rng.random() < 0.33
        selector = {"zone": rng.choice("abc")} if pinned else {}
        pool = [
            n
            for n in names
            if (not pinned or zone[n] == selector["zone"]) and (tolerant or n not in tainted)
        ]
        rng.shuffle(pool)
        per_service = min(CELLS_PER_SERVICE, len(pool) // cell_size, cell_count - len(cells))
        for index in range(per_service):
            view = CellView(
                namespace=f"team-{service % 20}",
                name=f"svc{service}-cell{index}",
                service=f"svc{service}",
                base=rng.randint(20, 80),
                per_peer=rng.choice([0, 1, 2, 2, 4, 10]),
                replicas=cell_size,
                isolation=Isolation.NODE_EXCLUSIVE,
                node_selector=selector,
                tolerations=(TOLERATE_DEDICATED,) if tolerant else (),
            )
            cells.append(view)
            hosts = pool[index * cell_size : (index + 1) * cell_size]
            placement[view.key] = dict.fromkeys(hosts, 1)
        service += 1

    modelled = dict.fromkeys(names, 0)
    for view in cells:
        per_pod = threads_per_pod(view.base, view.per_peer, view.replicas)
        for host in placement[view.key]:
            modelled[host] += per_pod
    nodes = [
        NodeView(
            name=name,
            labels={"zone": zone[name], "kubernetes.io/hostname": name},
            taints=(DEDICATED,) if name in tainted else (),
            budget=NodeBudgetSpec(
                node_name=name,
                threads_max=250_000,
                pid_max=65_536 if i % 10 < 3 else 32_768,
                threads_in_use=2_000 + modelled[name] + rng.randint(-300, 300),
                # As an agent reports a node whose kubepods pids.max is `max` (cgroup v2).
                # Without it every budget is unknown and every decision a refusal: until
                # session 10 this bench measured that refusal (allowed_fraction 0.0).
                kubepods=KubepodsPids(cgroup_version=CgroupVersion.V2, unlimited=True),
                observed_at=NOW - timedelta(seconds=rng.randint(5, 60)),
            ),
        )
        for i, name in enumerate(names)
    ]
    reservations = [
        Reservation(
            cell=view.key,
            threads_by_node={host: rng.randint(50, 500) for host in placement[view.key]},
            expires_at=NOW + timedelta(seconds=90),
        )
        for view in rng.sample(cells, 20)
    ]
    return {"nodes": nodes, "cells": cells, "pods": placement, "reservations": reservations}


def snapshot_of(inputs: dict[str, Any]) -> ClusterSnapshot:
    return ClusterSnapshot.build(
        nodes=inputs["nodes"],
        cells=inputs["cells"],
        pods=PodPlacement(inputs["pods"]),
        policies={"default": ThreadBudgetPolicySpec(default_max_replicas=200)},
        now=NOW,
        reservations=inputs["reservations"],
    )


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter_ns()
    call()
    return (time.perf_counter_ns() - started) / 1e6


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        "max_ms": round(ordered[-1], 3),
    }


def measure(node_count: int, calls: int, seed: int, new_cells: int) -> dict[str, Any]:
    rng = random.Random(seed)
    inputs = build_inputs(node_count, rng)
    cells: list[CellView] = inputs["cells"]

    gc.collect()
    build_ms: list[float] = []
    for _ in range(3):
        build_ms.append(
            _timed(lambda: decide(snapshot_of(inputs), cells[0].key, cells[0].replicas + 1))
        )
    snapshot = snapshot_of(inputs)
    decide(snapshot, cells[0].key, cells[0].replicas + 1)  # warm the indexes

    picks = [(rng.choice(cells), rng.randint(1, 10)) for _ in range(calls)]
    gc.collect()
    decide_ms, allowed = [], 0
    for view, step in picks:
        started = time.perf_counter_ns()
        decision = decide(snapshot, view.key, view.replicas + step)
        decide_ms.append((time.perf_counter_ns() - started) / 1e6)
        allowed += decision.allowed
    max_safe_ms = []
    for view, _ in picks:
        started = time.perf_counter_ns()
        max_safe_replicas(snapshot, view.key)
        max_safe_ms.append((time.perf_counter_ns() - started) / 1e6)

    # The operator asks for its cached snapshot "now" before each decision.
    later_ms = []
    for index, (view, step) in enumerate(picks[: max(20, calls // 4)]):
        started = time.perf_counter_ns()
        decide(
            seen_at(snapshot, NOW + timedelta(milliseconds=index + 1)),
            view.key,
            view.replicas + step,
        )
        later_ms.append((time.perf_counter_ns() - started) / 1e6)

    # A burst: decide, hold the reservation, decide the next one on the derived snapshot.
    derived_ms = []
    current = snapshot
    decision = decide(current, picks[0][0].key, picks[0][0].replicas + picks[0][1])
    for view, step in picks[1 : max(20, calls // 4)]:
        held = decision.reservation_until(NOW + timedelta(minutes=2))
        started = time.perf_counter_ns()
        if decision.allowed:
            current = with_reservation(current, held)
        decision = decide(current, view.key, view.replicas + step)
        derived_ms.append((time.perf_counter_ns() - started) / 1e6)
    return {
        "nodes": node_count,
        "cells": len(cells),
        "pods": sum(sum(hosts.values()) for hosts in inputs["pods"].values()),
        "allowed_fraction": round(allowed / calls, 3),
        "decide": _summary(decide_ms),
        "max_safe_replicas": _summary(max_safe_ms),
        "at_now_and_decide": _summary(later_ms),
        "hold_and_decide": _summary(derived_ms),
        "build_and_first_decide": _summary(build_ms),
        **({"burst": measure_new_cells(snapshot, new_cells)} if new_cells else {}),
    }


def new_cells_burst(
    snapshot: ClusterSnapshot, count: int, *, rebuild_claims: bool
) -> tuple[list[float], int]:
    """ms per new NodeExclusive cell of a burst, and how many were admitted (see the
    module's docstring)."""
    current, steps, admitted = snapshot, [], 0
    for index in range(count):
        view = CellView(
            namespace="burst",
            name=f"new{index}",
            service=f"burst{index // CELLS_PER_SERVICE}",
            base=50,
            per_peer=2,
            replicas=0,
            isolation=Isolation.NODE_EXCLUSIVE,
        )
        started = time.perf_counter_ns()
        current = with_cell(current, view)
        decision = decide(current, view.key, 2)
        if decision.allowed:
            admitted += 1
            current = with_reservation(
                current, decision.reservation_until(NOW + timedelta(minutes=2))
            )
        if rebuild_claims:
            # As before session 10: the claims index dropped after each hold.
            current = current.keeping(lambda index: index.name != CLAIMS.name)
        steps.append((time.perf_counter_ns() - started) / 1e6)
    return steps, admitted


def measure_new_cells(snapshot: ClusterSnapshot, count: int) -> dict[str, Any]:
    """The burst with the claims index carried, and rebuilt, from the same snapshot."""
    result: dict[str, Any] = {"new_cells": count}
    for variant, rebuild in (("carried", False), ("rebuilt", True)):
        gc.collect()
        steps, admitted = new_cells_burst(snapshot, count, rebuild_claims=rebuild)
        result[variant] = {
            "admitted": admitted,
            "first": _summary(steps[:EDGE]),
            "last": _summary(steps[-EDGE:]),
            "total_s": round(sum(steps) / 1000, 3),
        }
    last = {variant: result[variant]["last"]["p50_ms"] for variant in ("carried", "rebuilt")}
    result["last_rebuilt_over_carried"] = round(last["rebuilt"] / last["carried"], 2)
    result["carried_last_over_first"] = round(
        last["carried"] / result["carried"]["first"]["p50_ms"], 2
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1_000, 5_000])
    parser.add_argument("--calls", type=int, default=2_000, help="decisions per cluster size")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--new-cells", type=int, default=1_000, help="a burst of creates (0: none)")
    args = parser.parse_args()

    results = [measure(count, args.calls, args.seed, args.new_cells) for count in args.nodes]
    columns = [
        ("decide", "decide"),
        ("max_safe_replicas", "max_safe"),
        ("at_now_and_decide", "at+decide"),
        ("hold_and_decide", "hold+decide"),
    ]
    header = f"{'nodes':>6} {'cells':>6} {'pods':>8}"
    for _, title in columns:
        header += f" | {title + ' p50':>15} {'p99':>8}"
    header += f" | {'build+first p50':>15}"
    print(header)
    print("-" * len(header))
    for r in results:
        line = f"{r['nodes']:>6,} {r['cells']:>6,} {r['pods']:>8,}"
        for key, _ in columns:
            line += f" | {r[key]['p50_ms']:>13.3f}ms {r[key]['p99_ms']:>6.2f}ms"
        line += f" | {r['build_and_first_decide']['p50_ms']:>13.1f}ms"
        print(line)
    if any("burst" in r for r in results):
        print(
            f"\n{'nodes':>6} {'new cells':>9} {'admitted':>8} | claims index"
            f" {'first p50':>10} {'last p50':>9} {'burst':>8} | rebuilt/carried (last)"
        )
        for r in results:
            burst = r.get("burst")
            if burst is None:
                continue
            for variant in ("carried", "rebuilt"):
                v = burst[variant]
                print(
                    f"{r['nodes']:>6,} {burst['new_cells']:>9,} {v['admitted']:>8,} |"
                    f" {variant:>12} {v['first']['p50_ms']:>8.3f}ms {v['last']['p50_ms']:>7.3f}ms"
                    f" {v['total_s']:>7.2f}s |"
                    + (
                        f" {burst['last_rebuilt_over_carried']:.2f}x"
                        if variant == "rebuilt"
                        else ""
                    )
                )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "decision.json"
    out.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
                "calls": args.calls,
                "new_cells": args.new_cells,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
