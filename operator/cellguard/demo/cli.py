"""`cellguard demo`: the whole story on a local real control plane, narrated.

1. a real control plane with 20 simulated nodes and realistic thread/PID limits
2. cellguard installed with its Helm chart; the operator running locally
3. Prometheus with cellguard's alert rules
4. a safe scale-up admitted; the Kinesis replay refused with its reason; the same capacity
   admitted as a second cell; headroom in Prometheus and an alert firing
Each step checks its outcome; `--non-interactive` exits non-zero if one is not as told.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import threading
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from cellguard.budget import pool_label_key
from cellguard.demo.stack import (
    NAMESPACE,
    SimulatedAgents,
    SimulatedNode,
    Stack,
    demo_nodes,
)
from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.toolchain import (
    ToolchainError,
    ensure_binaries,
    ensure_prometheus,
    repo_root,
)
from cellguard.devcluster.waiting import wait_for

T = TypeVar("T")
CELLS_NAMESPACE = "streams"


class DemoFailure(RuntimeError):  # noqa: N818 - it reads as what happened
    """A step's outcome was not what the demo says it is."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=20, help="simulated nodes (default 20)")
    parser.add_argument(
        "--non-interactive",
        action="store_true",
        help="run every step, check its outcome and exit (no waiting for Ctrl-C)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="logs and kubeconfig here")


class Demo:
    def __init__(
        self,
        console: Console,
        stack: Stack,
        agents: SimulatedAgents,
        nodes: list[SimulatedNode],
    ) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.console = console
        self.stack = stack
        self.cluster = stack.cluster
        self.agents = agents
        self.examples = (repo_root() or Path.cwd()) / "examples"

    # ------------------------------------------------------------------ helpers

    def say(self, title: str, text: str) -> None:
        # Sentences are written across source lines; rich wraps them to the terminal.
        self.console.print(
            Panel(" ".join(text.split()), title=f"[bold]{title}", title_align="left")
        )

    def show(self, command: str, result: subprocess.CompletedProcess[str]) -> None:
        self.console.print(f"[bold cyan]$ {command}")
        output = (result.stdout + result.stderr).strip()
        style = "green" if result.returncode == 0 else "red"
        self.console.print(f"[{style}]{output}")

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, input_text=stdin, check=False)

    def apply_example(self, name: str) -> subprocess.CompletedProcess[str]:
        result = self.kubectl("apply", "-f", str(self.examples / name))
        self.show(f"kubectl apply -f examples/{name}", result)
        return result

    def scale(self, cell: str, replicas: int) -> subprocess.CompletedProcess[str]:
        result = self.kubectl(
            "scale", f"streamcell/{cell}", "-n", CELLS_NAMESPACE, f"--replicas={replicas}"
        )
        self.show(f"kubectl scale streamcell/{cell} -n streams --replicas={replicas}", result)
        return result

    def running(self, cell: str) -> int:
        out = self.kubectl(
            "get", "pods", "-n", CELLS_NAMESPACE, "-l", f"cellguard.io/cell={cell}", "-o", "json"
        ).stdout
        pods = json.loads(out or '{"items": []}')["items"]
        return sum(1 for p in pods if p["status"].get("phase") == "Running")

    def wait_running(self, cell: str, replicas: int) -> None:
        with self.console.status(f"waiting for {replicas} pods of {cell} to run ..."):
            wait_for(
                lambda: self.running(cell) == replicas,
                what=f"{replicas} running pods of {cell}",
                timeout=90,
                interval=1.0,
                error=DemoFailure,
            )

    def cells_table(self) -> None:
        result = self.kubectl("get", "streamcells", "-n", CELLS_NAMESPACE)
        self.show("kubectl get streamcells -n streams", result)

    # ------------------------------------------------------------------ the story

    def run(self) -> None:
        self.say(
            "1. A cell of the ingest service",
            "ingest-a: 10 servers, each holding 400 threads plus 1,500 per peer.\n"
            "threads per pod = base + perPeer x (replicas - 1) = 400 + 1,500 x 9 = 13,900.",
        )
        if self.apply_example("ingest-a.yaml").returncode:
            raise DemoFailure("creating ingest-a was refused")
        self.wait_running("ingest-a", 10)
        self.wait_status("ingest-a")
        self.cells_table()

        self.say(
            "2. A safe scale-up is admitted",
            "10 -> 14 replicas: every pod now holds 19,900 threads; the tightest node still\n"
            "keeps more than the 20% margin free.",
        )
        if self.scale("ingest-a", 14).returncode:
            raise DemoFailure("the safe scale-up 10 -> 14 was refused")
        self.wait_running("ingest-a", 14)

        self.say(
            "3. The Kinesis replay: a small capacity add is refused",
            "14 -> 18 replicas adds 4 servers - and 6,000 threads to EVERY server (one per new\n"
            "peer). That is what took AWS Kinesis down in November 2020. cellguard refuses it\n"
            "before a single pod starts, naming the node, the figure and the limit:",
        )
        refused = self.scale("ingest-a", 18)
        if refused.returncode == 0 or "would put node" not in refused.stderr:
            raise DemoFailure("the unsafe scale-up 14 -> 18 was not refused with a reason")
        if self.running("ingest-a") != 14:
            raise DemoFailure("a refused scale-up changed the running pods")

        self.say(
            "4. The same capacity as a second cell is admitted",
            "ingest-b: 4 servers of the same service in their own cell. Its servers hold\n"
            "threads only for ingest-b's peers, and NodeExclusive isolation keeps the two\n"
            "cells on different nodes: each cell has a node pool of its own, the nodes\n"
            "labelled cellpool.cellguard.io/ingest=<namespace>.<cell>, and its pods run there.",
        )
        if self.apply_example("ingest-b.yaml").returncode:
            raise DemoFailure("the second cell was refused")
        self.wait_running("ingest-b", 4)
        self.wait_status("ingest-b")
        self.cells_table()
        key = pool_label_key("ingest")
        pools = self.kubectl("get", "nodes", "-L", key, "-l", key, "--sort-by=.metadata.name")
        self.show(f"kubectl get nodes -L {key} -l {key}", pools)

        self.say(
            "5. Headroom in Prometheus, and an alert",
            "A runaway process on one node pushes its observed threads to 29,500 of 32,768:\n"
            "the node's headroom drops under 15% and CellguardNodeThreadHeadroomCritical fires\n"
            "(the demo shortens the alert's `for:` from minutes to 15 s).",
        )
        node = self.node_of("ingest-a")
        self.agents.overrides[node] = 29_500
        self.agents.report()
        query = "min by (node) (cellguard_node_thread_headroom_ratio)"
        with self.console.status("waiting for Prometheus to scrape the new figures ..."):
            wait_for(
                lambda: (h := self.headroom_of(node)) is not None and h < 0.15,
                what="the headroom",
                timeout=90,
                interval=1.0,
                error=DemoFailure,
            )
        table = Table("node", "thread headroom", title=f"Prometheus: {query}")
        for row in sorted(self.stack.prometheus_query(query), key=lambda r: float(r["value"][1]))[
            :5
        ]:
            table.add_row(row["metric"]["node"], f"{float(row['value'][1]):.1%}")
        self.console.print(table)
        with self.console.status("waiting for the alert to fire ..."):
            alert = wait_for(
                lambda: self.alert_for(node),
                what="CellguardNodeThreadHeadroomCritical",
                timeout=120,
                interval=1.0,
                error=DemoFailure,
            )
        self.console.print(
            f"[bold red]FIRING[/] {alert['labels']['alertname']} node={node} "
            f"severity={alert['labels']['severity']}: {alert['annotations'].get('summary', '')}"
        )
        refusals = self.stack.prometheus_query('sum(cellguard_decisions_total{decision="refused"})')
        self.console.print(
            f"cellguard_decisions_total refused = {float(refusals[0]['value'][1]):.0f}"
            if refusals
            else "no refusals counted yet"
        )

    def wait_status(self, cell: str) -> None:
        def filled() -> bool:
            out = self.kubectl(
                "get", "streamcell", cell, "-n", CELLS_NAMESPACE, "-o", "json"
            ).stdout
            status = json.loads(out or "{}").get("status", {})
            return bool(status.get("maxSafeReplicas") is not None and status.get("readyReplicas"))

        wait_for(filled, what=f"the status of {cell}", timeout=90, interval=1.0, error=DemoFailure)

    def node_of(self, cell: str) -> str:
        out = self.kubectl(
            "get", "pods", "-n", CELLS_NAMESPACE, "-l", f"cellguard.io/cell={cell}", "-o", "json"
        ).stdout
        hosting = {p["spec"].get("nodeName") for p in json.loads(out)["items"]}
        # A node whose limit is the classic pid_max of 32,768 (not a raised one).
        candidates = sorted(
            str(n) for n in hosting if n in self.nodes and self.nodes[n].pid_max == 32_768
        )
        return candidates[0]

    def headroom_of(self, node: str) -> float | None:
        rows = self.stack.prometheus_query(f'cellguard_node_thread_headroom_ratio{{node="{node}"}}')
        return float(rows[0]["value"][1]) if rows else None

    def alert_for(self, node: str) -> dict[str, Any] | None:
        for alert in self.stack.firing_alerts():
            labels = alert["labels"]
            if (
                labels.get("alertname") == "CellguardNodeThreadHeadroomCritical"
                and labels.get("node") == node
            ):
                return alert
        return None


