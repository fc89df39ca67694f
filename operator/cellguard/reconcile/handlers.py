"""The reconciler: thin kopf handlers that keep the cache fresh, apply what the builders
make for a cell, and write status through `patch.status`.

Backstop rules: never apply a replica count the budget refuses (if the webhook was
bypassed, the Deployment stays where it is and the cell says why), and never scale down
on its own when limits shrink (the cell reports WithinBudget=False instead).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import kopf

from cellguard.budget import CellKey
from cellguard.constants import (
    CONDITION_SCALE_REFUSED,
    CONDITION_WITHIN_BUDGET,
    GROUP,
    LABEL_CELL,
    NODEBUDGET_PLURAL,
    POLICY_PLURAL,
    STREAMCELL_PLURAL,
    VERSION,
)
from cellguard.context import OperatorContext
from cellguard.metrics import CellFiguresRow
from cellguard.reconcile import status as status_model
from cellguard.state.gate import CellFigures

log = logging.getLogger(__name__)


def register(registry: kopf.OperatorRegistry, ctx: OperatorContext) -> None:
    """Attach the cache feeders and the StreamCell reconciler to `registry`."""

    # ------------------------------------------------------------------ cache feeders
    # kopf lists each resource first (event type None) and then watches: the cache, loaded
    # by the start-up listing, stays complete.

    def feed(
        group: str,
        version: str,
        plural: str,
        upsert: Callable[[dict[str, Any]], None],
        delete: Callable[[str], None],
    ) -> None:
        """Nodes, NodeBudgets and policies: cluster-scoped, by name, and each may move
        every cell's figures."""

        @kopf.on.event(group, version, plural, id=f"feed-{plural}", registry=registry)
        async def cluster_object_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
            if event.get("type") == "DELETED":
                delete(body.metadata.name or "")
            else:
                upsert(dict(body))
            ctx.budget_changed()

    feed("", "v1", "nodes", ctx.state.upsert_node, ctx.state.delete_node)
    feed(GROUP, VERSION, NODEBUDGET_PLURAL, ctx.state.upsert_budget, ctx.state.delete_budget)
    feed(GROUP, VERSION, POLICY_PLURAL, ctx.state.upsert_policy, ctx.state.delete_policy)

    @kopf.on.event(GROUP, VERSION, STREAMCELL_PLURAL, registry=registry)
    async def cell_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        key = (body.metadata.namespace or "", body.metadata.name or "")
        if event.get("type") == "DELETED":
            ctx.state.delete_cell(CellKey(*key))
            ctx.ledger.release(key)
            ctx.gate.forget(key)
        else:
            ctx.state.upsert_cell(dict(body))

    @kopf.on.event("", "v1", "pods", labels={LABEL_CELL: kopf.PRESENT}, registry=registry)
    async def pod_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        key = (body.metadata.namespace or "", body.metadata.name or "")
        if event.get("type") == "DELETED":
            ctx.state.delete_pod(key)
        else:
            ctx.state.upsert_pod(dict(body))
        ctx.release_if_placed(CellKey(key[0], body.metadata.labels.get(LABEL_CELL, "")))

    @kopf.on.event(
        "apps", "v1", "deployments", labels={LABEL_CELL: kopf.PRESENT}, registry=registry
    )
    async def deployment_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        if event.get("type") == "DELETED":
            key = CellKey(body.metadata.namespace or "", body.metadata.labels.get(LABEL_CELL, ""))
            ctx.forget_deployment(key)
        else:
            ctx.note_deployment(dict(body))

    # ------------------------------------------------------------------ the cell

    @kopf.on.resume(GROUP, VERSION, STREAMCELL_PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, STREAMCELL_PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, STREAMCELL_PLURAL, field="spec", registry=registry)
    async def reconcile_cell(
        body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any
    ) -> None:
        record = ctx.state.upsert_cell(dict(body))
        if record is None:
            key = CellKey(body.metadata.namespace or "", body.metadata.name or "")
            raise kopf.PermanentError(f"invalid spec: {ctx.state.cell_errors.get(key)}")
        # The spec changed (or the operator restarted): apply the children whatever the
        # replicas, so template, placement and isolation changes reach the Deployment.
        await _converge(ctx, record.key, body, patch, logger, spec_changed=True)

    @kopf.timer(
        GROUP,
        VERSION,
        STREAMCELL_PLURAL,
        interval=ctx.settings.status_interval_seconds,
        initial_delay=1.0,
        idle=0,
        registry=registry,
    )
    async def refresh_cell(
        body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any
    ) -> None:
        # Nodes, budgets and other cells move the figures: keep status fresh, and carry out a
        # scale the backstop held back once it fits.
        key = CellKey(body.metadata.namespace or "", body.metadata.name or "")
        if key in ctx.state.cells:
            await _converge(ctx, key, body, patch, logger)


