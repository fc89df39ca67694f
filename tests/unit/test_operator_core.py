"""The operator's pure core without a server: cache, reservations, gate, status, webhook."""

from __future__ import annotations

import asyncio
import datetime
import itertools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from cellguard.admission.handlers import replicaset_cell
from cellguard.api.v1alpha1 import StreamCellSpec
from cellguard.budget import decide
from cellguard.budget.pools import pool_label_key
from cellguard.budget.snapshot import CellKey, Reservation
from cellguard.constants import LABEL_CELL
from cellguard.metrics import CellFiguresRow, Fleet, FleetReport, OperatorMetrics, node_figures
from cellguard.reconcile import status as status_model
from cellguard.reconcile.refresh import StatusLoop
from cellguard.resources import webhook
from cellguard.settings import Settings
from cellguard.state.feed import CacheFeed
from cellguard.state.gate import BackstopAnswer, CellFigures, Refusal, ScaleGate
from cellguard.state.records import Kind, PodRecord, key_of, parse
from cellguard.state.reservations import ReservationLedger
from cellguard.state.settling import releasable_pool_labels, release_if_placed
from cellguard.state.store import ClusterState
from cellguard.wiring import Operator

from .manifests import NOW, budget, cell, cell_spec, node, pod


class Counter:
    def __init__(self) -> None:
        self.counted: list[tuple[bool, str]] = []

    def count_decision(self, allowed: bool, reason: str) -> None:
        self.counted.append((allowed, reason))


def two_node_state(**cells: dict[str, Any]) -> ClusterState:
    state = ClusterState()
    state.replace_all(
        nodes=[node("n1"), node("n2")],
        budgets=[budget("n1"), budget("n2")],
        cells=[cell("ns", name, **spec) for name, spec in cells.items()],
        policies=[{"metadata": {"name": "default"}, "spec": {"safetyMargin": 0.2}}],
        pods=[],
    )
    return state


# ---------------------------------------------------------------------- the cache


def test_pod_counts_follow_events_and_ignore_finished_or_foreign_pods() -> None:
    state = two_node_state(a={"replicas": 2})
    state.upsert_pod(pod("ns", "a-1", "a", "n1"))
    state.upsert_pod(pod("ns", "a-2", "a", None))  # pending: a pod of the cell, on no node
    state.upsert_pod(
        {
            "metadata": {"namespace": "ns", "name": "x", "labels": {}},
            "spec": {"nodeName": "n1"},
            "status": {},
        }
    )
    assert state.placement == {CellKey("ns", "a"): {"n1": 1}}
    assert state.pods_by_cell[CellKey("ns", "a")] == 2
    state.upsert_pod(pod("ns", "a-2", "a", "n2"))  # bound
    assert state.placement[CellKey("ns", "a")] == {"n1": 1, "n2": 1}
    state.upsert_pod(pod("ns", "a-1", "a", "n1", phase="Succeeded"))  # finished: no threads
    assert state.placement[CellKey("ns", "a")] == {"n2": 1}
    state.delete_pod(("ns", "a-2"))
    assert CellKey("ns", "a") not in state.placement
    assert state.pods_by_cell.get(CellKey("ns", "a"), 0) == 0


def test_budget_attaches_to_its_node_and_an_invalid_one_is_unknown() -> None:
    state = two_node_state()
    assert state.nodes["n1"].budget is not None
    broken = budget("n1")
    broken["spec"]["threadsMax"] = -5
    state.upsert_budget(broken)
    assert state.nodes["n1"].budget is None
    assert "threads_max" in state.budget_errors["n1"] or "threadsMax" in state.budget_errors["n1"]
    state.delete_budget("n2")
    assert state.nodes["n2"].budget is None


# ---------------------------------------------------------------------- reservations


def test_ledger_holds_replaces_releases_and_expires() -> None:
    ledger = ReservationLedger()
    key = CellKey("ns", "a")
    ledger.hold(Reservation(key, {"n1": 100}, NOW + datetime.timedelta(seconds=60), 4))
    ledger.hold(Reservation(key, {"n1": 300}, NOW + datetime.timedelta(seconds=60), 6))
    assert len(ledger) == 1
    assert ledger.live(NOW)[0].threads_by_node == {"n1": 300}
    assert ledger.release(key) is not None and ledger.get(key) is None
    ledger.hold(Reservation(key, {"n1": 1}, NOW + datetime.timedelta(seconds=1), 2))
    assert ledger.expire(NOW + datetime.timedelta(seconds=2))
    assert len(ledger) == 0


# ---------------------------------------------------------------------- the gate


def make_gate(state: ClusterState) -> tuple[ScaleGate, Counter]:
    counter = Counter()
    return ScaleGate(state, ReservationLedger(), counter, now=lambda: NOW), counter


def test_gate_refuses_everything_until_the_cache_is_synced() -> None:
    gate, counter = make_gate(ClusterState())
    answer = asyncio.run(gate.admit_scale(("ns", "a"), 3, dry_run=False))
    assert not answer.allowed
    assert answer.reason == "NotSynced"
    assert counter.counted == [(False, "NotSynced")]


def test_concurrent_scale_ups_that_fit_alone_do_not_both_pass() -> None:
    # Each cell alone may go to 8 (4 a node at 3,700 threads); both at 8 would need 30,600
    # on a node against 26,214 allowed.
    state = two_node_state(left={"replicas": 2}, right={"replicas": 2})
    for name in ("left", "right"):
        state.upsert_pod(pod("ns", f"{name}-1", name, "n1"))
        state.upsert_pod(pod("ns", f"{name}-2", name, "n2"))
    gate, counter = make_gate(state)

    async def both() -> list[bool]:
        answers = await asyncio.gather(
            gate.admit_scale(("ns", "left"), 8, dry_run=False),
            gate.admit_scale(("ns", "right"), 8, dry_run=False),
        )
        return [a.allowed for a in answers]

    assert sorted(asyncio.run(both())) == [False, True]
    assert len(gate.ledger) == 1
    assert sorted(allowed for allowed, _ in counter.counted) == [False, True]


def test_dry_run_neither_reserves_nor_counts() -> None:
    state = two_node_state(left={"replicas": 2})
    gate, counter = make_gate(state)
    answer = asyncio.run(gate.admit_scale(("ns", "left"), 4, dry_run=True))
    assert answer.allowed
    assert len(gate.ledger) == 0
    assert counter.counted == []


