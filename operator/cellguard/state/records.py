"""What the cache keeps of each watched object: a small record, parsed from the raw API
object (a dict) as soon as it arrives, so that the raw object can be dropped at once.

At 5,000 nodes a cluster holds some 150,000 cell pods: as dicts they take gigabytes, as
records a few hundred bytes each. Strings repeated across objects (namespaces, node and
cell names) are interned so that each is held once. Pure: no client, no kopf.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pydantic import ValidationError

from cellguard.api.v1alpha1 import (
    NodeBudgetSpec,
    StreamCell,
    StreamCellSpec,
    ThreadBudgetPolicySpec,
)
from cellguard.budget import CellKey, CellView, NodeView
from cellguard.constants import LABEL_CELL

PodKey = tuple[str, str]


class Kind(Enum):
    """The kinds the operator's cache holds, each fed by its own list and watch."""

    NODES = "nodes"
    BUDGETS = "budgets"
    POLICIES = "policies"
    CELLS = "cells"
    PODS = "pods"
    DEPLOYMENTS = "deployments"

    @property
    def namespaced(self) -> bool:
        return self in (Kind.CELLS, Kind.PODS, Kind.DEPLOYMENTS)


@dataclass(frozen=True, slots=True)
class CellRecord:
    namespace: str
    name: str
    uid: str
    generation: int
    spec: StreamCellSpec
    view: CellView
    # status as last seen: what the status loop compares its new figures with.
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> CellKey:
        return CellKey(self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class DeploymentSeen:
    """What a cell's Deployment asks for and has, as last seen (listing, event, or apply)."""

    replicas: int  # spec.replicas
    existing: int = 0  # status.replicas
    ready: int = 0  # status.readyReplicas


@dataclass(frozen=True, slots=True)
class PodRecord:
    cell: CellKey
    node: str | None
    terminating: bool
    uid: str = ""


@dataclass(frozen=True, slots=True)
class Invalid:
    """An object the cache cannot use, and why (the first validation error)."""

    error: str
    # A cell's: which one and which spec, so that the reconciler says so once a spec, in
    # an Event `kubectl describe` shows (other kinds leave them empty).
    uid: str = ""
    generation: int = 0


# What a parsed object is, per kind: NodeView (no budget attached yet), NodeBudgetSpec,
# ThreadBudgetPolicySpec, CellRecord, PodRecord or DeploymentSeen - or Invalid, or None
# for an object the cache does not keep (a finished pod, a pod that is no cell's).
Parsed = (
    NodeView
    | NodeBudgetSpec
    | ThreadBudgetPolicySpec
    | CellRecord
    | PodRecord
    | DeploymentSeen
    | Invalid
    | None
)
Key = str | tuple[str, str]


def key_of(kind: Kind, raw: Mapping[str, Any]) -> Key:
    """The cache key of a raw object: its name, or (namespace, name) - for a Deployment
    (namespace, its cell's name)."""
    metadata = raw.get("metadata") or {}
    if not kind.namespaced:
        return intern(metadata.get("name", ""))
    namespace = intern(metadata.get("namespace", ""))
    if kind is Kind.DEPLOYMENTS:
        return CellKey(namespace, intern((metadata.get("labels") or {}).get(LABEL_CELL, "")))
    if kind is Kind.CELLS:
        return CellKey(namespace, intern(metadata.get("name", "")))
    return (namespace, metadata.get("name", ""))


def parse(kind: Kind, raw: Mapping[str, Any]) -> Parsed:
    """The record the cache keeps of a raw object of `kind`."""
    if kind is Kind.NODES:
        return NodeView.from_manifest(raw, None)
    if kind is Kind.BUDGETS:
        return _validated(NodeBudgetSpec, raw.get("spec") or {})
    if kind is Kind.POLICIES:
        return _validated(ThreadBudgetPolicySpec, raw.get("spec") or {})
    if kind is Kind.CELLS:
        return parse_cell(raw)
    if kind is Kind.PODS:
        return parse_pod(raw)
    return parse_deployment(raw)


def parse_cell(raw: Mapping[str, Any]) -> CellRecord | Invalid:
    metadata = raw["metadata"]
    key = CellKey(intern(metadata["namespace"]), intern(metadata["name"]))
    try:
        cell = StreamCell.model_validate(
            {
                "metadata": {"name": key.name, "namespace": key.namespace},
                "spec": raw.get("spec", {}),
            }
        )
    except ValidationError as error:
        return Invalid(
            first_error(error),
            uid=metadata.get("uid", ""),
            generation=int(metadata.get("generation", 0)),
        )
    return CellRecord(
        namespace=key.namespace,
        name=key.name,
        uid=metadata.get("uid", ""),
        generation=int(metadata.get("generation", 0)),
        spec=cell.spec,
        view=CellView.from_streamcell(cell),
        status=raw.get("status") or {},
    )


def parse_pod(raw: Mapping[str, Any]) -> PodRecord | None:
    """A cell pod's record, or None for pods that are not a cell's or are finished."""
    metadata = raw.get("metadata", {})
    cell_name = (metadata.get("labels", {}) or {}).get(LABEL_CELL)
    if not cell_name:
        return None
    phase = (raw.get("status", {}) or {}).get("phase")
    if phase in ("Succeeded", "Failed"):
        return None  # a finished pod holds no threads
    node = (raw.get("spec", {}) or {}).get("nodeName") or None
    return PodRecord(
        cell=CellKey(intern(metadata["namespace"]), intern(cell_name)),
        node=intern(node) if node else None,
        terminating=metadata.get("deletionTimestamp") is not None,
        # Interned: the node agent's reading of the pod is keyed by the same uid.
        uid=intern(metadata.get("uid", "")),
    )


def parse_deployment(raw: Mapping[str, Any]) -> DeploymentSeen:
    status = raw.get("status", {}) or {}
    return DeploymentSeen(
        replicas=int((raw.get("spec", {}) or {}).get("replicas", 0) or 0),
        existing=int(status.get("replicas", 0) or 0),
        ready=int(status.get("readyReplicas", 0) or 0),
    )


def _validated(
    model: type[NodeBudgetSpec] | type[ThreadBudgetPolicySpec], spec: Mapping[str, Any]
) -> NodeBudgetSpec | ThreadBudgetPolicySpec | Invalid:
    try:
        return model.model_validate(spec)
    except ValidationError as error:
        return Invalid(first_error(error))


def first_error(error: ValidationError) -> str:
    first = error.errors()[0]
    location = ".".join(str(p) for p in first.get("loc", ()))
    return f"{location}: {first.get('msg', 'invalid')}" if location else str(first.get("msg"))


def intern(value: str) -> str:
    """The one copy of a string repeated across records (a name, a uid)."""
    return sys.intern(value)
