"""The Helm chart installed for real, on the real node, with the image built from the Dockerfile.

The image is built by buildah on a local Debian Python base (`cellguard.devcluster.images`)
and imported into the real node's containerd; the chart runs in its normal in-cluster mode:
the webhook behind its Service (the API server calls the Service's endpoint, the leader's
pod IP), the operator and the agent reaching the API server at the `kubernetes` Service's
ClusterIP through kube-proxy, `imagePullPolicy: Never`. On it:

- the operator pod becomes Ready (the leader) and refuses a StreamCell scale-up through the
  webhook, naming the node, the figure and the limit;
- the agent pod reads the host's /proc and kubepods cgroup (hostPath) and the kubelet's
  configuration: its NodeBudget holds what this test reads from the host;
- `helm test` runs its pod and passes;
- every running pod meets the `restricted` Pod Security level, the agent failing it only
  for its read-only hostPath volumes and the host's PID namespace (the API server's own
  check).

And the Kinesis failure with real threads (`/peers` in the test image: base + perPeer
threads for every other endpoint of its headless Service): a Deployment scaled past the
kubelet's podPidsLimit loses every server ("failed to create new OS thread", EAGAIN); the
same fleet as a StreamCell is refused, naming the node, the figure and the limit, and
nothing restarts.

It prints what it measures (install to Ready, RSS and CPU); docs/benchmarks.md records them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cellguard import __version__
from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.fleet import (
    all_restarted,
    crash_log,
    holding_line,
    import_cellguard_images,
    last_exit_code,
    peer_rbac,
    peers_pod_spec,
    real_node_chart_values,
    thread_failure_lines,
)
from cellguard.devcluster.fleet import is_ready as _ready
from cellguard.devcluster.fleet import restarts as _restarts
from cellguard.devcluster.images import BuiltImage, supports_image_build
from cellguard.devcluster.realnode import (
    CGROUP_ROOT,
    REAL_NODE_LABEL,
    TEST_IMAGE,
    RealNode,
)
from cellguard.devcluster.waiting import wait_for
from helm_support import CHART, Helm

pytestmark = pytest.mark.e2e

RELEASE = "cellguard"
LEADER_LABEL = "cellguard.io/leader"
NAMESPACE = "cellguard-system"
CELLS = "streams-real"
CELLGUARD_CRDS = (
    "streamcells.cellguard.io",
    "threadbudgetpolicies.cellguard.io",
    "nodebudgets.cellguard.io",
)


@dataclass
class Release:
    node: RealNode
    helm: Helm
    images: tuple[BuiltImage, BuiltImage]
    install_seconds: float  # `helm install --wait` (hooks included)
    ready_seconds: float  # from `helm install` to the leader Ready and the node's budget

    @property
    def cluster(self) -> LocalCluster:
        return self.node.cluster

    def get(self, *args: str) -> Any:
        return json.loads(self.cluster.kubectl("get", *args, "-o", "json").stdout)

    def pods(self, component: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component={component}"
        items: list[dict[str, Any]] = self.get("pods", "-n", NAMESPACE, "-l", selector)["items"]
        return items


def _leader(release: Release) -> dict[str, Any] | None:
    """The operator pod labelled the leader, once it is Ready (caches synced)."""
    leaders = [
        p
        for p in release.pods("operator")
        if p["metadata"].get("labels", {}).get(LEADER_LABEL) == "true" and _ready(p)
    ]
    return leaders[0] if len(leaders) == 1 else None


def _webhook_endpoints(release: Release) -> set[str]:
    slices = release.get(
        "endpointslices", "-n", NAMESPACE, "-l", "kubernetes.io/service-name=cellguard-webhook"
    )["items"]
    return {
        a for s in slices for e in s.get("endpoints") or [] if e["conditions"].get("ready")
        for a in e["addresses"]
    }  # fmt: skip


def _real_cell(
    name: str,
    namespace: str,
    service: str,
    *,
    replicas: int,
    threads: tuple[int, int],
    pod: dict[str, Any],
) -> dict[str, Any]:
    """A StreamCell placed on the real node: (base, perPeer) threads, `pod` its pod spec."""
    base, per_peer = threads
    return {
        "apiVersion": "cellguard.io/v1alpha1",
        "kind": "StreamCell",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "service": service,
            "replicas": replicas,
            "threads": {"base": base, "perPeer": per_peer},
            "placement": {"nodeSelector": {REAL_NODE_LABEL: "true"}},
            "template": {"spec": pod},
        },
    }


def _uninstall(cluster: LocalCluster, helm: Helm) -> None:
    """Everything the release and the tests made, including what the chart keeps. The cells
    go first, while the operator still runs to remove its finalizer from them."""
    cluster.kubectl(
        "delete", "namespace", CELLS, "--ignore-not-found", "--timeout=60s",
        check=False, timeout=90,
    )  # fmt: skip
    left = cluster.kubectl("get", "streamcells", "-A", "-o", "json", check=False)
    cells = json.loads(left.stdout)["items"] if left.returncode == 0 else []
    for cell in cells:
        cluster.kubectl(
            "patch", "streamcell", cell["metadata"]["name"], "-n", cell["metadata"]["namespace"],
            "--type=merge", "-p", '{"metadata": {"finalizers": null}}', check=False,
        )  # fmt: skip
    helm.run("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout=120s", check=False)
    cluster.kubectl(
        "delete", "namespace", NAMESPACE, CELLS, "--ignore-not-found", "--timeout=120s",
        check=False, timeout=150,
    )  # fmt: skip
    cluster.kubectl(
        "delete", "validatingwebhookconfiguration", RELEASE, "--ignore-not-found", check=False
    )
    cluster.kubectl(
        "delete", "crd", *CELLGUARD_CRDS, "--ignore-not-found", "--timeout=60s", check=False
    )


@pytest.fixture(scope="module")
def release(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    reason = supports_image_build()
    if reason is not None:
        pytest.skip(f"cannot build the image here: {reason}")
    cluster = real_node.cluster
    cellguard, kubectl = import_cellguard_images(real_node, progress=lambda m: print(m, flush=True))
    helm = Helm(cluster.bin_dir / "helm", kubeconfig=cluster.kubeconfig)
    values = tmp_path_factory.mktemp("real-install") / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                **real_node_chart_values(real_node, (cellguard, kubectl)),
                "tests": {"namespace": CELLS},
            }
        )
    )
    cluster.kubectl("create", "namespace", CELLS)
    started = time.monotonic()
    try:
        helm.run(
            "install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace",
            "-f", str(values), "--wait", "--timeout=300s", timeout=330,
        )  # fmt: skip
        installed = time.monotonic() - started
        state = Release(real_node, helm, (cellguard, kubectl), installed, 0.0)

        def ready() -> bool:
            budget = cluster.kubectl("get", "nodebudget", real_node.name, check=False)
            return _leader(state) is not None and budget.returncode == 0

        wait_for(ready, timeout=180, what="the operator leader Ready and the node's budget")
        state.ready_seconds = time.monotonic() - started
        print(
            f"helm install --wait: {installed:.1f} s; install to leader Ready with the "
            f"node's budget: {state.ready_seconds:.1f} s",
            flush=True,
        )
        yield state
    except BaseException:
        print(cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout)
        for component in ("operator", "agent"):
            selector = f"app.kubernetes.io/component={component}"
            logs = cluster.kubectl(
                "logs", "-n", NAMESPACE, "--tail=40", "--prefix", "-l", selector, check=False
            )
            print(logs.stdout)
        raise
    finally:
        _uninstall(cluster, helm)


def test_the_operator_in_its_pod_refuses_an_unsafe_scale_up(release: Release) -> None:
    cluster, node = release.cluster, release.node
    operators = release.pods("operator")
    states = {p["metadata"]["name"]: (p["status"].get("phase"), _ready(p)) for p in operators}
    assert len(operators) == 2, states  # the chart's default: a leader and a standby
    assert all(_ready(p) for p in operators), states  # both: the Deployment is healthy
    leader = _leader(release)
    assert leader is not None, states
    lease = release.get("lease", "-n", NAMESPACE, "cellguard-operator")
    assert lease["spec"]["holderIdentity"] == leader["metadata"]["name"]
    assert {p["spec"]["nodeName"] for p in operators} == {node.name}
    # The webhook is the Service's: its one endpoint is the leader's pod IP.
    assert _webhook_endpoints(release) == {leader["status"]["podIP"]}
    webhooks = release.get("validatingwebhookconfiguration", "cellguard")["webhooks"]
    assert all("service" in w["clientConfig"] for w in webhooks)
    assert not any("url" in w["clientConfig"] for w in webhooks)

    # base 100 + perPeer 10: 100 threads a pod at 1 replica; at 20, 290 - more than the
    # kubelet's podPidsLimit (321) less the default policy's 20% margin (256).
    pod_spec = {
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "server", "image": TEST_IMAGE, "imagePullPolicy": "Never"}],
    }
    cell = _real_cell("ingest-real", CELLS, "ingest", replicas=1, threads=(100, 10), pod=pod_spec)
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(cell))

    def cell_pods_running() -> bool:
        pods = release.get("pods", "-n", CELLS)["items"]
        return len(pods) == 1 and pods[0]["status"].get("phase") == "Running"

    wait_for(cell_pods_running, timeout=90, what="the cell's pod Running on the real node")
    before = _restarts(release.pods("operator")) + _restarts(release.pods("agent"))
    result = cluster.kubectl(
        "scale", "streamcell/ingest-real", "-n", CELLS, "--replicas=20", check=False
    )
    assert result.returncode != 0, result.stdout
    message = result.stderr
    assert 'admission webhook "validate-streamcell-scale.cellguard.io" denied' in message, message
    assert f"node {node.name}" in message, message
    assert "290 threads per pod" in message, message
    assert "321" in message, message
    print(f"refused through the in-cluster webhook: {message.strip()}")
    spec = release.get("streamcell", "-n", CELLS, "ingest-real")["spec"]
    assert spec["replicas"] == 1
    assert len(release.get("pods", "-n", CELLS)["items"]) == 1
    after = _restarts(release.pods("operator")) + _restarts(release.pods("agent"))
    assert after == before


def test_the_agent_pod_reports_the_host(release: Release) -> None:
    node = release.node
    agents = release.pods("agent")
    assert [p["spec"]["nodeName"] for p in agents] == [node.name]
    assert _ready(agents[0]) or agents[0]["status"]["phase"] == "Running"

    def fresh() -> dict[str, Any]:
        spec: dict[str, Any] = release.get("nodebudget", node.name)["spec"]
        return spec

    spec = fresh()
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    threads_max = int(Path("/proc/sys/kernel/threads-max").read_text())
    kubepods = CGROUP_ROOT / "pids" / "kubepods"
    assert spec["threadsMax"] == threads_max
    assert spec["pidMax"] == pid_max
    assert spec["kubepods"]["cgroupVersion"] == "v1"
    assert spec["kubepods"]["path"].endswith("/fs/cgroup/pids/kubepods")
    assert spec["kubepods"]["max"] == int((kubepods / "pids.max").read_text())
    reserved = node.config.system_reserved_pids or 0
    assert spec["kubepods"]["max"] == pid_max - reserved
    # podPidsLimit from the kubelet's own configuration file, mounted from the host.
    kubelet = yaml.safe_load((node.workdir / "kubelet-config.yaml").read_text())
    assert spec["podPidsLimit"] == kubelet["podPidsLimit"] == node.config.pod_pids_limit
    assert spec.get("errors", []) == [], spec.get("errors")
    assert spec["agentVersion"] == __version__
    # Threads in use: the host's, not a container's view (pids.current counts the pods).
    assert spec["threadsInUse"] > int((kubepods / "pids.current").read_text())
    uids = {p["metadata"]["uid"] for p in release.pods("operator")}
    reported = {p["uid"] for p in spec.get("pods", [])}
    assert uids <= reported, (uids, reported)


def test_helm_test_passes(release: Release) -> None:
    result = release.helm.run(
        "test", RELEASE, "-n", NAMESPACE, "--logs", "--timeout=120s", check=False, timeout=150
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS: cellguard's webhook refused the oversized StreamCell" in result.stdout


def test_running_pods_meet_the_restricted_level(release: Release) -> None:
    """The API server checks the pods that run against `restricted` (a dry-run label of the
    namespace): only the agent, for its hostPath volumes and hostPID, falls short."""
    result = release.cluster.kubectl(
        "label", "--dry-run=server", "--overwrite", "namespace", NAMESPACE,
        "pod-security.kubernetes.io/enforce=restricted",
    )  # fmt: skip
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    agents = {p["metadata"]["name"] for p in release.pods("agent")}
    running = {
        p["metadata"]["name"]
        for p in release.get("pods", "-n", NAMESPACE)["items"]
        if p["status"].get("phase") == "Running"
    }
    assert agents and agents < running
    offenders = [w for w in warnings if "existing pods in namespace" not in w]
    assert len(offenders) == 1, result.stderr
    name, violations = offenders[0].removeprefix("Warning: ").split(": ", 1)
    assert name in agents, result.stderr
    # The namespace check names the checks a pod fails (the pod's own admission spells them
    # out: tests/e2e/test_helm_chart.py).
    assert violations == "host namespaces, restricted volume types", violations


def _pod_processes(node: RealNode, pod: dict[str, Any]) -> list[int]:
    """The pod's processes but the sandbox's pause."""
    cgroup = node.pod_cgroup(pod["metadata"]["uid"])
    assert cgroup is not None
    pids = []
    for procs in cgroup.rglob("cgroup.procs"):
        for pid in procs.read_text().split():
            with contextlib.suppress(OSError):
                if b"pause" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(int(pid))
    return pids


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def _cpu_seconds(node: RealNode, pod: dict[str, Any]) -> float:
    cgroup = node.pod_cgroup(pod["metadata"]["uid"], controller="cpuacct")
    assert cgroup is not None
    return int((cgroup / "cpuacct.usage").read_text()) / 1e9


def test_footprint(release: Release) -> None:
    """RSS of the operator pods and the agent, CPU over 20 s (the agent reports 4 times)."""
    node = release.node
    agent = release.pods("agent")[0]
    operators = release.pods("operator")
    leader = next(p for p in operators if _ready(p))
    standby = [p for p in operators if p is not leader]
    cpu = {id(p): _cpu_seconds(node, p) for p in (agent, leader)}
    window = 20.0
    time.sleep(window)
    agent_cpu = (_cpu_seconds(node, agent) - cpu[id(agent)]) / window
    leader_cpu = (_cpu_seconds(node, leader) - cpu[id(leader)]) / window
    agent_rss = _rss_mb(_pod_processes(node, agent))
    leader_rss = _rss_mb(_pod_processes(node, leader))
    figures: dict[str, object] = {
        "image_mb": release.images[0].size_bytes / 1e6,
        "install_s": release.install_seconds,
        "install_to_ready_s": release.ready_seconds,
        "operator_leader_rss_mb": leader_rss,
        "operator_standby_rss_mb": [_rss_mb(_pod_processes(node, p)) for p in standby],
        "operator_leader_cpu_cores": leader_cpu,
        "agent_rss_mb": agent_rss,
        "agent_cpu_cores": agent_cpu,
        "agent_interval_s": 5,
    }
    print("real node footprint: " + json.dumps(figures, indent=1))
    assert 0 < agent_rss < 128  # under its memory limit
    assert 0 < leader_rss < 512
    out = os.environ.get("CELLGUARD_REAL_INSTALL_RESULTS")
    if out:
        Path(out).write_text(json.dumps(figures, indent=2))


# --------------------------------------------------------------------------- Kinesis, for real

# cellguard-peers holds BASE + PER_PEER threads for every other endpoint of its Service. At 8
# replicas: 100 + 20 * 7 = 240 threads a pod, within the kubelet's podPidsLimit of 321; at
# 14: 360 - past it, for every member of the fleet at once.
FLEET_BASE, FLEET_PER_PEER, FLEET_SIZE, FLEET_GROWN = 100, 20, 8, 14


def _fleet_namespace(cluster: LocalCluster, namespace: str) -> None:
    """A namespace whose pods may list EndpointSlices (how cellguard-peers finds its fleet)."""
    cluster.kubectl("create", "namespace", namespace)
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(peer_rbac(namespace)))


def _fleet_pod_spec(service: str) -> dict[str, Any]:
    return peers_pod_spec(service, FLEET_BASE, FLEET_PER_PEER)


def _fleet_pods(release: Release, namespace: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = release.get("pods", "-n", namespace)["items"]
    return items


def _wait_fleet_holding(release: Release, namespace: str, count: int) -> list[dict[str, Any]]:
    """Until `count` pods run, each holding its threads for `count - 1` peers."""
    holding = holding_line(FLEET_BASE, FLEET_PER_PEER, count)

    def ready() -> list[dict[str, Any]] | None:
        pods = _fleet_pods(release, namespace)
        if len(pods) != count or any(p["status"].get("phase") != "Running" for p in pods):
            return None
        for pod in pods:
            logs = release.cluster.kubectl(
                "logs", "-n", namespace, pod["metadata"]["name"], check=False
            ).stdout
            if holding not in logs:
                return None
        return pods

    return wait_for(ready, timeout=120, interval=1, what=f"{count} pods {holding}")


def _drop_namespace(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl(
        "delete", "namespace", namespace, "--ignore-not-found", "--timeout=90s",
        check=False, timeout=120,
    )  # fmt: skip


def test_without_the_guard_growing_the_fleet_fails_every_server(release: Release) -> None:
    """The Kinesis failure with real threads: a Deployment of peers, scaled past what the
    kubelet's podPidsLimit allows, takes down every member, the old ones too."""
    cluster, namespace = release.cluster, "fleet-unguarded"
    _fleet_namespace(cluster, namespace)
    try:
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "frontend", "namespace": namespace},
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": {"app": "frontend"},
                "ports": [{"name": "peer", "port": 7000}],
            },
        }
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "frontend", "namespace": namespace},
            "spec": {
                "replicas": FLEET_SIZE,
                "selector": {"matchLabels": {"app": "frontend"}},
                "template": {
                    "metadata": {"labels": {"app": "frontend"}},
                    "spec": {
                        "nodeSelector": {REAL_NODE_LABEL: "true"},
                        **_fleet_pod_spec("frontend"),
                    },
                },
            },
        }
        cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all([service, deployment]))
        before = _wait_fleet_holding(release, namespace, FLEET_SIZE)
        original = {p["metadata"]["name"] for p in before}
        cluster.kubectl(
            "scale", "deployment/frontend", "-n", namespace, f"--replicas={FLEET_GROWN}"
        )

        wait_for(
            lambda: all_restarted(_fleet_pods(release, namespace), original),
            timeout=120, interval=1, what="every original server to fail",
        )  # fmt: skip
        # Each died as the Go runtime does when clone() fails: exit 2, "failed to create new
        # OS thread ... errno=11" (EAGAIN: the pod's pids.max).
        for pod in _fleet_pods(release, namespace):
            if pod["metadata"]["name"] in original:
                assert last_exit_code(pod) == 2, pod["status"]["containerStatuses"]

        def previous(name: str) -> str:
            return cluster.kubectl("logs", "-n", namespace, name, "--previous", check=False).stdout

        logs = wait_for(
            lambda: crash_log(previous, original), timeout=60, interval=1,
            what="a server's crash log",
        )  # fmt: skip
        assert "errno=11" in logs, logs[-2000:]
        said = thread_failure_lines(logs)
        print(f"without the guard: all {len(original)} servers failed: {' / '.join(said)}")
    finally:
        _drop_namespace(cluster, namespace)


