"""Generate the CustomResourceDefinitions in crds/ from the pydantic models.

The models in `cellguard.api.v1alpha1` are the single source of the API. Kubernetes wants
a *structural* OpenAPI v3 schema: every node typed, no `$ref`, no `anyOf` for optional
fields, no `additionalProperties` beside `properties`. This module turns pydantic's JSON
Schema into that, wraps it in an apiextensions.k8s.io/v1 CRD, and writes crds/*.yaml.

    python -m cellguard.crdgen            # (re)write crds/
    python -m cellguard.crdgen --check    # exit 1 with a diff when crds/ drifted
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from cellguard.api.v1alpha1 import NodeBudget, StreamCell, ThreadBudgetPolicy
from cellguard.constants import (
    GROUP,
    NODEBUDGET_KIND,
    NODEBUDGET_PLURAL,
    POLICY_KIND,
    POLICY_PLURAL,
    STREAMCELL_KIND,
    STREAMCELL_PLURAL,
    VERSION,
)

Schema = dict[str, Any]

# The repository's crds/ directory (operator/cellguard/crdgen.py -> repo root).
CRDS_DIR = Path(__file__).resolve().parents[2] / "crds"

_API_VERSION_DESCRIPTION = (
    "APIVersion defines the versioned schema of this representation of an object. "
    "Servers should convert recognized schemas to the latest internal value, and may "
    "reject unrecognized values."
)
_KIND_DESCRIPTION = (
    "Kind is a string value representing the REST resource this object represents. "
    "Servers may infer this from the endpoint the client submits requests to. "
    "In CamelCase."
)

# JSON Schema keywords that structural OpenAPI v3 either forbids or that carry no meaning
# for the API server; dropped wherever they appear.
_DROPPED_KEYWORDS = frozenset({"title", "$schema", "examples"})

# Keys printed first in every schema node, for readable YAML; the rest follow sorted.
_LEADING_KEYS = ("description", "type", "rule")


@dataclass(frozen=True)
class CrdSpec:
    """What a CRD says besides its schema."""

    model: type[BaseModel]
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...]
    categories: tuple[str, ...]
    printer_columns: tuple[Schema, ...]
    subresources: Schema

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def filename(self) -> str:
        return f"{self.name}.yaml"


def _column(
    name: str, type_: str, json_path: str, description: str, *, priority: int = 0
) -> Schema:
    column: Schema = {
        "name": name,
        "type": type_,
        "jsonPath": json_path,
        "description": description,
    }
    if priority:
        column["priority"] = priority
    return column


_AGE = _column("Age", "date", ".metadata.creationTimestamp", "Time since the object was created.")

CRDS: tuple[CrdSpec, ...] = (
    CrdSpec(
        model=StreamCell,
        kind=STREAMCELL_KIND,
        plural=STREAMCELL_PLURAL,
        singular="streamcell",
        namespaced=True,
        # Not `sc`: every cluster serves StorageClasses under that short name, and the
        # built-in wins, so `kubectl get sc` could never list StreamCells.
        short_names=("scell", "scells"),
        categories=("cellguard", "all"),
        printer_columns=(
            _column("Replicas", "integer", ".spec.replicas", "Desired pods in the cell."),
            _column("Ready", "integer", ".status.readyReplicas", "Pods that are Ready."),
            _column(
                "MaxSafe",
                "integer",
                ".status.maxSafeReplicas",
                "Largest replica count that fits every node's budget now.",
            ),
            _column(
                "Headroom",
                "string",
                ".status.headroom",
                "Smallest free fraction of a limit over the cell's nodes.",
            ),
            _column(
                "LimitingNode",
                "string",
                ".status.limitingNode",
                "The node with the least headroom for this cell.",
            ),
            _AGE,
        ),
        subresources={
            "status": {},
            # `kubectl scale` and the HorizontalPodAutoscaler work on a cell.
            "scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".status.selector",
            },
        },
    ),
    CrdSpec(
        model=ThreadBudgetPolicy,
        kind=POLICY_KIND,
        plural=POLICY_PLURAL,
        singular="threadbudgetpolicy",
        namespaced=False,
        short_names=("tbp",),
        categories=("cellguard",),
        printer_columns=(
            _column("Margin", "number", ".spec.safetyMargin", "Fraction of each limit kept free."),
            _column(
                "OnUnknown",
                "string",
                ".spec.unknownBudget",
                "What happens when a node's budget is unknown or stale.",
            ),
            _column(
                "MaxReplicas",
                "integer",
                ".spec.defaultMaxReplicas",
                "Cell size cap for cells that set none.",
            ),
            _column(
                "StaleAfter",
                "integer",
                ".spec.staleAfterSeconds",
                "Seconds after which a NodeBudget counts as stale.",
                priority=1,
            ),
            _AGE,
        ),
        # A policy is pure configuration: nothing observes or reports on it, so it has no
        # status (a status subresource would only make `kubectl edit` drop status edits).
        subresources={},
    ),
    CrdSpec(
        model=NodeBudget,
        kind=NODEBUDGET_KIND,
        plural=NODEBUDGET_PLURAL,
        singular="nodebudget",
        namespaced=False,
        short_names=("nb",),
        categories=("cellguard",),
        printer_columns=(
            _column("ThreadsMax", "integer", ".spec.threadsMax", "kernel.threads-max."),
            _column("PidMax", "integer", ".spec.pidMax", "kernel.pid_max."),
            _column(
                "KubepodsMax",
                "integer",
                ".spec.kubepods.max",
                "pids.max of the kubepods cgroup (empty: unlimited or unknown).",
            ),
            _column("InUse", "integer", ".spec.threadsInUse", "Threads in use on the host."),
            _column(
                "PodPidsLimit",
                "integer",
                ".spec.podPidsLimit",
                "The kubelet's per-pod PID limit.",
                priority=1,
            ),
            _column("ObservedAt", "date", ".spec.observedAt", "When the agent read the figures."),
            _column("Agent", "string", ".spec.agentVersion", "Agent version.", priority=1),
        ),
        # The node agent writes the observation as spec (it is the desired record of the
        # host); there is no separate observed state, so no status subresource.
        subresources={},
    ),
)


# --------------------------------------------------------------------------- schema


def structural_schema(model: type[BaseModel]) -> Schema:
    """The model's structural OpenAPI v3 schema, as a CRD version's openAPIV3Schema."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions: dict[str, Schema] = raw.pop("$defs", {})
    # The Kubernetes envelope: apiVersion/kind are plain strings (no const), and metadata
    # is validated by the API server itself, so the CRD says only that it is an object.
    envelope: dict[str, Schema] = {
        "apiVersion": {"type": "string", "description": _API_VERSION_DESCRIPTION},
        "kind": {"type": "string", "description": _KIND_DESCRIPTION},
        "metadata": {"type": "object"},
    }
    raw["properties"] = {
        name: envelope.get(name, child) for name, child in raw["properties"].items()
    }
    schema: Schema = _ordered(_convert(raw, definitions))
    return schema


