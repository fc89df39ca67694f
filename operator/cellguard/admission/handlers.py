"""Validating admission: thin kopf handlers that ask the scale gate and answer.

Six webhooks (see `resources.webhook`): StreamCell create/update, the StreamCell /scale
subresource (kubectl scale, the HorizontalPodAutoscaler), and direct changes to a cell's
own Deployment or ReplicaSets or their /scale, which are refused: the StreamCell is the
only door.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
from pydantic import ValidationError

from cellguard.api.v1alpha1 import StreamCellSpec
from cellguard.constants import (
    DEPLOYMENT_CONTROLLER_USERS,
    GROUP,
    LABEL_CELL,
    STREAMCELL_PLURAL,
    VERSION,
    WEBHOOK_DEPLOYMENT,
    WEBHOOK_DEPLOYMENT_SCALE,
    WEBHOOK_REPLICASET,
    WEBHOOK_REPLICASET_SCALE,
    WEBHOOK_STREAMCELL,
    WEBHOOK_STREAMCELL_SCALE,
)
from cellguard.state.gate import GateAnswer
from cellguard.wiring import Operator

log = logging.getLogger(__name__)

# 403 Forbidden: kubectl shows "admission webhook ... denied the request: <message>".
_REFUSED = 403


def _refuse(answer: GateAnswer) -> None:
    if not answer.allowed:
        log.info("refused (%s): %s", answer.reason, answer.message)
        raise kopf.AdmissionError(answer.message, code=_REFUSED)


class QuietRefusals(logging.Filter):
    """kopf logs every AdmissionError as an ERROR ("Webhook ... failed permanently"); a
    refusal is cellguard doing its job, logged at INFO above, not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("Webhook ") and "failed permanently" in message)


def _spec_of(body: kopf.Body | None) -> dict[str, Any]:
    return dict(body.spec) if body is not None else {}


def _replicas(body: kopf.Body | None) -> Any:
    return _spec_of(body).get("replicas")


def _parse_spec(body: kopf.Body | None) -> StreamCellSpec:
    try:
        return StreamCellSpec.model_validate(_spec_of(body))
    except ValidationError as error:
        problems = "; ".join(
            (f"spec.{'.'.join(str(p) for p in e['loc'])}: " if e["loc"] else "")
            + str(e["msg"]).removeprefix("Value error, ")
            for e in error.errors()
        )
        raise kopf.AdmissionError(f"invalid StreamCell: {problems}", code=422) from error


async def _checked(answer: Awaitable[GateAnswer]) -> GateAnswer:
    """The gate's answer; an unexpected failure refuses with a message, never a 500."""
    try:
        return await answer
    except Exception as error:
        log.exception("could not evaluate a scale change")
        raise kopf.AdmissionError(
            f"cellguard could not evaluate this change ({type(error).__name__}: {error}); "
            "refusing it rather than letting it through unchecked",
            code=422,
        ) from error


# A Deployment's ReplicaSets are named <deployment>-<pod-template-hash>; the hash is
# written in this alphabet (k8s.io/apimachinery rand.SafeEncodeString).
_POD_TEMPLATE_HASH = re.compile(r"^[bcdfghjklmnpqrstvwxz2456789]{1,10}$")


def replicaset_cell(op: Operator, namespace: str, name: str) -> str | None:
    """The cell whose Deployment owns the ReplicaSet `name`, judged by its name (a Scale
    carries neither labels nor owners); None for any other ReplicaSet."""
    deployment, _, suffix = name.rpartition("-")
    if not deployment or not _POD_TEMPLATE_HASH.match(suffix):
        return None
    return op.state.cell_of_deployment(namespace, deployment)


def _side_door(kind: str, cell: str, replicas: Any) -> kopf.AdmissionError:
    size = replicas if replicas is not None else "N"
    return kopf.AdmissionError(
        f"this {kind} belongs to StreamCell {cell}, whose every scale is checked against "
        f"node thread limits: scale the StreamCell instead "
        f"(kubectl scale streamcell/{cell} --replicas={size})",
        code=_REFUSED,
    )


def _controller_or_operator(op: Operator, userinfo: kopf.UserInfo) -> bool:
    return op.is_own_request(userinfo) or userinfo.get("username") in DEPLOYMENT_CONTROLLER_USERS