def test_a_thread_model_increase_at_the_same_size_is_checked() -> None:
    state = two_node_state(a={"replicas": 4})
    gate, _ = make_gate(state)
    old = StreamCellSpec.model_validate(cell_spec(4))
    cheap = StreamCellSpec.model_validate(cell_spec(4, base=2_000))
    costly = StreamCellSpec.model_validate(cell_spec(4, base=20_000))
    assert asyncio.run(gate.admit_cell_change(("ns", "a"), old, cheap, dry_run=False)).allowed
    refused = asyncio.run(gate.admit_cell_change(("ns", "a"), old, costly, dry_run=False))
    assert not refused.allowed
    assert "does not fit" in refused.message
    shrink = StreamCellSpec.model_validate(cell_spec(2))
    assert asyncio.run(gate.admit_cell_change(("ns", "a"), old, shrink, dry_run=False)).allowed


def test_backstop_holds_an_unsafe_spec_at_the_running_size() -> None:
    state = two_node_state(a={"replicas": 40})  # written past the webhook
    gate, _ = make_gate(state)
    record = state.cells[CellKey("ns", "a")]
    held = asyncio.run(gate.backstop(record, applied=2))
    assert not held.allowed
    assert held.replicas_to_apply == 2
    assert "would put node" in held.message
    down = asyncio.run(gate.backstop(record, applied=50))
    assert down.allowed and down.replicas_to_apply == 40


def test_refusal_is_current_until_a_later_admission() -> None:
    state = two_node_state(a={"replicas": 2})
    gate, _ = make_gate(state)
    asyncio.run(gate.admit_scale(("ns", "a"), 40, dry_run=False))
    refusal, current = gate.refusal_of(("ns", "a"))
    assert refusal is not None and current and refusal.requested_replicas == 40
    later = NOW + datetime.timedelta(seconds=5)
    gate.now = lambda: later
    assert asyncio.run(gate.admit_scale(("ns", "a"), 3, dry_run=False)).allowed
    assert gate.refusal_of(("ns", "a"))[1] is False


def test_node_figures_report_projection_and_unknown_budgets() -> None:
    state = two_node_state(a={"replicas": 2})
    state.upsert_pod(pod("ns", "a-1", "a", "n1"))
    state.delete_budget("n2")
    gate, _ = make_gate(state)
    rows = {row.node: row for row in node_figures(gate.snapshot())}
    assert rows["n1"].thread_limit == 32_768
    assert rows["n1"].threads_allowed == 26_214
    # The report (1,000 in use) came before the pod: its 1,000 others + 3,100 modelled.
    assert rows["n1"].threads_projected == 4_100
    assert rows["n1"].thread_headroom_ratio == pytest.approx(1 - 4_100 / 32_768)
    # Once a report reads the pod (3,200 in use, the pod's 2,200 among them), the pod
    # counts by its model: 1,000 + 3,100.
    state.upsert_budget(_read(budget("n1", in_use=3_200), {"a-1": 2_200}))
    gate.snapshots.budget_refresh_seconds = 0.0
    rows = {row.node: row for row in node_figures(gate.snapshot())}
    assert rows["n1"].threads_projected == 4_100
    assert rows["n1"].budget_known is True
    assert rows["n2"].budget_known is False
    assert rows["n2"].thread_limit is None


def test_the_fleet_reports_nothing_until_synced_and_forgets_deleted_cells() -> None:
    state = two_node_state(a={"replicas": 2})
    gate, _ = make_gate(state)
    synced = {"now": False}
    fleet = Fleet(lambda: gate.snapshot() if synced["now"] else None)
    row = CellFiguresRow("ns", "a", "feed", 2, 10, 3_100, 0.5, scale_refused=False)
    fleet.note_cell(row)
    fleet.note_cell(replace(row, cell="gone"))
    assert fleet.fleet_report() == FleetReport()  # no series rather than zeros
    synced["now"] = True
    report = fleet.fleet_report()
    assert [r.node for r in report.nodes] == ["n1", "n2"]
    assert list(report.cells) == [("ns", "a")]  # the row of a cell not in the cache is gone
    # each cell with the policy it is budgeted under, and the policies' alert thresholds
    assert report.cells[("ns", "a")].policy == "default"
    assert set(report.policies) == {"default"}
    assert report.policies["default"].warning_headroom_ratio == 0.3
    # when the budget was observed, as a Unix time
    assert all(r.budget_observed_timestamp is not None for r in report.nodes)
    age = {(r.budget_observed_timestamp or 0) + (r.budget_age_seconds or 0) for r in report.nodes}
    assert age == {NOW.timestamp()}


# ---------------------------------------------------------------------- status


def _figures(within: bool = True) -> CellFigures:
    return CellFigures(
        threads_per_pod=3_100,
        max_safe_replicas=10,
        headroom=0.5,
        limiting_node="n1",
        within_budget=within,
        budget_reason="WithinBudget" if within else "NodeThreadLimit",
        budget_message="m",
    )


def _status(**inputs: Any) -> dict[str, Any]:
    """The status as the reconciler writes it: built as StreamCellStatus, dumped. Unless
    told otherwise: an admitted cell of 2 replicas, all ready, no refusal, no status yet."""
    settled: dict[str, Any] = {
        "backstop": BackstopAnswer(True, "WithinBudget", "", 2, 3_100),
        "refusal": None,
        "refusal_current": False,
        "applied_replicas": 2,
        "existing_pods": 2,
        "ready_pods": 2,
        "previous": {},
        "now": NOW,
    }
    return status_model.as_patch(status_model.cell_status(**{**settled, **inputs}))


def test_conditions_keep_their_transition_time_until_they_flip() -> None:
    state = two_node_state(a={"replicas": 2})
    record = state.cells[CellKey("ns", "a")]
    allowed = BackstopAnswer(True, "WithinBudget", "", 2, 3_100)
    first = _status(
        record=record,
        figures=_figures(),
        backstop=allowed,
        refusal=None,
        refusal_current=False,
        applied_replicas=2,
        existing_pods=2,
        ready_pods=2,
        previous={},
        now=NOW,
    )
    later = NOW + datetime.timedelta(minutes=5)
    second = _status(
        record=record,
        figures=_figures(),
        backstop=allowed,
        refusal=None,
        refusal_current=False,
        applied_replicas=2,
        existing_pods=2,
        ready_pods=2,
        previous=first,
        now=later,
    )
    assert second["conditions"] == first["conditions"]
    flipped = _status(
        record=record,
        figures=_figures(within=False),
        backstop=allowed,
        refusal=None,
        refusal_current=False,
        applied_replicas=2,
        existing_pods=2,
        ready_pods=2,
        previous=second,
        now=later,
    )
    within = next(c for c in flipped["conditions"] if c["type"] == "WithinBudget")
    assert within["status"] == "False"
    assert within["lastTransitionTime"] == "2026-11-25T12:05:00Z"
    patch: dict[str, Any] = {}
    assert status_model.write_changed(patch, second, flipped)
    assert set(patch) == {"conditions"}


