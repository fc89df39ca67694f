"""Pure construction of a StreamCell's status and its conditions.

Conditions follow metav1.Condition: lastTransitionTime moves only when status flips, so
`kubectl get scell -w` and alerting on transitions stay meaningful.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, MutableMapping
from typing import Any

from cellguard.budget import headroom_text
from cellguard.constants import CONDITION_READY, CONDITION_SCALE_REFUSED, CONDITION_WITHIN_BUDGET
from cellguard.resources.builders import selector_string
from cellguard.state.gate import BackstopAnswer, CellFigures, Refusal
from cellguard.state.store import CellRecord


def _timestamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    previous: list[Mapping[str, Any]],
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: datetime.datetime,
) -> dict[str, Any]:
    value = "True" if status else "False"
    before = next((c for c in previous if c.get("type") == type_), None)
    transition = (
        before["lastTransitionTime"]
        if before is not None and before.get("status") == value and before.get("lastTransitionTime")
        else _timestamp(now)
    )
    return {
        "type": type_,
        "status": value,
        "observedGeneration": generation,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    }


def refusal_status(refusal: Refusal) -> dict[str, Any]:
    return {
        "time": _timestamp(refusal.time),
        "requestedReplicas": refusal.requested_replicas,
        "reason": refusal.reason,
        "message": refusal.message,
    }


def cell_status(
    *,
    record: CellRecord,
    figures: CellFigures,
    backstop: BackstopAnswer,
    refusal: Refusal | None,
    refusal_current: bool,
    applied_replicas: int,
    existing_pods: int,
    ready_pods: int,
    previous: Mapping[str, Any],
    now: datetime.datetime,
) -> dict[str, Any]:
    conditions_before = list(previous.get("conditions") or [])
    generation = record.generation
    desired = record.spec.replicas
    ready = ready_pods >= applied_replicas and existing_pods == applied_replicas
    conditions = [
        condition(
            conditions_before,
            CONDITION_READY,
            ready,
            "AllReplicasReady" if ready else "ReplicasNotReady",
            f"{ready_pods}/{applied_replicas} replicas ready",
            generation,
            now,
        ),
        condition(
            conditions_before,
            CONDITION_WITHIN_BUDGET,
            figures.within_budget,
            figures.budget_reason,
            figures.budget_message,
            generation,
            now,
        ),
    ]
    held_back = not backstop.allowed and applied_replicas < desired
    if held_back:
        conditions.append(
            condition(
                conditions_before,
                CONDITION_SCALE_REFUSED,
                True,
                backstop.reason,
                backstop.message,
                generation,
                now,
            )
        )
    elif refusal is not None and refusal_current:
        conditions.append(
            condition(
                conditions_before,
                CONDITION_SCALE_REFUSED,
                True,
                refusal.reason,
                refusal.message,
                generation,
                now,
            )
        )
    else:
        conditions.append(
            condition(
                conditions_before,
                CONDITION_SCALE_REFUSED,
                False,
                "ScaleAdmitted",
                "the current size was admitted",
                generation,
                now,
            )
        )
    status: dict[str, Any] = {
        "replicas": existing_pods,
        "readyReplicas": ready_pods,
        "selector": selector_string(record.name),
        "threadsPerPod": figures.threads_per_pod,
        "maxSafeReplicas": figures.max_safe_replicas,
        # Rounded down: status never shows a node roomier than it is.
        "headroom": headroom_text(figures.headroom),
        "limitingNode": figures.limiting_node,
        "observedGeneration": generation,
        "conditions": conditions,
    }
    if held_back:
        status["lastRefusal"] = refusal_status(
            Refusal(
                time=now,
                requested_replicas=desired,
                reason=backstop.reason,
                message=backstop.message,
            )
        )
        previous_refusal = previous.get("lastRefusal") or {}
        if previous_refusal.get("requestedReplicas") == desired:
            status["lastRefusal"]["time"] = previous_refusal.get("time")
    elif refusal is not None:
        status["lastRefusal"] = refusal_status(refusal)
    elif previous.get("lastRefusal"):
        status["lastRefusal"] = previous["lastRefusal"]
    return status


def write_changed(
    patch_status: MutableMapping[str, Any],
    previous: Mapping[str, Any],
    new: Mapping[str, Any],
) -> bool:
    """Put into the patch only what differs; True when anything did."""
    changed = False
    for key, value in new.items():
        if previous.get(key) != value:
            patch_status[key] = value
            changed = True
    return changed
