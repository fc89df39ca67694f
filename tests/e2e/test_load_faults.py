"""Load and faults on the real control plane: a storm of concurrent scale requests, the API
server restarted under the operator, and generated invalid objects. Modest sizes (this file
runs in `make test`); the full storm is bench/storm.py, the invalid objects by category
bench/invalid.py.

No timed assertions: every wait is for a state, with a generous bound.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from kubernetes import client

from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.scenarios.invalid_specs import (
    InvalidCase,
    invalid_objects,
    judge,
    malformed_templates,
    submit_dry_run,
)
from cellguard.devcluster.scenarios.load import (
    allowed_by_node,
    over_limit,
    scale_storm,
    settle,
    storm_budgets,
    storm_cell,
)

from .harness import (
    OperatorProcess,
    apply_admitted,
    budget_manifest,
    cell,
    cell_manifest,
    deployment_replicas,
    ensure_namespace,
    get_json,
    node_pool,
    running_pods,
    wait_cell_pods,
    wait_for,
)

pytestmark = pytest.mark.e2e

MARGIN = Fraction(1, 5)  # the e2e default policy's safetyMargin
BASELINE = 1_000  # threads in use the pools' NodeBudgets report


def test_scale_storm_never_overcommits_a_node(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    """200 concurrent scale requests over 20 Shared cells on 6 nodes of two sizes: the
    fleet ends within every node's own allowance, and each cell at a size that was asked."""
    ns = "e2e-storm"
    ensure_namespace(cluster, ns)
    with node_pool(cluster, "storm", 6, budgets=False) as pool:
        storm_budgets(pool, BASELINE)
        names = [f"c{i:02d}" for i in range(20)]
        # One at a time, retried: the operator folds the new budgets in at most once a second.
        for name in names:
            apply_admitted(cluster, storm_cell(ns, name, pool, replicas=2, base=400, per_peer=40))
        initial = settle(cluster, ns)
        allowed = allowed_by_node(cluster, pool, MARGIN)
        assert set(allowed.values()) == {26_214, 19_660}

        # Sizes up to 14: all cells at 14 would need ~33,000 threads a node.
        result = scale_storm(
            cluster, ns, names, requests=200, workers=16, max_replicas=14, seed=20261125
        )
        assert not result.unexpected, result.unexpected[:5]
        assert result.statuses[200] > 0 and result.statuses[403] > 0, result.statuses
        assert all("would put node" in m for m in result.refusal_messages), {
            m for m in result.refusal_messages if "would put node" not in m
        }

        final = settle(cluster, ns, timeout=240)
        for name, replicas in final.items():
            asked = result.admitted[name] | {initial[name]}
            assert replicas in asked, f"{name} at {replicas}, never asked: {sorted(asked)}"
        assert not over_limit(cluster, pool, ns, BASELINE, allowed)
        for name in names:
            cluster.kubectl("delete", "streamcell", name, "-n", ns, "--wait=false")


def _replicasets(cluster: LocalCluster, ns: str) -> dict[str, int]:
    return {
        rs["metadata"]["name"]: rs["spec"]["replicas"]
        for rs in get_json(cluster, "replicasets", "-n", ns)["items"]
    }


