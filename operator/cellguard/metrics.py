"""Prometheus metrics of the operator.

Node and cell gauges are produced by a collector from the latest fleet report at scrape
time, so the series of a deleted node or cell disappear with it (no stale label sets).
Counters and the admission histogram are ordinary prometheus-client metrics.

Naming: `cellguard_` prefix, base units, `_ratio` for fractions, `_total` for counters,
`_seconds` for durations, `_timestamp_seconds` for Unix times, `_info` for a series of value
1 that carries labels (Prometheus and kube-state-metrics conventions).

The alert rules compare with thresholds the operator exports, not with numbers of their own:
each ThreadBudgetPolicy's `spec.alerts` (and staleAfterSeconds) as `cellguard_policy_*`
gauges, and each cell's policy as `cellguard_cell_info{policy}`. Like the node and cell
gauges they come from the leader only; the rules join them `on (job, instance)`, so the
figures and the thresholds always come from the same replica.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cellguard import __version__
from cellguard.api.v1alpha1 import AllowedReason, NodeBudgetSpec, ThreadBudgetPolicySpec
from cellguard.budget import BudgetStatus, CellKey, ClusterSnapshot, node_usage, with_policies
from cellguard.constants import DEFAULT_POLICY_NAME
from cellguard.state.records import Kind

# Every metric name the operator exports; alert rules and the dashboard may use only these
# (a test checks it).
NODE_THREAD_LIMIT = "cellguard_node_thread_limit"
NODE_THREADS_ALLOWED = "cellguard_node_threads_allowed"
NODE_THREADS_OBSERVED = "cellguard_node_threads_observed"
NODE_THREADS_PROJECTED = "cellguard_node_threads_projected"
NODE_THREAD_HEADROOM = "cellguard_node_thread_headroom_ratio"
NODE_PID_LIMIT = "cellguard_node_pid_limit"
NODE_PID_HEADROOM = "cellguard_node_pid_headroom_ratio"
NODE_BUDGET_OBSERVED = "cellguard_node_budget_observed_timestamp_seconds"
NODE_BUDGET_KNOWN = "cellguard_node_budget_known"
CELL_REPLICAS = "cellguard_cell_replicas"
CELL_MAX_SAFE = "cellguard_cell_max_safe_replicas"
CELL_THREADS_PER_POD = "cellguard_cell_threads_per_pod"
CELL_HEADROOM = "cellguard_cell_headroom_ratio"
CELL_SCALE_REFUSED = "cellguard_cell_scale_refused"
CELL_THREADS_OBSERVED = "cellguard_cell_threads_observed_per_pod"
CELL_THREADS_MODELLED = "cellguard_cell_threads_modelled_per_pod"
CELL_THREAD_MODEL_ACCURATE = "cellguard_cell_thread_model_accurate"
CELL_INFO = "cellguard_cell_info"
POLICY_WARNING_HEADROOM = "cellguard_policy_warning_headroom_ratio"
POLICY_CRITICAL_HEADROOM = "cellguard_policy_critical_headroom_ratio"
POLICY_NEAR_MAX_SAFE = "cellguard_policy_near_max_safe_ratio"
POLICY_STALE_AFTER = "cellguard_policy_budget_stale_after_seconds"
DECISIONS = "cellguard_decisions"  # exported as cellguard_decisions_total
ADMISSION_DURATION = "cellguard_admission_duration_seconds"
RESERVATIONS = "cellguard_reservations_active"
OPERATOR_READY = "cellguard_operator_ready"
BUILD_INFO = "cellguard_build_info"
RELISTS = "cellguard_cache_relists_total"
RELIST_REASONS = ("start", "resync", "expired")

EXPORTED_NAMES = frozenset(
    {
        NODE_THREAD_LIMIT,
        NODE_THREADS_ALLOWED,
        NODE_THREADS_OBSERVED,
        NODE_THREADS_PROJECTED,
        NODE_THREAD_HEADROOM,
        NODE_PID_LIMIT,
        NODE_PID_HEADROOM,
        NODE_BUDGET_OBSERVED,
        NODE_BUDGET_KNOWN,
        CELL_REPLICAS,
        CELL_MAX_SAFE,
        CELL_THREADS_PER_POD,
        CELL_HEADROOM,
        CELL_SCALE_REFUSED,
        CELL_THREADS_OBSERVED,
        CELL_THREADS_MODELLED,
        CELL_THREAD_MODEL_ACCURATE,
        CELL_INFO,
        POLICY_WARNING_HEADROOM,
        POLICY_CRITICAL_HEADROOM,
        POLICY_NEAR_MAX_SAFE,
        POLICY_STALE_AFTER,
        f"{DECISIONS}_total",
        f"{ADMISSION_DURATION}_bucket",
        f"{ADMISSION_DURATION}_count",
        f"{ADMISSION_DURATION}_sum",
        RESERVATIONS,
        OPERATOR_READY,
        BUILD_INFO,
        RELISTS,
    }
)


@dataclass(frozen=True)
class NodeFigures:
    """One node's figures as the operator sees them (None: unknown)."""

    node: str
    thread_limit: int | None
    threads_allowed: int | None
    threads_observed: int | None
    threads_projected: int | None
    thread_headroom_ratio: float | None
    pid_limit: int | None
    pid_headroom_ratio: float | None
    budget_age_seconds: float | None
    budget_known: bool
    # Unix time the budget's age is counted from (NodeLimits.as_of); None: no budget.
    budget_observed_timestamp: float | None = None