def test_a_current_webhook_refusal_sets_scale_refused() -> None:
    state = two_node_state(a={"replicas": 2})
    record = state.cells[CellKey("ns", "a")]
    refusal = Refusal(NOW, 40, "NodeThreadLimit", "scaling ... would put node n1 at ...")
    status = _status(
        record=record,
        figures=_figures(),
        backstop=BackstopAnswer(True, "WithinBudget", "", 2, 3_100),
        refusal=refusal,
        refusal_current=True,
        applied_replicas=2,
        existing_pods=2,
        ready_pods=1,
        previous={},
        now=NOW,
    )
    refused = next(c for c in status["conditions"] if c["type"] == "ScaleRefused")
    assert refused["status"] == "True" and refused["reason"] == "NodeThreadLimit"
    assert status["lastRefusal"]["requestedReplicas"] == 40
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["message"] == "1/2 replicas ready"


# ---------------------------------------------------------------------- webhook configuration


def test_webhook_configuration_is_scoped_and_fails_closed() -> None:
    config = webhook.validating_webhook_configuration(
        webhook.url_client_config("https://127.0.0.1:9443", "Q0E="),
        exempt_namespaces=["kube-system", "cellguard-system"],
        timeout_seconds=5,
    )
    hooks = {h["name"]: h for h in config["webhooks"]}
    assert set(hooks) == {
        "validate-streamcell.cellguard.io",
        "validate-streamcell-scale.cellguard.io",
        "validate-cell-deployment.cellguard.io",
        "validate-cell-deployment-scale.cellguard.io",
        "validate-cell-replicaset.cellguard.io",
        "validate-cell-replicaset-scale.cellguard.io",
    }
    for hook in hooks.values():
        assert hook["sideEffects"] == "None"
        # The cluster-wide /scale webhooks (fail open) wait 3 s at most, the others 5.
        assert hook["timeoutSeconds"] == (3 if hook["failurePolicy"] == "Ignore" else 5)
        exempt_by_name, exempt_by_label = hook["namespaceSelector"]["matchExpressions"]
        assert exempt_by_name["values"] == ["cellguard-system", "kube-system"]
        assert exempt_by_label == {
            "key": "cellguard.io/exempt",
            "operator": "NotIn",
            "values": ["true"],
        }
        assert hook["clientConfig"]["url"] == "https://127.0.0.1:9443/" + hook["name"].removesuffix(
            ".cellguard.io"
        )
        assert hook["matchConditions"]
    assert hooks["validate-streamcell-scale.cellguard.io"]["failurePolicy"] == "Fail"
    assert hooks["validate-streamcell.cellguard.io"]["failurePolicy"] == "Fail"
    assert "objectSelector" in hooks["validate-cell-deployment.cellguard.io"]
    # A Scale has no labels: an objectSelector would silently never match it.
    assert "objectSelector" not in hooks["validate-cell-deployment-scale.cellguard.io"]
    assert "objectSelector" not in hooks["validate-cell-replicaset-scale.cellguard.io"]
    # A cell's ReplicaSets: closed to everyone but the deployment controller, whose own
    # requests never reach cellguard (an outage cannot stall a rollout).
    replicaset = hooks["validate-cell-replicaset.cellguard.io"]
    assert "objectSelector" in replicaset and replicaset["failurePolicy"] == "Fail"
    condition = replicaset["matchConditions"][0]["expression"]
    assert "system:serviceaccount:kube-system:deployment-controller" in condition
    assert hooks["validate-cell-replicaset-scale.cellguard.io"]["failurePolicy"] == "Ignore"
    # Watching some namespaces only: the webhooks see no other.
    scoped = webhook.validating_webhook_configuration(
        webhook.url_client_config("https://x", ""),
        exempt_namespaces=[],
        timeout_seconds=2,
        watched_namespaces=["team-b", "team-a"],
    )
    for hook in scoped["webhooks"]:
        assert hook["namespaceSelector"]["matchExpressions"][-1] == {
            "key": "kubernetes.io/metadata.name",
            "operator": "In",
            "values": ["team-a", "team-b"],
        }
        assert hook["timeoutSeconds"] == 2  # below the /scale cap: as set
    with pytest.raises(ValueError, match=r"1\.\.30"):
        webhook.validating_webhook_configuration(
            webhook.url_client_config("https://x", ""), exempt_namespaces=[], timeout_seconds=31
        )


def test_snapshot_rebuilds_for_structure_at_once_and_for_budgets_at_most_every_second() -> None:
    state = two_node_state(a={"replicas": 2})
    gate, _ = make_gate(state)
    first = gate.snapshot()
    assert first.nodes["n1"].budget is not None
    state.upsert_budget(budget("n1", in_use=9_000))
    # A budget report within the refresh window is not rebuilt for ...
    assert gate.snapshot().nodes["n1"].budget.threads_in_use == 1_000  # type: ignore[union-attr]
    # ... but a new node is, at once: the scheduler may place pods on it now.
    state.upsert_node(node("n3"))
    assert "n3" in gate.snapshot().nodes
    assert gate.snapshot().nodes["n1"].budget.threads_in_use == 9_000  # type: ignore[union-attr]
    # Pods are swapped in without a rebuild, and counted.
    state.upsert_pod(pod("ns", "a-1", "a", "n3"))
    assert gate.snapshot().pods.of_cell(("ns", "a")) == {"n3": 1}
    gate.snapshots.budget_refresh_seconds = 0.0
    state.upsert_budget(budget("n2", in_use=5_000))
    assert gate.snapshot().nodes["n2"].budget.threads_in_use == 5_000  # type: ignore[union-attr]


