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
    CONDITION_THREAD_MODEL_ACCURATE,
    CONDITION_WITHIN_BUDGET,
    GROUP,
    LABEL_CELL,
    NODEBUDGET_PLURAL,
    POLICY_PLURAL,
    STREAMCELL_PLURAL,
    VERSION,
)
from cellguard.metrics import CellFiguresRow
from cellguard.reconcile import status as status_model
from cellguard.resources import builders
from cellguard.state.gate import CellFigures
from cellguard.state.settling import release_if_placed
from cellguard.state.store import CellRecord
from cellguard.wiring import Operator

log = logging.getLogger(__name__)


def register(registry: kopf.OperatorRegistry, op: Operator) -> None:
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

    feed("", "v1", "nodes", op.state.upsert_node, op.state.delete_node)
    feed(GROUP, VERSION, NODEBUDGET_PLURAL, op.state.upsert_budget, op.state.delete_budget)
    feed(GROUP, VERSION, POLICY_PLURAL, op.state.upsert_policy, op.state.delete_policy)

    @kopf.on.event(GROUP, VERSION, STREAMCELL_PLURAL, registry=registry)
    async def cell_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        key = (body.metadata.namespace or "", body.metadata.name or "")
        if event.get("type") == "DELETED":
            op.state.delete_cell(CellKey(*key))
            op.ledger.release(key)
            op.gate.forget(key)
        else:
            op.state.upsert_cell(dict(body))

    @kopf.on.event("", "v1", "pods", labels={LABEL_CELL: kopf.PRESENT}, registry=registry)
    async def pod_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        key = (body.metadata.namespace or "", body.metadata.name or "")
        if event.get("type") == "DELETED":
            op.state.delete_pod(key)
        else:
            op.state.upsert_pod(dict(body))
        cell = CellKey(key[0], body.metadata.labels.get(LABEL_CELL, ""))
        release_if_placed(op.state, op.ledger, cell)

    @kopf.on.event(
        "apps", "v1", "deployments", labels={LABEL_CELL: kopf.PRESENT}, registry=registry
    )
    async def deployment_event(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
        if event.get("type") == "DELETED":
            key = CellKey(body.metadata.namespace or "", body.metadata.labels.get(LABEL_CELL, ""))
            op.state.forget_deployment(key)
        else:
            op.state.note_deployment(dict(body))

    # ------------------------------------------------------------------ the cell

    @kopf.on.resume(GROUP, VERSION, STREAMCELL_PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, STREAMCELL_PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, STREAMCELL_PLURAL, field="spec", registry=registry)
    async def reconcile_cell(
        body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any
    ) -> None:
        record = op.state.upsert_cell(dict(body))
        if record is None:
            key = CellKey(body.metadata.namespace or "", body.metadata.name or "")
            raise kopf.PermanentError(f"invalid spec: {op.state.cell_errors.get(key)}")
        # The spec changed (or the operator restarted): apply the children whatever the
        # replicas, so template, placement and isolation changes reach the Deployment.
        await _converge(op, record.key, body, patch, logger, spec_changed=True)

    @kopf.timer(
        GROUP,
        VERSION,
        STREAMCELL_PLURAL,
        interval=op.settings.status_interval_seconds,
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
        if key in op.state.cells:
            await _converge(op, key, body, patch, logger)


async def _converge(
    op: Operator,
    key: tuple[str, str],
    body: kopf.Body,
    patch: kopf.Patch,
    logger: kopf.Logger,
    *,
    spec_changed: bool = False,
) -> None:
    record = op.state.cells[CellKey(*key)]
    desired = record.spec.replicas
    applied = op.state.deployment_replicas(record.key)
    answer = await op.gate.backstop(record, applied)
    target = answer.replicas_to_apply
    if answer.claimed_nodes:
        # The pods select their pool's label: the nodes join before the pods exist.
        await op.pools.join(record, answer.claimed_nodes)
    if spec_changed or target != applied:
        await asyncio.to_thread(_apply_children, op, record, target, answer.threads_per_pod)
        op.state.note_applied(record.key, target)
    seen = op.state.deployments.get(record.key)
    previous = dict(body.get("status", {}))
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
            previous=previous,
            now=op.now(),
        )
    )
    _post_events(body, previous, new_status, figures, logger)
    status_model.write_changed(patch.status, previous, new_status)
    refused = any(
        c["type"] == CONDITION_SCALE_REFUSED and c["status"] == "True"
        for c in new_status["conditions"]
    )
    model = figures.thread_model
    op.fleet.note_cell(
        CellFiguresRow(
            namespace=record.namespace,
            cell=record.name,
            service=record.spec.service,
            replicas=desired,
            max_safe_replicas=figures.max_safe_replicas,
            threads_per_pod=figures.threads_per_pod,
            headroom_ratio=figures.headroom,
            scale_refused=refused,
            threads_observed_per_pod=model.observed_per_pod if model else None,
            threads_modelled_per_pod=model.modelled_per_pod if model else None,
            thread_model_accurate=model.accurate if model else None,
        )
    )


def _apply_children(op: Operator, record: CellRecord, replicas: int, threads_per_pod: int) -> None:
    """Server-side apply the cell's Deployment, Service and PDB (blocking)."""
    args = (record.namespace, record.name, record.uid, record.spec)
    op.apply(builders.deployment(*args, replicas=replicas, threads_per_pod=threads_per_pod))
    op.apply(builders.headless_service(*args))
    op.apply(builders.disruption_budget(*args))


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
    was_accurate = _condition_status(previous, CONDITION_THREAD_MODEL_ACCURATE)
    is_accurate = _condition_status(new, CONDITION_THREAD_MODEL_ACCURATE)
    if is_accurate == "False" and was_accurate != "False" and figures.thread_model:
        kopf.warn(body, reason="ThreadModelWrong", message=figures.thread_model.message)
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