@dataclass(frozen=True)
class CellFiguresRow:
    namespace: str
    cell: str
    service: str
    replicas: int
    max_safe_replicas: int | None
    threads_per_pod: int
    headroom_ratio: float | None
    scale_refused: bool
    threads_observed_per_pod: int | None = None  # most any pod holds, as observed
    threads_modelled_per_pod: int | None = None  # the model, at the size observed at
    thread_model_accurate: bool | None = None  # None: not observed yet
    policy: str | None = None  # the cell's ThreadBudgetPolicy; Fleet fills it in at report time


@dataclass(frozen=True)
class PolicyThresholds:
    """What the alert rules compare with, from one ThreadBudgetPolicy's spec."""

    warning_headroom_ratio: float
    critical_headroom_ratio: float
    near_max_safe_ratio: float
    budget_stale_after_seconds: float

    @classmethod
    def of(cls, spec: ThreadBudgetPolicySpec) -> PolicyThresholds:
        return cls(
            warning_headroom_ratio=spec.alerts.warning_headroom,
            critical_headroom_ratio=spec.alerts.critical_headroom,
            near_max_safe_ratio=spec.alerts.near_max_safe_ratio,
            budget_stale_after_seconds=float(spec.stale_after_seconds),
        )


@dataclass
class FleetReport:
    nodes: list[NodeFigures] = field(default_factory=list)
    cells: Mapping[tuple[str, str], CellFiguresRow] = field(default_factory=dict)
    policies: Mapping[str, PolicyThresholds] = field(default_factory=dict)


def policy_thresholds(snapshot: ClusterSnapshot) -> dict[str, PolicyThresholds]:
    """Every cached policy's thresholds, and the `default` policy's even when it does not
    exist: the node figures are then computed under the stand-in default (the API
    defaults), and the node alerts compare with its thresholds."""
    policies = dict(snapshot.policies)
    policies.setdefault(DEFAULT_POLICY_NAME, ThreadBudgetPolicySpec())
    return {name: PolicyThresholds.of(spec) for name, spec in sorted(policies.items())}


class FleetSource(Protocol):
    def fleet_report(self) -> FleetReport: ...


def node_figures(snapshot: ClusterSnapshot) -> list[NodeFigures]:
    """Per-node figures under the default policy (a stand-in default when none exists)."""
    if DEFAULT_POLICY_NAME not in snapshot.policies:
        snapshot = with_policies(
            snapshot, {**snapshot.policies, DEFAULT_POLICY_NAME: ThreadBudgetPolicySpec()}
        )
    rows = []
    for usage in node_usage(snapshot, DEFAULT_POLICY_NAME):
        figures = usage.limits
        budget = snapshot.nodes[usage.node].budget
        as_of = figures.as_of
        rows.append(
            NodeFigures(
                node=usage.node,
                thread_limit=figures.limit,
                threads_allowed=figures.allowed,
                threads_observed=budget.threads_in_use if budget else None,
                threads_projected=usage.projected,
                thread_headroom_ratio=usage.headroom,
                pid_limit=budget.pid_max if budget else None,
                pid_headroom_ratio=_pid_headroom(budget),
                # Counted as the planner counts it (the agent's clock may be off).
                budget_age_seconds=(snapshot.now - as_of).total_seconds() if as_of else None,
                budget_known=figures.status is BudgetStatus.KNOWN,
                budget_observed_timestamp=as_of.timestamp() if as_of else None,
            )
        )
    return rows


def _pid_headroom(budget: NodeBudgetSpec | None) -> float | None:
    if budget is None:
        return None
    pods = budget.kubepods
    if pods.max is not None and pods.current is not None:
        return 1 - pods.current / pods.max
    if budget.pid_max and budget.threads_in_use is not None:
        return 1 - budget.threads_in_use / budget.pid_max
    return None