def register(registry: kopf.OperatorRegistry, op: Operator) -> None:
    """Attach the admission handlers to `registry`."""

    @kopf.on.validate(
        GROUP,
        VERSION,
        STREAMCELL_PLURAL,
        id=WEBHOOK_STREAMCELL,
        operations=["CREATE", "UPDATE"],
        registry=registry,
    )
    async def validate_streamcell(
        body: kopf.Body, dryrun: bool, warnings: list[str], **kwargs: Any
    ) -> None:
        started = time.perf_counter()
        old, new, operation = kwargs.get("old"), kwargs.get("new"), kwargs.get("operation")
        try:
            new_spec = _parse_spec(new)
            old_spec = _parse_spec(old) if operation == "UPDATE" and old else None
            namespace = body.metadata.get("namespace") or ""
            name = body.metadata.get("name") or ""
            answer = await _checked(
                op.gate.admit_cell_change((namespace, name), old_spec, new_spec, dry_run=dryrun)
            )
            warnings.extend(answer.warnings)
            _refuse(answer)
        finally:
            op.metrics.observe_admission(WEBHOOK_STREAMCELL, time.perf_counter() - started)

    @kopf.on.validate(
        GROUP,
        VERSION,
        STREAMCELL_PLURAL,
        id=WEBHOOK_STREAMCELL_SCALE,
        subresource="scale",
        operations=["UPDATE"],
        registry=registry,
    )
    async def validate_streamcell_scale(
        body: kopf.Body, dryrun: bool, warnings: list[str], **kwargs: Any
    ) -> None:
        # The object is an autoscaling/v1 Scale, not the cell: look the cell up ourselves.
        started = time.perf_counter()
        try:
            namespace = body.metadata.get("namespace") or ""
            name = body.metadata.get("name") or ""
            target = int(_replicas(kwargs.get("new")) or 0)
            answer = await _checked(op.gate.admit_scale((namespace, name), target, dry_run=dryrun))
            warnings.extend(answer.warnings)
            _refuse(answer)
        finally:
            op.metrics.observe_admission(WEBHOOK_STREAMCELL_SCALE, time.perf_counter() - started)

    @kopf.on.validate(
        "apps",
        "v1",
        "deployments",
        id=WEBHOOK_DEPLOYMENT,
        operations=["UPDATE"],
        labels={LABEL_CELL: kopf.PRESENT},
        registry=registry,
    )
    async def validate_cell_deployment(userinfo: kopf.UserInfo, **kwargs: Any) -> None:
        started = time.perf_counter()
        try:
            if op.is_own_request(userinfo):
                return
            old, new = kwargs.get("old"), kwargs.get("new")
            old_spec = _spec_of(old)
            new_spec = _spec_of(new)
            # Controllers (the deployment controller's revision annotation, the garbage
            # collector) touch metadata only: the spec is what nobody but us may change.
            if old_spec == new_spec:
                return
            cell = (new.metadata.labels if new is not None else {}).get(LABEL_CELL, "")
            if old_spec.get("replicas") != new_spec.get("replicas"):
                raise _side_door("Deployment", cell, None)
            raise kopf.AdmissionError(
                f"this Deployment is managed by StreamCell {cell}: edit the StreamCell's "
                f"spec.template instead (kubectl edit streamcell/{cell})",
                code=_REFUSED,
            )
        finally:
            op.metrics.observe_admission(WEBHOOK_DEPLOYMENT, time.perf_counter() - started)

    _scale_side_door(
        registry,
        op,
        "deployments",
        WEBHOOK_DEPLOYMENT_SCALE,
        "Deployment",
        op.state.cell_of_deployment,
    )
    _scale_side_door(
        registry,
        op,
        "replicasets",
        WEBHOOK_REPLICASET_SCALE,
        "ReplicaSet",
        lambda namespace, name: replicaset_cell(op, namespace, name),
    )

    @kopf.on.validate(
        "apps",
        "v1",
        "replicasets",
        id=WEBHOOK_REPLICASET,
        operations=["UPDATE"],
        labels={LABEL_CELL: kopf.PRESENT},
        registry=registry,
    )
    async def validate_cell_replicaset(userinfo: kopf.UserInfo, **kwargs: Any) -> None:
        started = time.perf_counter()
        try:
            if _controller_or_operator(op, userinfo):
                return
            old, new = kwargs.get("old"), kwargs.get("new")
            new_replicas = _replicas(new)
            if _replicas(old) == new_replicas:
                return
            cell = (new.metadata.labels if new is not None else {}).get(LABEL_CELL, "")
            raise _side_door("ReplicaSet", cell, new_replicas)
        finally:
            op.metrics.observe_admission(WEBHOOK_REPLICASET, time.perf_counter() - started)


def _scale_side_door(
    registry: kopf.OperatorRegistry,
    op: Operator,
    plural: str,
    handler_id: str,
    kind: str,
    cell_of: Callable[[str, str], str | None],
) -> None:
    """A `<plural>/scale` webhook refusing replica changes of a cell's own objects. A Scale
    carries no labels, so it sees every object's scale and `cell_of` picks out cells'."""

    @kopf.on.validate(
        "apps",
        "v1",
        plural,
        id=handler_id,
        subresource="scale",
        operations=["UPDATE"],
        registry=registry,
    )
    async def validate_cell_scale(body: kopf.Body, userinfo: kopf.UserInfo, **kwargs: Any) -> None:
        started = time.perf_counter()
        try:
            if _controller_or_operator(op, userinfo):
                return
            new_replicas = _replicas(kwargs.get("new"))
            if _replicas(kwargs.get("old")) == new_replicas:
                return
            namespace = body.metadata.get("namespace") or ""
            cell = cell_of(namespace, body.metadata.get("name") or "")
            if cell is not None:
                raise _side_door(kind, cell, new_replicas)
        finally:
            op.metrics.observe_admission(handler_id, time.perf_counter() - started)
