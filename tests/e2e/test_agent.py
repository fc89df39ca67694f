"""The node agent as real local processes: it reads this machine's /proc and /sys, writes
each node's NodeBudget into the real API server with least privilege, and the operator
decides on what the agents report (issue 6).

Every agent reads the same host, so every node of the pool reports this machine's figures;
what differs is which agent runs, and so which budget stays fresh.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.processes import AgentOptions, AgentProcess

from .harness import (
    OPERATOR_NAMESPACE,
    NodePool,
    OperatorProcess,
    apply_policy,
    apply_yaml,
    cell,
    cell_manifest,
    deployment_replicas,
    ensure_namespace,
    get_json,
    node_pool,
    wait_cell_pods,
    wait_for,
)

pytestmark = pytest.mark.e2e

AGENT_SA = "cellguard-agent"
AGENT_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{AGENT_SA}"
AGENT_ROLE = "cellguard-e2e-agent"
FAST_POLICY = "agent-fast"  # staleAfterSeconds 10, the smallest allowed
STALE_AFTER = 10
INTERVAL = 2

T = TypeVar("T")


def grant_agent_identity(cluster: LocalCluster) -> Path:
    """The agent's ServiceAccount with only what it needs, and a kubeconfig acting as it."""
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": AGENT_SA, "namespace": OPERATOR_NAMESPACE},
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": AGENT_ROLE},
                "rules": [
                    {
                        "apiGroups": ["cellguard.io"],
                        "resources": ["nodebudgets"],
                        "verbs": ["create", "patch", "get"],
                    },
                    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": AGENT_ROLE},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": AGENT_ROLE,
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": AGENT_SA, "namespace": OPERATOR_NAMESPACE}
                ],
            },
        ]
    )
    return cluster.user_kubeconfig(AGENT_USER, ("system:serviceaccounts",))


def can_i(cluster: LocalCluster, verb: str, resource: str) -> bool:
    result = cluster.kubectl(
        "auth",
        "can-i",
        verb,
        resource,
        f"--as={AGENT_USER}",
        "--as-group=system:serviceaccounts",
        check=False,
    )
    return result.stdout.strip() == "yes"


def read_host_int(path: str) -> int:
    return int(Path(path).read_text().strip())


def host_threads() -> int:
    """Threads on this machine counted another way than the agent (it reads /proc/loadavg):
    one /proc/<pid>/task/<tid> entry per thread."""
    total = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                total += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                continue  # exited meanwhile
    return total


def threads_agree(cluster: LocalCluster, node: str) -> tuple[int, int] | None:
    """(reported, counted) when the node's threadsInUse is within 10 % (+20) of a count of
    this machine's threads taken just after."""
    budget = nodebudget(cluster, node)
    assert budget is not None
    reported = int(budget["spec"]["threadsInUse"])
    counted = host_threads()
    return (reported, counted) if abs(reported - counted) <= 20 + counted // 10 else None


def nodebudget(cluster: LocalCluster, node: str) -> dict[str, Any] | None:
    result = cluster.kubectl(
        "get", "nodebudget", node, "-o", "json", "--show-managed-fields", check=False
    )
    if result.returncode != 0:
        assert "NotFound" in result.stderr, result.stderr
        return None
    budget: dict[str, Any] = json.loads(result.stdout)
    return budget


def agent_owned_budget(cluster: LocalCluster, node: str) -> dict[str, Any] | None:
    """The node's budget once the agent applied it with the Node as owner."""
    budget = nodebudget(cluster, node)
    if budget is None or not budget["metadata"].get("ownerReferences"):
        return None
    return budget


def scale(cluster: LocalCluster, ns: str, name: str, replicas: int, *extra: str) -> Any:
    return cluster.kubectl(
        "scale", f"streamcell/{name}", "-n", ns, f"--replicas={replicas}", *extra, check=False
    )


