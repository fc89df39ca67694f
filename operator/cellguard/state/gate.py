"""The scale gate: every scale decision of the operator passes here, one at a time.

It turns the cache into a planner snapshot, asks the planner, and on an admitted scale-up
(that is not a dry run) holds a reservation so that a concurrent change cannot spend the
same headroom. Refusals are remembered per cell for its status. No kopf, no client.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from cellguard.api.v1alpha1 import (
    AllowedReason,
    GateReason,
    RefusalReason,
    StreamCell,
    StreamCellSpec,
    ThreadBudgetPolicySpec,
)
from cellguard.budget import (
    CellKey,
    CellView,
    ClusterSnapshot,
    Decision,
    ThreadModelCheck,
    cell_status,
    check_thread_model,
    decide,
    threads_per_pod,
    with_cell,
    with_cell_at,
)
from cellguard.state.reservations import ReservationLedger
from cellguard.state.snapshots import SnapshotCache
from cellguard.state.store import CellRecord, ClusterState


class _Judged(Protocol):
    @property
    def reason(self) -> object: ...


_Judgement = TypeVar("_Judgement", bound=_Judged)

# Refusals for a node whose budget the snapshot does not know (yet): the ones a report that
# came in since its last refresh can overturn outright.
_BUDGET_NOT_KNOWN = frozenset({RefusalReason.BUDGET_UNKNOWN, RefusalReason.BUDGET_STALE})


class DecisionCounter(Protocol):
    def count_decision(self, allowed: bool, reason: str) -> None: ...


@dataclass(frozen=True)
class GateAnswer:
    allowed: bool
    reason: str
    message: str
    warnings: tuple[str, ...] = ()
    decision: Decision | None = None


@dataclass(frozen=True)
class Refusal:
    time: datetime.datetime
    requested_replicas: int
    reason: str
    message: str


@dataclass(frozen=True)
class BackstopAnswer:
    """What the reconciler may apply: the desired size if it fits, else what runs now."""

    allowed: bool
    reason: str
    message: str
    replicas_to_apply: int
    threads_per_pod: int
    # Nodes to label into the cell's pool before its pods at that size can land.
    claimed_nodes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class CellFigures:
    threads_per_pod: int  # budgeted: the model, or more where the pods hold more
    max_safe_replicas: int
    headroom: float | None
    limiting_node: str | None
    within_budget: bool
    budget_reason: str
    budget_message: str
    thread_model: ThreadModelCheck | None = None
    threads_observed_p95: int | None = None
    # (replicas, threads per pod) when the cell is settled and every pod was read: a
    # sample for fitting its thread model.
    thread_sample: tuple[int, int] | None = None


def _view(namespace: str, name: str, spec: StreamCellSpec) -> CellView:
    cell = StreamCell(metadata={"namespace": namespace, "name": name}, spec=spec)
    return CellView.from_streamcell(cell)


def _placement_changed(old: StreamCellSpec, new: StreamCellSpec) -> bool:
    return (
        old.placement != new.placement
        or old.isolation != new.isolation
        or old.policy_ref != new.policy_ref
        or old.service != new.service
        or (old.template.get("spec") or {}).get("nodeSelector")
        != (new.template.get("spec") or {}).get("nodeSelector")
        or (old.template.get("spec") or {}).get("tolerations")
        != (new.template.get("spec") or {}).get("tolerations")
    )


class ScaleGate:
    def __init__(
        self,
        state: ClusterState,
        ledger: ReservationLedger,
        metrics: DecisionCounter,
        *,
        now: Callable[[], datetime.datetime],
    ) -> None:
        self.state = state
        self.ledger = ledger
        self.metrics = metrics
        self.now = now
        self._lock = asyncio.Lock()
        self.snapshots = SnapshotCache(state, ledger, now=now)
        self.refusals: dict[CellKey, Refusal] = {}
        self.admitted_at: dict[CellKey, datetime.datetime] = {}

    def exclusive(self) -> asyncio.Lock:
        """The lock every decision holds: hold it to change what decisions look at."""
        return self._lock

    def snapshot(self) -> ClusterSnapshot:
        """The cache as a planner snapshot, now (see `SnapshotCache`)."""
        return self.snapshots.snapshot()

    def snapshot_of(self, cell: CellKey, *, current_budgets: bool = False) -> ClusterSnapshot:
        """The snapshot with `cell` as its pods were last read by the node agents.

        The shared snapshot takes budget reports at most once a second; the cell a decision
        or a status is about gets its latest readings, so that a refusal and the status
        written just before it name the same observed figure."""
        snapshot = self.snapshots.snapshot(current_budgets=current_budgets)
        kept = snapshot.cells.get(cell)
        if kept is None:
            return snapshot
        observed = self.state.observation(cell)
        if kept.observed == observed:
            return snapshot
        return with_cell(snapshot, replace(kept, observed=observed))

    def _judged(self, cell: CellKey, judge: Callable[[ClusterSnapshot], _Judgement]) -> _Judgement:
        """`judge` on the snapshot of `cell`; a refusal for a budget the snapshot does not
        know, made while budget reports wait for its next refresh, is made again on one
        that holds them all (a pool's first reports just in). Other figures may be a
        second old, for refusals as for admissions: a rebuild for every refusal would
        cost a full build each in a storm of refused requests at thousands of nodes."""
        judgement = judge(self.snapshot_of(cell))
        if judgement.reason in _BUDGET_NOT_KNOWN and self.snapshots.behind_on_budgets():
            judgement = judge(self.snapshot_of(cell, current_budgets=True))
        return judgement

    def _ttl(self, policy_name: str) -> datetime.timedelta:
        policy = self.state.policies.get(policy_name) or ThreadBudgetPolicySpec()
        return datetime.timedelta(seconds=policy.reservation_ttl_seconds)

    def _not_synced(self) -> GateAnswer:
        return GateAnswer(
            allowed=False,
            reason=GateReason.NOT_SYNCED,
            message=(
                "cellguard is starting and its view of the cluster is not complete yet, so it "
                "cannot check this scale-up; retry in a few seconds"
            ),
        )

    # ------------------------------------------------------------------ admission

    async def admit_cell_change(
        self,
        key: tuple[str, str],
        old: StreamCellSpec | None,
        new: StreamCellSpec,
        *,
        dry_run: bool,
    ) -> GateAnswer:
        cell = CellKey(*key)
        async with self._lock:
            current = old.replicas if old is not None else 0
            target = new.replicas
            grows = target > current
            if old is not None and not grows:
                model_grew = threads_per_pod(
                    new.threads.base, new.threads.per_peer, target
                ) > threads_per_pod(old.threads.base, old.threads.per_peer, target)
                if not (model_grew or _placement_changed(old, new)):
                    return GateAnswer(True, "NoChange", "no change that needs a budget check")
            if not self.state.synced:
                return self._settle(cell, target, self._not_synced(), dry_run)
            view = _view(cell.namespace, cell.name, new)
            if grows:
                decision = self._judged(
                    cell,
                    lambda snapshot: decide(with_cell_at(snapshot, view, current), cell, target),
                )
                answer = self._answer(decision)
                if decision.allowed and not dry_run:
                    self._reserve(decision, new.policy_ref)
                return self._settle(cell, target, answer, dry_run)
            # Same or fewer replicas, but each pod costs more or may land elsewhere: the
            # cell at its new shape must fit as a whole.
            status = self._judged(
                cell,
                lambda snapshot: cell_status(with_cell_at(snapshot, view, target), cell),
            )
            answer = GateAnswer(
                allowed=status.within_budget,
                reason=str(status.reason or AllowedReason.WITHIN_BUDGET),
                message=(
                    f"this change to {cell.namespace}/{cell.name} does not fit: {status.message}"
                    if not status.within_budget
                    else status.message
                ),
            )
            return self._settle(cell, target, answer, dry_run)

    async def admit_scale(self, key: tuple[str, str], target: int, *, dry_run: bool) -> GateAnswer:
        cell = CellKey(*key)
        async with self._lock:
            if not self.state.synced:
                return self._settle(cell, target, self._not_synced(), dry_run)
            record = self.state.cells.get(cell)
            if record is None:
                answer = GateAnswer(
                    allowed=False,
                    reason=GateReason.UNKNOWN_CELL,
                    message=(
                        f"StreamCell {cell.namespace}/{cell.name} is not known to cellguard yet "
                        "(just created, or its spec is invalid); retry in a few seconds"
                    ),
                )
                return self._settle(cell, target, answer, dry_run)
            decision = self._judged(cell, lambda snapshot: decide(snapshot, cell, target))
            if decision.allowed and target > record.spec.replicas and not dry_run:
                self._reserve(decision, record.spec.policy_ref)
            return self._settle(cell, target, self._answer(decision), dry_run)

    def _answer(self, decision: Decision) -> GateAnswer:
        warnings: list[str] = []
        if (
            decision.allowed
            and decision.to_replicas > decision.from_replicas
            and decision.max_safe_replicas
            and decision.to_replicas >= 0.9 * decision.max_safe_replicas
        ):
            warnings.append(
                f"{decision.cell} at {decision.to_replicas} replicas is close to its largest "
                f"safe size ({decision.max_safe_replicas}): plan another cell"
            )
        return GateAnswer(
            allowed=decision.allowed,
            reason=str(decision.reason),
            message=decision.message,
            warnings=tuple(warnings),
            decision=decision,
        )

    def _reserve(self, decision: Decision, policy_name: str, *, seen: bool = False) -> None:
        """Hold the decision's reservation. `seen`: the cache already holds the spec it is
        for (the reconciler's backstop); else (admission) from the next generation on."""
        if decision.reservation:
            record = self.state.cells.get(decision.cell)
            generation = (record.generation if seen else record.generation + 1) if record else 1
            self.ledger.hold(
                decision.reservation_until(
                    self.now() + self._ttl(policy_name), generation=generation
                )
            )

    def _settle(self, cell: CellKey, target: int, answer: GateAnswer, dry_run: bool) -> GateAnswer:
        """Record a real (not dry-run) answer: metrics, and the cell's last refusal."""
        if dry_run:
            return answer
        self.metrics.count_decision(answer.allowed, answer.reason)
        if answer.allowed:
            self.admitted_at[cell] = self.now()
        else:
            self.refusals[cell] = Refusal(self.now(), target, answer.reason, answer.message)
        return answer

    def refusal_of(self, cell: tuple[str, str]) -> tuple[Refusal | None, bool]:
        """The cell's last refusal, and whether it is still current (nothing admitted since)."""
        key = CellKey(*cell)
        refusal = self.refusals.get(key)
        if refusal is None:
            return None, False
        admitted = self.admitted_at.get(key)
        return refusal, admitted is None or admitted < refusal.time

    def forget(self, cell: tuple[str, str]) -> None:
        key = CellKey(*cell)
        self.refusals.pop(key, None)
        self.admitted_at.pop(key, None)

    # ------------------------------------------------------------------ reconciler

    async def backstop(self, record: CellRecord, applied: int | None) -> BackstopAnswer:
        """Re-check the desired size before it is applied (the webhook may be bypassed), and
        say which nodes must join the cell's pool first."""
        desired = record.spec.replicas
        running = applied if applied is not None else 0
        base, per_peer = record.spec.threads.base, record.spec.threads.per_peer
        per_pod_desired = threads_per_pod(base, per_peer, desired)
        async with self._lock:
            if not self.state.synced:
                if desired <= running:
                    return BackstopAnswer(True, "ScaleDown", "", desired, per_pod_desired)
                answer = self._not_synced()
                return BackstopAnswer(
                    False,
                    answer.reason,
                    answer.message,
                    running,
                    threads_per_pod(base, per_peer, running),
                )
            decision = self._judged(
                record.key,
                lambda snapshot: decide(
                    with_cell_at(snapshot, record.view, running), record.key, desired
                ),
            )
            if desired <= running:
                return BackstopAnswer(
                    True, "ScaleDown", "", desired, per_pod_desired, decision.claimed_nodes
                )
            held = self.ledger.get(record.key)
            if decision.allowed and (
                held is None
                or held.target_replicas != desired
                or (decision.claimed_nodes and held.claimed_nodes != decision.claimed_nodes)
            ):
                # Hold the threads (and claims) until the pods are placed: the admission's
                # reservation may be gone (a restart, an expiry, a bypassed webhook) or be
                # for another size (changes admitted faster than the cache saw them).
                self._reserve(decision, record.spec.policy_ref, seen=True)
        if decision.allowed:
            return BackstopAnswer(
                True,
                str(decision.reason),
                decision.message,
                desired,
                per_pod_desired,
                decision.claimed_nodes,
            )
        return BackstopAnswer(
            False,
            str(decision.reason),
            decision.message,
            running,
            threads_per_pod(base, per_peer, running),
            decision.claimed_nodes,
        )

    async def cell_figures(self, record: CellRecord, applied: int) -> CellFigures:
        async with self._lock:
            snapshot = self.snapshot_of(record.key)
            if applied != record.view.replicas:
                snapshot = with_cell_at(snapshot, record.view, applied)
            status = cell_status(snapshot, record.key)
            policy = self.state.policies.get(record.spec.policy_ref) or ThreadBudgetPolicySpec()
            model = check_thread_model(snapshot.cells[record.key], policy.thread_model_tolerance)
            readings = sorted(self.state.observed_threads(record.key))
            sample = _sample(self.state, record, readings)
        return CellFigures(
            threads_per_pod=status.threads_per_pod,
            max_safe_replicas=status.max_safe_replicas,
            headroom=status.headroom,
            limiting_node=status.limiting_node,
            within_budget=status.within_budget,
            budget_reason=str(status.reason or AllowedReason.WITHIN_BUDGET),
            budget_message=status.message,
            thread_model=model,
            threads_observed_p95=_p95(readings),
            thread_sample=sample,
        )


def _p95(ordered: list[int]) -> int | None:
    """Nearest-rank 95th percentile of sorted values."""
    if not ordered:
        return None
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]


def _sample(state: ClusterState, record: CellRecord, readings: list[int]) -> tuple[int, int] | None:
    """(replicas, p95 threads per pod) once the cell is settled at its size and every one of
    its pods was read; None while it is moving (new pods have not opened every peer yet)."""
    replicas = record.spec.replicas
    settled = (
        replicas > 0
        and state.pods_in_place(record.key) == replicas
        and state.deployment_replicas(record.key) == replicas
        and len(readings) == replicas
    )
    p95 = _p95(readings)
    return (replicas, p95) if settled and p95 is not None else None