def test_apiserver_restart_operator_recovers(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    """The API server goes away and comes back under a running operator: the same process
    carries on, its watches reconnect (a budget changed afterwards moves its decisions),
    a fitting scale-up is admitted and carried out, a refused one is still refused, and
    nothing is scaled or rolled that was not asked for."""
    ns = "e2e-apirestart"
    ensure_namespace(cluster, ns)
    with node_pool(cluster, "apirs", 3) as pool:
        for name, replicas in (("feed", 3), ("idle", 2)):
            manifest = cell_manifest(
                ns, name, service=name, replicas=replicas, base=200, per_peer=500, pool=pool
            )
            manifest["spec"]["isolation"] = "Shared"
            apply_admitted(cluster, manifest)
            wait_cell_pods(cluster, ns, name, replicas)
        before_pods = {
            name: {p["metadata"]["name"] for p in running_pods(cluster, ns, name)}
            for name in ("feed", "idle")
        }
        before_sets = _replicasets(cluster, ns)
        fits = cluster.kubectl(
            "scale", "streamcell/feed", "-n", ns, "--replicas=4", "--dry-run=server", check=False
        )
        assert fits.returncode == 0, fits.stderr
        pid = operator.popen.pid if operator.popen else None

        started = time.monotonic()
        cluster.restart_apiserver(down_seconds=1.0)
        print(f"API server away for {time.monotonic() - started:.1f} s")

        # Same process, still ready: a short outage is ridden out, not restarted through.
        assert operator.popen is not None and operator.popen.poll() is None
        assert operator.popen.pid == pid
        operator.wait_ready(timeout=60)

        # The budget watch is live again: a node reporting far more threads in use now
        # limits the cell (before, 4 replicas fitted anywhere).
        busy = pool.nodes[0]
        cluster.apply([budget_manifest(busy, threads_in_use=25_000)])
        refused = wait_for(
            lambda: (
                r
                if f"would put node {busy}"
                in (
                    r := cluster.kubectl(
                        "scale",
                        "streamcell/feed",
                        "-n",
                        ns,
                        "--replicas=4",
                        "--dry-run=server",
                        check=False,
                    )
                ).stderr
                else None
            ),
            timeout=90,
            what="a decision that sees the budget written after the restart",
        )
        assert refused.returncode != 0
        cluster.apply([budget_manifest(busy)])  # back to 1,000 in use
        ok = wait_for(
            lambda: (
                r
                if (
                    r := cluster.kubectl(
                        "scale", "streamcell/feed", "-n", ns, "--replicas=5", check=False
                    )
                ).returncode
                == 0
                else None
            ),
            timeout=90,
            what="the fitting scale-up to be admitted once the budget is back",
        )
        assert ok.returncode == 0
        wait_cell_pods(cluster, ns, "feed", 5, timeout=120)
        beyond = cluster.kubectl("scale", "streamcell/feed", "-n", ns, "--replicas=30", check=False)
        assert beyond.returncode != 0
        assert "would put node apirs-" in beyond.stderr
        time.sleep(3)  # a status round or two: nothing else may move

        assert cell(cluster, ns, "feed")["spec"]["replicas"] == 5
        assert deployment_replicas(cluster, ns, "feed") == 5
        assert deployment_replicas(cluster, ns, "idle") == 2
        assert {p["metadata"]["name"] for p in running_pods(cluster, ns, "idle")} == before_pods[
            "idle"
        ]
        assert before_pods["feed"] <= {
            p["metadata"]["name"] for p in running_pods(cluster, ns, "feed")
        }
        after_sets = _replicasets(cluster, ns)
        assert set(after_sets) == set(before_sets), "a rollout happened that nobody asked for"
        assert operator.popen.pid == pid and operator.popen.poll() is None
        for name in ("feed", "idle"):
            cluster.kubectl("delete", "streamcell", name, "-n", ns, "--wait=false")


def _delete_in_etcd(cluster: LocalCluster, key: str) -> None:
    """Delete a key straight in etcd (its JSON gateway), behind every watcher's back."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{cluster.etcd_port}/v3/kv/deleterange",
        data=json.dumps({"key": base64.b64encode(key.encode()).decode()}).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read()).get("deleted") == "1"


def test_a_watch_gap_that_deleted_a_node_a_budget_and_a_cell_is_healed(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    """A node, another node's NodeBudget and a cell deleted while the operator's watches
    were down (here: removed in etcd while the API server restarts, so no watcher is ever
    told) are forgotten once the watches come back: the API server cannot resume them from
    their old resourceVersion, so each kind is listed again and the listing replaces it."""
    ns = "e2e-ghost"
    ensure_namespace(cluster, ns)
    relisted_before = _relists(operator, "expired")
    with node_pool(cluster, "ghost", 3) as pool:
        # 8,000 threads a pod: 3 pods fit a node (25,000 of 26,214), 4 do not.
        manifest = cell_manifest(
            ns, "fat", service="fat", replicas=3, base=8_000, per_peer=0, pool=pool
        )
        manifest["spec"]["isolation"] = "Shared"
        apply_admitted(cluster, manifest)
        idle = cell_manifest(ns, "idle", service="idle", replicas=0, base=10, per_peer=0, pool=pool)
        apply_admitted(cluster, idle)
        wait_cell_pods(cluster, ns, "fat", 3)
        wait_for(
            lambda: 'cell="idle"' in operator.metrics(), timeout=30, what="the idle cell's figures"
        )
        ghost, unbudgeted = pool.nodes[2], pool.nodes[1]

        def delete_behind_every_watch() -> None:
            _delete_in_etcd(cluster, f"/registry/minions/{ghost}")
            _delete_in_etcd(cluster, f"/registry/cellguard.io/nodebudgets/{unbudgeted}")
            _delete_in_etcd(cluster, f"/registry/cellguard.io/streamcells/{ns}/idle")

        cluster.restart_apiserver(down_seconds=0.5, while_down=delete_behind_every_watch)
        operator.wait_ready(timeout=60)
        assert ghost not in cluster.ready_nodes()
        try:
            wait_for(
                lambda: (
                    f'node="{ghost}"' not in operator.metrics()
                    and f'{{node="{unbudgeted}"}} 0.0' in _known_lines(operator)
                    and 'cell="idle"' not in operator.metrics()
                ),
                timeout=60,
                what="the operator to forget the deleted node, budget and cell",
            )
            assert _relists(operator, "expired") > relisted_before
            # One node with a budget is left: 3 replicas fit, 4 do not. With the ghost and
            # the lost budget still counted, 9 would.
            four = cluster.kubectl(
                "scale", "streamcell/fat", "-n", ns, "--replicas=4", "--dry-run=server", check=False
            )
            assert four.returncode != 0, "4 replicas admitted onto the one budgeted node left"
        finally:
            cluster.kubectl("delete", "streamcell", "fat", "-n", ns, "--wait=false")


def _known_lines(operator: OperatorProcess) -> str:
    return "\n".join(
        line
        for line in operator.metrics().splitlines()
        if line.startswith("cellguard_node_budget_known")
    )


def _relists(operator: OperatorProcess, reason: str) -> float:
    """Relistings of every kind for `reason`, from the operator's counter."""
    total = 0.0
    for line in operator.metrics().splitlines():
        if line.startswith("cellguard_cache_relists_total{") and f'reason="{reason}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


INVALID_NS = "e2e-invalid"
INVALID_EXAMPLES = 1_000  # ~10 s of dry runs; bench/invalid.py reports them by category
_seen: Counter[str] = Counter()


@pytest.fixture(scope="module")
def invalid_target(
    cluster: LocalCluster, cellguard_operator: OperatorProcess
) -> Iterator[dict[str, Any]]:
    """A namespace with one valid cell that invalid replacements are sent over."""
    ensure_namespace(cluster, INVALID_NS)
    with node_pool(cluster, "invalid", 1) as pool:
        manifest = cell_manifest(
            INVALID_NS, "target", service="target", replicas=1, base=10, per_peer=0, pool=pool
        )
        apply_admitted(cluster, manifest)
        yield {"placement": pool.placement, "api": client.CustomObjectsApi(cluster.api_client())}
        cluster.kubectl("delete", "streamcell", "target", "-n", INVALID_NS, "--wait=false")


def test_generated_invalid_objects_are_refused_clearly(
    cluster: LocalCluster,
    invalid_target: dict[str, Any],
    operator: OperatorProcess,
) -> None:
    """Generated invalid StreamCells and policies, sent as server-side dry runs with strict
    field validation: each refused with 400/403/422 naming the field or the reason, never
    accepted and never a 5xx."""
    api = invalid_target["api"]
    _seen.clear()

    @settings(
        max_examples=INVALID_EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(invalid_objects(INVALID_NS, invalid_target["placement"], existing_cell="target"))
    def refused_clearly(case: InvalidCase) -> None:
        _seen[case.category] += 1
        problem = judge(case, submit_dry_run(api, case))
        assert problem is None, problem

    refused_clearly()
    assert len(_seen) >= 15, f"categories exercised: {dict(_seen)}"
    # Dry runs all: nothing was created or changed.
    cells = get_json(cluster, "streamcells", "-n", INVALID_NS)["items"]
    assert [(c["metadata"]["name"], c["metadata"]["generation"]) for c in cells] == [("target", 1)]
    policies = get_json(cluster, "threadbudgetpolicies")["items"]
    assert not [p for p in policies if p["metadata"]["name"].startswith("invalid-")]


def test_malformed_template_is_refused_not_500(
    invalid_target: dict[str, Any],
    operator: OperatorProcess,
) -> None:
    api = invalid_target["api"]

    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(malformed_templates(INVALID_NS, invalid_target["placement"]))
    def refused_clearly(case: InvalidCase) -> None:
        problem = judge(case, submit_dry_run(api, case))
        assert problem is None, problem

    refused_clearly()