class Fleet:
    """The fleet as the gauges show it: nodes from the latest snapshot, cells as the
    reconciler last figured them. `snapshot` returns None while the operator knows nothing
    (a follower, or a leader still listing): then there are no series rather than zeros
    that would read as "every budget unknown"."""

    def __init__(self, snapshot: Callable[[], ClusterSnapshot | None]) -> None:
        self._snapshot = snapshot
        self.cell_rows: dict[tuple[str, str], CellFiguresRow] = {}

    def note_cell(self, row: CellFiguresRow) -> None:
        self.cell_rows[(row.namespace, row.cell)] = row

    def fleet_report(self) -> FleetReport:
        snapshot = self._snapshot()
        if snapshot is None:
            return FleetReport()
        # Rows of deleted cells go with them.
        self.cell_rows = {key: row for key, row in self.cell_rows.items() if key in snapshot.cells}
        cells = {
            key: replace(row, policy=snapshot.cells[CellKey(*key)].policy_name)
            for key, row in self.cell_rows.items()
        }
        return FleetReport(
            nodes=node_figures(snapshot), cells=cells, policies=policy_thresholds(snapshot)
        )


class FleetCollector(Collector):
    """Yields node and cell gauges from the source's current report at scrape time."""

    def __init__(self, source: FleetSource) -> None:
        self.source = source

    def describe(self) -> list[Metric]:
        return []  # dynamic label sets: no fixed description

    def collect(self) -> Iterator[Metric]:
        report = self.source.fleet_report()
        node_gauges = {
            NODE_THREAD_LIMIT: (
                "Effective thread limit of the node: min(threads-max, pid_max, kubepods pids.max).",
                "thread_limit",
            ),
            NODE_THREADS_ALLOWED: (
                "Threads the node may be projected to: the limit less the policy margin.",
                "threads_allowed",
            ),
            NODE_THREADS_OBSERVED: (
                "Threads (tasks) in use on the node, as its agent last observed.",
                "threads_observed",
            ),
            NODE_THREADS_PROJECTED: (
                "Threads projected on the node: max(observed, others + modelled) + reserved.",
                "threads_projected",
            ),
            NODE_THREAD_HEADROOM: (
                "Free fraction of the node's thread limit after projection (1 - projected/limit).",
                "thread_headroom_ratio",
            ),
            NODE_PID_LIMIT: ("kernel.pid_max of the node.", "pid_limit"),
            NODE_PID_HEADROOM: (
                "Free fraction of the node's kubepods pids.max (or pid_max when unlimited).",
                "pid_headroom_ratio",
            ),
            NODE_BUDGET_OBSERVED: (
                "Unix time the node's NodeBudget was observed: its observedAt, or when the "
                "operator received it if that is earlier (an agent's clock ahead).",
                "budget_observed_timestamp",
            ),
        }
        for name, (help_text, attribute) in node_gauges.items():
            family = GaugeMetricFamily(name, help_text, labels=["node"])
            for node in report.nodes:
                value = getattr(node, attribute)
                if value is not None:
                    family.add_metric([node.node], float(value))
            yield family
        known = GaugeMetricFamily(
            NODE_BUDGET_KNOWN,
            "1 when the node's budget is known and fresh, 0 when missing, invalid or stale.",
            labels=["node"],
        )
        for node in report.nodes:
            known.add_metric([node.node], 1.0 if node.budget_known else 0.0)
        yield known

        labels = ["namespace", "cell", "service"]
        cell_gauges = {
            CELL_REPLICAS: ("Replicas of the cell (spec).", "replicas"),
            CELL_MAX_SAFE: (
                "Largest replica count that fits every budget now.",
                "max_safe_replicas",
            ),
            CELL_THREADS_PER_POD: (
                "Threads budgeted per pod at the current size: the model, or the observed "
                "threads where the pods hold more.",
                "threads_per_pod",
            ),
            CELL_THREADS_OBSERVED: (
                "Most threads any pod of the cell holds, as the node agents observed.",
                "threads_observed_per_pod",
            ),
            CELL_THREADS_MODELLED: (
                "Threads per pod the cell's spec.threads model says, at the observed size.",
                "threads_modelled_per_pod",
            ),
            CELL_HEADROOM: (
                "Smallest thread headroom ratio over the cell's nodes.",
                "headroom_ratio",
            ),
        }
        for name, (help_text, attribute) in cell_gauges.items():
            family = GaugeMetricFamily(name, help_text, labels=labels)
            for row in report.cells.values():
                value = getattr(row, attribute)
                if value is not None:
                    family.add_metric([row.namespace, row.cell, row.service], float(value))
            yield family
        refused = GaugeMetricFamily(
            CELL_SCALE_REFUSED,
            "1 while the cell's desired scale is refused (ScaleRefused=True).",
            labels=labels,
        )
        for row in report.cells.values():
            refused.add_metric(
                [row.namespace, row.cell, row.service], 1.0 if row.scale_refused else 0.0
            )
        yield refused
        accurate = GaugeMetricFamily(
            CELL_THREAD_MODEL_ACCURATE,
            "1 while the pods hold no more threads than the model says, within the policy's "
            "threadModelTolerance (ThreadModelAccurate=True); 0 when they hold more.",
            labels=labels,
        )
        for row in report.cells.values():
            if row.thread_model_accurate is not None:
                accurate.add_metric(
                    [row.namespace, row.cell, row.service],
                    1.0 if row.thread_model_accurate else 0.0,
                )
        yield accurate
        info = GaugeMetricFamily(
            CELL_INFO,
            "1 for every cell; `policy` names the ThreadBudgetPolicy it is budgeted under.",
            labels=[*labels, "policy"],
        )
        for row in report.cells.values():
            if row.policy is not None:
                info.add_metric([row.namespace, row.cell, row.service, row.policy], 1.0)
        yield info

        policy_gauges = {
            POLICY_WARNING_HEADROOM: (
                "The policy's spec.alerts.warningHeadroom: node thread headroom below it "
                "warns (the `default` policy's, for nodes).",
                "warning_headroom_ratio",
            ),
            POLICY_CRITICAL_HEADROOM: (
                "The policy's spec.alerts.criticalHeadroom: node thread or PID headroom below "
                "it is critical.",
                "critical_headroom_ratio",
            ),
            POLICY_NEAR_MAX_SAFE: (
                "The policy's spec.alerts.nearMaxSafeRatio: a cell at this fraction of its "
                "max safe replicas or more is near it.",
                "near_max_safe_ratio",
            ),
            POLICY_STALE_AFTER: (
                "The policy's spec.staleAfterSeconds: a NodeBudget observed longer ago is stale.",
                "budget_stale_after_seconds",
            ),
        }
        for name, (help_text, attribute) in policy_gauges.items():
            family = GaugeMetricFamily(name, help_text, labels=["policy"])
            for policy, thresholds in report.policies.items():
                family.add_metric([policy], float(getattr(thresholds, attribute)))
            yield family


