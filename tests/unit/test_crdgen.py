"""The committed CRDs are exactly what the models generate, and they are structural."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from cellguard import crdgen
from cellguard.api import v1alpha1 as api

Schema = dict[str, Any]

FORBIDDEN_KEYWORDS = {"$ref", "anyOf", "allOf", "oneOf", "not", "title", "const", "$defs"}


def _schemas() -> dict[str, Schema]:
    return {crd.kind: crdgen.structural_schema(crd.model) for crd in crdgen.CRDS}


def _walk(node: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node below `node` with its dotted path (list items as `[]`)."""
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def test_committed_crds_match_the_models() -> None:
    difference = crdgen.drift()
    assert difference == "", f"crds/ drifted; run `python -m cellguard.crdgen`:\n{difference}"


def test_committed_files_are_the_three_crds() -> None:
    names = sorted(path.name for path in crdgen.CRDS_DIR.glob("*.yaml"))
    assert names == [
        "nodebudgets.cellguard.io.yaml",
        "streamcells.cellguard.io.yaml",
        "threadbudgetpolicies.cellguard.io.yaml",
    ]


def test_check_reports_drift_with_a_diff(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert crdgen.main(["--dir", str(tmp_path)]) == 0
    capsys.readouterr()
    assert crdgen.main(["--check", "--dir", str(tmp_path)]) == 0
    target = tmp_path / "streamcells.cellguard.io.yaml"
    target.write_text(target.read_text().replace("shortNames:\n    - sc", "shortNames:\n    - scx"))
    assert crdgen.main(["--check", "--dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "-    - scx" in out
    assert "+    - sc" in out


@pytest.mark.parametrize("kind", ["StreamCell", "ThreadBudgetPolicy", "NodeBudget"])
def test_schema_is_structural(kind: str) -> None:
    schema = _schemas()[kind]
    for path, node in _walk(schema):
        assert "type" in node, f"{kind}{path}: no type"
        assert not FORBIDDEN_KEYWORDS & node.keys(), (
            f"{kind}{path}: {FORBIDDEN_KEYWORDS & node.keys()}"
        )
        if "properties" in node:
            assert "additionalProperties" not in node, f"{kind}{path}: both properties kinds"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in node:
                assert node[bound] is True, f"{kind}{path}: {bound} must be OpenAPI v3 boolean"
        if node.get("type") == "object" and "properties" not in node:
            # Every object either declares its shape or explicitly keeps unknown fields.
            assert "additionalProperties" in node or path in {".metadata", ".spec.template"}, (
                f"{kind}{path}: free-form object"
            )


@pytest.mark.parametrize("kind", ["StreamCell", "ThreadBudgetPolicy", "NodeBudget"])
def test_every_field_has_a_description(kind: str) -> None:
    schema = _schemas()[kind]
    for path, node in _walk(schema):
        if path == ".metadata":
            continue  # the API server's own
        if path.endswith(("{}", "[]")) and node["type"] != "object":
            continue  # scalar map values and list items are described by their field
        assert node.get("description", "").strip(), f"{kind}{path}: no description"


def test_preserve_unknown_fields_only_on_the_pod_template() -> None:
    for kind, schema in _schemas().items():
        preserved = [p for p, n in _walk(schema) if n.get("x-kubernetes-preserve-unknown-fields")]
        assert preserved == ([".spec.template"] if kind == "StreamCell" else []), kind


def test_metadata_is_only_an_object() -> None:
    for schema in _schemas().values():
        assert schema["properties"]["metadata"] == {"type": "object"}


def test_enums_come_from_the_str_enums() -> None:
    spec = _schemas()["StreamCell"]["properties"]["spec"]["properties"]
    assert spec["isolation"]["enum"] == [member.value for member in api.Isolation]
    assert spec["isolation"]["default"] == "NodeExclusive"
    toleration = spec["placement"]["properties"]["tolerations"]["items"]["properties"]
    assert toleration["operator"]["enum"] == [member.value for member in api.TolerationOperator]
    assert toleration["effect"]["enum"] == [member.value for member in api.TaintEffect]
    policy = _schemas()["ThreadBudgetPolicy"]["properties"]["spec"]["properties"]
    assert policy["unknownBudget"]["enum"] == ["Refuse", "UseDefaults"]


def test_optional_fields_are_neither_nullable_nor_defaulted_to_null() -> None:
    for kind, schema in _schemas().items():
        for path, node in _walk(schema):
            assert "nullable" not in node, f"{kind}{path}"
            assert node.get("default", 0) is not None, f"{kind}{path}"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `X`, `X | None` or `list[X]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _check_required(model: type[BaseModel], node: Schema, path: str) -> int:
    if node.get("type") == "array":
        node = node["items"]
    expected = [
        field.alias or name
        for name, field in model.model_fields.items()
        if field.is_required() and name != "metadata"
    ]
    assert node.get("required", []) == expected, path
    checked = 1
    for name, field in model.model_fields.items():
        nested = _model_of(field.annotation)
        if nested is not None:
            alias = field.alias or name
            checked += _check_required(nested, node["properties"][alias], f"{path}.{alias}")
    return checked


@pytest.mark.parametrize("crd", crdgen.CRDS, ids=lambda crd: crd.kind)
def test_required_lists_follow_the_models(crd: crdgen.CrdSpec) -> None:
    checked = _check_required(crd.model, crdgen.structural_schema(crd.model), crd.kind)
    assert checked >= 3  # the walk reached the nested models, not just the root


def test_streamcell_crd_shape() -> None:
    crd = yaml.safe_load((crdgen.CRDS_DIR / "streamcells.cellguard.io.yaml").read_text())
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    spec = crd["spec"]
    assert spec["scope"] == "Namespaced"
    # Not "sc": the built-in StorageClass short name always wins in kubectl.
    assert spec["names"]["shortNames"] == ["scell", "scells"]
    assert spec["names"]["categories"] == ["cellguard", "all"]
    (version,) = spec["versions"]
    assert version["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns == {
        "Replicas": ".spec.replicas",
        "Ready": ".status.readyReplicas",
        "MaxSafe": ".status.maxSafeReplicas",
        "Headroom": ".status.headroom",
        "LimitingNode": ".status.limitingNode",
        "Age": ".metadata.creationTimestamp",
    }
    schema = version["schema"]["openAPIV3Schema"]
    assert schema["required"] == ["spec"]
    conditions = schema["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


@pytest.mark.parametrize(
    ("filename", "short_name", "columns"),
    [
        (
            "threadbudgetpolicies.cellguard.io.yaml",
            "tbp",
            {"Margin", "OnUnknown", "MaxReplicas", "StaleAfter", "Age"},
        ),
        (
            "nodebudgets.cellguard.io.yaml",
            "nb",
            {"ThreadsMax", "PidMax", "KubepodsMax", "InUse", "PodPidsLimit", "ObservedAt", "Agent"},
        ),
    ],
)
def test_cluster_scoped_crds(filename: str, short_name: str, columns: set[str]) -> None:
    crd = yaml.safe_load((crdgen.CRDS_DIR / filename).read_text())
    spec = crd["spec"]
    assert spec["scope"] == "Cluster"
    assert spec["names"]["shortNames"] == [short_name]
    (version,) = spec["versions"]
    assert "subresources" not in version  # nothing writes their status
    assert {c["name"] for c in version["additionalPrinterColumns"]} == columns
    for column in version["additionalPrinterColumns"]:
        path = column["jsonPath"].lstrip(".").split(".")
        node = version["schema"]["openAPIV3Schema"]
        if path[0] == "metadata":
            continue
        for part in path:
            node = node["properties"][part]  # every column points at a real field
        assert node["type"] in (column["type"], "string"), column


def _rules(kind: str) -> dict[str, str]:
    """rule -> message of every CEL validation in the kind's schema."""
    found: dict[str, str] = {}
    for _path, node in _walk(_schemas()[kind]):
        for validation in node.get("x-kubernetes-validations", []):
            found[validation["rule"]] = validation["message"]
    return found


# Each CEL rule in the CRDs, with an object the API server refuses for it; the pydantic
# model must refuse the same object with the same message (the models are the source).
CEL_CASES: list[tuple[str, type[BaseModel], dict[str, Any]]] = [
    ("self.operator != 'Exists'", api.Toleration, {"key": "k", "operator": "Exists", "value": "v"}),
    ("(has(self.key) && self.key != '')", api.Toleration, {"value": "v"}),
    ("!has(self.tolerationSeconds)", api.Toleration, {"key": "k", "tolerationSeconds": 5}),
    ("self.criticalHeadroom < self.warningHeadroom", api.AlertThresholds, {"warningHeadroom": 0.1}),
    (
        "self.unknownBudget != 'UseDefaults'",
        api.ThreadBudgetPolicySpec,
        {"unknownBudget": "UseDefaults"},
    ),
    ("self.unlimited && has(self.max)", api.KubepodsPids, {"unlimited": True, "max": 10}),
    (
        "self.metadata.name == self.spec.nodeName",
        api.NodeBudget,
        {
            "metadata": {"name": "n2"},
            "spec": {"nodeName": "n1", "observedAt": "2026-01-01T00:00:00Z"},
        },
    ),
]


def test_every_cel_rule_has_a_case() -> None:
    rules = {
        rule for kind in ("StreamCell", "ThreadBudgetPolicy", "NodeBudget") for rule in _rules(kind)
    }
    covered = {rule for rule in rules if any(fragment in rule for fragment, _, _ in CEL_CASES)}
    assert covered == rules
    assert len(rules) == len(CEL_CASES)


@pytest.mark.parametrize(("fragment", "model", "body"), CEL_CASES, ids=lambda v: str(v)[:40])
def test_cel_rules_are_mirrored_by_the_models(
    fragment: str, model: type[BaseModel], body: dict[str, Any]
) -> None:
    rules = {
        r: m
        for kind in ("StreamCell", "ThreadBudgetPolicy", "NodeBudget")
        for r, m in _rules(kind).items()
    }
    (message,) = [m for r, m in rules.items() if fragment in r]
    with pytest.raises(ValidationError) as refused:
        model.model_validate(body)
    assert message in str(refused.value)
    assert ": " in message  # says what is wrong, then what to do


def test_templates_may_not_narrow_placement() -> None:
    base = {"service": "ingest", "threads": {"base": 10}, "template": {"spec": {}}}
    api.StreamCellSpec.model_validate(base)
    pod_spec: dict[str, Any]
    for pod_spec in ({"affinity": {"nodeAffinity": {}}}, {"nodeName": "n1"}):
        with pytest.raises(ValidationError, match=r"spec\.placement\.nodeSelector"):
            api.StreamCellSpec.model_validate({**base, "template": {"spec": pod_spec}})