def test_a_relisting_forgets_what_a_watch_gap_deleted_and_only_in_its_scope() -> None:
    state = two_node_state(a={"replicas": 2}, b={"replicas": 1})
    ledger = ReservationLedger()
    gate = ScaleGate(state, ledger, Counter(), now=lambda: NOW)
    feed = CacheFeed(state, ledger, gate)
    later = NOW + datetime.timedelta(hours=1)
    ledger.hold(Reservation(CellKey("ns", "b"), {"n2": 100}, later, target_replicas=3))
    state.upsert_cell(cell("other", "c", replicas=1))
    # While the watches were away, node n2, n1's budget and cell ns/b were deleted.
    feed.replaced(Kind.NODES, {"n1": parse(Kind.NODES, node("n1"))}, None)
    feed.replaced(Kind.BUDGETS, {"n2": parse(Kind.BUDGETS, budget("n2"))}, None)
    raw_a = cell("ns", "a", replicas=2)
    feed.replaced(Kind.CELLS, {key_of(Kind.CELLS, raw_a): parse(Kind.CELLS, raw_a)}, "ns")
    assert set(state.nodes) == {"n1"}
    assert set(state.budgets) == {"n2"} and state.nodes["n1"].budget is None
    # The namespace listed lost b; another namespace's cell is not its listing's to drop.
    assert set(state.cells) == {CellKey("ns", "a"), CellKey("other", "c")}
    # A deleted cell's reservation goes with it.
    assert ledger.get(("ns", "b")) is None
    # Every kind listed once: the cache is complete.
    assert state.synced


def test_watch_events_reach_the_cache_and_let_a_placed_reservation_go() -> None:
    state = two_node_state(a={"replicas": 1})
    ledger = ReservationLedger()
    gate = ScaleGate(state, ledger, Counter(), now=lambda: NOW)
    feed = CacheFeed(state, ledger, gate)
    key = CellKey("ns", "a")
    ledger.hold(Reservation(key, {"n1": 100}, NOW + datetime.timedelta(hours=1), 1))
    state.note_deployment(
        {"metadata": {"namespace": "ns", "labels": {LABEL_CELL: "a"}}, "spec": {"replicas": 1}}
    )
    raw = pod("ns", "a-1", "a", "n1")
    feed.changed(Kind.PODS, "ADDED", key_of(Kind.PODS, raw), parse(Kind.PODS, raw))
    assert state.placement[key] == {"n1": 1}
    assert ledger.get(key) is None  # its one pod is bound: nothing is still to come
    feed.changed(Kind.PODS, "DELETED", key_of(Kind.PODS, raw), parse(Kind.PODS, raw))
    assert key not in state.placement
    feed.changed(Kind.CELLS, "DELETED", key, parse(Kind.CELLS, cell("ns", "a", replicas=1)))
    assert key not in state.cells


def test_records_share_repeated_names() -> None:
    first = parse(Kind.PODS, pod("n" + "s", "a-1", "a", "n" + "1"))
    second = parse(Kind.PODS, pod("".join(["n", "s"]), "a-2", "a", "".join(["n", "1"])))
    assert isinstance(first, PodRecord) and isinstance(second, PodRecord)
    assert first.cell.namespace is second.cell.namespace
    assert first.node is second.node


def test_status_only_cell_events_leave_the_snapshot_alone() -> None:
    state = two_node_state(a={"replicas": 2})
    gate, _ = make_gate(state)
    first = gate.snapshot()
    versions = (state.version, state.cell_version)
    same = cell("ns", "a", replicas=2)
    same["status"] = {"replicas": 2}  # the operator's own status write comes back as an event
    state.upsert_cell(same)
    assert (state.version, state.cell_version) == versions
    built = gate.snapshots.last_built
    assert built is not None and built.cells is first.cells
    state.upsert_cell(cell("ns", "a", replicas=3))  # a real spec change does move them
    assert state.cell_version == versions[1] + 1
    assert gate.snapshot().cells[CellKey("ns", "a")].replicas == 3


# ---------------------------------------------------------------------- node pools


def _pool_operator(
    labelled: list[tuple[str, dict[str, str | None]]],
    apply: Callable[[dict[str, Any]], dict[str, Any]] = lambda manifest: manifest,
) -> Operator:
    """An operator over four nodes whose node labelling is recorded, not sent."""
    key = pool_label_key("feed")
    nodes = [
        node("n1", **{key: "ns.a"}),
        node("n2", **{key: "ns.a"}),
        node("n3", **{key: "ns.gone"}),
        node("n4"),
    ]
    stored = {n["metadata"]["name"]: n for n in nodes}

    def label_node(name: str, labels: dict[str, str | None]) -> dict[str, Any]:
        labelled.append((name, labels))
        current = dict(stored[name]["metadata"]["labels"])
        for label, value in labels.items():
            if value is None:
                current.pop(label, None)
            else:
                current[label] = value
        stored[name] = {**stored[name], "metadata": {"name": name, "labels": current}}
        return stored[name]

    op = Operator.create(
        Settings(),
        OperatorMetrics(CollectorRegistry()),
        apply,
        now=lambda: NOW,
        label_node=label_node,
        patch_status=lambda record, status: None,
        post_event=lambda record, type_, reason, message: None,
    )
    op.state.replace_all(
        nodes=nodes,
        budgets=[budget(n["metadata"]["name"]) for n in nodes],
        cells=[cell("ns", "a", replicas=1, service="feed", isolation="NodeExclusive")],
        policies=[{"metadata": {"name": "default"}, "spec": {"safetyMargin": 0.2}}],
        pods=[pod("ns", "a-1", "a", "n1")],
    )
    op.state.note_applied(CellKey("ns", "a"), 1)
    return op


def test_pools_release_nodes_of_gone_cells_and_empty_nodes_of_settled_ones() -> None:
    labelled: list[tuple[str, dict[str, str | None]]] = []
    op = _pool_operator(labelled)
    key = pool_label_key("feed")
    # n1 hosts a's pod: kept. n2 is an empty node of a settled cell; n3 names no cell.
    assert releasable_pool_labels(op.state, op.ledger, NOW) == [("n2", key), ("n3", key)]
    # While a holds a reservation (a change not yet placed) its nodes stay.
    op.ledger.hold(
        Reservation(
            cell=CellKey("ns", "a"),
            threads_by_node={"n2": 100},
            expires_at=NOW + datetime.timedelta(minutes=1),
            target_replicas=2,
        )
    )
    assert releasable_pool_labels(op.state, op.ledger, NOW) == [("n3", key)]
    op.ledger.release(("ns", "a"))
    # A cell whose Deployment is not at its size yet is not settled either.
    op.state.note_applied(CellKey("ns", "a"), 0)
    assert releasable_pool_labels(op.state, op.ledger, NOW) == [("n3", key)]
    op.state.note_applied(CellKey("ns", "a"), 1)
    released = asyncio.run(op.pools.tend())
    assert released == [("n2", key), ("n3", key)]
    assert labelled == [("n2", {key: None}), ("n3", {key: None})]
    # The cache took the stored nodes: the next decision sees them free.
    assert key not in op.state.nodes["n2"].labels


