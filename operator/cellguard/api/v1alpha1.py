"""The cellguard.io/v1alpha1 API: the single source of truth for the CRD schemas.

Every field carries a description (it becomes `kubectl explain` text), a default where one
makes sense, and bounds. `crdgen` turns these models into the committed `crds/*.yaml`.
Field names on the wire are camelCase (Kubernetes convention); Python names are snake_case.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel


class _Model(BaseModel):
    """Base: camelCase on the wire, unknown fields refused, assignment validated."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """CEL rules for the CRD schema (`x-kubernetes-validations`), as (rule, message) pairs.

    Each rule is mirrored by a pydantic validator on the same model, so what the API
    server refuses the models refuse too, with the same message. (The models refuse a
    little more: see StreamCellSpec, whose template CEL cannot look into.)
    """
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


# --------------------------------------------------------------------------- shared types


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


_TOLERATION_EXISTS_NO_VALUE = (
    "a toleration with operator Exists matches every value of its key: drop `value`, "
    "or use operator Equal"
)
_TOLERATION_EMPTY_KEY_EXISTS = (
    "a toleration without `key` tolerates every taint and needs operator Exists: "
    "set `key`, or set operator: Exists"
)
_TOLERATION_SECONDS_NO_EXECUTE = (
    "tolerationSeconds applies only to NoExecute taints: set effect: NoExecute, "
    "or drop tolerationSeconds"
)


class Toleration(_Model):
    """A core/v1 Toleration, as the scheduler reads it."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "self.operator != 'Exists' || !has(self.value) || self.value == ''",
                _TOLERATION_EXISTS_NO_VALUE,
            ),
            (
                "(has(self.key) && self.key != '') || self.operator == 'Exists'",
                _TOLERATION_EMPTY_KEY_EXISTS,
            ),
            (
                "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                _TOLERATION_SECONDS_NO_EXECUTE,
            ),
        )
    )

    key: str | None = Field(
        default=None, description="Taint key the toleration applies to; empty matches all keys."
    )
    operator: TolerationOperator = Field(
        default=TolerationOperator.EQUAL,
        description="Exists matches any value; Equal matches `value` exactly.",
    )
    value: str | None = Field(default=None, description="Taint value to match with Equal.")
    effect: TaintEffect | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        description="How long a NoExecute taint is tolerated before eviction.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Toleration:
        if self.operator is TolerationOperator.EXISTS and self.value:
            raise ValueError(_TOLERATION_EXISTS_NO_VALUE)
        if not self.key and self.operator is not TolerationOperator.EXISTS:
            raise ValueError(_TOLERATION_EMPTY_KEY_EXISTS)
        if self.toleration_seconds is not None and self.effect is not TaintEffect.NO_EXECUTE:
            raise ValueError(_TOLERATION_SECONDS_NO_EXECUTE)
        return self


class Condition(_Model):
    """A metav1.Condition."""

    type: str = Field(
        description="Condition type: Ready, WithinBudget, ScaleRefused or ThreadModelAccurate."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this condition was set from."
    )
    last_transition_time: datetime = Field(
        description="When the condition last changed from one status to another."
    )
    reason: str = Field(
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Machine-readable CamelCase reason for the last transition.",
    )
    message: str = Field(
        default="", max_length=32768, description="Human-readable detail of the transition."
    )


# --------------------------------------------------------------------------- StreamCell


class Isolation(StrEnum):
    NODE_EXCLUSIVE = "NodeExclusive"
    SHARED = "Shared"


class ThreadModel(_Model):
    """How many OS threads one pod of the cell holds."""

    base: int = Field(
        ge=1,
        le=4_194_304,
        description=(
            "Threads one pod uses with no peers (runtime, worker pools, I/O). "
            "Count every task: each thread counts against kernel.threads-max, "
            "kernel.pid_max and the pod's pids cgroup."
        ),
    )
    per_peer: int = Field(
        default=0,
        ge=0,
        le=65_536,
        description=(
            "Threads a pod adds for each *other* replica of the same cell (one thread per "
            "peer connection, the pattern that took Kinesis down in 2020). 0 for services "
            "without peer fan-out. Threads per pod at N replicas = base + perPeer * (N - 1)."
        ),
    )


class Placement(_Model):
    """Where the cell's pods may run; the budget check only considers these nodes."""

    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels a node must carry to receive the cell's pods.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        description="Taints the cell's pods tolerate (core/v1 Toleration).",
    )


