"""A burst of concurrent scale-ups on a cluster with room for all of them: how many are
admitted, against the same requests sent one at a time.

100 Shared cells of 1 replica (base 50 threads, 10 per peer) on a pool of kwok nodes whose
NodeBudgets leave room for every request: each node's allowance (its pid_max less the 20%
margin) covers the baseline plus, for every cell at the largest size any request asks of
it, that cell's pods on the node (ceil(replicas / nodes) of them: the spread the operator's
placement constraint asks for) - times `--headroom`. 500 PATCHes of the cells' /scale
subresource (random cell, random size 2..10; fixed by --seed) are then sent twice:

1. concurrently: 500 threads, each connected first, released together;
2. one at a time: the same requests in the same order, each sent when the last was answered.

Between the two every cell is scaled back to 1 replica and the cluster settles (every cell
runs exactly its replicas, no pod pending or terminating). After each round, once settled:
each node's threads by the model of the pods really on it against its own allowance (must
be 0 over) and any cell at a size nobody asked for. The concurrent round's admitted count is
the figure: ideally the same as the sequential round's.

    .venv/bin/python bench/burst.py [--requests 500] [--cells 100] [--nodes 20]
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

from _support import (
    add_pool,
    cellguard_cluster,
    load,
    say,
    start_operator,
    summary_ms,
    write_result,
)
from cellguard.budget import threads_per_pod
from cellguard.devcluster.cells import ensure_namespace, node_threads
from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.pools import NodePool
from cellguard.devcluster.scenarios import load as load_helpers

NS = "bench-burst"
BASELINE = 1_000
MARGIN = Fraction(1, 5)
BASE, PER_PEER = 50, 10
START = 1


def make_plan(
    cells: list[str], requests: int, max_replicas: int, seed: int
) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [(rng.choice(cells), rng.randint(START + 1, max_replicas)) for _ in range(requests)]


def pid_max_with_room(plan: list[tuple[str, int]], nodes: int, headroom: float) -> int:
    """A pid_max whose allowance holds every cell at its largest asked size on every node."""
    largest: dict[str, int] = {}
    for name, replicas in plan:
        largest[name] = max(largest.get(name, START), replicas)
    worst_node = BASELINE + sum(
        threads_per_pod(BASE, PER_PEER, r) * math.ceil(r / nodes) for r in largest.values()
    )
    return math.ceil(worst_node * headroom / (1 - float(MARGIN)))


def reset(cluster: LocalCluster, cells: list[str]) -> None:
    """Every cell back to START replicas (scale-downs: no budget check), then settled."""
    load_helpers.scale_burst(cluster, NS, [(c, START) for c in cells], concurrent=False)
    load_helpers.settle(cluster, NS, timeout=600)


def round_figures(
    name: str,
    result: load_helpers.StormResult,
    cluster: LocalCluster,
    pool: NodePool,
    allowed: dict[str, int],
    initial: int,
) -> dict[str, Any]:
    say(f"{name}: {result.statuses.get(200, 0)} admitted; waiting for the cells to settle")
    settle_started = time.monotonic()
    final = load_helpers.settle(cluster, NS, timeout=600)
    settle_s = time.monotonic() - settle_started
    threads = node_threads(cluster, pool, NS, BASELINE)
    over = {n: (t, allowed[n]) for n, t in threads.items() if t > allowed[n]}
    not_asked = {
        n: r for n, r in final.items() if r not in result.admitted.get(n, set()) | {initial}
    }
    fill = sorted(threads[n] / allowed[n] for n in threads)
    reasons = Counter(
        "NodeThreadLimit" if "would put node" in m else m.split(":")[0][:60]
        for m in result.refusal_messages
    )
    return {
        "admitted": result.statuses.get(200, 0),
        "refused": result.statuses.get(403, 0),
        "statuses": dict(result.statuses),
        "refusal_reasons": dict(reasons),
        "unexpected": result.unexpected[:20],
        "seconds": round(result.seconds, 2),
        "latency": summary_ms(result.latencies_s),
        "settle_seconds": round(settle_s, 1),
        "nodes_over_allowance_at_end": over,
        "cells_at_a_size_never_asked": not_asked,
        "node_fill_at_end": {"min": round(fill[0], 3), "max": round(fill[-1], 3)},
        "pods_at_end": sum(final.values()),
        "load_average": load(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--max-replicas", type=int, default=10)
    parser.add_argument(
        "--headroom", type=float, default=1.1, help="allowance / what all asked sizes need"
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--profile", type=Path, help="cProfile the operator into this file")
    args = parser.parse_args()

    names = [f"b{i:03d}" for i in range(args.cells)]
    plan = make_plan(names, args.requests, args.max_replicas, args.seed)
    pid_max = pid_max_with_room(plan, args.nodes, args.headroom)
    rounds: dict[str, dict[str, Any]] = {}
    with cellguard_cluster() as (cluster, kubeconfig):
        operator = start_operator(cluster, kubeconfig, profile=args.profile)
        try:
            ensure_namespace(cluster, NS)
            pool = add_pool(
                cluster,
                "burst",
                args.nodes,
                threads_max=4_194_304,
                pid_max=pid_max,
                threads_in_use=BASELINE,
            )
            time.sleep(2)  # budget reports are folded in at most once a second
            cluster.apply(
                [
                    load_helpers.storm_cell(
                        NS, n, pool, replicas=START, base=BASE, per_peer=PER_PEER
                    )
                    for n in names
                ]
            )
            load_helpers.settle(cluster, NS, timeout=300)
            allowed = load_helpers.allowed_by_node(cluster, pool, MARGIN)
            for label, concurrent in (("concurrent", True), ("one at a time", False)):
                if rounds:
                    say("resetting every cell to 1 replica")
                    reset(cluster, names)
                say(f"{label}: {len(plan)} scale-ups over {args.cells} cells")
                result = load_helpers.scale_burst(cluster, NS, plan, concurrent=concurrent)
                rounds[label] = round_figures(label, result, cluster, pool, allowed, START)
        finally:
            operator.stop()

    concurrent_round, sequential = rounds["concurrent"], rounds["one at a time"]
    ratio = (
        concurrent_round["admitted"] / sequential["admitted"] if sequential["admitted"] else None
    )
    payload = {
        "requests": args.requests,
        "cells": args.cells,
        "nodes": args.nodes,
        "pid_max": pid_max,
        "allowed_per_node": min(allowed.values()),
        "max_replicas": args.max_replicas,
        "headroom": args.headroom,
        "seed": args.seed,
        "concurrent_admitted_over_sequential": round(ratio, 3) if ratio is not None else None,
        "rounds": rounds,
    }
    print(
        f"\n{args.requests} scale-ups over {args.cells} cells on {args.nodes} nodes "
        f"(pid_max {pid_max}, allowed {min(allowed.values())} a node; load {load()})"
    )
    print(
        f"{'round':<16} {'admitted':>9} {'refused':>8} {'other':>6} {'seconds':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'over':>5} {'never asked':>12}"
    )
    for label, r in rounds.items():
        print(
            f"{label:<16} {r['admitted']:>9} {r['refused']:>8} {len(r['unexpected']):>6} "
            f"{r['seconds']:>8.1f} {r['latency']['p50_ms']:>8.0f} {r['latency']['p99_ms']:>8.0f} "
            f"{len(r['nodes_over_allowance_at_end']):>5} "
            f"{len(r['cells_at_a_size_never_asked']):>12}"
        )
    if ratio is not None:
        print(f"concurrent admitted / one-at-a-time admitted: {ratio:.2f}")
    for label, r in rounds.items():
        if r["refusal_reasons"]:
            print(f"  {label} refusals: {r['refusal_reasons']}")
    out = write_result("burst", payload)
    print(f"wrote {out}")
    failed = any(
        r["nodes_over_allowance_at_end"] or r["cells_at_a_size_never_asked"] or r["unexpected"]
        for r in rounds.values()
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
