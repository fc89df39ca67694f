"""The shipped alert rules, their runbooks and the Grafana dashboard.

promtool (Debian's prometheus package; `scripts/ensure-debian-packages.sh` installs it) checks
and unit-tests the rules; the rest is read here: every metric a rule or a panel uses is one
the operator exports (or a recording rule of the file, or one of a short list of external
metrics), every alert has a severity, a summary, a description and a runbook that exists, and
the thresholds are the policies' own, as the operator exports them (no number in a rule).
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import cellguard
from cellguard import metrics
from cellguard.api import v1alpha1 as api

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm" / "cellguard" / "files" / "prometheus-rules.yaml"
RULE_TESTS = ROOT / "tests" / "prometheus" / "alerts_test.yaml"
DASHBOARD = ROOT / "helm" / "cellguard" / "files" / "grafana-dashboard.json"
RUNBOOKS = ROOT / "docs" / "runbooks"
RUNBOOK_BASE = "https://github.com/cellguard/cellguard/blob/main/docs/runbooks/"

SEVERITIES = {"critical", "warning", "info"}
RUNBOOK_SECTIONS = ("## Meaning", "## Impact", "## Diagnosis", "## Mitigation", "## Do not")

# Metrics the rules may use that cellguard does not export: the scrape health of the
# operator's targets, and the API server's own view of the admission webhooks (from
# k8s.io/apiserver/pkg/admission/metrics).
EXTERNAL_METRICS = frozenset(
    {
        "up",
        "apiserver_admission_webhook_request_total",
        "apiserver_admission_webhook_rejection_count",
        "apiserver_admission_webhook_fail_open_count",
        "apiserver_admission_webhook_admission_duration_seconds_bucket",
        "apiserver_admission_webhook_admission_duration_seconds_count",
        "apiserver_admission_webhook_admission_duration_seconds_sum",
    }
)

Rule = dict[str, Any]


# --- promtool --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is not on PATH: it comes with Debian's prometheus package. Install it "
            "with `bash scripts/ensure-debian-packages.sh` (what `make test` runs) or "
            "`sudo apt-get install prometheus`."
        )
    return path


def _run(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_checks_the_rules(promtool: str) -> None:
    result = _run([promtool, "check", "rules", str(RULES)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    result = _run([promtool, "test", "rules", str(RULE_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("original", "mutant"),
    [
        # the wrong threshold, a join that ignores the replica or the policy, a shorter
        # `for`, a missing guard: the unit tests must notice
        (
            'cellguard_policy_warning_headroom_ratio{policy="default"}',
            'cellguard_policy_critical_headroom_ratio{policy="default"}',
        ),
        (
            "< on (job, instance) group_left ()\n          cellguard_policy_warning",
            "< on (job) group_left ()\n          cellguard_policy_warning",
        ),
        ("* on (job, instance, policy) group_left ()", "* on (job, instance) group_left ()"),
        (
            "3 * cellguard_policy_budget_stale_after_seconds",
            "2 * cellguard_policy_budget_stale_after_seconds",
        ),
        ("for: 2m", "for: 0m"),
        (">= on (job, instance, namespace, cell", "> on (job, instance, namespace, cell"),
        ('absent(up{job="cellguard"} == 1)', 'absent(up{job="cellguard"})'),
        ("(count(up offset 10m) > 0)", "(count(up) > 0)"),
    ],
)
def test_promtool_unit_tests_catch_a_broken_rule(
    promtool: str, tmp_path: Path, original: str, mutant: str
) -> None:
    text = RULES.read_text()
    assert text.count(original) == 1, f"{original!r} should occur once in {RULES.name}"
    rules = tmp_path / "rules.yaml"
    rules.write_text(text.replace(original, mutant))
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = [str(rules)]
    test_file = tmp_path / "alerts_test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = _run([promtool, "test", "rules", str(test_file)], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"the unit tests did not notice {mutant!r}:\n{output}"
    assert "FAILED" in output


# --- the rule file ---------------------------------------------------------------------------


def _rules() -> list[Rule]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def _alerts() -> dict[str, Rule]:
    alerts = [rule for rule in _rules() if "alert" in rule]
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    return {rule["alert"]: rule for rule in alerts}


def _recorded() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def test_the_rule_file_is_a_plain_prometheus_rule_file() -> None:
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}, "a standalone rule file has only `groups`"
    for group in document["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group["name"]
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule), rule


def test_every_expected_alert_is_defined() -> None:
    assert set(_alerts()) == {
        "CellguardNodeThreadHeadroomLow",
        "CellguardNodeThreadHeadroomCritical",
        "CellguardNodePIDHeadroomLow",
        "CellguardNodeBudgetUnknown",
        "CellguardNodeAgentNotReporting",
        "CellguardScaleRefused",
        "CellguardCellScaleRefused",
        "CellguardCellNearMaxSafeSize",
        "CellguardCellNoSafeCapacity",
        "CellguardThreadModelWrong",
        "CellguardOperatorDown",
        "CellguardOperatorNotReady",
        "CellguardWebhookFailing",
    }


@pytest.mark.parametrize("name", sorted(_alerts()))
def test_alert_has_severity_summary_description_and_runbook(name: str) -> None:
    rule = _alerts()[name]
    assert rule.get("labels", {}).get("severity") in SEVERITIES, name
    annotations = rule.get("annotations", {})
    assert annotations.get("summary", "").strip(), f"{name}: no summary"
    assert annotations.get("description", "").strip(), f"{name}: no description"
    assert annotations.get("runbook_url") == f"{RUNBOOK_BASE}{name}.md"
    runbook = RUNBOOKS / f"{name}.md"
    assert runbook.is_file(), f"{name}: no runbook at {runbook.relative_to(ROOT)}"
    text = runbook.read_text()
    assert text.startswith(f"# {name}\n"), f"{runbook.name} should start with '# {name}'"
    missing = [section for section in RUNBOOK_SECTIONS if f"\n{section}" not in text]
    assert not missing, f"{runbook.name} lacks {missing}"


def test_runbook_index_lists_every_runbook_and_nothing_else() -> None:
    alerts = set(_alerts())
    runbooks = {path.stem for path in RUNBOOKS.glob("*.md")} - {"README"}
    assert runbooks == alerts, "one runbook per alert, no orphans"
    index = (RUNBOOKS / "README.md").read_text()
    linked = set(re.findall(r"\]\((?:\./)?([A-Za-z]+)\.md\)", index))
    assert linked == alerts


def test_severities_match_the_impact() -> None:
    """Pages only for what hurts now: a limit about to be hit, or scaling blocked outright."""
    severity = {name: rule["labels"]["severity"] for name, rule in _alerts().items()}
    assert {n for n, s in severity.items() if s == "critical"} == {
        "CellguardNodeThreadHeadroomCritical",
        "CellguardNodePIDHeadroomLow",
        "CellguardOperatorDown",
        "CellguardOperatorNotReady",
        "CellguardWebhookFailing",
    }
    assert severity["CellguardScaleRefused"] == "info"


def _numbers(expr: str) -> set[str]:
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    return {
        match.group("number")
        for match in _TOKEN.finditer(text)
        if match.group("number") and not match.group(0)[:1].isalpha()
    }


def test_thresholds_are_the_policies_as_the_operator_exports_them() -> None:
    """No threshold is a number in a rule: each alert compares with its policy's gauge."""
    expected = {
        "CellguardNodeThreadHeadroomLow": (
            metrics.NODE_THREAD_HEADROOM,
            metrics.POLICY_WARNING_HEADROOM,
        ),
        "CellguardNodeThreadHeadroomCritical": (
            metrics.NODE_THREAD_HEADROOM,
            metrics.POLICY_CRITICAL_HEADROOM,
        ),
        "CellguardNodePIDHeadroomLow": (
            metrics.NODE_PID_HEADROOM,
            metrics.POLICY_CRITICAL_HEADROOM,
        ),
        "CellguardCellNearMaxSafeSize": ("cellguard:cell_fill:ratio", metrics.POLICY_NEAR_MAX_SAFE),
        "CellguardNodeAgentNotReporting": (
            metrics.NODE_BUDGET_OBSERVED,
            metrics.POLICY_STALE_AFTER,
        ),
    }
    alerts = _alerts()
    for name, (figure, threshold) in expected.items():
        expr = str(alerts[name]["expr"])
        assert {figure, threshold} <= metric_names(expr), name
        # the only number: 3 x staleAfterSeconds
        assert _numbers(expr) <= {"3"}, f"{name}: a number in {expr!r}"
        # thresholds from the replica the figures come from
        assert "on (job, instance" in expr, name
        if threshold != metrics.POLICY_NEAR_MAX_SAFE:
            assert f'{threshold}{{policy="default"}}' in expr, f"{name}: nodes: default policy"
        # the annotations quote the threshold as the same replica exports it
        quoted = [q for q in _annotation_queries(alerts[name]) if q.startswith(threshold)]
        assert all('job="x", instance="x"' in q for q in quoted), name
        assert quoted or name == "CellguardNodePIDHeadroomLow", f"{name}: threshold not quoted"
    # the cell's own policy, through cellguard_cell_info
    assert metrics.CELL_INFO in metric_names(str(alerts["CellguardCellNearMaxSafeSize"]["expr"]))
    # what the operator exports for a policy that sets nothing is the API's defaults
    defaults = metrics.PolicyThresholds.of(api.ThreadBudgetPolicySpec())
    assert defaults == metrics.PolicyThresholds(
        warning_headroom_ratio=api.AlertThresholds().warning_headroom,
        critical_headroom_ratio=api.AlertThresholds().critical_headroom,
        near_max_safe_ratio=api.AlertThresholds().near_max_safe_ratio,
        budget_stale_after_seconds=api.ThreadBudgetPolicySpec().stale_after_seconds,
    )
    unknown = alerts["CellguardNodeBudgetUnknown"]["annotations"]["description"]
    assert f"({defaults.budget_stale_after_seconds:.0f}s by default)" in unknown