def test_backstop_claims_free_nodes_and_the_reconciler_labels_them_first() -> None:
    labelled: list[tuple[str, dict[str, str | None]]] = []
    op = _pool_operator(labelled)
    op.state.upsert_cell(cell("ns", "a", replicas=5, service="feed", isolation="NodeExclusive"))
    record = op.state.cells[CellKey("ns", "a")]
    answer = asyncio.run(op.gate.backstop(record, 1))
    # 4 new pods: over the pool (n1 with 1 pod, n2 empty) and the one free node (n3 is in a
    # gone cell's pool until released) the water line is 2; the pool holds 3 of them at 2,
    # so n4 must join.
    assert answer.allowed and answer.replicas_to_apply == 5
    assert answer.claimed_nodes == {"n4"}
    held = op.ledger.get(("ns", "a"))
    assert held is not None and held.claimed_nodes == {"n4"}
    joined = asyncio.run(op.pools.join(record, answer.claimed_nodes))
    assert joined == ["n4"] and labelled == [("n4", {pool_label_key("feed"): "ns.a"})]
    assert asyncio.run(op.pools.join(record, answer.claimed_nodes)) == []  # already in


def test_a_growing_cells_nodes_join_before_its_deployment_and_its_companions_go_alongside() -> None:
    steps: list[str] = []
    failing: set[str] = {"Service"}

    def apply(manifest: dict[str, Any]) -> dict[str, Any]:
        kind = manifest["kind"]
        if kind in failing:
            raise RuntimeError(f"the API server refused the {kind}")
        if kind == "Deployment":  # with the nodes labelled by then
            kind = f"Deployment {manifest['spec']['replicas']} on {sorted(n for n, _ in labelled)}"
        steps.append(kind)
        return manifest

    labelled: list[tuple[str, dict[str, str | None]]] = []
    op = _pool_operator(labelled, apply)
    key = CellKey("ns", "a")
    op.state.upsert_cell(cell("ns", "a", replicas=5, service="feed", isolation="NodeExclusive"))
    loop = StatusLoop(op)
    loop.spec_changed(key)
    # The Service fails: the Deployment still goes (after its node joined), the failure is
    # raised as it is, and the cell stays marked for its next refresh.
    with pytest.raises(RuntimeError, match="refused the Service"):
        asyncio.run(loop.refresh(key))
    assert labelled == [("n4", {pool_label_key("feed"): "ns.a"})]
    assert steps == ["Deployment 5 on ['n4']"]  # the PDB comes after the Service
    assert op.state.deployment_replicas(key) == 1  # not noted as applied
    failing.clear()
    steps.clear()
    assert asyncio.run(loop.refresh(key))
    assert sorted(steps) == ["Deployment 5 on ['n4']", "PodDisruptionBudget", "Service"]
    assert op.state.deployment_replicas(key) == 5
    steps.clear()
    asyncio.run(loop.refresh(key))  # converged: nothing applied again
    assert steps == []


def test_a_cells_replicasets_are_recognised_by_name_even_from_a_scale() -> None:
    op = _pool_operator([])
    assert replicaset_cell(op, "ns", "a-5d8f6b7c9") == "a"
    assert replicaset_cell(op, "ns", "a-x1") is None  # not a pod-template-hash
    assert replicaset_cell(op, "other", "a-5d8f6b7c9") is None  # no such cell there
    assert replicaset_cell(op, "ns", "b-5d8f6b7c9") is None
    assert replicaset_cell(op, "ns", "a") is None


def test_a_reservation_is_released_only_when_nothing_it_holds_for_is_still_to_come() -> None:
    op = _pool_operator([])
    key = CellKey("ns", "a")
    state = op.state
    state.upsert_cell(cell("ns", "a", replicas=5, service="feed", isolation="NodeExclusive"))
    op.ledger.hold(Reservation(key, {"n1": 100}, NOW + datetime.timedelta(minutes=1), 5))
    # 8 -> 2 -> 5: eight pods bound, six of them terminating; three new ones are to come.
    for i in range(8):
        state.upsert_pod(pod("ns", f"a-{i}", "a", "n1"))
    for i in range(2, 8):
        leaving = pod("ns", f"a-{i}", "a", "n1")
        leaving["metadata"]["deletionTimestamp"] = "2026-11-25T12:00:00Z"
        state.upsert_pod(leaving)
    op.state.note_applied(key, 5)
    assert not release_if_placed(op.state, op.ledger, key)  # 8 bound >= 5, but six are leaving
    for i in range(2, 8):
        state.delete_pod(("ns", f"a-{i}"))
    for i in range(8, 11):
        state.upsert_pod(pod("ns", f"a-{i}", "a", None))  # created, not bound yet
    assert not release_if_placed(op.state, op.ledger, key)
    for i in range(8, 11):
        state.upsert_pod(pod("ns", f"a-{i}", "a", "n2"))
    assert release_if_placed(op.state, op.ledger, key)
    assert op.ledger.get(key) is None
    # A reservation for more than the cell now asks for goes once the smaller size settles.
    op.ledger.hold(Reservation(key, {"n1": 100}, NOW + datetime.timedelta(minutes=1), 9))
    assert release_if_placed(op.state, op.ledger, key)


# ---------------------------------------------------------------------- thread-model truth


def _read(raw_budget: dict[str, Any], threads: dict[str, int]) -> dict[str, Any]:
    """The budget with per-pod readings, as the agent reports them (pod name -> threads)."""
    raw_budget["spec"]["pods"] = [
        {"uid": f"uid-ns-{name}", "threads": count} for name, count in threads.items()
    ]
    return raw_budget


def _observed_state(threads_each: int) -> ClusterState:
    """Cell a at 2 replicas, one pod a node (model: 3,000 + 100 a peer = 3,100)."""
    state = two_node_state(a={"replicas": 2})
    state.upsert_pod(pod("ns", "a-1", "a", "n1"))
    state.upsert_pod(pod("ns", "a-2", "a", "n2"))
    state.upsert_budget(_read(budget("n1"), {"a-1": threads_each, "other": 50}))
    state.upsert_budget(_read(budget("n2"), {"a-2": threads_each - 100}))
    return state


def test_the_store_maps_agent_readings_to_the_cells_running_pods() -> None:
    state = _observed_state(4_650)
    key = CellKey("ns", "a")
    assert sorted(state.observed_threads(key)) == [4_550, 4_650]  # not the unmapped "other"
    seen = state.observation(key)
    assert seen is not None and (seen.per_pod, seen.replicas) == (4_650, 2)
    # A terminating pod's threads are not the cell's at its size any more.
    leaving = pod("ns", "a-1", "a", "n1")
    leaving["metadata"]["deletionTimestamp"] = "2026-11-25T12:00:00Z"
    state.upsert_pod(leaving)
    assert state.observed_threads(key) == [4_550]
    state.delete_budget("n2")
    assert state.observation(key) is None


