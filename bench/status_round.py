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
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import random
import time
from typing import Any

from prometheus_client import CollectorRegistry

from _support import say, summary_ms, write_result
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1_000, 5_000])
    parser.add_argument("--every-ms", type=float, default=100.0)
    args = parser.parse_args()
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