def test_policy_thresholds_are_exported_per_policy_and_default_always() -> None:
    spec = api.ThreadBudgetPolicySpec.model_validate(
        {"staleAfterSeconds": 60, "alerts": {"warningHeadroom": 0.4, "nearMaxSafeRatio": 0.8}}
    )

    class _Snapshot:
        policies = {"batch": spec}

    thresholds = metrics.policy_thresholds(_Snapshot())  # type: ignore[arg-type]
    assert thresholds["batch"] == metrics.PolicyThresholds(0.4, 0.15, 0.8, 60.0)
    # no `default` policy: the stand-in the node figures are computed under
    assert thresholds["default"] == metrics.PolicyThresholds.of(api.ThreadBudgetPolicySpec())


def _rule_tests() -> Iterator[dict[str, Any]]:
    for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        yield from group.get("alert_rule_test", [])


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing = {case["alertname"] for case in _rule_tests() if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in _rule_tests() if not case.get("exp_alerts")}
    alerts = set(_alerts())
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested quiet"
    assert (firing | quiet) - alerts == set(), "tests of alerts that do not exist"


def test_every_recording_rule_is_tested() -> None:
    tested = {
        case["expr"]
        for group in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in group.get("promql_expr_test", [])
    }
    assert _recorded() <= tested