def _convert(node: Schema, definitions: dict[str, Schema]) -> Schema:
    """Pydantic JSON Schema node -> structural OpenAPI v3 node (recursive)."""
    node = dict(node)
    ref = node.pop("$ref", None)
    if ref is not None:
        # Inline the definition; the field's own keys (description, default) win.
        target = _convert(definitions[ref.removeprefix("#/$defs/")], definitions)
        node = {**target, **{k: v for k, v in node.items()}}
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        node = _collapse_optional(node, any_of, definitions)
    for keyword in _DROPPED_KEYWORDS:
        node.pop(keyword, None)
    if "default" in node and node["default"] is None:
        # `None` only means "absent": an optional field, not a value to store.
        del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    _openapi_v3_bounds(node)
    if node.get("x-kubernetes-preserve-unknown-fields"):
        # Unknown fields are kept; `additionalProperties: true` would be redundant.
        node.pop("additionalProperties", None)
    if "properties" in node:
        # Structural schemas forbid additionalProperties beside properties; the API
        # server prunes unknown fields anyway.
        node.pop("additionalProperties", None)
        node["properties"] = {
            name: _convert(child, definitions) for name, child in node["properties"].items()
        }
    elif isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _convert(node["additionalProperties"], definitions)
    elif node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if "items" in node:
        node["items"] = _convert(node["items"], definitions)
    if node.get("additionalProperties") is True:
        # Free-form objects are allowed only where a field opts in (spec.template).
        raise ValueError(f"free-form object without x-kubernetes-preserve-unknown-fields: {node}")
    return node


