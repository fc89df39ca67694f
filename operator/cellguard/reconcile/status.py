"""Pure construction of a StreamCell's status and its conditions, through the API models
(`StreamCellStatus`, `Condition`, `LastRefusal`): what is written is what the CRD declares.

Conditions follow metav1.Condition: lastTransitionTime moves only when status flips, so
`kubectl get scell -w` and alerting on transitions stay meaningful.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal

from cellguard.api.v1alpha1 import (
    Condition,
    LastRefusal,
    ReadyReason,
    ScaleRefusedReason,
    StreamCellStatus,
    ThreadModelFit,
    ThreadSample,
)
from cellguard.budget import fit_thread_model, headroom_text
from cellguard.constants import (
    CONDITION_READY,
    CONDITION_SCALE_REFUSED,
    CONDITION_THREAD_MODEL_ACCURATE,
    CONDITION_WITHIN_BUDGET,
)
from cellguard.resources.builders import selector_string
from cellguard.state.gate import BackstopAnswer, CellFigures, Refusal
from cellguard.state.store import CellRecord

# As many as StreamCellStatus.threadSamples holds.
MAX_THREAD_SAMPLES = 16


def _second(moment: datetime.datetime) -> datetime.datetime:
    """metav1.Time has seconds: what the API would store."""
    return moment.astimezone(datetime.UTC).replace(microsecond=0)


def condition(
    previous: list[Mapping[str, Any]],
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int,
    now: datetime.datetime,
) -> Condition:
    value: Literal["True", "False", "Unknown"] = (
        "Unknown" if status is None else "True" if status else "False"
    )
    before = next((c for c in previous if c.get("type") == type_), None)
    transition = (
        Condition.model_validate(before).last_transition_time
        if before is not None and before.get("status") == value and before.get("lastTransitionTime")
        else _second(now)
    )
    return Condition(
        type=type_,
        status=value,
        observed_generation=generation,
        last_transition_time=transition,
        reason=reason,
        message=message,
    )


def last_refusal(refusal: Refusal) -> LastRefusal:
    return LastRefusal(
        time=_second(refusal.time),
        requested_replicas=refusal.requested_replicas,
        reason=refusal.reason,
        message=refusal.message,
    )


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
) -> StreamCellStatus:
    conditions_before = list(previous.get("conditions") or [])
    generation = record.generation
    desired = record.spec.replicas
    ready = ready_pods >= applied_replicas and existing_pods == applied_replicas

    def set_condition(type_: str, status: bool | None, reason: str, message: str) -> Condition:
        return condition(conditions_before, type_, status, reason, message, generation, now)

    held_back = not backstop.allowed and applied_replicas < desired
    if held_back:
        refused = set_condition(CONDITION_SCALE_REFUSED, True, backstop.reason, backstop.message)
    elif refusal is not None and refusal_current:
        refused = set_condition(CONDITION_SCALE_REFUSED, True, refusal.reason, refusal.message)
    else:
        refused = set_condition(
            CONDITION_SCALE_REFUSED,
            False,
            ScaleRefusedReason.SCALE_ADMITTED,
            "the current size was admitted",
        )
    conditions = [
        set_condition(
            CONDITION_READY,
            ready,
            ReadyReason.ALL_REPLICAS_READY if ready else ReadyReason.REPLICAS_NOT_READY,
            f"{ready_pods}/{applied_replicas} replicas ready",
        ),
        set_condition(
            CONDITION_WITHIN_BUDGET,
            figures.within_budget,
            figures.budget_reason,
            figures.budget_message,
        ),
        refused,
    ]
    model = figures.thread_model
    if model is not None:
        conditions.append(
            set_condition(
                CONDITION_THREAD_MODEL_ACCURATE, model.accurate, model.reason, model.message
            )
        )
    samples = thread_samples(previous.get("threadSamples") or [], figures.thread_sample)
    fitted = fit_thread_model((s.replicas, s.threads_per_pod) for s in samples)

    latest: LastRefusal | None = None
    previous_refusal = previous.get("lastRefusal") or None
    if held_back:
        latest = last_refusal(Refusal(now, desired, backstop.reason, backstop.message))
        if previous_refusal and previous_refusal.get("requestedReplicas") == desired:
            # The same refusal, still standing: keep when it was first made.
            latest.time = LastRefusal.model_validate(previous_refusal).time
    elif refusal is not None:
        latest = last_refusal(refusal)
    elif previous_refusal:
        latest = LastRefusal.model_validate(previous_refusal)
    return StreamCellStatus(
        replicas=existing_pods,
        ready_replicas=ready_pods,
        selector=selector_string(record.name),
        threads_per_pod=figures.threads_per_pod,
        max_safe_replicas=figures.max_safe_replicas,
        # Rounded down: status never shows a node roomier than it is.
        headroom=headroom_text(figures.headroom),
        limiting_node=figures.limiting_node,
        last_refusal=latest,
        threads_observed_per_pod=model.observed_per_pod if model is not None else None,
        threads_observed_p95=figures.threads_observed_p95,
        thread_samples=samples,
        thread_model_fit=(
            ThreadModelFit(
                base=round(fitted.base, 2),
                per_peer=round(fitted.per_peer, 3),
                residual=round(fitted.residual, 2),
                sizes=fitted.sizes,
            )
            if fitted is not None
            else None
        ),
        observed_generation=generation,
        conditions=conditions,
    )


def thread_samples(
    previous: list[Mapping[str, Any]], sample: tuple[int, int] | None
) -> list[ThreadSample]:
    """The samples with the latest one of its size last; the oldest sizes drop out beyond
    the status's limit (a fit wants the sizes the cell runs at now)."""
    kept = [ThreadSample.model_validate(item) for item in previous]
    if sample is not None:
        replicas, threads = sample
        kept = [s for s in kept if s.replicas != replicas]
        kept.append(ThreadSample(replicas=replicas, threads_per_pod=threads))
    return kept[-MAX_THREAD_SAMPLES:]


def as_patch(status: StreamCellStatus) -> dict[str, Any]:
    """The status as the API stores it (camelCase; a null clears a field in the patch)."""
    return status.model_dump(by_alias=True, mode="json")


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
