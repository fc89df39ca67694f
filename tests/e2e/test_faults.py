"""Faults on the real control plane: the operator down or restarted mid-scale, and node
budgets missing or stale. Fail closed, and never touch what is running."""

from __future__ import annotations

import datetime
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cellguard.devcluster.cluster import LocalCluster

from .harness import (
    OperatorProcess,
    apply_yaml,
    budget_manifest,
    cell,
    cell_world,
    deployment_replicas,
    running_pods,
    utc_now,
    wait_cell_pods,
    wait_for,
)

pytestmark = pytest.mark.e2e


def test_operator_down_refuses_scale_ups_and_leaves_running_pods(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    ns = "e2e-down"
    with cell_world(cluster, ns, "down", 3) as world:
        pods = world.create("feed", replicas=3, base=100, per_peer=10)
        before = {p["metadata"]["name"] for p in pods}
        said = operator.log_path.read_text().split("webhook files in ")[-1]
        workdir = Path(said.split()[0])
        assert workdir.is_dir()
        operator.stop()
        # A clean stop takes its webhook key and certificate with it.
        assert not workdir.exists()
        try:
            up = cluster.kubectl("scale", "streamcell/feed", "-n", ns, "--replicas=4", check=False)
            assert up.returncode != 0
            assert 'failed calling webhook "validate-streamcell-scale.cellguard.io"' in up.stderr
            # A new cell is refused as well: nothing grows unchecked.
            other = world.manifest("feed-2", service="feed2", replicas=1, base=100, per_peer=10)
            created = apply_yaml(cluster, other)
            assert created.returncode != 0
            assert "validate-streamcell.cellguard.io" in created.stderr
            # Shrinking never needs cellguard: the webhook's match conditions skip it.
            down = cluster.kubectl(
                "scale", "streamcell/feed", "-n", ns, "--replicas=2", check=False
            )
            assert down.returncode == 0, down.stderr
            time.sleep(3)
            # Nobody reconciles while the operator is down: what runs is untouched.
            assert deployment_replicas(cluster, ns, "feed") == 3
            assert {p["metadata"]["name"] for p in running_pods(cluster, ns, "feed")} == before
        finally:
            operator.start()
        wait_for(lambda: deployment_replicas(cluster, ns, "feed") == 2, what="scale-down applied")


def test_restart_mid_scale_converges_to_what_was_asked(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    ns = "e2e-restart"
    with cell_world(cluster, ns, "restart", 4) as world:
        for name, replicas in (("alpha", 4), ("beta", 2)):
            world.create(name, replicas=replicas, base=100, per_peer=10, isolation="Shared")
        seen: list[int] = []
        stop_watch = threading.Event()

        def watch() -> None:
            while not stop_watch.is_set():
                seen.append(deployment_replicas(cluster, ns, "alpha"))
                time.sleep(0.2)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            ok = cluster.kubectl("scale", "streamcell/alpha", "-n", ns, "--replicas=8", check=False)
            assert ok.returncode == 0, ok.stderr
            operator.stop(signal.SIGKILL)  # at once: the reconciler may not have acted
            operator.start()
            wait_cell_pods(cluster, ns, "alpha", 8)
            time.sleep(3)  # several status rounds: nothing else may move
        finally:
            stop_watch.set()
            watcher.join()
        assert max(seen) == 8, f"alpha's Deployment went beyond what was asked: {sorted(set(seen))}"
        assert deployment_replicas(cluster, ns, "beta") == 2
        assert len(running_pods(cluster, ns, "beta")) == 2
        assert cell(cluster, ns, "alpha")["spec"]["replicas"] == 8


def test_missing_or_stale_budget_refuses_scale_ups_onto_the_node(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    ns = "e2e-stale"
    with cell_world(cluster, ns, "stale", 3) as world:
        world.create("logs", replicas=3, base=100, per_peer=10)
        victim = world.pool.nodes[1]

        cluster.kubectl("delete", "nodebudget", victim)
        refused = wait_for(
            lambda: (
                r
                if (
                    r := cluster.kubectl(
                        "scale",
                        "streamcell/logs",
                        "-n",
                        ns,
                        "--replicas=6",
                        "--dry-run=server",
                        check=False,
                    )
                ).returncode
                else None
            ),
            what="a refusal once the budget is gone",
        )
        assert f"node {victim}" in refused.stderr
        assert "no NodeBudget" in refused.stderr

        # Two hours old, against the e2e policy's one-hour staleness window.
        cluster.apply(
            [
                budget_manifest(
                    victim,
                    observed_at=utc_now().replace(microsecond=0) - datetime.timedelta(hours=2),
                )
            ]
        )
        stale = wait_for(
            lambda: (
                r
                if "more than the 3,600s"
                in (
                    r := cluster.kubectl(
                        "scale", "streamcell/logs", "-n", ns, "--replicas=6", check=False
                    )
                ).stderr
                else None
            ),
            what="a refusal naming the stale budget",
        )
        assert stale.returncode != 0
        assert f"node {victim}" in stale.stderr
        assert deployment_replicas(cluster, ns, "logs") == 3

        world.pool.set_budgets()  # the agent reports again
        wait_for(
            lambda: (
                cluster.kubectl(
                    "scale", "streamcell/logs", "-n", ns, "--replicas=6", check=False
                ).returncode
                == 0
            ),
            what="the scale-up to pass once the budget is fresh",
        )
        wait_cell_pods(cluster, ns, "logs", 6)


def test_a_budget_from_a_node_whose_clock_runs_ahead_is_not_believed(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    """A report an hour in the future would otherwise stay fresh for an hour after its
    agent stopped: the operator judges it by when it arrived, and refuses it outright."""
    ns = "e2e-skew"
    with cell_world(cluster, ns, "skew", 3) as world:
        world.create("feed", replicas=3, base=100, per_peer=10)
        victim = world.pool.nodes[0]
        ahead = utc_now().replace(microsecond=0) + datetime.timedelta(hours=1)
        cluster.apply([budget_manifest(victim, observed_at=ahead)])

        def refused(*dry_run: str) -> subprocess.CompletedProcess[str] | None:
            answer = cluster.kubectl(
                "scale", "streamcell/feed", "-n", ns, "--replicas=6", *dry_run, check=False
            )
            return answer if "ahead of the operator's clock" in answer.stderr else None

        # Dry runs until the operator has folded the report in (at most once a second): a
        # real scale admitted before that would leave nothing to refuse.
        wait_for(
            lambda: refused("--dry-run=server"),
            what="a refusal naming the budget from the future",
        )
        answer = refused()
        assert answer is not None and answer.returncode != 0
        assert f"node {victim}, whose thread budget is unknown" in answer.stderr
        assert "is the node's clock right?" in answer.stderr
        assert deployment_replicas(cluster, ns, "feed") == 3


def test_shrinking_limits_report_over_budget_and_never_scale_down(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    ns = "e2e-shrink"
    with cell_world(cluster, ns, "shrink", 3) as world:
        pods = world.create("bus", replicas=3, base=4_000, per_peer=500)
        before = {p["metadata"]["name"] for p in pods}

        def within_budget() -> str | None:
            for item in cell(cluster, ns, "bus").get("status", {}).get("conditions", []):
                if item["type"] == "WithinBudget":
                    return str(item["status"])
            return None

        assert wait_for(lambda: within_budget() == "True", what="WithinBudget=True")
        # The nodes' pid_max is lowered under the cell's 5,000 threads a pod (e.g. a sysctl
        # change): the cell no longer fits, and cellguard says so - it never kills pods.
        world.pool.set_budgets(threads_max=32_768, pid_max=4_096, threads_in_use=500)
        wait_for(lambda: within_budget() == "False", what="WithinBudget=False")
        message = next(
            c["message"]
            for c in cell(cluster, ns, "bus")["status"]["conditions"]
            if c["type"] == "WithinBudget"
        )
        assert "limit 4,096 less 20% margin = 3,276" in message
        events = cluster.kubectl(
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            "involvedObject.name=bus,reason=OverBudget",
        ).stdout
        assert "bus" in events
        time.sleep(3)  # a few reconcile rounds
        assert deployment_replicas(cluster, ns, "bus") == 3
        assert {p["metadata"]["name"] for p in running_pods(cluster, ns, "bus")} == before