class OperatorMetrics:
    """The operator's counters, histogram and gauges, registered on one registry."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.decisions = Counter(
            DECISIONS,
            "Scale decisions by outcome (allowed/refused) and reason code: one per admission "
            "call (the API server calls again when its cached copy of the cell was stale, so "
            "one request can count twice).",
            ["decision", "reason"],
            registry=registry,
        )
        self.admission_duration = Histogram(
            ADMISSION_DURATION,
            "Time to answer an admission review, by webhook.",
            ["webhook"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=registry,
        )
        self.reservations = Gauge(
            RESERVATIONS, "Admitted scale changes holding a reservation.", registry=registry
        )
        self.ready = Gauge(
            OPERATOR_READY,
            "1 when this replica leads and its caches are complete.",
            registry=registry,
        )
        self.build_info = Gauge(
            BUILD_INFO,
            "1, with the cellguard version and the Python version that runs it.",
            ["version", "python_version"],
            registry=registry,
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        self.relists = Counter(
            RELISTS,
            "Full listings of a kind into the cache, by why: start, resync, or expired (the "
            "watch could not resume from its resourceVersion).",
            ["kind", "reason"],
            registry=registry,
        )
        for kind in Kind:  # every series from 0, so that increase() sees the first relist
            for reason in RELIST_REASONS:
                self.relists.labels(kind.value, reason)

    def precreate_decisions(self, reasons: list[str]) -> None:
        """Start every decision series at 0, so `increase()` sees the first refusal."""
        for reason in reasons:
            self.decisions.labels("refused", reason)
        self.decisions.labels("allowed", AllowedReason.WITHIN_BUDGET)

    def attach_fleet(self, source: FleetSource) -> FleetCollector:
        collector = FleetCollector(source)
        self.registry.register(collector)
        return collector

    def count_decision(self, allowed: bool, reason: str) -> None:
        self.decisions.labels("allowed" if allowed else "refused", reason).inc()

    def observe_admission(self, webhook: str, seconds: float) -> None:
        self.admission_duration.labels(webhook).observe(seconds)
