"""Where `cellguard plan`, `status` and `fit` read the cluster from (the live API server of
a kubeconfig context, chosen as kubectl chooses it, or a snapshot file) and how they turn
it into the operator's own cache and planner snapshot, so that the CLI answers exactly as
the operator would."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from cellguard.budget import ClusterSnapshot
from cellguard.commands.output import OUTPUTS
from cellguard.listing import Listing, list_cluster, read_snapshot
from cellguard.state.reservations import ReservationLedger
from cellguard.state.snapshots import build_snapshot
from cellguard.state.store import ClusterState

if TYPE_CHECKING:
    from kubernetes.client import ApiClient


def add_cluster_arguments(parser: argparse.ArgumentParser, *, all_namespaces: bool = False) -> None:
    """kubectl's flags for where to read: `--kubeconfig`, `--context`, `-n/--namespace`
    (default: the context's namespace), `-A/--all-namespaces` where a command lists; or
    `--snapshot` instead of a live cluster. And `-o`."""
    live = parser.add_argument_group("cluster (as with kubectl)")
    live.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)",
    )
    live.add_argument(
        "--context", default=None, help="kubeconfig context (default: its current-context)"
    )
    scope = live.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        default=None,
        help="namespace (default: the context's namespace, else `default`)",
    )
    if all_namespaces:
        scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    parser.add_argument(
        "--snapshot",
        type=Path,
        default=None,
        help="read a snapshot file instead of a live cluster (see `status --save-snapshot`)",
    )
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="table")


class Source:
    """Where a command reads the cluster from: the live API server of a kubeconfig
    context, or a snapshot file. A snapshot has no context: its default namespace is
    `default` (and `status` shows every namespace of it unless told one)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.snapshot: Path | None = args.snapshot
        self._api: ApiClient | None = None
        self.context_namespace: str | None = None
        if self.snapshot is not None:
            if args.kubeconfig is not None or args.context is not None:
                raise ValueError(
                    "--snapshot reads a file: --kubeconfig and --context are for a live cluster"
                )
            return
        from cellguard.kubeclient import load_cli_client  # the client only for live reads

        self._api, self.context_namespace = load_cli_client(args.kubeconfig, args.context)

    def namespace(self, args: argparse.Namespace) -> str:
        """`-n`, else the context's namespace, else `default`."""
        return str(args.namespace or self.context_namespace or "default")

    def read(self, namespaces: tuple[str, ...] = ()) -> tuple[Listing, datetime.datetime]:
        """The listing (of `namespaces`' cells and pods, or every namespace's), and the
        moment to judge it at (a snapshot's own time, or now)."""
        now = datetime.datetime.now(datetime.UTC)
        if self._api is None:
            assert self.snapshot is not None
            listing, taken_at = read_snapshot(self.snapshot)
            return listing, taken_at or now
        return list_cluster(self._api, namespaces), now


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
