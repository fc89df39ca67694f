"""The reconciler's kopf side: a cell created, changed, or found at start-up is converged
and its status written at once, through the status loop (reconcile.refresh).

Backstop rules: never apply a replica count the budget refuses (if the webhook was
bypassed, the Deployment stays where it is and the cell says why), and never scale down
on its own when limits shrink (the cell reports WithinBudget=False instead).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from cellguard.budget import CellKey
from cellguard.constants import (
    GROUP,
    STREAMCELL_PLURAL,
    VERSION,
)
from cellguard.reconcile.refresh import StatusLoop
from cellguard.wiring import Operator

log = logging.getLogger(__name__)


def register(registry: kopf.OperatorRegistry, op: Operator, statuses: StatusLoop) -> None:
    """Attach the StreamCell reconciler to `registry`.

    The cache is fed by the operator's own lists and watches (runtime.informer), not by
    kopf: kopf's per-object machinery (diff-bases, progress annotations, a worker per
    object) costs too much for every pod of a large fleet. Status refreshes - nodes,
    budgets and other cells move a cell's figures - and held-back scales carried out once
    they fit are one loop for every cell (reconcile.refresh), not a kopf timer a cell,
    whose per-run bookkeeping cost more than the work itself.
    """

    @kopf.on.resume(GROUP, VERSION, STREAMCELL_PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, STREAMCELL_PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, STREAMCELL_PLURAL, field="spec", registry=registry)
    async def reconcile_cell(body: kopf.Body, **_: Any) -> None:
        key = CellKey(body.metadata.namespace or "", body.metadata.name or "")
        cached = op.state.cells.get(key)
        # kopf's stream and the informer's may be apart: the newer spec wins (a spec change
        # bumps the generation), so an older event never brings back a superseded size.
        newer = cached is None or int(body.metadata.get("generation") or 0) > cached.generation
        if newer and op.state.upsert_cell(dict(body)) is None:
            raise kopf.PermanentError(f"invalid spec: {op.state.cell_errors.get(key)}")
        # The spec changed (or the operator restarted): apply the children whatever the
        # replicas, so template, placement and isolation changes reach the Deployment. The
        # status loop writes the status, here as every few seconds: one writer, so no stale
        # status can land after a newer one.
        await statuses.refresh(key, spec_changed=True)
