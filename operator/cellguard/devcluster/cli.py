"""`cellguard dev-cluster`: start the local real control plane and keep it up until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from types import FrameType

from rich.console import Console

from cellguard.devcluster.cluster import ClusterError, LocalCluster, default_nodes
from cellguard.devcluster.realnode import supports_real_node
from cellguard.devcluster.toolchain import ToolchainError, ensure_binaries


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nodes", type=int, default=20, help="simulated nodes to create (default 20)"
    )
    parser.add_argument(
        "--real-nodes",
        type=int,
        choices=(0, 1),
        default=0,
        help="real kubelet nodes (containerd + kubelet on this machine, root only) beside the "
        "simulated ones: 0 (default) or 1",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where logs, certificates and kubeconfig go"
    )
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the working directory on exit"
    )
    parser.add_argument(
        "--exit-after-ready",
        action="store_true",
        help="stop as soon as the cluster is ready (a smoke test of the set-up)",
    )


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        console.print(f"[yellow]received {signal.Signals(signum).name}, shutting down ...")
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        bin_dir = ensure_binaries(progress=lambda m: console.print(f"[dim]{m}"))
    except ToolchainError as error:
        console.print(f"[red]error:[/] {error}")
        return 2
    if args.real_nodes:
        reason = supports_real_node(bin_dir)
        if reason is not None:
            console.print(f"[red]error:[/] cannot run a real node here: {reason}")
            return 2
    cluster = LocalCluster(
        bin_dir,
        nodes=default_nodes(args.nodes),
        workdir=args.workdir,
        keep_workdir=args.keep_workdir,
        progress=lambda m: console.print(f"[dim]{m}"),
        real_nodes=args.real_nodes,
    )
    started = time.monotonic()
    try:
        with console.status("starting etcd, kube-apiserver, controllers, scheduler and kwok ..."):
            cluster.start()
    except (ClusterError, OSError) as error:
        console.print(f"[red]error:[/] {error}")
        return 1
    try:
        elapsed = time.monotonic() - started
        console.print(
            f"[green]Local control plane ready[/] in {elapsed:.1f} s: "
            f"{args.nodes} simulated nodes"
            + (f" and {args.real_nodes} real node (real-0)" if args.real_nodes else "")
            + f" at {cluster.server_url}\n"
            f"  export KUBECONFIG={cluster.kubeconfig}\n"
            f"  export PATH={bin_dir}:$PATH\n"
            "  kubectl get nodes\n"
            f"Component logs: {cluster.workdir}/*.log\n"
            "Press Ctrl-C to stop and clean up."
        )
        for node in cluster.real_nodes:
            console.print(
                f"Real node {node.name}: pods run for real (containerd at {node.socket}); "
                f"local images {', '.join(node.images)} with imagePullPolicy: Never; "
                f"logs in {node.workdir}"
            )
        if not args.exit_after_ready:
            while not stop.wait(1.0):
                cluster.check_alive()
                for node in cluster.real_nodes:
                    node.check_alive()
    except ClusterError as error:
        console.print(f"[red]error:[/] {error}")
        console.print(cluster.log_tails())
        return 1
    finally:
        cluster.stop()
        console.print("[green]stopped; everything cleaned up")
    return 0
