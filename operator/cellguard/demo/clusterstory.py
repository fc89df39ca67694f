"""The story on a cluster with real nodes and real NodeBudgets: `--kubeconfig` and `--real-node`.

The demo cell is sized from what a node's agent reported (see sizing.py) and pinned to that
node, so the figures it prints are that node's. Everything lives in a namespace of its own
(`cellguard-demo-<random>`) with a ThreadBudgetPolicy of the same name; `cleanup()` removes
both, and any node-pool label the operator left for the demo's cell. The cluster's own
`default` policy, if any, is never read or changed.

With `real_threads` the pods are the test image's `/peers` servers (on the real node): they
hold the modelled threads for real, and `replay_without_guard()` shows what the same growth
does when nothing refuses it. Elsewhere the pods only sleep (the operator budgets the model:
the larger of model and observation), so nothing on a shared cluster is pushed to a limit.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import select
import subprocess
import time
import urllib.request
from datetime import UTC, datetime
from typing import Any

import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from cellguard.api.v1alpha1 import NodeBudgetSpec, ThreadBudgetPolicySpec
from cellguard.budget import (
    BudgetStatus,
    NodeLimits,
    node_limits,
    pool_label_key,
    pool_label_value,
)
from cellguard.demo.kube import Kube, Refusal
from cellguard.demo.narration import DemoFailure, Narrator
from cellguard.demo.release import Install
from cellguard.demo.sizing import Model, SizingError, size_model
from cellguard.devcluster.fleet import (
    all_restarted,
    crash_log,
    holding_line,
    last_exit_code,
    peer_rbac,
    peers_pod_spec,
    restarts,
    thread_failure_lines,
)
from cellguard.devcluster.waiting import wait_for

SERVICE, CELL = "ingest", "ingest-a"
MARGIN = 0.2
POLICY_SPEC = {"safetyMargin": MARGIN, "staleAfterSeconds": 300, "defaultMaxReplicas": 64}
DEMO_LABELS = {"app.kubernetes.io/managed-by": "cellguard-demo"}
HOSTNAME_LABEL = "kubernetes.io/hostname"
# The sleeping pod of a shared cluster: the operator's own image, so the nodes can pull it.
SLEEP = ["python", "-c", "import signal; signal.pause()"]
# Answers that mean "not yet": the webhook's endpoint or the operator's caches catching up.
NOT_YET = ("failed calling webhook", "does not exist", "no endpoints", "connection refused")


def _schedulable(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions") or []
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    taints = node.get("spec", {}).get("taints") or []
    blocked = any(t.get("effect") in ("NoSchedule", "NoExecute") for t in taints)
    return ready and not blocked and not node.get("spec", {}).get("unschedulable")


class ClusterStory(Narrator):
    def __init__(
        self,
        console: Console,
        kube: Kube,
        install: Install,
        *,
        real_threads: bool = False,
        budget_timeout: float = 120.0,
    ) -> None:
        super().__init__(console, f"cellguard-demo-{secrets.token_hex(3)}")
        self.kube = kube
        self.install = install
        self.real_threads = real_threads
        self.budget_timeout = budget_timeout
        self.policy = self.namespace
        self.policy_spec = ThreadBudgetPolicySpec.model_validate(POLICY_SPEC)
        self.created: list[str] = []  # what cleanup() removes, for the final report
        self.model: Model | None = None
        self.hostname = ""

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.kube.kubectl(*args, stdin=stdin)

    # ------------------------------------------------------------------ the nodes' budgets

    def budgets(self) -> list[tuple[NodeLimits, dict[str, Any]]]:
        """Schedulable nodes whose agent reported a fresh, complete budget."""
        reported = {b["metadata"]["name"]: b for b in self.kube.items("nodebudgets")}
        now = datetime.now(UTC)
        found = []
        for node in self.kube.items("nodes"):
            name = node["metadata"]["name"]
            if name not in reported or not _schedulable(node):
                continue
            try:
                spec = NodeBudgetSpec.model_validate(reported[name]["spec"])
            except ValidationError:
                continue
            limits = node_limits(name, spec, self.policy_spec, now)
            if limits.status is BudgetStatus.KNOWN and limits.usable:
                found.append((limits, node))
        return found

    def wait_budgets(self) -> list[tuple[NodeLimits, dict[str, Any]]]:
        with self.console.status("waiting for the nodes' agents to report their budgets ..."):
            deadline = time.monotonic() + self.budget_timeout
            while not (found := self.budgets()):
                if time.monotonic() > deadline:
                    raise Refusal(
                        f"no schedulable node has a fresh NodeBudget after "
                        f"{self.budget_timeout:.0f} s: cellguard's agent DaemonSet reports them "
                        f"(kubectl get daemonsets,pods -n {self.install.namespace}; kubectl get "
                        "nodebudgets). Without budgets every scale-up is refused."
                    )
                time.sleep(2)
        return found

    def budgets_table(self, found: list[tuple[NodeLimits, dict[str, Any]]]) -> None:
        table = Table(
            "node", "limit", "allowed (less 20%)", "in use", "pod PID limit",
            title="NodeBudgets, as the nodes' agents read them",
        )  # fmt: skip
        for limits, _node in sorted(found, key=lambda f: f[0].node):
            table.add_row(
                limits.node,
                f"{limits.limit:,} ({limits.limit_source})",
                f"{limits.allowed:,}",
                f"{limits.observed:,}",
                "-" if limits.pod_pids_limit is None else f"{limits.pod_pids_limit:,}",
            )
        self.console.print(table)

    # ------------------------------------------------------------------ set-up and clean-up

    def prepare(self) -> None:
        namespace: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": self.namespace, "labels": DEMO_LABELS},
        }
        policy: dict[str, Any] = {
            "apiVersion": "cellguard.io/v1alpha1",
            "kind": "ThreadBudgetPolicy",
            "metadata": {"name": self.policy, "labels": DEMO_LABELS},
            "spec": POLICY_SPEC,
        }
        for manifest, what in ((namespace, "namespace"), (policy, "threadbudgetpolicy")):
            result = self.kube.kubectl("create", "-f", "-", stdin=yaml.safe_dump(manifest))
            if result.returncode != 0:
                raise DemoFailure(f"creating the demo's {what}: {result.stderr.strip()}")
            self.created.append(f"{what}/{manifest['metadata']['name']}")
        if self.real_threads:
            rbac = self.kube.apply(peer_rbac(self.namespace))
            if rbac.returncode != 0:
                raise DemoFailure(f"creating the servers' RBAC: {rbac.stderr.strip()}")

    def cleanup(self) -> list[str]:
        """Remove what prepare() and the story created; what was removed."""
        if f"namespace/{self.namespace}" in self.created:
            # The cells go with their namespace; the operator removes its finalizer from them.
            args = ("delete", "namespace", self.namespace, "--ignore-not-found", "--timeout=90s")
            if self.kube.kubectl(*args).returncode != 0:
                for cell in self.kube.items("streamcells", "-n", self.namespace):
                    self.kube.kubectl(
                        "patch", "streamcell", cell["metadata"]["name"], "-n", self.namespace,
                        "--type=merge", "-p", '{"metadata": {"finalizers": null}}',
                    )  # fmt: skip
                self.kube.kubectl(*args)
        if f"threadbudgetpolicy/{self.policy}" in self.created:
            self.kube.kubectl("delete", "threadbudgetpolicy", self.policy, "--ignore-not-found")
        key = pool_label_key(SERVICE)
        selector = f"{key}={pool_label_value(self.namespace, CELL)}"
        for node in self.kube.items("nodes", "-l", selector):
            self.kube.kubectl("label", "node", node["metadata"]["name"], f"{key}-")
        return self.created

    # ------------------------------------------------------------------ the story

    def cell(self, replicas: int) -> dict[str, Any]:
        assert self.model is not None
        return {
            "apiVersion": "cellguard.io/v1alpha1",
            "kind": "StreamCell",
            "metadata": {"name": CELL, "namespace": self.namespace},
            "spec": {
                "service": SERVICE,
                "replicas": replicas,
                "threads": {"base": self.model.base, "perPeer": self.model.per_peer},
                "policyRef": self.policy,
                "placement": {"nodeSelector": {HOSTNAME_LABEL: self.hostname}},
                "template": {"metadata": {"labels": {"app": SERVICE}}, "spec": self.pod_spec()},
            },
        }

    def pod_spec(self) -> dict[str, Any]:
        assert self.model is not None
        if self.real_threads:
            return peers_pod_spec(CELL, self.model.base, self.model.per_peer)
        image, pull_policy = self.operator_image()
        return {
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "server",
                    "image": image,
                    "imagePullPolicy": pull_policy,
                    "command": SLEEP,
                    "resources": {"requests": {"cpu": "1m", "memory": "16Mi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        }

    def operator_image(self) -> tuple[str, str]:
        """The running operator's image: one the nodes can pull (or have)."""
        selector = "app.kubernetes.io/component=operator"
        for pod in self.kube.items("pods", "-n", self.install.namespace, "-l", selector):
            container = pod["spec"]["containers"][0]
            return container["image"], container.get("imagePullPolicy", "IfNotPresent")
        raise Refusal(
            f"no operator pod in {self.install.namespace}: the demo runs its cell's pods from "
            "the operator's image (an operator outside the cluster is not supported here)"
        )

    def run(self) -> None:
        found = self.wait_budgets()
        self.budgets_table(found)
        limits, node = min(found, key=lambda f: (f[0].pod_pids_limit or 1 << 62, f[0].allowed))
        try:
            model = self.model = size_model(limits, MARGIN, real_threads=self.real_threads)
        except SizingError as error:
            raise Refusal(str(error)) from None
        self.hostname = node["metadata"].get("labels", {}).get(HOSTNAME_LABEL, limits.node)
        sizes = model.sizes
        self.prepare()

        per_pod = (
            f"{model.pod_allowed:,} threads a pod (the kubelet's podPidsLimit "
            f"{limits.pod_pids_limit:,} less the 20% margin)"
            if model.pod_allowed is not None
            else "no per-pod limit"
        )
        self.say(
            f"1. A cell sized to node {limits.node}",
            f"Node {limits.node} allows {per_pod}, and {model.node_room:,} more threads on the "
            f"node ({limits.limit_source} {limits.limit:,} less 20% = {limits.allowed:,}, "
            f"{limits.observed:,} in use). So the demo cell {CELL} holds {model.base:,} threads "
            f"plus {model.per_peer:,} per peer: {sizes.admitted} replicas fit "
            f"and {sizes.replay} do not ({model.binding(sizes.replay)}). "
            + (
                "Its servers hold those threads for real (cellguard-peers)."
                if self.real_threads
                else "Its pods only sleep: the operator budgets the model, so nothing on this "
                "cluster is pushed near a limit."
            ),
        )
        table = Table("replicas", "threads per pod", "threads on the node", "fits", title=CELL)
        for replicas in (sizes.start, sizes.admitted, sizes.replay):
            threads = model.threads(replicas)
            fits = "yes" if model.fits(replicas) else "NO"
            table.add_row(str(replicas), f"{threads:,}", f"{replicas * threads:,}", fits)
        self.console.print(table)
        self.create_cell(sizes.start)
        self.wait_pods(sizes.start)
        self.wait_status(CELL)
        self.cells_table()

        self.say(
            "2. A safe scale-up is admitted",
            f"{sizes.start} -> {sizes.admitted} replicas: every pod now holds "
            f"{model.threads(sizes.admitted):,} threads, within the node's allowance.",
        )
        if self.scale(CELL, sizes.admitted).returncode:
            raise DemoFailure(f"the safe scale-up {sizes.start} -> {sizes.admitted} was refused")
        self.wait_pods(sizes.admitted)

        self.say(
            "3. The Kinesis replay: a small capacity add is refused",
            f"{sizes.admitted} -> {sizes.replay} replicas adds {sizes.replay - sizes.admitted} "
            f"servers - and {model.per_peer * (sizes.replay - sizes.admitted):,} threads to "
            f"EVERY server, {model.threads(sizes.replay):,} each. cellguard refuses it before "
            "a single pod starts, naming the node, the figure and the limit:",
        )
        refused = self.scale(CELL, sizes.replay)
        if refused.returncode == 0 or "denied the request" not in refused.stderr:
            raise DemoFailure(f"the unsafe scale-up to {sizes.replay} was not refused")
        if limits.node not in refused.stderr:
            raise DemoFailure(f"the refusal does not name node {limits.node}")
        if self.running(CELL) != sizes.admitted:
            raise DemoFailure("a refused scale-up changed the running pods")
        self.console.print(
            f"[bold]refused at {sizes.replay} replicas[/]: {model.threads(sizes.replay):,} "
            f"threads per pod, {sizes.replay * model.threads(sizes.replay):,} on node "
            f"{limits.node}",
            highlight=False,
        )
        self.show_metrics(limits.node)

    def create_cell(self, replicas: int) -> None:
        """Create the cell; until the operator has seen the new policy (or its webhook has an
        endpoint) the answer may be "not yet" for a few seconds."""
        manifest = yaml.safe_dump(self.cell(replicas))
        last: list[subprocess.CompletedProcess[str]] = []

        def created() -> bool:
            result = self.kubectl("create", "-f", "-", stdin=manifest)
            last[:] = [result]
            if result.returncode != 0 and not any(s in result.stderr for s in NOT_YET):
                raise DemoFailure(f"creating {CELL} was refused: {result.stderr.strip()}")
            return result.returncode == 0

        with self.console.status("creating the cell (the operator may still be starting) ..."):
            wait_for(created, what=f"{CELL} to be admitted", timeout=120, interval=2,
                     error=DemoFailure)  # fmt: skip
        self.show(f"kubectl create -f {CELL}.yaml  # {replicas} replicas", last[0])

    def wait_pods(self, replicas: int) -> None:
        self.wait_running(CELL, replicas, timeout=180)
        if not self.real_threads:
            return
        assert self.model is not None
        line = holding_line(self.model.base, self.model.per_peer, replicas)

        def holding() -> bool:
            for pod in self.pods(CELL):
                logs = self.kubectl("logs", "-n", self.namespace, pod["metadata"]["name"])
                if line not in logs.stdout:
                    return False
            return True

        with self.console.status(f"waiting for every server to hold its threads ({line}) ..."):
            wait_for(holding, what=line, timeout=120, interval=1.0, error=DemoFailure)
        self.console.print(f"each of the {replicas} servers: cellguard-peers: {line}")

    # ------------------------------------------------------------------ metrics

    def show_metrics(self, node: str) -> None:
        """The operator's own /metrics, through `kubectl port-forward` to the leader's pod:
        an existing cluster need not run Prometheus for the demo."""
        lines = self.operator_metrics()
        if lines is None:
            self.say(
                "4. Where to see the metrics",
                f"The operator serves them at :8080/metrics (kubectl port-forward -n "
                f"{self.install.namespace} svc/cellguard-metrics 8080; the chart's "
                "ServiceMonitor, alert rules and Grafana dashboard are for your Prometheus).",
            )
            return
        wanted = [
            line
            for line in lines
            if f'namespace="{self.namespace}"' in line
            or (line.startswith("cellguard_node_") and f'node="{node}"' in line)
            or line.startswith("cellguard_decisions_total{")
        ]
        self.say(
            "4. The operator's metrics",
            "Read from the leader's /metrics through kubectl port-forward (what Prometheus "
            "scrapes; the chart's ServiceMonitor and alert rules use the same figures):",
        )
        self.console.print("\n".join(sorted(wanted)), highlight=False, soft_wrap=True)

    def operator_metrics(self) -> list[str] | None:
        selector = "app.kubernetes.io/component=operator,cellguard.io/leader=true"
        leaders = self.kube.items("pods", "-n", self.install.namespace, "-l", selector)
        ports = [
            p["containerPort"]
            for pod in leaders[:1]
            for c in pod["spec"]["containers"]
            for p in c.get("ports", [])
            if p.get("name") == "metrics"
        ]
        if not ports:
            return None
        forward = subprocess.Popen(
            self.kube.kubectl_command(
                "port-forward", "-n", self.install.namespace,
                f"pod/{leaders[0]['metadata']['name']}", f":{ports[0]}",
            ),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        try:
            assert forward.stdout is not None
            readable, _, _ = select.select([forward.stdout], [], [], 20)
            match = re.search(r"127\.0\.0\.1:(\d+)", forward.stdout.readline() if readable else "")
            if match is None:
                return None
            url = f"http://127.0.0.1:{match.group(1)}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                return str(response.read().decode()).splitlines()
        except OSError:
            return None
        finally:
            forward.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                forward.wait(timeout=5)

    # ------------------------------------------------------------------ without the guard

    def replay_without_guard(self) -> None:
        """The same growth with cellguard switched off: the servers hold their threads for
        real, so past the kubelet's podPidsLimit every one of them fails - the old ones too."""
        assert self.model is not None and self.real_threads
        sizes, namespace = self.model.sizes, self.install.namespace
        self.say(
            "5. And without the guard?",
            "The operator is scaled to 0 and its webhook removed - a cluster without cellguard. "
            f"The cell's Deployment is scaled {sizes.admitted} -> {sizes.replay} directly: "
            f"every server wants {self.model.threads(sizes.replay):,} threads, past the "
            "kernel's per-pod limit.",
        )
        original = {p["metadata"]["name"] for p in self.pods(CELL)}
        for args in (
            ("scale", "deployment", "-n", namespace, "-l", "app.kubernetes.io/component=operator",
             "--replicas=0"),
            ("delete", "validatingwebhookconfiguration", "-l",
             "app.kubernetes.io/component=webhook", "--ignore-not-found"),
        ):  # fmt: skip
            result = self.kubectl(*args)
            self.show(f"kubectl {' '.join(args)}", result)
            if result.returncode:
                raise DemoFailure(f"could not switch the guard off: {result.stderr.strip()}")
        # A stopping operator still reconciles: it would scale the cell's Deployment back.
        with self.console.status("waiting for the operator's pods to be gone ..."):
            gone = self.kubectl(
                "wait", "--for=delete", "pod", "-n", namespace, "-l",
                "app.kubernetes.io/component=operator", "--timeout=90s",
            )  # fmt: skip
        if gone.returncode != 0 and "no matching resources" not in gone.stderr:
            raise DemoFailure(f"the operator did not stop: {gone.stderr.strip()}")
        args = ("scale", f"deployment/{CELL}", "-n", self.namespace, f"--replicas={sizes.replay}")
        result = self.kubectl(*args)
        self.show(f"kubectl {' '.join(args)}", result)
        if result.returncode:
            raise DemoFailure(f"the unguarded scale-up failed: {result.stderr.strip()}")

        with self.console.status("waiting for the servers to run out of threads ..."):
            wait_for(
                lambda: all_restarted(self.pods(CELL), original),
                what="every original server to fail",
                timeout=150,
                interval=1.0,
                error=DemoFailure,
            )
        table = Table("pod", "restarts", "last exit code", title=f"{CELL} without the guard")
        for pod in sorted(self.pods(CELL), key=lambda p: p["metadata"]["name"]):
            name = pod["metadata"]["name"]
            code = last_exit_code(pod)
            mark = " (was running)" if name in original else ""
            table.add_row(name + mark, str(restarts([pod])), "-" if code is None else str(code))
        self.console.print(table)

        def previous(name: str) -> str:
            return self.kubectl("logs", "-n", self.namespace, name, "--previous").stdout

        logs = wait_for(lambda: crash_log(previous, original), what="a server's crash log",
                        timeout=60, interval=1.0, error=DemoFailure)  # fmt: skip
        said = thread_failure_lines(logs)
        self.console.print(
            f"[bold red]every one of the {len(original)} running servers failed[/] "
            f"(EAGAIN at the pod's pids.max) and restarted: {' / '.join(said)}",
            highlight=False,
        )