_TEMPLATE_NODE_AFFINITY = (
    "spec.template.spec.affinity.nodeAffinity is not supported: cellguard budgets the "
    "nodes spec.placement allows, and a narrower node affinity would break its spread "
    "bound; express node constraints with spec.placement.nodeSelector"
)
_TEMPLATE_NODE_NAME = (
    "spec.template.spec.nodeName is not supported: pods pinned to a node bypass the "
    "scheduler's spread that cellguard budgets for; use spec.placement.nodeSelector"
)


def _string_map(value: object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    )


class StreamCellSpec(_Model):
    """Desired state of one cell of a stream service."""

    replicas: int = Field(
        default=1,
        ge=0,
        le=100_000,
        description=(
            "Number of pods in the cell. Every increase is checked against each node's "
            "thread and PID limits before it is admitted."
        ),
    )
    service: str = Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description=(
            "The stream service this cell is one cell of. Cells of one service with "
            "NodeExclusive isolation never share a node."
        ),
    )
    threads: ThreadModel = Field(description="The cell's thread model.")
    max_replicas: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description=(
            "Cell size cap. Beyond it the answer is to add a cell, not to grow this one. "
            "Defaults to the policy's defaultMaxReplicas."
        ),
    )
    policy_ref: str = Field(
        default="default",
        min_length=1,
        max_length=253,
        description="Name of the ThreadBudgetPolicy that applies to this cell.",
    )
    isolation: Isolation = Field(
        default=Isolation.NODE_EXCLUSIVE,
        description=(
            "NodeExclusive (default): pods of two cells of the same service never share a "
            "node, so one node's exhaustion reaches at most one cell. Shared: no such rule."
        ),
    )
    placement: Placement = Field(
        default_factory=Placement,
        description="Node selector and tolerations for the cell's pods.",
    )
    template: dict[str, Any] = Field(
        description=(
            "Pod template (core/v1 PodTemplateSpec) for the cell's pods, preserved as "
            "written. cellguard adds its labels, spread constraint and anti-affinity."
        ),
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    # Not a CEL rule: CEL cannot see into a field with x-kubernetes-preserve-unknown-fields
    # and no declared properties, so the admission webhook (which validates the spec with
    # this model) is where this one is enforced.
    @model_validator(mode="after")
    def _placement_only_through_spec(self) -> StreamCellSpec:
        pod_spec = self.template.get("spec")
        if pod_spec is not None and not isinstance(pod_spec, dict):
            raise ValueError("spec.template.spec must be an object (a core/v1 PodSpec)")
        labels = (self.template.get("metadata") or {}).get("labels")
        if labels is not None and not _string_map(labels):
            raise ValueError("spec.template.metadata.labels must map strings to strings")
        if isinstance(pod_spec, dict):
            # The planner reads these two: their shape is checked here, not left to the
            # API server's Deployment validation after the decision.
            selector = pod_spec.get("nodeSelector")
            if selector is not None and not _string_map(selector):
                raise ValueError("spec.template.spec.nodeSelector must map strings to strings")
            tolerations = pod_spec.get("tolerations")
            if tolerations is not None:
                if not isinstance(tolerations, list):
                    raise ValueError("spec.template.spec.tolerations must be a list")
                for index, toleration in enumerate(tolerations):
                    try:
                        Toleration.model_validate(toleration)
                    except ValueError as error:
                        raise ValueError(
                            f"spec.template.spec.tolerations[{index}] is not a valid "
                            f"toleration: {error}"
                        ) from None
            affinity = pod_spec.get("affinity")
            if isinstance(affinity, dict) and "nodeAffinity" in affinity:
                raise ValueError(_TEMPLATE_NODE_AFFINITY)
            if "nodeName" in pod_spec:
                raise ValueError(_TEMPLATE_NODE_NAME)
        return self


class RefusalReason(StrEnum):
    """Machine reason codes of a refused scale change."""

    POD_PID_LIMIT = "PodPidLimit"
    NODE_THREAD_LIMIT = "NodeThreadLimit"
    CELL_SIZE_CAP = "CellSizeCap"
    BUDGET_UNKNOWN = "BudgetUnknown"
    BUDGET_STALE = "BudgetStale"
    NO_ELIGIBLE_NODES = "NoEligibleNodes"
    UNSCHEDULABLE = "Unschedulable"
    POLICY_NOT_FOUND = "PolicyNotFound"


class AllowedReason(StrEnum):
    """Reason codes of an allowed scale change (and of WithinBudget=True)."""

    WITHIN_BUDGET = "WithinBudget"
    SCALE_DOWN = "ScaleDown"
    NO_CHANGE = "NoChange"


class GateReason(StrEnum):
    """Reason codes of a change refused before any budget was looked at."""

    NOT_SYNCED = "NotSynced"  # the operator's cache is still loading
    UNKNOWN_CELL = "UnknownCell"  # a scale of a cell the operator does not know (yet)


class ReadyReason(StrEnum):
    """Reasons of the Ready condition."""

    ALL_REPLICAS_READY = "AllReplicasReady"
    REPLICAS_NOT_READY = "ReplicasNotReady"


class ThreadModelReason(StrEnum):
    """Reasons of the ThreadModelAccurate condition."""

    WITHIN_MODEL = "ObservedWithinModel"
    EXCEEDS_MODEL = "ObservedExceedsModel"
    NOT_OBSERVED = "NotObserved"  # no node agent has reported the cell's pods yet


class ScaleRefusedReason(StrEnum):
    """Reason of ScaleRefused=False (when True, the reason is the refusal's code)."""

    SCALE_ADMITTED = "ScaleAdmitted"


class LastRefusal(_Model):
    """The most recent scale change cellguard refused for this cell."""

    time: datetime = Field(description="When the change was refused.")
    requested_replicas: int = Field(ge=0, description="Replicas the refused change asked for.")
    reason: str = Field(description="Machine reason code, e.g. NodeThreadLimit.")
    message: str = Field(description="The refusal as shown to the requester.")


class ThreadSample(_Model):
    """Threads per pod the cell's pods were observed to hold at one size."""

    replicas: int = Field(ge=1, description="The cell's size (running pods) when observed.")
    threads_per_pod: int = Field(ge=0, description="Observed threads per pod (p95 over its pods).")


class ThreadModelFit(_Model):
    """The thread model fitted to the observed samples (least squares over sizes)."""

    base: float = Field(description="Fitted spec.threads.base.")
    per_peer: float = Field(description="Fitted spec.threads.perPeer.")
    residual: float = Field(ge=0, description="Root mean square error of the fit, in threads.")
    sizes: int = Field(ge=2, description="Distinct sizes the fit saw.")


class StreamCellStatus(_Model):
    """Observed state of the cell, kept fresh by the operator."""

    replicas: int | None = Field(default=None, ge=0, description="Pods of the cell that exist.")
    ready_replicas: int | None = Field(default=None, ge=0, description="Pods that are Ready.")
    selector: str | None = Field(
        default=None, description="Label selector of the cell's pods (for the scale subresource)."
    )
    threads_per_pod: int | None = Field(
        default=None, ge=0, description="Modelled threads per pod at the current replicas."
    )
    max_safe_replicas: int | None = Field(
        default=None, ge=0, description="Largest replica count that fits every budget now."
    )
    headroom: str | None = Field(
        default=None,
        description=(
            "Smallest free fraction of the thread/PID limit over the cell's nodes, as a "
            "decimal string (e.g. '0.31')."
        ),
    )
    limiting_node: str | None = Field(
        default=None, description="The node with the smallest headroom for this cell."
    )
    last_refusal: LastRefusal | None = Field(
        default=None, description="The most recent refused scale change."
    )
    threads_observed_per_pod: int | None = Field(
        default=None,
        ge=0,
        description="Most threads any pod of the cell holds, as the node agents observed.",
    )
    threads_observed_p95: int | None = Field(
        default=None, ge=0, description="95th percentile of the threads its pods hold."
    )
    thread_samples: list[ThreadSample] = Field(
        default_factory=list,
        max_length=16,
        description="Observed threads per pod at the sizes the cell has run at (latest 16).",
    )
    thread_model_fit: ThreadModelFit | None = Field(
        default=None,
        description="base and perPeer fitted to threadSamples, once there are 2 sizes.",
    )
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation last acted upon."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready, WithinBudget, ScaleRefused and ThreadModelAccurate.",
        # metav1.Condition lists are maps keyed by type (server-side apply merges by type).
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


class StreamCell(_Model):
    """A cell of a stream service: a fleet whose every scale-up is checked first."""

    api_version: Literal["cellguard.io/v1alpha1"] = "cellguard.io/v1alpha1"
    kind: Literal["StreamCell"] = "StreamCell"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: StreamCellSpec
    status: StreamCellStatus | None = None


# --------------------------------------------------------------------------- policy


class UnknownBudgetAction(StrEnum):
    REFUSE = "Refuse"
    USE_DEFAULTS = "UseDefaults"


class DefaultLimits(_Model):
    """Limits assumed for a node whose budget is unknown or stale (UseDefaults only)."""

    threads_max: int = Field(ge=1, description="Assumed kernel.threads-max.")
    pid_max: int = Field(ge=1, description="Assumed kernel.pid_max.")
    kubepods_pids_max: int | None = Field(
        default=None, ge=1, description="Assumed kubepods pids.max; empty means unlimited."
    )
    pod_pids_limit: int | None = Field(
        default=None, ge=1, description="Assumed per-pod PID limit; empty means unlimited."
    )
    threads_in_use: int = Field(
        default=0, ge=0, description="Assumed threads already in use on the node."
    )


_ALERTS_ORDER = (
    "criticalHeadroom must be smaller than warningHeadroom: the critical alert fires "
    "closer to the limit than the warning (e.g. warning 0.3, critical 0.15)"
)


class AlertThresholds(_Model):
    """Thresholds the shipped alert rules and the status conditions use."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.criticalHeadroom) || !has(self.warningHeadroom)"
                " || self.criticalHeadroom < self.warningHeadroom",
                _ALERTS_ORDER,
            ),
        )
    )

    warning_headroom: float = Field(
        default=0.3,
        gt=0,
        lt=1,
        description="Headroom ratio below which the warning alert fires.",
    )
    critical_headroom: float = Field(
        default=0.15,
        gt=0,
        lt=1,
        description="Headroom ratio below which the critical alert fires.",
    )
    near_max_safe_ratio: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Fraction of maxSafeReplicas at which a cell counts as near its limit.",
    )

    @model_validator(mode="after")
    def _critical_below_warning(self) -> AlertThresholds:
        if not self.critical_headroom < self.warning_headroom:
            raise ValueError(_ALERTS_ORDER)
        return self


_USE_DEFAULTS_NEEDS_DEFAULTS = (
    "unknownBudget: UseDefaults needs the limits to assume: set spec.defaults "
    "(threadsMax and pidMax at least), or use unknownBudget: Refuse"
)


class ThreadBudgetPolicySpec(_Model):
    """How strictly cellguard budgets threads and PIDs."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.unknownBudget) || self.unknownBudget != 'UseDefaults'"
                " || has(self.defaults)",
                _USE_DEFAULTS_NEEDS_DEFAULTS,
            ),
        )
    )

    safety_margin: float = Field(
        default=0.2,
        ge=0,
        lt=1,
        description=(
            "Fraction of each limit kept free: a node may be projected to at most "
            "limit * (1 - safetyMargin) threads."
        ),
    )
    default_max_replicas: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Cell size cap for cells that set no spec.maxReplicas.",
    )
    unknown_budget: UnknownBudgetAction = Field(
        default=UnknownBudgetAction.REFUSE,
        description=(
            "What to do when a node's NodeBudget is missing or stale: Refuse (fail closed, "
            "the default) or UseDefaults (use `defaults`)."
        ),
    )
    defaults: DefaultLimits | None = Field(
        default=None, description="Limits assumed under UseDefaults; required with it."
    )
    stale_after_seconds: int = Field(
        default=300,
        ge=10,
        le=86_400,
        description="A NodeBudget observed longer ago than this is stale (unknown).",
    )
    reservation_ttl_seconds: int = Field(
        default=120,
        ge=5,
        le=3_600,
        description=(
            "How long an admitted change holds its reservation if the reconciler does not "
            "see it applied."
        ),
    )
    thread_model_tolerance: float = Field(
        default=0.1,
        ge=0,
        le=10,
        description=(
            "How far the threads a cell's pods hold may exceed its declared thread model "
            "before the cell reports ThreadModelAccurate=False (0.1: 10%)."
        ),
    )
    alerts: AlertThresholds = Field(
        default_factory=AlertThresholds,
        description="Alerting and condition thresholds.",
        # `default: {}` in the CRD, so the API server fills in the thresholds' defaults.
        json_schema_extra={"default": {}},
    )

    @model_validator(mode="after")
    def _defaults_when_used(self) -> ThreadBudgetPolicySpec:
        if self.unknown_budget is UnknownBudgetAction.USE_DEFAULTS and self.defaults is None:
            raise ValueError(_USE_DEFAULTS_NEEDS_DEFAULTS)
        return self


