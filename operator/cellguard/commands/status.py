"""`cellguard status`: every cell with its headroom, and every node's thread budget.

cellguard status                 # cells of the context's namespace, then every node
cellguard status -A              # cells of every namespace
cellguard status -n prod -o json
cellguard status --context staging
cellguard status --save-snapshot cluster.yaml   # for `cellguard plan --snapshot`
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from cellguard.budget import cell_status
from cellguard.commands.output import console as make_console
from cellguard.commands.output import emit, figure, ratio
from cellguard.commands.source import (
    Source,
    add_cluster_arguments,
    load_state,
    planner_snapshot,
)
from cellguard.listing import Listing, write_snapshot
from cellguard.metrics import node_figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--save-snapshot", type=Path, default=None, help="write the listing")
    add_cluster_arguments(parser, all_namespaces=True)


def report(
    listing: Listing, namespace: str | None = None, now: datetime.datetime | None = None
) -> dict[str, Any]:
    """Cells (with the planner's figures at their current size) and nodes, as data."""
    state = load_state(listing)
    snapshot = planner_snapshot(state, now)
    cells = []
    for key, record in sorted(state.cells.items()):
        if namespace is not None and key.namespace != namespace:
            continue
        figures = cell_status(snapshot, key)
        cells.append(
            {
                "namespace": key.namespace,
                "name": key.name,
                "service": record.spec.service,
                "replicas": record.spec.replicas,
                "pods": state.pods_by_cell.get(key, 0),
                "threadsPerPod": figures.threads_per_pod,
                "maxSafeReplicas": figures.max_safe_replicas,
                "headroom": figures.headroom,
                "limitingNode": figures.limiting_node,
                "withinBudget": figures.within_budget,
                "message": figures.message,
            }
        )
    nodes = [
        {
            "node": row.node,
            "limit": row.thread_limit,
            "allowed": row.threads_allowed,
            "observed": row.threads_observed,
            "projected": row.threads_projected,
            "headroom": row.thread_headroom_ratio,
            "pidHeadroom": row.pid_headroom_ratio,
            "budgetKnown": row.budget_known,
            "budgetAgeSeconds": row.budget_age_seconds,
        }
        for row in node_figures(snapshot)
    ]
    # `namespace`: whose cells these are (null: every namespace's); nodes are always all.
    return {"namespace": namespace, "cells": cells, "nodes": nodes}


def print_tables(data: dict[str, Any], console: Any) -> None:
    cells = Table(
        "namespace",
        "cell",
        "service",
        "replicas",
        "pods",
        "threads/pod",
        "max safe",
        "headroom",
        "limiting node",
        "within budget",
        title="StreamCells, every namespace"
        if data.get("namespace") is None
        else f"StreamCells in namespace {data['namespace']}",
    )
    for c in data["cells"]:
        cells.add_row(
            c["namespace"],
            c["name"],
            c["service"],
            str(c["replicas"]),
            str(c["pods"]),
            figure(c["threadsPerPod"]),
            str(c["maxSafeReplicas"]),
            ratio(c["headroom"]),
            c["limitingNode"] or "-",
            "yes" if c["withinBudget"] else "[red]NO[/]",
        )
    console.print(cells)
    for c in data["cells"]:
        if not c["withinBudget"]:
            console.print(f"[red]{c['namespace']}/{c['name']}:[/] {c['message']}")
    nodes = Table(
        "node",
        "limit",
        "allowed",
        "observed",
        "projected",
        "headroom",
        "pid headroom",
        "budget",
        title="Nodes (under the `default` policy), least headroom first",
    )
    ordered = sorted(data["nodes"], key=lambda n: (n["headroom"] is not None, n["headroom"] or 0.0))
    for n in ordered:
        age = n["budgetAgeSeconds"]
        budget = f"known, {age:,.0f}s old" if n["budgetKnown"] else "[red]unknown/stale[/]"
        nodes.add_row(
            n["node"],
            figure(n["limit"]),
            figure(n["allowed"]),
            figure(n["observed"]),
            figure(n["projected"]),
            ratio(n["headroom"]),
            ratio(n["pidHeadroom"]),
            budget,
        )
    console.print(nodes)


def shown_namespace(args: argparse.Namespace, source: Source) -> str | None:
    """Whose cells to show: -n's; every namespace's for -A (and for a snapshot, which has
    no context, without -n); else the context's namespace, as `kubectl get` would."""
    if args.all_namespaces:
        return None
    if args.namespace:
        return str(args.namespace)
    return None if source.snapshot is not None else source.namespace(args)


def run(args: argparse.Namespace) -> int:
    try:
        source = Source(args)
        # Every namespace's pods are listed even for -n: node figures need them all.
        listing, now = source.read()
        namespace = shown_namespace(args, source)
        if args.save_snapshot is not None:
            write_snapshot(args.save_snapshot, listing, now)
        data = report(listing, namespace, now)
    except Exception as error:  # unreachable cluster, bad snapshot: say so, exit 2
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    if args.output == "table":
        print_tables(data, make_console())
    else:
        emit(data, args.output)
    return 0