def test_with_the_guard_the_same_growth_is_refused(release: Release) -> None:
    """The same fleet as a StreamCell: the growth is refused naming the node, the figure and
    the limit, and nothing restarts."""
    cluster, namespace, node = release.cluster, "fleet-guarded", release.node
    _fleet_namespace(cluster, namespace)
    try:
        # The cell's headless Service is named after the cell.
        cell = _real_cell(
            "frontend", namespace, "frontend", replicas=FLEET_SIZE,
            threads=(FLEET_BASE, FLEET_PER_PEER), pod=_fleet_pod_spec("frontend"),
        )  # fmt: skip
        cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(cell))
        before = _wait_fleet_holding(release, namespace, FLEET_SIZE)
        result = cluster.kubectl(
            "scale", "streamcell/frontend", "-n", namespace, f"--replicas={FLEET_GROWN}",
            check=False,
        )  # fmt: skip
        assert result.returncode != 0, result.stdout
        message = result.stderr
        threads = FLEET_BASE + FLEET_PER_PEER * (FLEET_GROWN - 1)
        assert f"node {node.name}" in message, message
        # The model's figure - or more: the agent reads what the servers really hold (the Go
        # runtime's own threads too), and the planner budgets the larger (issue 18).
        needed = re.search(r"would need ([\d,]+) threads per pod", message)
        assert needed is not None, message
        assert int(needed.group(1).replace(",", "")) >= threads, message
        assert f"pod PID limit {node.config.pod_pids_limit}" in message, message
        print(f"with the guard: {message.strip()}")
        time.sleep(10)  # ten fleet polls: nothing changes
        after = _fleet_pods(release, namespace)
        assert {p["metadata"]["name"] for p in after} == {p["metadata"]["name"] for p in before}
        assert _restarts(after) == 0
        assert release.get("streamcell", "-n", namespace, "frontend")["spec"]["replicas"] == 8
    finally:
        _drop_namespace(cluster, namespace)


