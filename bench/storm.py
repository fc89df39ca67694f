"""A storm of concurrent scale requests over many cells: never above any node's limit.

1,000 PATCHes of /scale (random cell, random size 1..14) from 32 client threads at once
over 50 Shared cells on a pool of nodes of two sizes (pid_max 32,768 and 24,576, so the
allowed figure is each node's own, less the 20% margin). Afterwards, once every cell runs
exactly its spec.replicas pods: each node's modelled threads (`node_threads` of
cellguard.devcluster.cells, from the pods really on it) against its NodeBudget's allowance,
and each cell's size against what was asked of it. While the storm runs the same figure is
sampled every few seconds (reported, not judged: a sample reads pods and cells at two
moments).

Reservations are per node and worst case, so a burst over many cells is refused more than
strictly necessary: the admitted fraction and how full the nodes end up are reported.

    .venv/bin/python bench/storm.py [--requests 1000] [--cells 50] [--nodes 20]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

from _support import (
    add_pool,
    cellguard_cluster,
    load,
    say,
    start_operator,
    summary_ms,
    write_result,
)
from cellguard.devcluster.cells import ensure_namespace, node_threads
from cellguard.devcluster.scenarios import load as load_helpers

NS = "bench-storm"
BASELINE = 1_000
MARGIN = Fraction(1, 5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000)
    parser.add_argument("--cells", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--max-replicas", type=int, default=14)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", type=Path, help="cProfile the operator into this file")
    args = parser.parse_args()

    with cellguard_cluster() as (cluster, kubeconfig):
        operator = start_operator(cluster, kubeconfig, profile=args.profile)
        try:
            ensure_namespace(cluster, NS)
            pool = add_pool(cluster, "storm", args.nodes)
            load_helpers.storm_budgets(pool, BASELINE)
            time.sleep(2)  # budget reports are folded in at most once a second
            names = [f"c{i:03d}" for i in range(args.cells)]
            cluster.apply(
                [
                    load_helpers.storm_cell(NS, n, pool, replicas=2, base=400, per_peer=40)
                    for n in names
                ]
            )
            initial = load_helpers.settle(cluster, NS, timeout=300)
            allowed = load_helpers.allowed_by_node(cluster, pool, MARGIN)

            samples: list[float] = []  # worst node's threads / allowed, during the storm
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    threads = node_threads(cluster, pool, NS, BASELINE)
                    samples.append(max(threads[n] / allowed[n] for n in threads))
                    stop.wait(2.0)

            sampler = threading.Thread(target=sample, daemon=True)
            say(f"{args.requests} scale requests over {args.cells} cells, {args.workers} at once")
            sampler.start()
            result = load_helpers.scale_storm(
                cluster,
                NS,
                names,
                requests=args.requests,
                workers=args.workers,
                max_replicas=args.max_replicas,
                seed=args.seed,
            )
            storm_load = load()
            say("waiting for every cell to run exactly its replicas")
            settle_started = time.monotonic()
            final = load_helpers.settle(cluster, NS, timeout=600)
            settle_s = time.monotonic() - settle_started
            stop.set()
            sampler.join()
            threads = node_threads(cluster, pool, NS, BASELINE)
            over = {n: (t, allowed[n]) for n, t in threads.items() if t > allowed[n]}
            not_asked = {
                n: r for n, r in final.items() if r not in result.admitted[n] | {initial[n]}
            }
        finally:
            operator.stop()

    fill = sorted(threads[n] / allowed[n] for n in threads)
    reasons = Counter(
        "NodeThreadLimit" if "would put node" in m else m.split(":")[0][:60]
        for m in result.refusal_messages
    )
    latency = summary_ms(result.latencies_s)
    payload = {
        "requests": args.requests,
        "cells": args.cells,
        "nodes": args.nodes,
        "workers": args.workers,
        "storm_seconds": round(result.seconds, 1),
        "requests_per_second": round(args.requests / result.seconds, 1),
        "statuses": dict(result.statuses),
        "admitted_fraction": round(result.admitted_fraction, 3),
        "refusal_reasons": dict(reasons),
        "unexpected": result.unexpected[:20],
        "latency": latency,
        "settle_seconds": round(settle_s, 1),
        "nodes_over_allowance_at_end": over,
        "cells_at_a_size_never_asked": not_asked,
        "node_fill_at_end": {
            "min": round(fill[0], 3),
            "median": round(fill[len(fill) // 2], 3),
            "max": round(fill[-1], 3),
        },
        "worst_node_fill_sampled_during_storm": round(max(samples), 3) if samples else None,
        "pods_at_end": sum(final.values()),
        "load_average_after_storm": storm_load,
    }
    print(
        f"\n{args.requests} scale requests over {args.cells} cells on {args.nodes} nodes, "
        f"{args.workers} concurrent (load average after the storm: {storm_load})"
    )
    print(f"{'storm duration':<44} {result.seconds:>8.1f} s ({payload['requests_per_second']}/s)")
    print(f"{'answers':<44} {dict(sorted(result.statuses.items()))}")
    print(f"{'admitted fraction':<44} {result.admitted_fraction:>8.1%}")
    print(f"{'refusals by reason':<44} {dict(reasons)}")
    print(
        f"{'request latency':<44} p50 {latency['p50_ms']:.0f} ms, p99 {latency['p99_ms']:.0f} ms,"
        f" max {latency['max_ms']:.0f} ms"
    )
    print(f"{'settled (all cells at spec) after':<44} {settle_s:>8.1f} s")
    print(
        f"{'node threads / allowed at end':<44} min {fill[0]:.0%}, median "
        f"{fill[len(fill) // 2]:.0%}, max {fill[-1]:.0%}"
    )
    worst = payload["worst_node_fill_sampled_during_storm"]
    print(f"{'worst node threads / allowed, sampled':<44} {worst}")
    print(f"{'nodes over their allowance at end':<44} {len(over)} {over or ''}")
    print(f"{'cells at a size never asked':<44} {len(not_asked)} {not_asked or ''}")
    print(f"{'unexpected answers (not 200/403)':<44} {len(result.unexpected)}")
    out = write_result("storm", payload)
    print(f"wrote {out}")
    return 1 if over or not_asked or result.unexpected else 0


if __name__ == "__main__":
    raise SystemExit(main())
