"""Where `cellguard plan` and `cellguard status` read the cluster from (the live API or a
snapshot file) and how they turn it into the operator's own cache and planner snapshot,
so that the CLI answers exactly as the operator would."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from cellguard.budget import ClusterSnapshot
from cellguard.commands.output import OUTPUTS
from cellguard.listing import Listing, list_cluster, read_snapshot
from cellguard.state.reservations import ReservationLedger
from cellguard.state.snapshots import build_snapshot
from cellguard.state.store import ClusterState


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
    """The state as the operator's planner sees it, without reservations (a CLI holds none)."""
    return build_snapshot(state, ReservationLedger(), now or datetime.datetime.now(datetime.UTC))
