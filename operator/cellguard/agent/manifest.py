"""The NodeBudget object the agent applies, built from what it read (pure)."""

from __future__ import annotations

from typing import Any

from cellguard.api.v1alpha1 import NodeBudget, NodeBudgetSpec


def nodebudget_manifest(spec: NodeBudgetSpec, *, node_uid: str | None = None) -> dict[str, Any]:
    """The server-side apply body for the node's NodeBudget.

    With `node_uid`, the Node owns the budget, so the garbage collector deletes the
    budget with the node. Empty figures are left out rather than sent as null: under
    server-side apply a field the agent applied before and now omits is removed, so a
    figure that became unreadable disappears instead of lingering with an old value.
    """
    metadata: dict[str, Any] = {"name": spec.node_name}
    if node_uid is not None:
        metadata["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": spec.node_name, "uid": node_uid}
        ]
    budget = NodeBudget(metadata=metadata, spec=spec)
    return budget.model_dump(mode="json", by_alias=True, exclude_none=True)
