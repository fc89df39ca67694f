"""What `cellguard plan` and `cellguard status` share: reading the cluster (live or from a
snapshot file) into the operator's own cache and planner snapshot, and printing."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from cellguard.budget import ClusterSnapshot
from cellguard.listing import Listing, list_cluster, read_snapshot
from cellguard.state.gate import ScaleGate
from cellguard.state.reservations import ReservationLedger
from cellguard.state.store import ClusterState

OUTPUTS = ("table", "json", "yaml")


class _NoCounting:
    def count_decision(self, allowed: bool, reason: str) -> None:
        """A what-if is not a decision: nothing is counted."""


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--kubeconfig", type=Path, default=None, help="read the live cluster")
    source.add_argument(
        "--snapshot",
        type=Path,
        default=None,
        help="read a snapshot file instead of a live cluster (see `status --save-snapshot`)",
    )
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="table")


def read_listing(
    args: argparse.Namespace, namespaces: tuple[str, ...] = ()
) -> tuple[Listing, datetime.datetime]:
    """The listing, and the moment to judge it at (a snapshot's own time, or now)."""
    now = datetime.datetime.now(datetime.UTC)
    if args.snapshot is not None:
        listing, taken_at = read_snapshot(args.snapshot)
        return listing, taken_at or now
    from cellguard.kubeclient import load_api_client  # the client only for live reads

    return list_cluster(load_api_client(args.kubeconfig), namespaces), now


def load_state(listing: Listing) -> ClusterState:
    state = ClusterState()
    state.replace_all(
        nodes=listing["nodes"],
        budgets=listing["budgets"],
        cells=listing["cells"],
        policies=listing["policies"],
        pods=listing["pods"],
    )
    return state


def planner_snapshot(state: ClusterState, now: datetime.datetime | None = None) -> ClusterSnapshot:
    moment = now or datetime.datetime.now(datetime.UTC)
    gate = ScaleGate(state, ReservationLedger(), _NoCounting(), now=lambda: moment)
    return gate.snapshot()


def gate_for(state: ClusterState, now: datetime.datetime | None = None) -> ScaleGate:
    moment = now or datetime.datetime.now(datetime.UTC)
    return ScaleGate(state, ReservationLedger(), _NoCounting(), now=lambda: moment)


def console() -> Console:
    """The terminal's width on a terminal; wide enough for every column when piped."""
    return Console() if sys.stdout.isatty() else Console(width=200)


def figure(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def emit(data: Any, output: str) -> None:
    if output == "json":
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        yaml.safe_dump(data, sys.stdout, sort_keys=False, default_flow_style=False)