def test_a_nodes_report_splits_its_threads_into_the_cell_pods_and_the_others() -> None:
    state = _observed_state(4_650)
    # n1's report: a-1 (a cell pod) read at 4,650, "other" (no cell's pod) at 50.
    assert state.nodes["n1"].cell_pod_threads == 4_650
    # A pod the report read before the cache knew it counts among the node's others until
    # the pods are listed again (or the next report): never left out.
    late = two_node_state(a={"replicas": 2})
    late.upsert_budget(_read(budget("n1"), {"a-1": 4_650}))
    assert late.nodes["n1"].cell_pod_threads == 0
    late.replace(
        Kind.PODS,
        {key_of(Kind.PODS, raw): parse(Kind.PODS, raw) for raw in [pod("ns", "a-1", "a", "n1")]},
    )
    assert late.nodes["n1"].cell_pod_threads == 4_650
    # A node event keeps the report's figure; a deleted pod leaves it to the next report.
    late.upsert_node(node("n1", zone="b"))
    assert late.nodes["n1"].cell_pod_threads == 4_650


def test_a_scale_up_the_model_admits_is_refused_on_what_the_pods_hold() -> None:
    # pid_max 32,768 less 20% = 26,214 a node. Model at 10 replicas: 5 pods a node of 3,900
    # = 19,500 fits. The pods hold 1.5 times the model: 5 of 5,850 = 29,250 do not.
    accurate, _ = make_gate(_observed_state(3_100))
    assert asyncio.run(accurate.admit_scale(("ns", "a"), 10, dry_run=True)).allowed
    wrong, _ = make_gate(_observed_state(4_650))
    answer = asyncio.run(wrong.admit_scale(("ns", "a"), 10, dry_run=True))
    assert not answer.allowed and answer.reason == "NodeThreadLimit"
    assert "observed holding up to 4,650 threads each at 2 replicas" in answer.message
    assert "spec.threads says 3,100" in answer.message


def test_a_spec_change_is_judged_with_the_threads_the_pods_hold() -> None:
    gate, _ = make_gate(_observed_state(4_650))
    old = gate.state.cells[CellKey("ns", "a")].spec
    new = old.model_copy(update={"replicas": 10})
    answer = asyncio.run(gate.admit_cell_change(("ns", "a"), old, new, dry_run=True))
    assert not answer.allowed and "observed holding up to 4,650" in answer.message


def test_status_reports_the_thread_model_and_fits_it_once_two_sizes_were_seen() -> None:
    state = two_node_state(a={"replicas": 2})
    record = state.cells[CellKey("ns", "a")]
    gate, _ = make_gate(_observed_state(4_650))
    figures = asyncio.run(gate.cell_figures(gate.state.cells[CellKey("ns", "a")], 2))
    model = figures.thread_model
    assert model is not None and model.accurate is False
    assert (model.observed_per_pod, model.modelled_per_pod) == (4_650, 3_100)
    assert figures.threads_per_pod == 4_650  # budgeted: what the pods hold
    assert figures.threads_observed_p95 == 4_650
    assert figures.thread_sample is None  # the Deployment was never seen at its size
    first = _status(record=record, figures=replace(figures, thread_sample=(2, 4_650)))
    accurate = next(c for c in first["conditions"] if c["type"] == "ThreadModelAccurate")
    assert accurate["status"] == "False" and accurate["reason"] == "ObservedExceedsModel"
    assert "50% over (tolerance 10%)" in accurate["message"]
    assert first["threadsObservedPerPod"] == 4_650
    assert first["threadSamples"] == [{"replicas": 2, "threadsPerPod": 4_650}]
    assert first["threadModelFit"] is None  # one size: nothing to fit
    # At 4 replicas the same wrong model: 4,500 + 150 a peer really.
    second = _status(
        record=record, figures=replace(figures, thread_sample=(4, 4_950)), previous=first
    )
    assert second["threadSamples"] == [
        {"replicas": 2, "threadsPerPod": 4_650},
        {"replicas": 4, "threadsPerPod": 4_950},
    ]
    assert second["threadModelFit"] == {
        "base": 4_500.0,
        "perPeer": 150.0,
        "residual": 0.0,
        "sizes": 2,
    }
    # A newer sample of a size replaces the older one.
    third = _status(
        record=record, figures=replace(figures, thread_sample=(2, 4_700)), previous=second
    )
    assert [s["replicas"] for s in third["threadSamples"]] == [4, 2]


def test_status_and_decisions_read_the_latest_report_while_the_snapshot_waits() -> None:
    # The shared snapshot takes budget reports at most once a second; the status pass
    # samples the agents' latest readings, so its thread model (and the next decision's)
    # must come from them too (CI saw threadSamples at 165 beside ThreadModelAccurate
    # Unknown/NotObserved, then a refusal naming the figure of the size before).
    state = two_node_state(a={"replicas": 2})
    state.upsert_pod(pod("ns", "a-1", "a", "n1"))
    state.upsert_pod(pod("ns", "a-2", "a", "n2"))
    state.note_applied(CellKey("ns", "a"), 2)
    gate, _ = make_gate(state)
    key = CellKey("ns", "a")
    assert gate.snapshot().cells[key].observed is None  # built before any reading
    state.upsert_budget(_read(budget("n1"), {"a-1": 4_650}))
    state.upsert_budget(_read(budget("n2"), {"a-2": 4_650}))
    assert gate.snapshot().cells[key].observed is None  # within the refresh window
    figures = asyncio.run(gate.cell_figures(state.cells[key], 2))
    assert figures.thread_sample == (2, 4_650)
    model = figures.thread_model
    assert model is not None and model.accurate is False
    assert model.observed_per_pod == 4_650
    assert figures.threads_per_pod == 4_650
    # ... and a decision made right after names the same figure (as the status just did).
    answer = asyncio.run(gate.admit_scale(("ns", "a"), 10, dry_run=True))
    assert not answer.allowed and "observed holding up to 4,650 threads each" in answer.message


