"""Admission latency while the status loop runs a full round, in process.

At 5,000 nodes the real-cluster run (operator_scale.py) saw a dry-run scale-up take 1,026 ms
at p50 (9.8 ms at 1,000 nodes): the webhook's request waited on the event loop behind the
status round's plans. This measures that alone, without a cluster: a synthetic listing as
operator_scale's in-process mode loads it (30 pods a node in cells of 50, Shared), an
Operator whose API writes do nothing (each still hops to a thread, as the real ones do),
every cell's Deployment at its size, one warm-up round (which applies every cell's
children and writes its first status), then a second round - every cell backstopped and
figured, nothing to patch - while admission requests arrive every 100 ms.
A request is modelled as the webhook server handles one: a few event-loop steps (read,
parse, dispatch), the gate's dry-run decision for a scale-up by one replica of a random
cell, one step to answer.

Each size runs twice in one process: the status loop paced to one plan an event-loop step
(as the operator runs it) and unpaced (its 16 cells in flight planning as they come, as
before): request latency p50/p99/max during the round - counted from each request's
arrival on a fixed schedule, whatever the loop was doing - the round's wall time, and the
ratios. Prints a table and writes
bench/results/status_round.json.

    .venv/bin/python bench/status_round.py [--nodes 1000 5000] [--every-ms 100]
    .venv/bin/python bench/status_round.py --memory [--nodes 1000 5000]

`--memory` measures instead what the first round keeps (RSS and the allocations still
live after it, by line), beside the cache and snapshot the operator held before.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import os
import random
import time
import tracemalloc
from typing import Any

from prometheus_client import CollectorRegistry

from _support import rss_kib, say, summary_ms, write_result
from cellguard.constants import LABEL_CELL
from cellguard.metrics import OperatorMetrics
from cellguard.reconcile.refresh import StatusLoop
from cellguard.settings import Settings
from cellguard.wiring import Operator
from operator_scale import NS, REPLICAS, builtin_templates, synthetic_listing

PODS_PER_NODE = 30
STEPS_BEFORE = 3  # event-loop steps a request takes before the handler runs
STEPS_AFTER = 1


def operator_for(nodes: int) -> Operator:
    templates = builtin_templates()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    templates["budget"]["spec"]["observedAt"] = now
    # Each cell's Deployment at its size, its pods all there: the round's work is the
    # steady state's (a backstop and the figures a cell), not scale-ups held back.
    templates["deployment"] = {
        "metadata": {"name": "c", "namespace": NS, "labels": {LABEL_CELL: "c"}},
        "spec": {"replicas": REPLICAS},
        "status": {"replicas": REPLICAS, "readyReplicas": REPLICAS},
    }
    op = Operator.create(
        Settings(),
        OperatorMetrics(CollectorRegistry()),  # one a size, in one process
        lambda manifest: manifest,
        patch_status=lambda record, changes: None,
        post_event=lambda record, type_, reason, message: None,
    )
    op.state.replace_all(**synthetic_listing(nodes, PODS_PER_NODE, templates))
    return op


async def measured_round(op: Operator, paced: bool, every_s: float) -> dict[str, Any]:
    loop = StatusLoop(op, paced=paced)
    await loop.round()  # warm-up: applies every cell's children
    cells = list(op.state.cells)
    rng = random.Random(7)
    latencies: list[float] = []
    done = asyncio.Event()

    async def request(arrived: float) -> None:
        for _ in range(STEPS_BEFORE):
            await asyncio.sleep(0)
        await op.gate.admit_scale(rng.choice(cells), REPLICAS + 1, dry_run=True)
        for _ in range(STEPS_AFTER):
            await asyncio.sleep(0)
        latencies.append(time.perf_counter() - arrived)

    async def requests() -> None:
        # Requests arrive on a fixed schedule, whatever the loop is doing; each is taken up
        # at the first step after it arrived (as a socket is polled once a step), and its
        # latency counts from its arrival.
        pending: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        sent = 0
        while True:
            due = int((time.perf_counter() - start) / every_s) + 1
            for index in range(sent, due):
                task = asyncio.create_task(request(start + index * every_s))
                pending.add(task)
                task.add_done_callback(pending.discard)
            sent = due
            if done.is_set():  # the round is over: what arrived during it is taken up
                break
            await asyncio.sleep(every_s)
        await asyncio.gather(*pending)

    sender = asyncio.create_task(requests())
    began = time.perf_counter()
    await loop.round()
    round_s = time.perf_counter() - began
    done.set()
    await sender
    return {
        "paced": paced,
        "round_s": round(round_s, 2),
        "requests": len(latencies),
        "latency_ms": summary_ms(latencies),
    }


def run_size(nodes: int, every_s: float) -> dict[str, Any]:
    say(f"{nodes} nodes: loading a synthetic listing")
    op = operator_for(nodes)
    rows = {}
    for paced in (True, False):
        say(f"{nodes} nodes: a round, {'one plan a step' if paced else 'unpaced (before)'}")
        rows[paced] = asyncio.run(measured_round(op, paced, every_s))
    one, many = rows[True], rows[False]
    return {
        "nodes": nodes,
        "cells": len(op.state.cells),
        "paced": one,
        "unpaced": many,
        "p50_ratio": round(one["latency_ms"]["p50_ms"] / many["latency_ms"]["p50_ms"], 3),
        "p99_ratio": round(one["latency_ms"]["p99_ms"] / many["latency_ms"]["p99_ms"], 3),
        "round_time_ratio": round(one["round_s"] / many["round_s"], 3),
    }


def memory_of_a_round(nodes: int) -> dict[str, Any]:
    """What the operator keeps after its first status round (statuses written, each cell's
    figures for the gauges), beside the cache and snapshot it held before: RSS, and the
    allocations still live after the round (tracemalloc), by the line that made them."""

    def rss_mib() -> float:
        return round(rss_kib(os.getpid())["VmRSS"] / 1024, 1)

    say(f"{nodes} nodes: memory of a first round")
    op = operator_for(nodes)
    op.gate.snapshot()
    gc.collect()
    before_rss = rss_mib()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    loop = StatusLoop(op)  # kept, as the operator keeps its loop (and what it wrote)
    asyncio.run(loop.round())
    gc.collect()
    after = tracemalloc.take_snapshot()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    growth = after.compare_to(before, "lineno")
    top = [
        {
            "where": f"{stat.traceback[0].filename.split('/cellguard/')[-1]}:"
            f"{stat.traceback[0].lineno}",
            "kept_kib": round(stat.size_diff / 1024, 1),
            "blocks": stat.count_diff,
        }
        for stat in growth[:10]
    ]
    return {
        "nodes": nodes,
        "cells": len(op.state.cells),
        "rss_before_mib": before_rss,
        "rss_after_mib": rss_mib(),
        "kept_by_the_round_mib": round(sum(s.size_diff for s in growth) / 1024 / 1024, 1),
        "peak_traced_during_round_mib": round(peak / 1024 / 1024, 1),
        "top": top,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1_000, 5_000])
    parser.add_argument("--every-ms", type=float, default=100.0)
    parser.add_argument(
        "--memory", action="store_true", help="what a first round keeps, instead of latency"
    )
    args = parser.parse_args()
    if args.memory:
        rows = [memory_of_a_round(n) for n in args.nodes]
        for row in rows:
            print(
                f"\n{row['nodes']} nodes, {row['cells']} cells: RSS {row['rss_before_mib']} -> "
                f"{row['rss_after_mib']} MiB; kept by the round "
                f"{row['kept_by_the_round_mib']} MiB (traced peak "
                f"{row['peak_traced_during_round_mib']} MiB)"
            )
            for item in row["top"]:
                print(f"  {item['kept_kib']:>10} KiB {item['blocks']:>8} blocks  {item['where']}")
        say(f"wrote {write_result('status_round_memory', {'sizes': rows})}")
        return 0
    results = [run_size(n, args.every_ms / 1000) for n in args.nodes]
    print(
        f"\n{'nodes':>6} {'cells':>6} {'status loop':>12} {'round s':>8} {'requests':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    for row in results:
        for key in ("paced", "unpaced"):
            part = row[key]
            ms = part["latency_ms"]
            print(
                f"{row['nodes']:>6} {row['cells']:>6} {key:>12} "
                f"{part['round_s']:>8} {part['requests']:>9} {ms['p50_ms']:>8} {ms['p99_ms']:>8} "
                f"{ms['max_ms']:>8}"
            )
        print(
            f"{'':>6} paced / unpaced: p50 {row['p50_ratio']}x, p99 {row['p99_ratio']}x, "
            f"round time {row['round_time_ratio']}x"
        )
    out = write_result(
        "status_round",
        {"every_ms": args.every_ms, "pods_per_node": PODS_PER_NODE, "sizes": results},
    )
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
