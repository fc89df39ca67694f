"""The shipped alert rules on a real Prometheus scraping the real operator (issue 7).

Debian's Prometheus runs on loopback with the chart's rule file; the operator runs as in
the other end-to-end tests. The test moves real NodeBudgets and real scale requests and
reads what Prometheus makes of the operator's metrics: the target, an alert, a counter,
a series that goes away with its node, and an alert threshold that follows the policy.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

import cellguard
from cellguard.devcluster.cluster import LocalCluster, free_port

from .harness import (
    REPO,
    OperatorProcess,
    apply_policy,
    apply_yaml,
    budget_manifest,
    cell_manifest,
    ensure_namespace,
    node_pool,
    wait_cell_pods,
    wait_for,
)

pytestmark = pytest.mark.e2e

RULES = REPO / "helm/cellguard/files/prometheus-rules.yaml"
LIMIT = 32_768  # the pools' threads-max and pid_max (harness defaults)
WAIT = 60.0  # every wait on Prometheus is bounded by this

# Loopback only, whatever proxy the environment names.
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str) -> Any:
    with _LOCAL.open(url, timeout=5) as response:
        return json.loads(response.read())


@dataclass
class Prometheus:
    url: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        body = _get(f"{self.url}/api/v1/{path}{query}")
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def value(self, expr: str) -> float | None:
        """The single sample of an instant query, None when there is none."""
        result = self.query(expr)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def alerts(self, name: str) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == name]

    def ready(self) -> bool:
        if self.popen.poll() is not None:
            raise AssertionError(f"prometheus exited ({self.popen.returncode}):\n{self.log_tail()}")
        try:
            with _LOCAL.open(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def rules_without_durations(target: Path) -> int:
    """Copy the chart's rule file with every alert's `for:` set to 0s; returns how many
    alerts had a duration.

    In production the durations are minutes, to ride out a scrape or two of noise; a test
    cannot wait that long. Here the expressions and labels are what is checked against the
    real operator; `promtool test rules` (tests/prometheus/alerts_test.yaml) checks the
    durations.
    """
    document = yaml.safe_load(RULES.read_text())
    had_duration = 0
    for group in document["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                had_duration += "for" in rule
                rule["for"] = "0s"
    target.write_text(yaml.safe_dump(document, sort_keys=False))
    return had_duration


@pytest.fixture
def prometheus(
    cluster: LocalCluster, operator: OperatorProcess, tmp_path: Path
) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary is not None, "Debian's prometheus package is not installed"
    rules = tmp_path / "prometheus-rules.yaml"
    assert rules_without_durations(rules) >= 10
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(rules)],
                "scrape_configs": [
                    {
                        # The job name and honor_labels the rule file asks of a scrape config.
                        "job_name": "cellguard",
                        "honor_labels": True,
                        "static_configs": [{"targets": [f"127.0.0.1:{operator.metrics_port}"]}],
                    }
                ],
            }
        )
    )
    port = free_port()
    log_path = cluster.workdir / "prometheus.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", popen, log_path)
    try:
        wait_for(server.ready, timeout=WAIT, what="prometheus to be ready")
        yield server
    finally:
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def test_prometheus_scrapes_the_operator_and_the_rules_fire(
    cluster: LocalCluster, operator: OperatorProcess, prometheus: Prometheus
) -> None:
    ns = "e2e-prom"
    ensure_namespace(cluster, ns)

    # The operator is a healthy target of job "cellguard".
    def target_up() -> dict[str, Any] | None:
        targets: list[dict[str, Any]] = prometheus.api("targets")["activeTargets"]
        for target in targets:
            if (
                target["labels"].get("job") == "cellguard"
                and target["scrapeUrl"] == f"http://127.0.0.1:{operator.metrics_port}/metrics"
                and target["health"] == "up"
            ):
                return target
        return None

    wait_for(target_up, timeout=WAIT, what="the operator's target to be up")
    assert prometheus.value('up{job="cellguard"}') == 1
    # So the rule that watches the job is quiet (it may fire on the first evaluation, before
    # the first scrape, with its duration removed).
    wait_for(
        lambda: not prometheus.alerts("CellguardOperatorDown"),
        timeout=WAIT,
        what="CellguardOperatorDown to be quiet once the operator is scraped",
    )

    # Which version runs, and the default policy's thresholds, as the rules read them.
    wait_for(
        lambda: prometheus.value('count(cellguard_build_info{job="cellguard"})'),
        timeout=WAIT,
        what="cellguard_build_info in Prometheus",
    )
    (build,) = prometheus.query('cellguard_build_info{job="cellguard"}')
    assert build["metric"]["version"] == cellguard.__version__
    assert float(build["value"][1]) == 1
    critical_threshold = 'cellguard_policy_critical_headroom_ratio{policy="default"}'
    wait_for(
        lambda: prometheus.value(critical_threshold) is not None,
        timeout=WAIT,
        what=f"{critical_threshold} in Prometheus",
    )
    assert prometheus.value(critical_threshold) == pytest.approx(0.15)
    # the e2e policy's staleAfterSeconds (an hour)
    stale_after = 'cellguard_policy_budget_stale_after_seconds{policy="default"}'
    assert prometheus.value(stale_after) == 3600

    with node_pool(cluster, "prom", 3) as pool:
        hot, cool, gone = pool.nodes

        # Every pool node is seen with plenty of headroom: no critical alert names one.
        def headroom(node: str) -> float | None:
            return prometheus.value(f'cellguard_node_thread_headroom_ratio{{node="{node}"}}')

        for node in pool.nodes:
            ratio = wait_for(partial(headroom, node), timeout=WAIT, what=f"{node}'s headroom")
            assert ratio == pytest.approx(1 - 1_000 / LIMIT)
            # the budget's age, by Prometheus's clock: just reported
            age = prometheus.value(
                f'time() - cellguard_node_budget_observed_timestamp_seconds{{node="{node}"}}'
            )
            assert age is not None and -5 < age < 120, (node, age)
        assert not [
            a
            for a in prometheus.alerts("CellguardNodeAgentNotReporting")
            if a["labels"]["node"] in pool.nodes
        ]
        critical = prometheus.alerts("CellguardNodeThreadHeadroomCritical")
        assert not [a for a in critical if a["labels"]["node"] in pool.nodes], critical

        # A refused scale-up counts in cellguard_decisions_total, as Prometheus sees it.
        refused_series = 'cellguard_decisions_total{decision="refused",reason="NodeThreadLimit"}'
        before = prometheus.value(refused_series)
        assert before is not None  # the operator exports the series before any refusal
        assert not [
            a
            for a in prometheus.alerts("CellguardScaleRefused")
            if a["labels"]["reason"] == "NodeThreadLimit"
        ]
        manifest = cell_manifest(
            ns, "ingest", service="ingest", replicas=3, base=200, per_peer=500, pool=pool
        )
        created = apply_yaml(cluster, manifest)
        assert created.returncode == 0, created.stderr
        wait_cell_pods(cluster, ns, "ingest", 3)
        refused = cluster.kubectl(
            "scale", "streamcell/ingest", "-n", ns, "--replicas=20", check=False
        )
        assert refused.returncode != 0
        assert f"scaling {ns}/ingest from 3 to 20 replicas would put node prom-" in refused.stderr
        # At least one: the API server re-runs admission when its storage update retries on
        # a conflict (the operator writes the cell's status every few seconds), so a single
        # `kubectl scale` may be decided - and counted - twice.
        wait_for(
            lambda: (
                (value := prometheus.value(refused_series)) is not None
                and before + 1 <= value <= before + 3
            ),
            timeout=WAIT,
            what=f"{refused_series} to go up from {before} in Prometheus",
        )
        increase = prometheus.value(f"increase({refused_series}[1m])")
        assert increase is not None and increase > 0, increase
        # ... which is what the refusal alert is made of.
        wait_for(
            lambda: [
                a
                for a in prometheus.alerts("CellguardScaleRefused")
                if a["labels"]["reason"] == "NodeThreadLimit" and a["state"] == "firing"
            ],
            timeout=WAIT,
            what="CellguardScaleRefused to fire for NodeThreadLimit",
        )
        cluster.kubectl("delete", "streamcell", "ingest", "-n", ns)

        # One node's agent reports threads close to the limit: the critical alert fires for
        # that node, and for no other.
        hot_threads = 30_000
        cluster.apply([budget_manifest(hot, threads_in_use=hot_threads)])

        def firing_for(node: str) -> dict[str, Any] | None:
            for alert in prometheus.alerts("CellguardNodeThreadHeadroomCritical"):
                if alert["labels"].get("node") == node and alert["state"] == "firing":
                    return alert
            return None

        alert = wait_for(
            lambda: firing_for(hot),
            timeout=WAIT,
            what=f"CellguardNodeThreadHeadroomCritical to fire for {hot}",
        )
        assert alert["labels"]["severity"] == "critical"
        assert alert["labels"]["job"] == "cellguard"
        assert float(alert["value"]) == pytest.approx(1 - hot_threads / LIMIT)
        assert hot in alert["annotations"]["summary"]
        assert f"projected to {hot_threads} threads" in " ".join(
            alert["annotations"]["description"].split()
        )
        assert firing_for(cool) is None
        assert firing_for(gone) is None

        # A node deleted with its budget: its series leave the operator's /metrics, and
        # Prometheus stops returning them.
        series = f'cellguard_node_thread_limit{{node="{gone}"}}'
        assert f"{series} {float(LIMIT)}" in operator.metrics()
        cluster.kubectl("delete", "node", gone)
        cluster.kubectl("delete", "nodebudget", gone)
        wait_for(
            lambda: series not in operator.metrics(),
            timeout=WAIT,
            what=f"{series} to leave the operator's metrics",
        )
        assert f'cellguard_node_thread_limit{{node="{cool}"}} {float(LIMIT)}' in operator.metrics()
        wait_for(
            lambda: prometheus.value(series) is None,
            timeout=WAIT,
            what=f"{series} to go stale in Prometheus",
        )
        assert prometheus.value(f'cellguard_node_thread_limit{{node="{cool}"}}') == LIMIT

        # The threshold is the policy's: raise the default policy's criticalHeadroom above the
        # cool node's ~97% headroom and the critical alert fires for it too, with no rule
        # changed; put it back and it stops.
        assert firing_for(cool) is None
        try:
            apply_policy(cluster, alerts={"warningHeadroom": 0.99, "criticalHeadroom": 0.98})
            wait_for(
                lambda: prometheus.value(critical_threshold) == pytest.approx(0.98),
                timeout=WAIT,
                what=f"{critical_threshold} to follow the policy",
            )
            alert = wait_for(
                lambda: firing_for(cool),
                timeout=WAIT,
                what=f"CellguardNodeThreadHeadroomCritical to fire for {cool} under 0.98",
            )
            assert float(alert["value"]) == pytest.approx(1 - 1_000 / LIMIT)
            assert "less than the 98% critical threshold" in " ".join(
                alert["annotations"]["description"].split()
            )
        finally:
            apply_policy(cluster)
        wait_for(
            lambda: prometheus.value(critical_threshold) == pytest.approx(0.15),
            timeout=WAIT,
            what=f"{critical_threshold} back at the default",
        )
        wait_for(
            lambda: firing_for(cool) is None,
            timeout=WAIT,
            what=f"CellguardNodeThreadHeadroomCritical to stop for {cool}",
        )