def test_a_refusal_is_judged_again_with_the_budget_reports_the_snapshot_waits_for() -> None:
    # A pool's first reports arrive just after the snapshot was built: the snapshot takes
    # them within a second, but no one is refused for that second (seen in the e2e tests
    # as "whose thread budget is unknown" on a cell created right after its pool).
    state = ClusterState()
    state.replace_all(
        nodes=[node("n1"), node("n2")],
        budgets=[budget("n1")],
        cells=[cell("ns", "a", replicas=0)],
        policies=[{"metadata": {"name": "default"}, "spec": {"safetyMargin": 0.2}}],
        pods=[],
    )
    gate, counter = make_gate(state)
    key = CellKey("ns", "a")
    # Refused on current reports, it stays refused: a budget that truly is unknown.
    refused = asyncio.run(gate.admit_scale(("ns", "a"), 2, dry_run=False))
    assert not refused.allowed and "n2, whose thread budget is unknown" in refused.message
    state.upsert_budget(budget("n2"))
    assert not decide(gate.snapshot(), key, 2).allowed  # within the refresh window
    answer = asyncio.run(gate.admit_scale(("ns", "a"), 2, dry_run=False))
    assert answer.allowed, answer.message
    assert counter.counted == [(False, "BudgetUnknown"), (True, "WithinBudget")]


def test_a_cell_not_observed_yet_reads_unknown() -> None:
    state = two_node_state(a={"replicas": 2})
    gate, _ = make_gate(state)
    figures = asyncio.run(gate.cell_figures(state.cells[CellKey("ns", "a")], 2))
    assert figures.thread_model is not None and figures.thread_model.accurate is None
    status = _status(record=state.cells[CellKey("ns", "a")], figures=figures)
    accurate = next(c for c in status["conditions"] if c["type"] == "ThreadModelAccurate")
    assert (accurate["status"], accurate["reason"]) == ("Unknown", "NotObserved")


# ---------------------------------------------------------------------- report freshness


def test_a_budget_is_judged_by_when_it_arrived_and_a_resync_does_not_renew_it() -> None:
    clock = {"now": NOW}
    state = ClusterState(clock=lambda: clock["now"])
    ahead = NOW + datetime.timedelta(seconds=45)  # the node's clock runs 45 s ahead
    listing = {
        "nodes": [node("n1")],
        "budgets": [budget("n1", observed=ahead)],
        "cells": [],
        "policies": [{"metadata": {"name": "default"}, "spec": {}}],
        "pods": [],
    }
    state.replace_all(**listing)
    assert state.budget_received["n1"] == NOW  # first seen: now, not in the future
    gate = ScaleGate(state, ReservationLedger(), Counter(), now=lambda: clock["now"])
    gate.snapshots.budget_refresh_seconds = 0.0
    assert node_figures(gate.snapshot())[0].budget_known is True  # 45 s ahead: tolerated
    # The agent stops. 301 s later, and after a resync listing the same old report, the
    # budget is stale: the report's future observedAt does not keep it fresh.
    clock["now"] = NOW + datetime.timedelta(seconds=301)
    state.replace_all(**listing)
    assert state.budget_received["n1"] == NOW
    [row] = node_figures(gate.snapshot())
    assert row.budget_known is False and row.budget_age_seconds == 301.0
    # A new report arrives: received now.
    state.upsert_budget(budget("n1", observed=clock["now"]))
    assert state.budget_received["n1"] == clock["now"]
    assert node_figures(gate.snapshot())[0].budget_known is True


def test_a_resync_forgets_a_budget_deleted_during_a_watch_gap() -> None:
    state = two_node_state()
    state.replace_all(
        nodes=[node("n1"), node("n2")],
        budgets=[budget("n1")],
        cells=[],
        policies=[],
        pods=[],
    )
    assert set(state.budgets) == {"n1"} and "n2" not in state.budget_received
    assert state.nodes["n2"].budget is None


# ---------------------------------------------------------------------- the status loop


def _loop_operator(
    patched: list[tuple[str, dict[str, Any]]], events: list[tuple[str, str]], applied: list[int]
) -> Operator:
    def apply(manifest: dict[str, Any]) -> dict[str, Any]:
        if manifest["kind"] == "Deployment":
            applied.append(manifest["spec"]["replicas"])
        return manifest

    op = Operator.create(
        Settings(),
        OperatorMetrics(CollectorRegistry()),
        apply,
        now=lambda: NOW,
        patch_status=lambda record, status: patched.append((record.name, status)),
        post_event=lambda record, type_, reason, message: events.append((record.name, reason)),
    )
    op.state.replace_all(
        nodes=[node("n1"), node("n2")],
        budgets=[budget("n1"), budget("n2")],
        cells=[cell("ns", "a", replicas=2), cell("ns", "b", replicas=1)],
        policies=[{"metadata": {"name": "default"}, "spec": {"safetyMargin": 0.2}}],
        pods=[
            pod("ns", "a-1", "a", "n1"),
            pod("ns", "a-2", "a", "n2"),
            pod("ns", "b-1", "b", "n1"),
        ],
    )
    op.state.note_applied(CellKey("ns", "a"), 2)
    op.state.note_applied(CellKey("ns", "b"), 1)
    return op


def test_the_status_loop_patches_only_cells_whose_status_changed() -> None:
    patched: list[tuple[str, dict[str, Any]]] = []
    events: list[tuple[str, str]] = []
    applied: list[int] = []
    op = _loop_operator(patched, events, applied)
    loop = StatusLoop(op)
    assert asyncio.run(loop.round()) == 2  # first figures for both cells
    assert {name for name, _ in patched} == {"a", "b"}
    assert all("maxSafeReplicas" in status for _, status in patched)
    assert applied == []  # both at their size: nothing applied
    patched.clear()
    # Nothing moved: nothing written, although the watch has not brought the writes back.
    assert asyncio.run(loop.round()) == 0
    # n1 fills up: both cells' figures change (a's max safe size falls: an Event says so).
    op.state.upsert_budget(budget("n1", in_use=20_000))
    op.gate.snapshots.budget_refresh_seconds = 0.0
    assert asyncio.run(loop.round()) == 2
    assert ("a", "BudgetChanged") in events
    # Only what changed is written: the generation seen is the same.
    assert all("observedGeneration" not in status for _, status in patched)
    assert applied == []