async def _converge(
    ctx: OperatorContext,
    key: tuple[str, str],
    body: kopf.Body,
    patch: kopf.Patch,
    logger: kopf.Logger,
    *,
    spec_changed: bool = False,
) -> None:
    record = ctx.state.cells[CellKey(*key)]
    desired = record.spec.replicas
    applied = ctx.deployment_replicas.get(record.key)
    answer = await ctx.gate.backstop(record, applied)
    target = answer.replicas_to_apply
    if answer.claimed_nodes:
        # The pods select their pool's label: the nodes join before the pods exist.
        await ctx.join_pool(record, answer.claimed_nodes)
    if spec_changed or target != applied or not ctx.has_children(record.key):
        await asyncio.to_thread(ctx.apply_children, record, target, answer.threads_per_pod)
        ctx.deployment_replicas[record.key] = target
    previous = dict(body.get("status", {}))
    refusal, refusal_current = ctx.gate.refusal_of(record.key)
    figures = await ctx.gate.cell_figures(record, target)
    new_status = status_model.cell_status(
        record=record,
        figures=figures,
        backstop=answer,
        refusal=refusal,
        refusal_current=refusal_current,
        applied_replicas=target,
        existing_pods=ctx.deployment_existing.get(record.key, 0),
        ready_pods=ctx.deployment_ready.get(record.key, 0),
        previous=previous,
        now=ctx.now(),
    )
    _post_events(body, previous, new_status, figures, logger)
    status_model.write_changed(patch.status, previous, new_status)
    refused = any(
        c["type"] == CONDITION_SCALE_REFUSED and c["status"] == "True"
        for c in new_status["conditions"]
    )
    ctx.cell_rows[record.key] = CellFiguresRow(
        namespace=record.namespace,
        cell=record.name,
        service=record.spec.service,
        replicas=desired,
        max_safe_replicas=figures.max_safe_replicas,
        threads_per_pod=figures.threads_per_pod,
        headroom_ratio=figures.headroom,
        scale_refused=refused,
    )


def _post_events(
    body: kopf.Body,
    previous: dict[str, Any],
    new: dict[str, Any],
    figures: CellFigures,
    logger: kopf.Logger,
) -> None:
    """Kubernetes Events for what an SRE wants in `kubectl describe scell`: refusals and
    budget changes (not for every status refresh)."""
    old_refusal = previous.get("lastRefusal") or {}
    new_refusal = new.get("lastRefusal") or {}
    if new_refusal and new_refusal.get("time") != old_refusal.get("time"):
        logger.warning("scale refused: %s", new_refusal.get("message"))
        kopf.warn(body, reason="ScaleRefused", message=str(new_refusal.get("message")))
    before = previous.get("maxSafeReplicas")
    after = new.get("maxSafeReplicas")
    if before is not None and before != after:
        # kopf.event, not kopf.info: posting is limited to warnings so that kopf's own
        # per-handler log lines do not become Events.
        kopf.event(
            body,
            type="Normal",
            reason="BudgetChanged",
            message=f"max safe replicas {before} -> {after}: {figures.budget_message}",
        )
    was_within = _condition_status(previous, CONDITION_WITHIN_BUDGET)
    is_within = _condition_status(new, CONDITION_WITHIN_BUDGET)
    if was_within == "True" and is_within == "False":
        kopf.warn(body, reason="OverBudget", message=figures.budget_message)


def _condition_status(status: dict[str, Any], type_: str) -> str | None:
    for item in status.get("conditions") or []:
        if item.get("type") == type_:
            value: str | None = item.get("status")
            return value
    return None
