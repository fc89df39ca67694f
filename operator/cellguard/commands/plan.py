"""`cellguard plan`: what would this scale change do to every node? A what-if, no change.

    cellguard plan -f cell.yaml                   # the cell as written, against the cluster
    cellguard plan streamcell/ingest-a -n prod --replicas 48
    cellguard plan ingest-a --context staging     # in the context's namespace
    cellguard plan -f cell.yaml --snapshot cluster.yaml -o json

Exit codes: 0 it fits, 1 it would be refused, 2 the question could not be answered.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from cellguard.api.v1alpha1 import StreamCell
from cellguard.budget import CellKey, CellView, Decision, decide, with_cell_at
from cellguard.commands.output import console as make_console
from cellguard.commands.output import emit, failed, figure, ratio
from cellguard.commands.source import (
    Source,
    add_cluster_arguments,
    load_state,
    planner_snapshot,
)

FITS, REFUSED = 0, 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "cell", nargs="?", help="streamcell/NAME (or NAME) of a live cell; or use -f"
    )
    parser.add_argument("-f", "--filename", type=Path, help="a StreamCell manifest")
    parser.add_argument("--replicas", type=int, default=None, help="target (default: the spec's)")
    add_cluster_arguments(parser)


def _cell_from_args(
    args: argparse.Namespace, listing: dict[str, Any], namespace: str
) -> StreamCell:
    """The cell to plan: the manifest of -f (in its own namespace, unless -n says one), or
    the live cell named, in `namespace` (-n, else the context's)."""
    if args.filename is not None:
        raw = yaml.safe_load(args.filename.read_text())
        raw.setdefault("metadata", {}).setdefault("namespace", namespace)
        if args.namespace:
            raw["metadata"]["namespace"] = args.namespace
        raw.pop("status", None)
        return StreamCell.model_validate(raw)
    if not args.cell:
        raise ValueError("name a cell (streamcell/NAME) or give -f FILE")
    name = args.cell.split("/", 1)[-1]
    for item in listing["cells"]:
        meta = item["metadata"]
        if meta["name"] == name and meta.get("namespace") == namespace:
            return StreamCell.model_validate(
                {"metadata": {"name": name, "namespace": namespace}, "spec": item["spec"]}
            )
    raise ValueError(f"StreamCell {namespace}/{name} not found")


def plan(
    listing: dict[str, Any],
    cell: StreamCell,
    target: int | None,
    now: datetime.datetime | None = None,
) -> Decision:
    """The decision for `cell` at `target` replicas (from its live size, or from 0 if new)."""
    state = load_state(listing)
    key = CellKey(cell.metadata.get("namespace", "default"), cell.metadata["name"])
    live = state.cells.get(key)
    current = live.spec.replicas if live is not None else 0
    view = CellView.from_streamcell(cell, replicas=current)
    snapshot = with_cell_at(planner_snapshot(state, now), view, current)
    return decide(snapshot, key, cell.spec.replicas if target is None else target)


def decision_data(decision: Decision) -> dict[str, Any]:
    return {
        "cell": str(decision.cell),
        "fromReplicas": decision.from_replicas,
        "toReplicas": decision.to_replicas,
        "allowed": decision.allowed,
        "reason": str(decision.reason),
        "message": decision.message,
        "threadsPerPod": decision.threads_per_pod,
        "maxSafeReplicas": decision.max_safe_replicas,
        "cellSizeCap": decision.cell_size_cap,
        "limitingNode": decision.limiting_node,
        # NodeExclusive cells: free nodes the change takes into the cell's pool.
        "claimedNodes": sorted(decision.claimed_nodes),
        "nodes": [
            {
                "node": row.node,
                "pods": row.pods,
                "newPods": row.new_pods,
                "now": row.now,
                "reserved": row.reserved,
                "projected": row.projected,
                "limit": row.limit,
                "allowed": row.allowed,
                "headroom": row.headroom,
                "budget": str(row.budget),
                "fits": row.fits,
            }
            for row in decision.nodes
        ],
    }


def print_table(decision: Decision, console: Any) -> None:
    table = Table(
        "node",
        "pods",
        "+new",
        "now",
        "reserved",
        "projected",
        "limit",
        "allowed",
        "headroom",
        "budget",
        title=f"{decision.cell}: {decision.from_replicas} -> {decision.to_replicas} replicas "
        f"({decision.threads_per_pod:,} threads per pod)",
    )
    for row in decision.nodes:
        style = None if row.fits else "red"
        table.add_row(
            row.node,
            str(row.pods),
            str(row.new_pods),
            figure(row.now),
            figure(row.reserved),
            figure(row.projected),
            figure(row.limit),
            figure(row.allowed),
            ratio(row.headroom),
            str(row.budget),
            style=style,
        )
    console.print(table)
    if decision.claimed_nodes:
        claimed = sorted(decision.claimed_nodes)
        shown = ", ".join(claimed[:10]) + (
            f" and {len(claimed) - 10:,} more" if len(claimed) > 10 else ""
        )
        console.print(f"joining the cell's pool: {shown}")
    verdict = "[green]FITS[/]" if decision.allowed else "[red]REFUSED[/]"
    console.print(f"{verdict} {decision.message}")


def run(args: argparse.Namespace) -> int:
    console = make_console()
    try:
        source = Source(args)
        # Every namespace's cells and pods: the nodes' figures need them all.
        listing, now = source.read()
        cell = _cell_from_args(args, listing, source.namespace(args))
        decision = plan(listing, cell, args.replicas, now)
    except Exception as error:  # e.g. the API server unreachable: answer, don't crash
        return failed(error)
    if args.output == "table":
        print_table(decision, console)
    else:
        emit(decision_data(decision), args.output)
    return FITS if decision.allowed else REFUSED