# --- metric names in PromQL ------------------------------------------------------------------

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_TOKEN = re.compile(
    r"(?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)"
    r"|\$(?P<variable>\w+)"
    r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)(?P<call>\s*\()?"
)
_KEYWORDS = frozenset(
    {"and", "or", "unless", "offset", "bool", "group_left", "group_right", "inf", "nan"}
)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers that are neither functions
    (followed by `(`), nor keywords, nor label names in matchers or label lists, nor inside
    strings or ranges."""
    assert "__name__" not in expr, f"select metrics by name, not by __name__: {expr!r}"
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    names = set()
    for match in _TOKEN.finditer(text):
        ident = match.group("ident")
        if ident is None or match.group("call") or ident.lower() in _KEYWORDS:
            continue
        names.add(ident)
    return names


def test_metric_names_parser() -> None:
    expr = """
      sum by (reason) (
        (x_total{decision="refused", reason=~"a|b{c}"} unless x_total offset 10m)
        and on () (count(up offset 10m) > 0)
        or increase(y_total{le="0.5"}[10m:1m])
      ) / ignoring (le) group_left (node) z_seconds_bucket
      > bool 1e3 and histogram_quantile(0.99, sum without(pod) (rate(w_bucket[$__rate_interval])))
      and node_metric @ start() unless 'by (a) b' > inf
    """
    assert metric_names(expr) == {
        "x_total",
        "up",
        "y_total",
        "z_seconds_bucket",
        "w_bucket",
        "node_metric",
    }
    assert metric_names("cellguard:cell_fill:ratio >= 0.9") == {"cellguard:cell_fill:ratio"}
    assert metric_names("max(cellguard_operator_ready)==0") == {"cellguard_operator_ready"}
    with pytest.raises(AssertionError):
        metric_names('{__name__="hidden"}')


def _allowed() -> set[str]:
    return set(metrics.EXPORTED_NAMES) | _recorded() | EXTERNAL_METRICS


def _annotation_queries(rule: Rule) -> Iterator[str]:
    """PromQL inside annotation templates: `printf "metric{node=%q}" ... | query`."""
    for text in rule.get("annotations", {}).values():
        for fmt in re.findall(r'printf\s+"((?:\\.|[^"\\])*)"[^}]*\|\s*query', text):
            yield fmt.replace('\\"', '"').replace("%q", '"x"')


def _rule_exprs() -> Iterator[tuple[str, str]]:
    for rule in _rules():
        name = rule.get("alert") or rule["record"]
        yield name, str(rule["expr"])
        for query in _annotation_queries(rule):
            yield f"{name} (annotation)", query


def test_rules_use_only_exported_metrics() -> None:
    allowed = _allowed()
    used: dict[str, set[str]] = {}
    for name, expr in _rule_exprs():
        names = metric_names(expr)
        assert names, f"{name}: no metric found in {expr!r}"
        unknown = names - allowed
        assert not unknown, f"{name} uses metrics nobody exports: {sorted(unknown)}"
        used[name] = names
    # the annotation queries were seen (the figures in the descriptions)
    assert any(name.endswith("(annotation)") for name in used)


# --- label names: what the operator exposes, what the rules read ------------------------------

# Target labels every scraped series gets. The cell gauges carry their own `namespace` and
# `service` labels, which collide with the target labels a prometheus-operator ServiceMonitor
# adds: the ServiceMonitor must set `honorLabels: true` (as for kube-state-metrics), or they
# arrive as `exported_namespace`/`exported_service` and the cell alerts name the wrong thing.
TARGET_LABELS = frozenset({"job", "instance"})
APISERVER_WEBHOOK_LABELS = frozenset(
    {"name", "type", "operation", "code", "rejected", "error_type", "rejection_code"}
)
NODE_LABELS = frozenset({"node"})
CELL_LABELS = frozenset({"namespace", "cell", "service"})


class _Fleet:
    def fleet_report(self) -> metrics.FleetReport:
        node = metrics.NodeFigures(
            node="node-a",
            thread_limit=32768,
            threads_allowed=26214,
            threads_observed=20000,
            threads_projected=24000,
            thread_headroom_ratio=0.2676,
            pid_limit=4194304,
            pid_headroom_ratio=0.5,
            budget_age_seconds=12.0,
            budget_known=True,
            budget_observed_timestamp=1_764_460_800.0,
        )
        cell = metrics.CellFiguresRow(
            namespace="streams",
            cell="ingest-a",
            service="ingest",
            replicas=58,
            max_safe_replicas=60,
            threads_per_pod=157,
            headroom_ratio=0.2676,
            scale_refused=False,
            threads_observed_per_pod=157,
            threads_modelled_per_pod=150,
            thread_model_accurate=True,
            policy="default",
        )
        return metrics.FleetReport(
            nodes=[node],
            cells={("streams", "ingest-a"): cell},
            policies={"default": metrics.PolicyThresholds.of(api.ThreadBudgetPolicySpec())},
        )


def _exposed_labels() -> dict[str, frozenset[str]]:
    """Sample name -> label names, from the operator's real exposition."""
    registry = CollectorRegistry()
    operator = metrics.OperatorMetrics(registry)
    operator.attach_fleet(_Fleet())
    operator.count_decision(False, api.RefusalReason.NODE_THREAD_LIMIT)
    operator.observe_admission("validate-streamcell", 0.004)
    operator.ready.set(1)
    exposed: dict[str, frozenset[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            exposed[sample.name] = frozenset(sample.labels)
    return exposed


def test_the_exposition_has_every_exported_name_with_the_labels_the_rules_use() -> None:
    exposed = _exposed_labels()
    assert set(metrics.EXPORTED_NAMES) <= set(exposed)
    for name in metrics.EXPORTED_NAMES:
        if name.startswith("cellguard_node_"):
            assert exposed[name] == NODE_LABELS, name
        elif name == metrics.CELL_INFO:
            assert exposed[name] == CELL_LABELS | {"policy"}, name
        elif name.startswith("cellguard_cell_"):
            assert exposed[name] == CELL_LABELS, name
        elif name.startswith("cellguard_policy_"):
            assert exposed[name] == {"policy"}, name
    assert exposed["cellguard_decisions_total"] == {"decision", "reason"}
    assert exposed["cellguard_admission_duration_seconds_bucket"] == {"webhook", "le"}
    assert exposed["cellguard_operator_ready"] == frozenset()
    assert exposed[metrics.BUILD_INFO] == {"version", "python_version"}


def test_build_info_names_the_version() -> None:
    registry = CollectorRegistry()
    metrics.OperatorMetrics(registry)
    text = generate_latest(registry).decode()
    (family,) = [f for f in text_string_to_metric_families(text) if f.name == metrics.BUILD_INFO]
    (sample,) = family.samples
    assert sample.value == 1.0
    assert sample.labels["version"] == cellguard.__version__
    assert sample.labels["python_version"] == platform.python_version()


def _labels_of(name: str, exposed: dict[str, frozenset[str]]) -> frozenset[str]:
    if name in exposed:
        return exposed[name] | TARGET_LABELS
    if name.startswith("apiserver_admission_webhook_"):
        return APISERVER_WEBHOOK_LABELS | TARGET_LABELS
    if name == "up":
        return TARGET_LABELS
    recorded = [rule for rule in _rules() if rule.get("record") == name]
    assert len(recorded) == 1, f"unknown metric {name}"
    labels: frozenset[str] = frozenset()
    for used in metric_names(str(recorded[0]["expr"])):
        labels |= _labels_of(used, exposed)
    return labels


def test_alert_annotations_use_labels_the_metrics_have() -> None:
    exposed = _exposed_labels()
    for name, rule in _alerts().items():
        available: frozenset[str] = frozenset()
        for used in metric_names(str(rule["expr"])):
            available |= _labels_of(used, exposed)
        referenced = set()
        for text in rule["annotations"].values():
            referenced |= set(re.findall(r"\$labels\.(\w+)", text))
        assert referenced <= available, f"{name}: no such labels {referenced - available}"


# --- the dashboard ---------------------------------------------------------------------------


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def test_dashboard_variables() -> None:
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    variables = _variables(dashboard)
    source = variables["datasource"]
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    for name in ("namespace", "cell"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variable["query"]["query"].startswith("label_values(cellguard_cell_replicas")
        assert variable["query"]["query"].endswith(f", {name})")


def _label_values_metric(query: str) -> str:
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query.strip())
    assert match, f"not a label_values query: {query!r}"
    return match.group(1)


def test_dashboard_panels_have_a_datasource_and_targets() -> None:
    dashboard = _dashboard()
    panels = [p for p in _panels(dashboard) if p["type"] != "row"]
    assert len(panels) >= 15
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel["targets"], f"{title}: no targets"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{title}: duplicate refIds"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"{title}: empty query"
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]


def test_dashboard_layout_does_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in _panels(_dashboard()):
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def _dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            yield f"${variable['name']}", _label_values_metric(query)


def test_dashboard_uses_only_exported_metrics_and_defined_variables() -> None:
    dashboard = _dashboard()
    allowed = _allowed()
    defined = set(_variables(dashboard))
    for where, expr in _dashboard_queries(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert not names - allowed, f"{where} uses metrics nobody exports: {names - allowed}"
        variables = {v for v in re.findall(r"\$\{?(\w+)", expr) if not v.startswith("__")}
        assert variables <= defined, f"{where}: undefined variables {variables - defined}"


def test_every_exported_metric_is_alerted_on_or_shown() -> None:
    used: set[str] = set()
    for _, expr in _rule_exprs():
        used |= metric_names(expr)
    for _, expr in _dashboard_queries(_dashboard()):
        used |= metric_names(expr)

    def base(name: str) -> str:
        return re.sub(r"_(bucket|count|sum)$", "", name)

    unseen = {base(n) for n in metrics.EXPORTED_NAMES} - {base(n) for n in used}
    assert not unseen, f"exported but neither alerted on nor on the dashboard: {unseen}"