class ThreadBudgetPolicy(_Model):
    """Cluster-wide budget policy; the one named `default` applies unless a cell names another."""

    api_version: Literal["cellguard.io/v1alpha1"] = "cellguard.io/v1alpha1"
    kind: Literal["ThreadBudgetPolicy"] = "ThreadBudgetPolicy"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: ThreadBudgetPolicySpec = Field(
        default_factory=ThreadBudgetPolicySpec,
        # `default: {}` in the CRD: a policy written without spec is stored with every
        # default filled in, as the operator reads it.
        json_schema_extra={"default": {}},
    )


# --------------------------------------------------------------------------- NodeBudget


class CgroupVersion(StrEnum):
    V1 = "v1"
    V2 = "v2"
    UNKNOWN = "unknown"


_UNLIMITED_HAS_NO_MAX = (
    "kubepods pids.max reads `max` (unlimited): leave `max` empty when `unlimited` is true"
)


class KubepodsPids(_Model):
    """The pids controller of the kubepods cgroup (all pods of the node together)."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!(has(self.unlimited) && self.unlimited && has(self.max))",
                _UNLIMITED_HAS_NO_MAX,
            ),
        )
    )

    cgroup_version: CgroupVersion = Field(
        default=CgroupVersion.UNKNOWN, description="cgroup hierarchy found: v1, v2 or unknown."
    )
    path: str | None = Field(default=None, description="The cgroup directory that was read.")
    max: int | None = Field(
        default=None,
        ge=1,
        description="pids.max of kubepods; empty when unlimited (`max`) or unknown.",
    )
    unlimited: bool = Field(default=False, description="True when pids.max reads `max`.")
    current: int | None = Field(default=None, ge=0, description="pids.current of kubepods.")

    @model_validator(mode="after")
    def _unlimited_has_no_max(self) -> KubepodsPids:
        if self.unlimited and self.max is not None:
            raise ValueError(_UNLIMITED_HAS_NO_MAX)
        return self


class PodThreads(_Model):
    """Threads one pod holds, from the pids controller of its cgroup."""

    uid: str = Field(min_length=1, max_length=64, description="The pod's metadata.uid.")
    threads: int = Field(ge=0, description="pids.current: tasks (threads) in the pod now.")
    peak: int | None = Field(
        default=None, ge=0, description="pids.peak, where the kernel has it: the most it held."
    )


class NodeBudgetSpec(_Model):
    """A node's thread and PID limits and usage, as the node agent observed them on the host.

    A figure the agent could not read is left empty: it is unknown, never guessed.
    """

    node_name: str = Field(min_length=1, max_length=253, description="The node observed.")
    threads_max: int | None = Field(default=None, ge=1, description="kernel.threads-max.")
    pid_max: int | None = Field(default=None, ge=1, description="kernel.pid_max.")
    threads_in_use: int | None = Field(
        default=None, ge=0, description="Tasks (threads) in use on the host, all processes."
    )
    kubepods: KubepodsPids = Field(
        default_factory=KubepodsPids, description="The kubepods cgroup's pids controller."
    )
    pod_pids_limit: int | None = Field(
        default=None,
        ge=1,
        description="The kubelet's podPidsLimit (per-pod PID cap); empty when none or unknown.",
    )
    pods: list[PodThreads] = Field(
        default_factory=list,
        max_length=1024,
        description="Threads each pod on the node holds, by pod UID (from kubepods).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["uid"]},
    )
    observed_at: datetime = Field(description="When the figures were read (RFC 3339).")
    agent_version: str | None = Field(default=None, description="Version of the agent.")
    errors: list[str] = Field(
        default_factory=list,
        description="What could not be read and why (those figures are left empty).",
    )


_NODEBUDGET_NAME = "a NodeBudget is named after its node: metadata.name must equal spec.nodeName"


class NodeBudget(_Model):
    """Observed thread and PID budget of one node; the name is the node's name."""

    model_config = ConfigDict(
        json_schema_extra=_cel(("self.metadata.name == self.spec.nodeName", _NODEBUDGET_NAME))
    )

    api_version: Literal["cellguard.io/v1alpha1"] = "cellguard.io/v1alpha1"
    kind: Literal["NodeBudget"] = "NodeBudget"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: NodeBudgetSpec

    @model_validator(mode="after")
    def _named_after_node(self) -> NodeBudget:
        name = self.metadata.get("name")
        if name is not None and name != self.spec.node_name:
            raise ValueError(_NODEBUDGET_NAME)
        return self
