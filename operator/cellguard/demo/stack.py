"""The local stack the demo runs: control plane, cellguard installed with its Helm chart
(URL webhook mode), the operator as a local process with the chart's ServiceAccount
identity, simulated node agents, and Debian's Prometheus with cellguard's alert rules.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cellguard.devcluster.cluster import LocalCluster, NodeSpec, free_port
from cellguard.devcluster.processes import LoggedProcess, OperatorOptions, OperatorProcess
from cellguard.devcluster.toolchain import repo_root

NAMESPACE = "cellguard-system"
RELEASE = "cellguard"
OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:{RELEASE}-operator"
POOL_LABEL = "cellguard.io/pool"


@dataclass(frozen=True)
class SimulatedNode:
    """A node and the figures its (simulated) agent reports."""

    name: str
    zone: str
    threads_max: int
    pid_max: int
    kubepods_pids_max: int | None
    threads_in_use: int


def demo_nodes(count: int = 20) -> list[SimulatedNode]:
    """Realistic limits: most nodes keep the classic pid_max of 32,768 (the limit that
    matters), a few have it raised and a kubepods pids.max of 40,000 instead."""
    nodes = []
    for i in range(1, count + 1):
        raised = i > count - 4
        nodes.append(
            SimulatedNode(
                name=f"stream-{i:02d}",
                zone=f"zone-{'abc'[i % 3]}",
                threads_max=127_431,
                pid_max=4_194_304 if raised else 32_768,
                kubepods_pids_max=40_000 if raised else None,
                threads_in_use=1_200 + (i * 37) % 400,
            )
        )
    return nodes


def budget_manifest(node: SimulatedNode, threads_in_use: int | None = None) -> dict[str, Any]:
    kubepods: dict[str, Any] = {"cgroupVersion": "v2", "path": "/sys/fs/cgroup/kubepods.slice"}
    if node.kubepods_pids_max is not None:
        kubepods["max"] = node.kubepods_pids_max
    else:
        kubepods["unlimited"] = True
    return {
        "apiVersion": "cellguard.io/v1alpha1",
        "kind": "NodeBudget",
        "metadata": {"name": node.name},
        "spec": {
            "nodeName": node.name,
            "threadsMax": node.threads_max,
            "pidMax": node.pid_max,
            "threadsInUse": threads_in_use if threads_in_use is not None else node.threads_in_use,
            "kubepods": kubepods,
            "podPidsLimit": 32_768,
            "observedAt": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "agentVersion": "simulated",
        },
    }


class SimulatedAgents:
    """Re-reports every node's budget periodically, as the DaemonSet's agents would."""

    def __init__(self, cluster: LocalCluster, nodes: list[SimulatedNode], interval: float = 15.0):
        self.cluster = cluster
        self.nodes = nodes
        self.interval = interval
        self.overrides: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="simulated-agents", daemon=True)

    def report(self) -> None:
        self.cluster.apply([budget_manifest(n, self.overrides.get(n.name)) for n in self.nodes])

    def start(self) -> None:
        self.report()
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.report()
            except Exception as exc:  # the demo goes on; the budgets just age
                print(f"simulated agents: {exc}", file=sys.stderr)

    def stop(self) -> None:
        self._stop.set()


@dataclass
class Stack:
    cluster: LocalCluster
    workdir: Path
    progress: Callable[[str], None]
    processes: list[LoggedProcess] = field(default_factory=list)
    webhook_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    prometheus_port: int = field(default_factory=free_port)

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    # ------------------------------------------------------------------ nodes

    def add_nodes(self, nodes: list[SimulatedNode]) -> None:
        specs = [
            NodeSpec(
                name=n.name,
                labels={POOL_LABEL: "streams", "topology.kubernetes.io/zone": n.zone},
            )
            for n in nodes
        ]
        self.cluster.add_nodes(specs)
        self.cluster.wait_nodes_ready([s.name for s in specs], timeout=120)

    # ------------------------------------------------------------------ helm

    def helm(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.cluster.bin_dir / "helm"), f"--kubeconfig={self.cluster.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args[:2])} failed: {result.stderr.strip()}")
        return result

    def install_chart(self) -> None:
        root = repo_root()
        if root is None:
            raise RuntimeError("the demo installs the Helm chart from a cellguard checkout")
        self.helm(
            "upgrade",
            "--install",
            RELEASE,
            str(root / "helm" / "cellguard"),
            "--namespace",
            NAMESPACE,
            "--create-namespace",
            "--wait",
            "--timeout=120s",
            "--set",
            "webhook.mode=url",
            "--set",
            f"webhook.url=https://127.0.0.1:{self.webhook_port}",
            # The operator runs on this machine, not in the (simulated) cluster.
            "--set",
            "operator.replicas=0",
            # Simulated nodes have no /proc to read: their budgets come from SimulatedAgents.
            "--set",
            "agent.enabled=false",
            "--set",
            "tests.enabled=false",
            # Its first-install hook is a Job, and simulated nodes run no containers: the
            # demo applies examples/policy-default.yaml itself.
            "--set",
            "defaultPolicy.create=false",
        )
        self.cluster.kubectl("apply", "-f", str(root / "examples" / "policy-default.yaml"))

    # ------------------------------------------------------------------ operator

    def start_operator(self) -> None:
        kubeconfig = self.cluster.user_kubeconfig(
            OPERATOR_USER, ("system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}")
        )
        options = OperatorOptions(
            kubeconfig=kubeconfig,
            operator_namespace=NAMESPACE,
            webhook_port=self.webhook_port,
            health_port=self.health_port,
            metrics_port=self.metrics_port,
            status_interval=3,
        )
        operator = OperatorProcess(options, self.workdir / "operator.log")
        self.processes.append(operator)
        operator.start(timeout=90)

    # ------------------------------------------------------------------ prometheus

    def start_prometheus(self, prometheus: Path, alert_for: str = "15s") -> None:
        root = repo_root()
        assert root is not None
        rules = yaml.safe_load((root / "helm/cellguard/files/prometheus-rules.yaml").read_text())
        for group in rules["groups"]:
            group["interval"] = "5s"
            for rule in group["rules"]:
                if "alert" in rule and "for" in rule:
                    # Production waits minutes before paging; the demo cannot.
                    rule["for"] = alert_for
        rules_path = self.workdir / "cellguard-rules.yaml"
        rules_path.write_text(yaml.safe_dump(rules, sort_keys=False))
        config = {
            "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
            "rule_files": [str(rules_path)],
            "scrape_configs": [
                {
                    "job_name": "cellguard",
                    "static_configs": [{"targets": [f"127.0.0.1:{self.metrics_port}"]}],
                }
            ],
        }
        config_path = self.workdir / "prometheus.yaml"
        config_path.write_text(yaml.safe_dump(config))
        prometheus_process = LoggedProcess(
            [
                str(prometheus),
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
                "--log.level=warn",
            ],
            self.workdir / "prometheus.log",
            what="Prometheus",
        )
        self.processes.append(prometheus_process)
        prometheus_process.start()
        prometheus_process.wait_http(f"{self.prometheus_url}/-/ready", timeout=90)

    def prometheus_query(self, query: str) -> list[dict[str, Any]]:
        url = f"{self.prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": query})
        with urllib.request.urlopen(url, timeout=5) as response:
            result: list[dict[str, Any]] = yaml.safe_load(response.read())["data"]["result"]
            return result

    def firing_alerts(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.prometheus_url}/api/v1/alerts", timeout=5) as response:
            alerts: list[dict[str, Any]] = yaml.safe_load(response.read())["data"]["alerts"]
        return [a for a in alerts if a["state"] == "firing"]

    # ------------------------------------------------------------------ common

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