def run(args: argparse.Namespace) -> int:
    console = Console()
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        bin_dir = ensure_binaries(progress=lambda m: console.print(f"[dim]{m}"))
        prometheus, _promtool = ensure_prometheus(progress=lambda m: console.print(f"[dim]{m}"))
    except ToolchainError as error:
        console.print(f"[red]error:[/] {error}")
        return 2
    cluster = LocalCluster(
        bin_dir, workdir=args.workdir, progress=lambda m: console.print(f"[dim]{m}")
    )
    stack = Stack(cluster=cluster, workdir=cluster.workdir, progress=console.print)
    agents: SimulatedAgents | None = None
    try:
        with console.status("starting etcd, kube-apiserver, controllers, scheduler, kwok ..."):
            cluster.start()
        nodes = demo_nodes(args.nodes)
        with console.status(f"creating {len(nodes)} simulated nodes ..."):
            stack.add_nodes(nodes)
        with console.status("installing cellguard with its Helm chart (URL webhook mode) ..."):
            stack.install_chart()
        agents = SimulatedAgents(cluster, nodes)
        agents.start()
        with console.status("starting the operator (as the chart's ServiceAccount) ..."):
            stack.start_operator()
        with console.status("starting Prometheus with cellguard's alert rules ..."):
            stack.start_prometheus(prometheus)
        cluster.kubectl("create", "namespace", CELLS_NAMESPACE, check=False)
        console.print(
            f"[green]Ready:[/] {len(nodes)} nodes, cellguard in {NAMESPACE}, "
            f"Prometheus at {stack.prometheus_url}"
        )
        Demo(console, stack, agents, nodes).run()
        console.print(
            Panel(
                f"export KUBECONFIG={cluster.kubeconfig}\n"
                f"export PATH={bin_dir}:$PATH\n"
                "kubectl get streamcells -A\n"
                "kubectl describe streamcell ingest-a -n streams\n"
                "kubectl get nodebudgets\n"
                f"Prometheus: {stack.prometheus_url}/alerts   metrics: {stack.metrics_url}\n"
                f"logs: {cluster.workdir}/*.log",
                title="[bold]Look further",
                title_align="left",
            )
        )
        if not args.non_interactive:
            console.print("Press Ctrl-C to stop and clean up everything.")
            while not stop.wait(1.0):
                cluster.check_alive()
        console.print("[bold green]demo complete")
        return 0
    except (DemoFailure, RuntimeError, OSError) as failure:
        console.print(f"[red]demo step failed:[/] {failure}")
        console.print(cluster.log_tails(20))
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        return 130
    finally:
        with console.status("tearing everything down ..."):
            if agents is not None:
                agents.stop()
            stack.stop()
            cluster.stop()
        console.print("[green]stopped; everything cleaned up")