def test_every_replica_is_ready_and_the_webhook_follows_the_leader(release: Release) -> None:
    """Issue 17 item 1: both replicas Ready (rollout status, kstatus and Argo CD see a
    healthy Deployment), a drain may evict the leader, and when the leader's process dies
    the standby takes the Lease, labels its pod and the webhook decides again."""
    cluster, node = release.cluster, release.node
    rollout = cluster.kubectl(
        "rollout", "status", "deployment/cellguard-operator", "-n", NAMESPACE, "--timeout=60s"
    )
    assert "successfully rolled out" in rollout.stdout, rollout.stdout
    leader = _leader(release)
    assert leader is not None
    name = leader["metadata"]["name"]
    (standby,) = [p for p in release.pods("operator") if p["metadata"]["name"] != name]
    assert _ready(standby) and LEADER_LABEL not in standby["metadata"].get("labels", {})

    # The PDB lets a drain evict the leader (a dry-run eviction, as `kubectl drain` asks).
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "deleteOptions": {"dryRun": ["All"]},
    }
    evicted = cluster.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{NAMESPACE}/pods/{name}/eviction", "-f", "-",
        input_text=json.dumps(eviction), check=False,
    )  # fmt: skip
    assert evicted.returncode == 0, evicted.stderr

    # An oversized cell the webhook must refuse: the probe that it decides.
    oversized = _real_cell(
        "failover-probe", CELLS, "probe", replicas=40, threads=(100, 10),
        pod={"containers": [{"name": "c", "image": TEST_IMAGE}]},
    )  # fmt: skip

    def decided() -> bool:
        answer = cluster.kubectl(
            "apply", "--dry-run=server", "-f", "-", input_text=yaml.safe_dump(oversized),
            check=False,
        )  # fmt: skip
        return 'admission webhook "validate-streamcell.cellguard.io" denied' in answer.stderr

    assert decided()
    # The leader's process dies (not a graceful stop: the Lease is not released).
    for pid in _pod_processes(node, leader):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()

    def moved() -> bool:
        current = _leader(release)
        return (
            current is not None
            and current["metadata"]["name"] == standby["metadata"]["name"]
            and _webhook_endpoints(release) == {current["status"]["podIP"]}
            and decided()
        )

    try:
        wait_for(moved, timeout=90, what="the standby to lead and the webhook to decide again")
    except AssertionError as error:
        pods = {
            p["metadata"]["name"]: (p["metadata"].get("labels", {}).get(LEADER_LABEL), _ready(p))
            for p in release.pods("operator")
        }
        lease = release.get("lease", "-n", NAMESPACE, "cellguard-operator")["spec"]
        logs = cluster.kubectl(
            "logs", "-n", NAMESPACE, "--tail=30", "--prefix", "-l",
            "app.kubernetes.io/component=operator", check=False,
        ).stdout  # fmt: skip
        raise AssertionError(
            f"{error}: pods {pods}, lease {lease}, endpoints {_webhook_endpoints(release)}\n{logs}"
        ) from None
    failover = time.monotonic() - killed
    lease = release.get("lease", "-n", NAMESPACE, "cellguard-operator")
    assert lease["spec"]["holderIdentity"] == standby["metadata"]["name"]
    print(f"leader killed -> standby leads and the webhook decides: {failover:.1f} s")

    # The old leader's container restarts as a standby: its label is gone, both Ready again.
    def settled() -> bool:
        pods = {p["metadata"]["name"]: p for p in release.pods("operator")}
        old = pods.get(name)
        return (
            old is not None
            and _ready(old)
            and old["metadata"].get("labels", {}).get(LEADER_LABEL) is None
            and all(_ready(p) for p in pods.values())
        )

    wait_for(settled, timeout=120, what="the old leader back as a Ready standby")