def _collapse_optional(
    node: Schema, any_of: list[Schema], definitions: dict[str, Schema]
) -> Schema:
    """`anyOf: [X, null]` -> X; nullable only when null is a value, not just absence."""
    non_null = [option for option in any_of if option.get("type") != "null"]
    if len(non_null) != 1:
        raise ValueError(f"cannot express anyOf {any_of!r} in a structural schema")
    merged = {**_convert(non_null[0], definitions), **node}
    optional = "default" in node and node["default"] is None
    if len(non_null) != len(any_of) and not optional:
        merged["nullable"] = True
    return merged


def _openapi_v3_bounds(node: Schema) -> None:
    """JSON Schema 2020-12 numeric exclusive bounds -> OpenAPI v3.0 boolean form."""
    for exclusive, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = node.get(exclusive)
        if value is not None and not isinstance(value, bool):
            node[inclusive] = value
            node[exclusive] = True


def _ordered(node: Any) -> Any:
    """Stable, readable key order: description and type first, the rest sorted.

    `properties` keep the models' field order (that is the order people read).
    """
    if isinstance(node, list):
        return [_ordered(item) for item in node]
    if not isinstance(node, dict):
        return node
    ordered: Schema = {}
    for key in _LEADING_KEYS:
        if key in node:
            ordered[key] = _ordered(node[key])
    for key in sorted(k for k in node if k not in _LEADING_KEYS):
        if key == "properties":
            ordered[key] = {name: _ordered(child) for name, child in node[key].items()}
        else:
            ordered[key] = _ordered(node[key])
    return ordered


# --------------------------------------------------------------------------- CRD


def custom_resource_definition(crd: CrdSpec) -> Schema:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition for one kind."""
    version: Schema = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": structural_schema(crd.model)},
    }
    if crd.subresources:
        version["subresources"] = crd.subresources
    version["additionalPrinterColumns"] = list(crd.printer_columns)
    names: Schema = {
        "kind": crd.kind,
        "listKind": f"{crd.kind}List",
        "plural": crd.plural,
        "singular": crd.singular,
        "shortNames": list(crd.short_names),
        "categories": list(crd.categories),
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": crd.name,
            "labels": {
                "app.kubernetes.io/name": "cellguard",
                "app.kubernetes.io/part-of": "cellguard",
            },
        },
        "spec": {
            "group": GROUP,
            "names": names,
            "scope": "Namespaced" if crd.namespaced else "Cluster",
            "versions": [version],
        },
    }


_HEADER = "# Generated by `python -m cellguard.crdgen` from cellguard.api.v1alpha1. Do not edit.\n"


def render(crd: CrdSpec) -> str:
    """The CRD as the YAML text committed in crds/."""
    body = yaml.safe_dump(
        custom_resource_definition(crd), sort_keys=False, width=100, allow_unicode=True
    )
    return _HEADER + body


def rendered() -> dict[str, str]:
    """File name -> YAML text, for every CRD."""
    return {crd.filename: render(crd) for crd in CRDS}


def drift(directory: Path = CRDS_DIR) -> str:
    """A unified diff between the committed CRDs and freshly generated ones ('' if none)."""
    chunks: list[str] = []
    for filename, fresh in rendered().items():
        path = directory / filename
        committed = path.read_text() if path.exists() else ""
        if committed != fresh:
            chunks.extend(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    fresh.splitlines(keepends=True),
                    fromfile=f"crds/{filename} (committed)",
                    tofile=f"crds/{filename} (generated)",
                )
            )
    return "".join(chunks)


def write(directory: Path = CRDS_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in rendered().items():
        path = directory / filename
        path.write_text(text)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cellguard.crdgen", description="Generate crds/*.yaml from the API models."
    )
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 with a diff if crds/ drifted"
    )
    parser.add_argument("--dir", type=Path, default=CRDS_DIR, help="output directory")
    args = parser.parse_args(argv)
    if args.check:
        difference = drift(args.dir)
        if difference:
            sys.stdout.write(difference)
            sys.stderr.write("crds/ is out of date: run `python -m cellguard.crdgen`\n")
            return 1
        return 0
    for path in write(args.dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
