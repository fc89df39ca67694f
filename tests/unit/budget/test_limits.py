"""A node's limit under a policy: the smallest figure, known, unknown, stale or assumed."""

from __future__ import annotations

from datetime import timedelta
from fractions import Fraction
from typing import Any

import pytest

from cellguard.api.v1alpha1 import KubepodsPids, NodeBudgetSpec
from cellguard.budget import BudgetStatus, node_limits
from cellguard.budget.limits import allowed_threads, describe, margin_fraction

from .helpers import NOW, PID_MAX, budget, policy, use_defaults


@pytest.mark.parametrize(
    ("fields", "limit", "source"),
    [
        ({}, PID_MAX, "kernel.pid_max"),
        ({"threads_max": 20_000}, 20_000, "kernel.threads-max"),
        ({"kubepods_max": 10_000}, 10_000, "kubepods pids.max"),
        ({"kubepods_max": 100_000}, PID_MAX, "kernel.pid_max"),
    ],
)
def test_effective_limit_is_the_smallest(fields: dict[str, Any], limit: int, source: str) -> None:
    figures = node_limits("n1", budget("n1", **fields), policy(), NOW)
    assert figures.status is BudgetStatus.KNOWN
    assert (figures.limit, figures.limit_source) == (limit, source)
    assert figures.allowed == allowed_threads(limit, Fraction(1, 5))


@pytest.mark.parametrize(
    ("limit", "margin", "allowed"),
    [
        (32_768, 0.2, 26_214),
        (10, 0.9, 1),  # in floats 10 * (1 - 0.9) is 0.9999999999999998
        (1_000, 0.0, 1_000),
        (4_194_304, 0.25, 3_145_728),
    ],
)
def test_allowed_threads_is_exact(limit: int, margin: float, allowed: int) -> None:
    assert allowed_threads(limit, margin_fraction(policy(safetyMargin=margin))) == allowed


def test_missing_budget_is_unknown() -> None:
    figures = node_limits("n1", None, policy(), NOW)
    assert figures.status is BudgetStatus.UNKNOWN
    assert figures.limit is None and not figures.usable
    assert "no NodeBudget" in figures.detail


@pytest.mark.parametrize(
    ("missing", "wire_name"),
    [("threads_max", "threadsMax"), ("pid_max", "pidMax"), ("threads_in_use", "threadsInUse")],
)
def test_missing_figure_is_unknown(missing: str, wire_name: str) -> None:
    fields: dict[str, object] = {"threads_max": 1, "pid_max": 1, "threads_in_use": 0}
    fields[missing] = None
    spec = NodeBudgetSpec(
        node_name="n1", observed_at=NOW, kubepods=KubepodsPids(unlimited=True), **fields
    )
    figures = node_limits("n1", spec, policy(), NOW)
    assert figures.status is BudgetStatus.UNKNOWN
    assert not figures.usable
    assert figures.detail == f"its NodeBudget lacks {wire_name}"


def test_unreadable_kubepods_limit_is_unknown_but_unlimited_is_known() -> None:
    known = {"threads_max": 50_000, "pid_max": 32_768, "threads_in_use": 0}
    unread = NodeBudgetSpec(node_name="n1", observed_at=NOW, kubepods=KubepodsPids(), **known)
    figures = node_limits("n1", unread, policy(), NOW)
    assert figures.status is BudgetStatus.UNKNOWN
    assert "kubepods" in figures.detail
    unlimited = unread.model_copy(update={"kubepods": KubepodsPids(unlimited=True)})
    assert node_limits("n1", unlimited, policy(), NOW).limit == 32_768


def test_stale_after_the_policy_window() -> None:
    fresh = node_limits("n1", budget("n1", age=timedelta(seconds=300)), policy(), NOW)
    stale = node_limits("n1", budget("n1", age=timedelta(seconds=301)), policy(), NOW)
    assert fresh.status is BudgetStatus.KNOWN
    assert stale.status is BudgetStatus.STALE and not stale.usable
    assert describe(stale, NOW) == "observed 301s ago, more than the 300s the policy allows"
    assert describe(stale, NOW + timedelta(seconds=1_000)).startswith("observed 1,301s ago")
    lenient = node_limits(
        "n1", budget("n1", age=timedelta(seconds=301)), policy(staleAfterSeconds=600), NOW
    )
    assert lenient.status is BudgetStatus.KNOWN


def test_use_defaults_stands_in_for_unknown_and_stale() -> None:
    rules = use_defaults(pidMax=20_000, threadsInUse=500, podPidsLimit=4_096)
    for figures in (
        node_limits("n1", None, rules, NOW),
        node_limits("n1", budget("n1", age=timedelta(hours=1)), rules, NOW),
    ):
        assert figures.usable and figures.from_defaults
        assert (figures.limit, figures.observed, figures.pod_pids_limit) == (20_000, 500, 4_096)
    known = node_limits("n1", budget("n1"), rules, NOW)
    assert not known.from_defaults and known.limit == PID_MAX


def test_naive_observation_time_is_utc() -> None:
    spec = budget("n1").model_copy(update={"observed_at": NOW.replace(tzinfo=None)})
    assert node_limits("n1", spec, policy(), NOW).status is BudgetStatus.KNOWN


def test_a_report_is_as_old_as_the_earlier_of_its_observation_and_its_arrival() -> None:
    # Says it was observed 10 s ago but arrived 50 s ago (the node's clock runs 40 s ahead,
    # within the tolerated skew) - or the other way round: either way 50 s old.
    arrived_early = node_limits(
        "n1", budget("n1", age=timedelta(seconds=10)), policy(), NOW,
        received_at=NOW - timedelta(seconds=50),
    )  # fmt: skip
    observed_early = node_limits(
        "n1", budget("n1", age=timedelta(seconds=50)), policy(), NOW, received_at=NOW
    )
    assert arrived_early.status is observed_early.status is BudgetStatus.KNOWN
    assert arrived_early.as_of == observed_early.as_of == NOW - timedelta(seconds=50)
    # So an agent that stops cannot keep its node fresh: 301 s after the arrival, stale.
    later = NOW + timedelta(seconds=251)
    stale = node_limits(
        "n1", budget("n1", age=timedelta(seconds=10)), policy(), later,
        received_at=NOW - timedelta(seconds=50),
    )  # fmt: skip
    assert stale.status is BudgetStatus.STALE
    assert describe(stale, later).startswith("observed 301s ago")


def test_a_report_from_a_clock_running_ahead_is_not_believed() -> None:
    an_hour_ahead = budget("n1", age=-timedelta(hours=1))
    figures = node_limits("n1", an_hour_ahead, policy(), NOW, received_at=NOW)
    assert figures.status is BudgetStatus.UNKNOWN and not figures.usable
    assert "observed 3,600s ahead of the operator's clock" in figures.detail
    assert "is the node's clock right?" in figures.detail
    # Without a receipt time (a listing), it counts as arrived now: the same answer.
    assert node_limits("n1", an_hour_ahead, policy(), NOW).status is BudgetStatus.UNKNOWN
    # A small skew is tolerated.
    slightly = node_limits("n1", budget("n1", age=-timedelta(seconds=30)), policy(), NOW)
    assert slightly.status is BudgetStatus.KNOWN