def wait_with_log(
    agent: AgentProcess, predicate: Callable[[], T | None], timeout: float, what: str
) -> T:
    """`wait_for`, with the agent's last words when it times out."""
    try:
        return wait_for(predicate, timeout=timeout, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nagent on {agent.node}:\n{agent.log_tail(20)}") from None


def node_cgroups(root: Path) -> Path:
    """A cgroup tree shaped like a Kubernetes node's (v2, systemd driver, unlimited kubepods).

    This host is not a Kubernetes node: it has no kubepods cgroup, and an unreadable
    kubepods pids.max makes a budget unknown (fail closed). The agents read their kubepods
    figures here; everything else (threads-max, pid_max, threads in use) from the real /proc.
    """
    cgroup = root / "fs" / "cgroup"
    (cgroup / "kubepods.slice").mkdir(parents=True)
    (cgroup / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (cgroup / "kubepods.slice" / "pids.max").write_text("max\n")
    (cgroup / "kubepods.slice" / "pids.current").write_text("42\n")
    return root


def test_agents_report_the_host_and_their_silence_refuses_scale_ups(
    cluster: LocalCluster, operator: OperatorProcess, tmp_path: Path
) -> None:
    ns = "e2e-agent"
    ensure_namespace(cluster, ns)
    apply_policy(cluster, name=FAST_POLICY, staleAfterSeconds=STALE_AFTER)
    kubeconfig = grant_agent_identity(cluster)
    # Least privilege: what the agent needs, and nothing that would let it hurt the cluster.
    assert can_i(cluster, "patch", "nodebudgets.cellguard.io")
    assert can_i(cluster, "get", "nodes")
    assert not can_i(cluster, "delete", "nodebudgets.cellguard.io")
    assert not can_i(cluster, "patch", "nodes")
    assert not can_i(cluster, "patch", "streamcells.cellguard.io")

    with node_pool(cluster, "agent", 3, budgets=False) as pool:
        agents = {
            node: AgentProcess(
                AgentOptions(
                    node_name=node,
                    kubeconfig=kubeconfig,
                    interval=INTERVAL,
                    sys_root=node_cgroups(tmp_path / node),
                    log_level="debug",
                ),
                cluster.workdir / f"agent-{node}.log",
            )
            for node in pool.nodes
        }
        try:
            for node in pool.nodes:
                assert nodebudget(cluster, node) is None  # nobody reported them yet
                agents[node].start()
            check_reports(cluster, agents)
            check_decisions(cluster, ns, pool, agents)
            check_owner(cluster, pool, agents)
        finally:
            # Before the pool goes: a running agent would write its budget again.
            for agent in agents.values():
                agent.kill()


def check_reports(cluster: LocalCluster, agents: dict[str, AgentProcess]) -> None:
    """Each agent applies its node's budget, owned by the Node, as its own field manager,
    with this machine's figures."""
    threads_max = read_host_int("/proc/sys/kernel/threads-max")
    pid_max = read_host_int("/proc/sys/kernel/pid_max")
    budgets = {
        node: wait_with_log(
            agent,
            partial(agent_owned_budget, cluster, node),
            timeout=30,
            what=f"the agent's NodeBudget of {node}",
        )
        for node, agent in agents.items()
    }
    for node, budget in budgets.items():
        uid = get_json(cluster, "node", node)["metadata"]["uid"]
        assert budget["metadata"]["ownerReferences"] == [
            {"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}
        ]
        managers = {(m["manager"], m["operation"]) for m in budget["metadata"]["managedFields"]}
        assert managers == {("cellguard-agent", "Apply")}, managers
        spec = budget["spec"]
        assert spec["nodeName"] == node
        assert spec["threadsMax"] == threads_max
        assert spec["pidMax"] == pid_max
        # The node-shaped cgroup tree: v2, unlimited kubepods, its pids.current.
        assert spec["kubepods"]["cgroupVersion"] == "v2"
        assert spec["kubepods"]["unlimited"] is True
        assert spec["kubepods"]["current"] == 42
        # Threads in use, against a count taken right after the budget was read. Threads
        # come and go (other processes share this machine), so a pair that disagrees is
        # tried again with the agent's next report; a wrong figure never agrees.
        agreed = wait_with_log(
            agents[node],
            partial(threads_agree, cluster, node),
            timeout=20,
            what=f"{node}'s threadsInUse to agree with this machine's thread count",
        )
        print(
            f"{node}: threadsMax={spec['threadsMax']} pidMax={spec['pidMax']} "
            f"threadsInUse={agreed[0]} (counted {agreed[1]}) "
            f"kubepods={spec.get('kubepods')} errors={spec.get('errors')}"
        )

    # And they keep reporting: observedAt moves on every interval.
    node, agent = next(iter(agents.items()))
    first_seen = budgets[node]["spec"]["observedAt"]
    wait_with_log(
        agent,
        lambda: (
            (nodebudget(cluster, node) or {}).get("spec", {}).get("observedAt")
            not in (None, first_seen)
        ),
        timeout=3 * INTERVAL + 5,
        what=f"a second report from {node}",
    )


def check_decisions(
    cluster: LocalCluster, ns: str, pool: NodePool, agents: dict[str, AgentProcess]
) -> None:
    """Scale-ups pass while the agents report, are refused naming the node whose agent
    stopped once its budget is stale, and pass again when the agent is back."""
    manifest = cell_manifest(
        ns,
        "stream",
        service="stream",
        replicas=3,
        base=100,
        per_peer=10,
        pool=pool,
        policyRef=FAST_POLICY,
    )
    created = apply_yaml(cluster, manifest)
    assert created.returncode == 0, created.stderr
    wait_cell_pods(cluster, ns, "stream", 3)
    grown = scale(cluster, ns, "stream", 6)
    assert grown.returncode == 0, grown.stderr
    wait_cell_pods(cluster, ns, "stream", 6)

    # One agent stops: it exits at once and cleanly, and its budget ages.
    victim = pool.nodes[1]
    code, took = agents[victim].terminate()
    assert code == 0, agents[victim].log_tail(20)
    assert took < 5, f"the agent took {took:.1f} s to stop"
    stopped_at = time.monotonic()
    refused = wait_for(
        lambda: (
            r if (r := scale(cluster, ns, "stream", 9, "--dry-run=server")).returncode else None
        ),
        timeout=STALE_AFTER + 30,
        what="a refusal once the stopped agent's budget is stale",
    )
    refused_after = time.monotonic() - stopped_at
    # Not before the policy's window has passed: the other agents' budgets stayed fresh.
    assert refused_after >= STALE_AFTER - INTERVAL - 1, refused.stderr
    assert f"needs node {victim}, whose thread budget is stale" in refused.stderr
    assert f"more than the {STALE_AFTER}s the policy allows" in refused.stderr
    real = scale(cluster, ns, "stream", 9)
    assert real.returncode != 0
    assert f"needs node {victim}, whose thread budget is stale" in real.stderr
    assert cell(cluster, ns, "stream")["spec"]["replicas"] == 6
    assert deployment_replicas(cluster, ns, "stream") == 6

    # The agent comes back: the budget is fresh again and the scale-up passes.
    agents[victim].start()
    restarted_at = time.monotonic()
    wait_with_log(
        agents[victim],
        lambda: scale(cluster, ns, "stream", 9).returncode == 0,
        timeout=30,
        what=f"the scale-up to pass once {victim} reports again",
    )
    print(
        f"agent stopped in {took:.2f} s; refused {refused_after:.1f} s later; "
        f"admitted {time.monotonic() - restarted_at:.1f} s after the restart"
    )
    wait_cell_pods(cluster, ns, "stream", 9)
    cluster.kubectl("delete", "streamcell", "stream", "-n", ns)


def check_owner(cluster: LocalCluster, pool: NodePool, agents: dict[str, AgentProcess]) -> None:
    """The Node owns its budget: deleting the node takes the budget with it."""
    for agent in agents.values():
        code, _ = agent.terminate()
        assert code == 0, agent.log_tail(20)
    gone = pool.nodes[2]
    cluster.kubectl("delete", "node", gone)
    deleted_at = time.monotonic()
    wait_for(
        lambda: nodebudget(cluster, gone) is None,
        timeout=60,
        what=f"the garbage collector to delete the NodeBudget of {gone}",
    )
    print(f"NodeBudget of {gone} collected {time.monotonic() - deleted_at:.1f} s after its node")
    # Only that one: the other nodes' budgets stay.
    assert all(nodebudget(cluster, node) is not None for node in pool.nodes[:2])