@pytest.mark.parametrize("paced", [True, False])
def test_a_waiting_request_moves_on_between_two_plans_of_the_status_loop(paced: bool) -> None:
    # Every cell in flight plans without yielding: unpaced, all the plans ready in one step
    # of the event loop run before a waiting webhook request's next step (a second's wait
    # at 5,000 nodes); paced, one plan a step.
    op = _loop_operator([], [], [])
    for name in ("c", "d", "e"):
        op.state.upsert_cell(cell("ns", name, replicas=0))
    loop = StatusLoop(op, paced=paced)
    order: list[str] = []
    planned = op.gate.cell_figures

    async def noting(record: Any, applied: int) -> Any:
        order.append("plan")
        return await planned(record, applied)

    op.gate.cell_figures = noting  # type: ignore[method-assign]

    async def scenario() -> None:
        round_ = asyncio.create_task(loop.round())
        while not round_.done():  # a request waiting, a step at a time, all round long
            order.append("request")
            await asyncio.sleep(0)

    asyncio.run(scenario())
    assert order.count("plan") == 5
    adjacent = any(a == b == "plan" for a, b in itertools.pairwise(order))
    assert adjacent is not paced, " ".join(order)


def test_the_status_loop_and_a_spec_change_never_interleave_on_one_cell() -> None:
    patched: list[tuple[str, dict[str, Any]]] = []
    applied: list[int] = []
    op = _loop_operator(patched, [], applied)
    key = CellKey("ns", "b")

    async def scenario() -> None:
        async with op.cell_lock(key):
            refresh = asyncio.create_task(StatusLoop(op).refresh(key))
            await asyncio.sleep(0.01)
            assert not refresh.done()  # it waits for the handler's converge
            # The handler's spec change lands while it holds the lock.
            op.state.upsert_cell(cell("ns", "b", replicas=1, base=3_001))
        await refresh

    asyncio.run(scenario())
    # The refresh converged the newest spec, not the one it started with.
    [(name, status)] = patched
    assert name == "b" and status["threadsPerPod"] == 3_001


def test_a_cell_whose_pods_or_deployment_changed_is_refreshed_before_the_next_round() -> None:
    patched: list[tuple[str, dict[str, Any]]] = []
    op = _loop_operator(patched, [], [])
    op.settings = replace(op.settings, status_interval_seconds=60.0)
    loop = StatusLoop(op)
    feed = CacheFeed(op.state, op.ledger, op.gate, on_cell_changed=loop.poke)

    async def scenario() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(loop.run(stop))
        raw = pod("ns", "a-3", "a", "n2")
        feed.changed(Kind.PODS, "ADDED", key_of(Kind.PODS, raw), parse(Kind.PODS, raw))
        await asyncio.sleep(1.5)
        stop.set()
        loop.poke(CellKey("ns", "a"))  # wakes the loop so that it sees the stop
        await running

    asyncio.run(scenario())
    # a's pod changed: a was refreshed within a second; b waits for the minute's round.
    assert [name for name, _ in patched] == ["a"]


def _cell_event(feed: CacheFeed, event_type: str, raw: dict[str, Any]) -> None:
    feed.changed(Kind.CELLS, event_type, key_of(Kind.CELLS, raw), parse(Kind.CELLS, raw))


def test_the_feed_hands_over_a_cells_new_spec_and_not_its_status_patches() -> None:
    state = two_node_state()
    gate, _ = make_gate(state)
    told: list[str] = []
    feed = CacheFeed(
        state, ReservationLedger(), gate, on_cell_spec=lambda key: told.append(key.name)
    )
    # The first listing (a start, or a restart): every cell, valid or not, is new here.
    listing = [cell("ns", "a", replicas=1), cell("ns", "b", replicas=2)]
    broken = cell("ns", "x", replicas=1)
    broken["spec"]["threads"] = {"base": -1}
    listing.append(broken)
    feed.replaced(
        Kind.CELLS,
        {key_of(Kind.CELLS, raw): parse(Kind.CELLS, raw) for raw in listing},
        None,
    )
    assert sorted(told) == ["a", "b", "x"]
    told.clear()
    # Its own status patch comes back: same generation, nothing to converge.
    patched = cell("ns", "a", replicas=1)
    patched["status"] = {"maxSafeReplicas": 4}
    _cell_event(feed, "MODIFIED", patched)
    assert told == []
    # A new generation, a new cell, and one deleted and made again (a new uid).
    _cell_event(feed, "MODIFIED", cell("ns", "a", replicas=3, generation=2))
    _cell_event(feed, "ADDED", cell("ns", "c", replicas=1))
    again = cell("ns", "b", replicas=2)
    again["metadata"]["uid"] = "uid-b-again"
    _cell_event(feed, "DELETED", cell("ns", "b", replicas=2))
    _cell_event(feed, "ADDED", again)
    assert told == ["a", "c", "b"]
    told.clear()
    # A relisting after a watch gap: only the cell changed during the gap.
    listing = [cell("ns", "a", replicas=3, generation=2), cell("ns", "c", generation=2, replicas=5)]
    feed.replaced(
        Kind.CELLS,
        {key_of(Kind.CELLS, raw): parse(Kind.CELLS, raw) for raw in listing},
        None,
    )
    assert told == ["c"]


def test_a_new_spec_is_applied_at_its_size_once_and_again_after_a_failed_apply() -> None:
    applied: list[int] = []
    op = _loop_operator([], [], applied)
    loop = StatusLoop(op)
    key = CellKey("ns", "b")
    failing = [True]
    apply = op.apply

    def flaky(manifest: dict[str, Any]) -> dict[str, Any]:
        if failing[0]:
            raise RuntimeError("the API server is away")
        return apply(manifest)

    op.apply = flaky
    loop.spec_changed(key)  # b's spec is new to this process, at the size it runs
    with pytest.raises(RuntimeError):
        asyncio.run(loop.refresh(key))
    assert applied == []
    failing[0] = False
    asyncio.run(loop.round())  # still marked: its children are applied at its size
    assert applied == [1]
    asyncio.run(loop.round())  # converged: an unchanged cell at its size applies nothing
    assert applied == [1]


def test_an_invalid_spec_is_said_once_a_generation_and_nothing_is_applied() -> None:
    events: list[tuple[str, str]] = []
    applied: list[int] = []
    op = _loop_operator([], events, applied)
    loop = StatusLoop(op)
    feed = CacheFeed(op.state, op.ledger, op.gate, on_cell_spec=loop.spec_changed)
    broken = cell("ns", "x", replicas=1)
    broken["spec"]["threads"] = {"base": -1}

    async def scenario() -> None:
        _cell_event(feed, "ADDED", broken)
        await loop.round()
        await loop.round()
        broken["metadata"]["generation"] = 2
        _cell_event(feed, "MODIFIED", broken)
        await loop.round()

    asyncio.run(scenario())
    assert [e for e in events if e[1] == "InvalidSpec"] == [("x", "InvalidSpec")] * 2
    assert applied == []
