"""Thread-model truth on the real control plane (issue 18): a cell whose pods hold 50% more
threads than its declared model. The node agents run as real processes on kwok nodes and
read a fixture cgroup tree per node, written from the cell's real pods (their UIDs and
nodes) - kwok pods hold no threads; the real-node test does the same with real ones.

The cell declares base 100 + 10 a peer; its pods really hold base 150 + 15 a peer. Seen:
- ThreadModelAccurate turns False with both figures, the alert fires in a real Prometheus;
- a scale-up the declared model admits is refused, naming the observed figure;
- after two sizes, `kubectl cellguard fit` recovers base 150 and perPeer 15 (within 5%).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.processes import AgentOptions, AgentProcess

from .harness import (
    OperatorProcess,
    apply_admitted,
    cell,
    cell_manifest,
    condition,
    ensure_namespace,
    node_pool,
    running_pods,
    wait_cell_pods,
    wait_for,
)
from .test_prometheus import Prometheus, prometheus  # noqa: F401 - the fixture

pytestmark = pytest.mark.e2e

NS = "e2e-threads"
CELL = "feed"
DECLARED = (100, 10)  # spec.threads: base, perPeer
TRUE = (150, 15)  # what the pods really hold: 1.5 times the model at every size
PID_MAX = 4_000  # less 20% margin: 3,200 threads a node may be projected to
IN_USE = 500  # the node's tasks, as its loadavg says
WAIT = 90.0


def true_threads(replicas: int) -> int:
    base, per_peer = TRUE
    return base + per_peer * (replicas - 1)


def write_host(root: Path, pods: dict[str, int]) -> None:
    """A node's /proc and /sys as the agent reads them: kernel limits, loadavg, a v2
    cgroupfs kubepods cgroup with one burstable pod cgroup per (pod UID -> threads)."""
    for relative, content in {
        "proc/sys/kernel/threads-max": "126544\n",
        "proc/sys/kernel/pid_max": f"{PID_MAX}\n",
        "proc/loadavg": f"0.10 0.10 0.10 2/{IN_USE} 4242\n",
        "sys/fs/cgroup/cgroup.controllers": "cpu memory pids\n",
        "sys/fs/cgroup/kubepods/pids.max": "max\n",
        "sys/fs/cgroup/kubepods/pids.current": f"{sum(pods.values())}\n",
    }.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    burstable = root / "sys/fs/cgroup/kubepods/burstable"
    if burstable.exists():
        shutil.rmtree(burstable)  # pods that are gone
    for uid, threads in pods.items():
        pod_dir = burstable / f"pod{uid}"
        pod_dir.mkdir(parents=True)
        (pod_dir / "pids.current").write_text(f"{threads}\n")


def hold_threads(cluster: LocalCluster, roots: dict[str, Path], replicas: int) -> None:
    """Every running pod of the cell holds what the true model says at `replicas`."""
    by_node: dict[str, dict[str, int]] = {node: {} for node in roots}
    for pod in running_pods(cluster, NS, CELL):
        by_node[pod["spec"]["nodeName"]][pod["metadata"]["uid"]] = true_threads(replicas)
    for node, pods in by_node.items():
        write_host(roots[node], pods)


def settle(cluster: LocalCluster, roots: dict[str, Path], replicas: int) -> dict[str, Any]:
    """The cell at `replicas`, its pods holding their true threads, and its status once the
    operator has recorded a sample at that size."""
    wait_cell_pods(cluster, NS, CELL, replicas)
    hold_threads(cluster, roots, replicas)

    def sampled() -> dict[str, Any] | None:
        status = cell(cluster, NS, CELL).get("status", {})
        sizes = {s["replicas"]: s["threadsPerPod"] for s in status.get("threadSamples", [])}
        return status if sizes.get(replicas) == true_threads(replicas) else None

    return wait_for(sampled, timeout=WAIT, what=f"a thread sample at {replicas} replicas")


@pytest.fixture
def agents(cluster: LocalCluster, tmp_path: Path) -> Iterator[tuple[Any, dict[str, Path]]]:
    with node_pool(cluster, "threads", 2, budgets=False) as pool:
        roots = {node: tmp_path / node for node in pool.nodes}
        running = {}
        for node, root in roots.items():
            write_host(root, {})
            running[node] = AgentProcess(
                AgentOptions(
                    node_name=node,
                    kubeconfig=cluster.kubeconfig,
                    interval=1,
                    sys_root=root / "sys",
                    proc_root=root / "proc",
                ),
                cluster.workdir / f"agent-{node}.log",
            )
            running[node].start()
        try:
            yield pool, roots
        finally:
            for agent in running.values():
                agent.kill()  # before the pool goes: it would write its budget again


def fit(cluster: LocalCluster) -> dict[str, Any]:
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("cellguard")),
            "fit",
            f"streamcell/{CELL}",
            "-n",
            NS,
            f"--kubeconfig={cluster.kubeconfig}",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def test_a_wrong_thread_model_is_caught_budgeted_and_fitted(
    cluster: LocalCluster,
    operator: OperatorProcess,
    prometheus: Prometheus,  # noqa: F811
    agents: tuple[Any, dict[str, Path]],
) -> None:
    pool, roots = agents
    ensure_namespace(cluster, NS)
    base, per_peer = DECLARED
    manifest = cell_manifest(
        NS,
        CELL,
        service=CELL,
        replicas=2,
        base=base,
        per_peer=per_peer,
        pool=pool,
        isolation="Shared",
    )
    try:
        apply_admitted(cluster, manifest)  # once the agents' first reports are in
        status = settle(cluster, roots, 2)

        # Caught: the condition names both figures.
        accurate = condition(cell(cluster, NS, CELL), "ThreadModelAccurate")
        assert accurate is not None and accurate["status"] == "False", accurate
        assert accurate["reason"] == "ObservedExceedsModel"
        assert (
            "hold up to 165 threads each at 2 replicas; spec.threads says 110"
            in (accurate["message"])
        )
        assert status["threadsObservedPerPod"] == 165
        assert status["threadsPerPod"] == 165  # budgeted: what the pods hold

        # ... and alerted on, in a real Prometheus (the rules' `for:` set to 0s).
        series = f'cellguard_cell_thread_model_accurate{{namespace="{NS}",cell="{CELL}"}}'
        wait_for(lambda: prometheus.value(series) == 0, timeout=WAIT, what=series)
        firing = wait_for(
            lambda: [
                a
                for a in prometheus.alerts("CellguardThreadModelWrong")
                if a["labels"].get("cell") == CELL and a["state"] == "firing"
            ],
            timeout=WAIT,
            what="CellguardThreadModelWrong to fire",
        )
        assert "hold up to 165 threads each where spec.threads says 110" in " ".join(
            firing[0]["annotations"]["description"].split()
        )

        # A second size: 4 replicas, two pods a node.
        scaled = cluster.kubectl("scale", f"streamcell/{CELL}", "-n", NS, "--replicas=4")
        assert scaled.returncode == 0, scaled.stderr
        status = settle(cluster, roots, 4)
        assert status["threadModelFit"] == {
            "base": 150.0,
            "perPeer": 15.0,
            "residual": 0.0,
            "sizes": 2,
        }

        # Budgeted: at 20 replicas the model's 10 pods a node of 290 threads fit (3,140 of
        # 3,200); the pods' real 435 each (1.5 times) would put a node at 4,460.
        refused = cluster.kubectl(
            "scale", f"streamcell/{CELL}", "-n", NS, "--replicas=20", check=False
        )
        assert refused.returncode != 0
        message = " ".join(refused.stderr.split())
        assert f"scaling {NS}/{CELL} from 4 to 20 replicas would put node threads-" in message
        assert "observed holding up to 195 threads each at 4 replicas" in message
        assert "spec.threads says 130" in message
        assert len(running_pods(cluster, NS, CELL)) == 4  # nothing touched

        # Fitted: the CLI recovers the true model within 5%.
        found = fit(cluster)
        assert found["fit"]["base"] == pytest.approx(TRUE[0], rel=0.05)
        assert found["fit"]["perPeer"] == pytest.approx(TRUE[1], rel=0.05)
        assert found["suggested"] == {"base": 150, "perPeer": 15}
    finally:
        cluster.kubectl("delete", "streamcell", CELL, "-n", NS, "--wait=true", check=False)
