"""One cell brought to what its spec asks, as far as the budget allows: the backstop, the
children applied, the status and the Events an SRE wants, for the status loop (a new spec
and every refresh alike). No kopf here: the caller writes the status and posts the Events.

The caller holds the cell's lock (`Operator.cell_lock`) until the status is written: a
refresh computed from an older spec must never apply its size, or write its status, after
a newer spec's (it would scale a cell to a size nobody asks for any more).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import Any

from cellguard.budget import CellKey
from cellguard.constants import (
    CONDITION_SCALE_REFUSED,
    CONDITION_THREAD_MODEL_ACCURATE,
    CONDITION_WITHIN_BUDGET,
)
from cellguard.metrics import CellFiguresRow
from cellguard.reconcile import status as status_model
from cellguard.resources import builders
from cellguard.state.gate import BackstopAnswer, CellFigures
from cellguard.state.store import CellRecord
from cellguard.wiring import Operator


@dataclass(frozen=True)
class CellEvent:
    """A Kubernetes Event to post about the cell."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Converged:
    record: CellRecord
    status: dict[str, Any]  # the whole new status
    events: tuple[CellEvent, ...]


async def converge(
    op: Operator,
    key: CellKey,
    previous: Mapping[str, Any],
    *,
    spec_changed: bool = False,
    planning: contextlib.AbstractAsyncContextManager[None] | None = None,
) -> Converged | None:
    """Backstop, apply and figure the cell (None: it is not in the cache, or invalid).
    `planning`: entered for each plan, not while waiting on the API server."""
    record = op.state.cells.get(key)
    if record is None:
        return None
    slot = planning if planning is not None else contextlib.nullcontext()
    applied = op.state.deployment_replicas(record.key)
    async with slot:
        answer = await op.gate.backstop(record, applied)
    target = answer.replicas_to_apply
    apply = spec_changed or target != applied
    # The Service and PDB need no node: they are applied while the pool grows and the
    # Deployment goes (one API call after another, a new cell waited for all of them).
    await _both(
        asyncio.to_thread(_apply_companions, op, record) if apply else None,
        _place_and_scale(op, record, answer, apply=apply),
    )
    if apply:
        op.state.note_applied(record.key, target)
    async with slot:
        seen = op.state.deployments.get(record.key)
        refusal, refusal_current = op.gate.refusal_of(record.key)
        figures = await op.gate.cell_figures(record, target)
        new_status = status_model.as_patch(
            status_model.cell_status(
                record=record,
                figures=figures,
                backstop=answer,
                refusal=refusal,
                refusal_current=refusal_current,
                applied_replicas=target,
                existing_pods=seen.existing if seen else 0,
                ready_pods=seen.ready if seen else 0,
                previous=dict(previous),
                now=op.now(),
            )
        )
        op.fleet.note_cell(_figures_row(record, figures, new_status))
    return Converged(record, new_status, cell_events(previous, new_status, figures))


def _figures_row(
    record: CellRecord, figures: CellFigures, new_status: Mapping[str, Any]
) -> CellFiguresRow:
    refused = any(
        c["type"] == CONDITION_SCALE_REFUSED and c["status"] == "True"
        for c in new_status["conditions"]
    )
    model = figures.thread_model
    return CellFiguresRow(
        namespace=record.namespace,
        cell=record.name,
        service=record.spec.service,
        replicas=record.spec.replicas,
        max_safe_replicas=figures.max_safe_replicas,
        threads_per_pod=figures.threads_per_pod,
        headroom_ratio=figures.headroom,
        scale_refused=refused,
        threads_observed_per_pod=model.observed_per_pod if model else None,
        threads_modelled_per_pod=model.modelled_per_pod if model else None,
        thread_model_accurate=model.accurate if model else None,
    )


async def _place_and_scale(
    op: Operator, record: CellRecord, answer: BackstopAnswer, *, apply: bool
) -> None:
    if answer.claimed_nodes:
        # The pods select their pool's label: the nodes join before the pods exist.
        await op.pools.join(record, answer.claimed_nodes)
    if apply:
        manifest = builders.deployment(
            record.namespace,
            record.name,
            record.uid,
            record.spec,
            replicas=answer.replicas_to_apply,
            threads_per_pod=answer.threads_per_pod,
        )
        await asyncio.to_thread(op.apply, manifest)


def _apply_companions(op: Operator, record: CellRecord) -> None:
    """Server-side apply the cell's headless Service and PDB (blocking)."""
    args = (record.namespace, record.name, record.uid, record.spec)
    op.apply(builders.headless_service(*args))
    op.apply(builders.disruption_budget(*args))


async def _both(first: Awaitable[None] | None, second: Awaitable[None]) -> None:
    """Run both to their end, then raise the first failure as it is (its message in the
    log, not a TaskGroup's summary)."""
    outcomes = await asyncio.gather(
        *(step for step in (first, second) if step is not None), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


def cell_events(
    previous: Mapping[str, Any], new: Mapping[str, Any], figures: CellFigures
) -> tuple[CellEvent, ...]:
    """Kubernetes Events for what an SRE wants in `kubectl describe scell`: refusals and
    budget changes (not for every status refresh)."""
    events = []
    old_refusal = previous.get("lastRefusal") or {}
    new_refusal = new.get("lastRefusal") or {}
    if new_refusal and new_refusal.get("time") != old_refusal.get("time"):
        events.append(CellEvent("Warning", "ScaleRefused", str(new_refusal.get("message"))))
    before = previous.get("maxSafeReplicas")
    after = new.get("maxSafeReplicas")
    if before is not None and before != after:
        message = f"max safe replicas {before} -> {after}: {figures.budget_message}"
        events.append(CellEvent("Normal", "BudgetChanged", message))
    was_accurate = _condition_status(previous, CONDITION_THREAD_MODEL_ACCURATE)
    is_accurate = _condition_status(new, CONDITION_THREAD_MODEL_ACCURATE)
    if is_accurate == "False" and was_accurate != "False" and figures.thread_model:
        events.append(CellEvent("Warning", "ThreadModelWrong", figures.thread_model.message))
    was_within = _condition_status(previous, CONDITION_WITHIN_BUDGET)
    is_within = _condition_status(new, CONDITION_WITHIN_BUDGET)
    if was_within == "True" and is_within == "False":
        events.append(CellEvent("Warning", "OverBudget", figures.budget_message))
    return tuple(events)


def _condition_status(status: Mapping[str, Any], type_: str) -> str | None:
    for item in status.get("conditions") or []:
        if item.get("type") == type_:
            value: str | None = item.get("status")
            return value
    return None
