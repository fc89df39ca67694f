"""`cellguard demo`: the whole story on a local real control plane, narrated.

`--kubeconfig` tells it on an existing cluster instead (demo/existing.py) and `--real-node`
with real threads on one real kubelet node (demo/realnode.py). Without either:

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
from cellguard.demo.narration import DemoFailure, Narrator
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


EPILOG = """\
where it runs:
  (default)      a local control plane with simulated nodes, the operator as a local
                 process and Prometheus; nothing outside its working directory is touched.
  --kubeconfig   an existing cluster (kind, k3d, any). It reuses a cellguard it finds (and
                 leaves it), or installs the chart with its node agent DaemonSet (--image,
                 --image-pull-policy, --set, --values) and waits for the nodes' NodeBudgets;
                 sizes its cell from the tightest node's real limits; prints the operator's
                 /metrics through kubectl port-forward (no Prometheus needed). On exit it
                 removes exactly what it created: its namespace, policy and cells, and the
                 release (with the CRDs and namespace it created) if it installed it. Exit 2
                 when the cluster lacks what it needs (access, permissions, CRDs of this
                 version, pullable image, nodes with budgets), saying what is missing.
  --real-node    a local control plane with one real kubelet node (root; containerd, runc,
                 CNI plugins, buildah: scripts/ensure-debian-packages.sh): the image built and
                 the chart installed in-cluster, the same story with servers holding real
                 threads, then the guard switched off - every server fails with EAGAIN and
                 restarts. All it changes on this machine is undone on exit, also on failure
                 or Ctrl-C (make demo-real-node).
exit codes: 0 the story as told, 1 a step's outcome differed, 2 cannot run here, 130 Ctrl-C
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--nodes", type=int, default=20, help="simulated nodes (default 20)")
    parser.add_argument(
        "--non-interactive",
        action="store_true",
        help="run every step, check its outcome and exit (no waiting for Ctrl-C)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="logs and kubeconfig here")
    where = parser.add_argument_group("where the story runs")
    where.add_argument(
        "--kubeconfig", type=Path, help="run on the existing cluster of this kubeconfig"
    )
    where.add_argument("--context", help="the kubeconfig's context (default: its current one)")
    where.add_argument(
        "--real-node",
        action="store_true",
        help="a local control plane with one real kubelet node: real threads (root only)",
    )
    install = parser.add_argument_group("installing cellguard (--kubeconfig, when none is found)")
    install.add_argument("--image", help="operator and agent image (default: the chart's own)")
    install.add_argument(
        "--image-pull-policy", choices=("Always", "IfNotPresent", "Never"), default=None
    )
    install.add_argument(
        "--set", dest="set_values", action="append", default=[], metavar="KEY=VALUE",
        help="a chart value, as with helm --set (repeatable)",
    )  # fmt: skip
    install.add_argument(
        "-f", "--values", dest="values_files", action="append", default=[], type=Path,
        metavar="FILE", help="a chart values file, as with helm --values (repeatable)",
    )  # fmt: skip
    install.add_argument(
        "--budget-timeout", type=float, default=120.0, metavar="SECONDS",
        help="how long to wait for the nodes' NodeBudgets (default 120)",
    )  # fmt: skip
    install.add_argument(
        "--install-timeout", type=int, default=300, metavar="SECONDS",
        help="helm install --wait timeout (default 300)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    installing = bool(args.image or args.image_pull_policy or args.set_values or args.values_files)
    if args.real_node and (args.kubeconfig or installing):
        print("error: --real-node makes its own cluster: no --kubeconfig, --image, --set ...")
        return 2
    if args.context and not args.kubeconfig:
        print("error: --context needs --kubeconfig")
        return 2
    if args.real_node:
        from cellguard.demo.realnode import run_real_node

        return run_real_node(
            args.workdir, interactive=not args.non_interactive, budget_timeout=args.budget_timeout
        )
    if args.kubeconfig:
        from cellguard.demo.existing import run_existing
        from cellguard.demo.release import InstallOptions

        options = InstallOptions(
            image=args.image,
            pull_policy=args.image_pull_policy,
            values_files=tuple(args.values_files),
            set_values=tuple(args.set_values),
            timeout_seconds=args.install_timeout,
        )
        return run_existing(
            args.kubeconfig,
            args.context,
            options,
            interactive=not args.non_interactive,
            budget_timeout=args.budget_timeout,
        )
    return run_local(args)


class Demo(Narrator):
    def __init__(
        self,
        console: Console,
        stack: Stack,
        agents: SimulatedAgents,
        nodes: list[SimulatedNode],
    ) -> None:
        super().__init__(console, CELLS_NAMESPACE)
        self.nodes = {n.name: n for n in nodes}
        self.stack = stack
        self.cluster = stack.cluster
        self.agents = agents
        self.examples = (repo_root() or Path.cwd()) / "examples"

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, input_text=stdin, check=False)

    def apply_example(self, name: str) -> subprocess.CompletedProcess[str]:
        result = self.kubectl("apply", "-f", str(self.examples / name))
        self.show(f"kubectl apply -f examples/{name}", result)
        return result

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
        # Waited for: a scrape that timed out on a busy machine leaves the series stale.
        refusals = wait_for(
            lambda: self.stack.prometheus_query(
                'sum(cellguard_decisions_total{decision="refused"})'
            ),
            what="the refusal in cellguard_decisions_total",
            timeout=60,
            interval=1.0,
            error=DemoFailure,
        )
        # One per admission call: the API server calls again when it judged the scale
        # against a stale cached copy of the cell, so one refused request can count twice.
        self.console.print(
            f"cellguard_decisions_total refused = {float(refusals[0]['value'][1]):.0f}"
        )

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


def run_local(args: argparse.Namespace) -> int:
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
