"""Hypothesis strategies for invalid StreamCells and ThreadBudgetPolicies.

Each case is a valid object with exactly one thing broken, and the text the refusal must
contain: the field path (schema and strict field validation name it) or, for what only the
webhook checks, the reason. Shared by tests/e2e/test_load_faults.py and bench/invalid.py;
needs hypothesis (the `dev` extra), which the operator itself never imports.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cellguard.constants import GROUP, POLICY_PLURAL, STREAMCELL_PLURAL, VERSION

Draw = Callable[[st.SearchStrategy[Any]], Any]

SPEC_FIELDS = {
    "replicas",
    "service",
    "threads",
    "maxReplicas",
    "policyRef",
    "isolation",
    "placement",
    "template",
}
KNOWN_FIELDS = {
    "spec": SPEC_FIELDS,
    "spec.threads": {"base", "perPeer"},
    "spec.placement": {"nodeSelector", "tolerations"},
    "spec.placement.tolerations[0]": {"key", "operator", "value", "effect", "tolerationSeconds"},
}
POLICY_FIELDS = {
    "safetyMargin",
    "defaultMaxReplicas",
    "unknownBudget",
    "defaults",
    "staleAfterSeconds",
    "reservationTtlSeconds",
    "alerts",
}


@dataclass(frozen=True)
class InvalidCase:
    kind: str  # "StreamCell" or "ThreadBudgetPolicy"
    category: str
    manifest: dict[str, Any]
    expect: tuple[str, ...]  # the refusal's message contains one of these
    replace: bool = False  # PUT over an existing valid cell instead of a create

    def describe(self) -> str:
        return f"{self.category}: {json.dumps(self.manifest.get('spec'))[:300]}"


# ---------------------------------------------------------------------- building blocks

names = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)
wrong_scalars = st.one_of(
    st.text(max_size=8),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != int(x)),
    st.lists(st.integers(), max_size=2),
)


def _valid_cell_spec(draw: Draw, placement: dict[str, Any]) -> dict[str, Any]:
    return {
        "replicas": draw(st.integers(0, 3)),
        "service": draw(names),
        "isolation": draw(st.sampled_from(["Shared", "NodeExclusive"])),
        "threads": {"base": draw(st.integers(1, 500)), "perPeer": draw(st.integers(0, 20))},
        "placement": copy.deepcopy(placement),
        "template": {"spec": {"containers": [{"name": "server", "image": "example.invalid/s:1"}]}},
    }


def _unknown_name(known: set[str]) -> st.SearchStrategy[str]:
    return st.from_regex(r"[a-z][a-zA-Z0-9]{0,12}", fullmatch=True).filter(lambda n: n not in known)


def _spec_mutation(category: str, draw: Draw, spec: dict[str, Any]) -> tuple[str, ...]:
    """Break `spec` in place the `category` way; return what the refusal must mention."""
    if category == "negative-replicas":
        spec["replicas"] = draw(st.integers(-(2**31), -1))
        return ("spec.replicas",)
    if category == "too-many-replicas":
        spec["replicas"] = draw(st.integers(100_001, 2**31))
        return ("spec.replicas",)
    if category == "negative-perPeer":
        spec["threads"]["perPeer"] = draw(st.integers(-(2**31), -1))
        return ("spec.threads.perPeer",)
    if category == "base-not-positive":
        spec["threads"]["base"] = draw(st.integers(-(2**31), 0))
        return ("spec.threads.base",)
    if category == "bad-maxReplicas":
        spec["maxReplicas"] = draw(st.integers(-(2**31), 0) | st.integers(100_001, 2**31))
        return ("spec.maxReplicas",)
    if category == "unknown-field":
        where = draw(st.sampled_from(sorted(KNOWN_FIELDS)))
        name = draw(_unknown_name(KNOWN_FIELDS[where]))
        value = draw(st.integers() | st.text(max_size=5) | st.booleans())
        if where == "spec":
            spec[name] = value
        elif where == "spec.threads":
            spec["threads"][name] = value
        elif where == "spec.placement":
            spec["placement"][name] = value
        else:
            spec["placement"]["tolerations"][0][name] = value
        return (f'unknown field "{where}.{name}"',)
    if category == "wrong-type":
        path = draw(
            st.sampled_from(
                [
                    "replicas",
                    "service",
                    "threads",
                    "threads.base",
                    "template",
                    "isolation",
                    "placement",
                    "placement.nodeSelector",
                    "maxReplicas",
                    "policyRef",
                ]
            )
        )
        if path in ("service", "isolation", "policyRef"):
            value = draw(st.integers() | st.booleans() | st.lists(st.text(max_size=3), max_size=2))
        elif path in ("threads", "template", "placement", "placement.nodeSelector"):
            value = draw(st.text(max_size=8) | st.integers() | st.lists(st.integers(), max_size=2))
        else:
            value = draw(wrong_scalars)
        target = spec
        *parents, leaf = path.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
        return (f"spec.{path}",)
    if category == "missing-required":
        path = draw(st.sampled_from(["service", "threads", "template", "threads.base"]))
        if path == "threads.base":
            del spec["threads"]["base"]
        else:
            del spec[path]
        return (f"spec.{path}",)
    if category == "bad-enum":
        which = draw(st.sampled_from(["isolation", "operator", "effect"]))
        value = draw(
            st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", max_size=12)
        )
        if which == "isolation":
            if value in ("NodeExclusive", "Shared"):
                value += "x"
            spec["isolation"] = value
            return ("spec.isolation",)
        toleration = spec["placement"]["tolerations"][0]
        if value in ("Exists", "Equal", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            value += "x"
        toleration[which] = value
        return (f"spec.placement.tolerations[0].{which}",)
    if category == "bad-service-name":
        spec["service"] = draw(
            st.sampled_from(["", "-lead", "trail-", "Upper", "under_score", "dot.ted", "x" * 64])
            | st.from_regex(r"[a-z]{1,5}[A-Z_.][a-z]{0,5}", fullmatch=True)
        )
        return ("spec.service",)
    if category == "bad-policyRef":
        spec["policyRef"] = draw(st.just("") | st.just("p" * 254))
        return ("spec.policyRef",)
    if category == "toleration-rule":
        rule = draw(st.sampled_from(["exists-with-value", "no-key-equal", "seconds-not-noexecute"]))
        if rule == "exists-with-value":
            bad = {"key": "k", "operator": "Exists", "value": draw(names)}
            expect = "operator Exists matches every value"
        elif rule == "no-key-equal":
            bad = {"operator": "Equal", "value": draw(names)}
            expect = "a toleration without `key`"
        else:
            bad = {
                "key": "k",
                "operator": "Exists",
                "effect": draw(st.sampled_from(["NoSchedule", "PreferNoSchedule"])),
                "tolerationSeconds": draw(st.integers(0, 3600)),
            }
            expect = "tolerationSeconds applies only to NoExecute"
        spec["placement"]["tolerations"].append(bad)
        return (expect,)
    if category == "template-nodeName":
        spec["template"]["spec"]["nodeName"] = draw(names)
        return ("spec.template.spec.nodeName is not supported",)
    if category == "template-nodeAffinity":
        spec["template"]["spec"]["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": draw(names), "operator": "Exists"}]}
                    ]
                }
            }
        }
        return ("spec.template.spec.affinity.nodeAffinity is not supported",)
    raise ValueError(category)


CELL_CATEGORIES = (
    "negative-replicas",
    "too-many-replicas",
    "negative-perPeer",
    "base-not-positive",
    "bad-maxReplicas",
    "unknown-field",
    "wrong-type",
    "missing-required",
    "bad-enum",
    "bad-service-name",
    "bad-policyRef",
    "toleration-rule",
    "template-nodeName",
    "template-nodeAffinity",
)
POLICY_CATEGORIES = (
    "policy-margin",
    "policy-bounds",
    "policy-use-defaults-without-defaults",
    "policy-alert-order",
    "policy-bad-enum",
    "policy-unknown-field",
)


def _policy_case(category: str, draw: Draw) -> tuple[dict[str, Any], tuple[str, ...]]:
    spec: dict[str, Any] = {"safetyMargin": 0.2, "staleAfterSeconds": 3600}
    if category == "policy-margin":
        spec["safetyMargin"] = draw(
            st.floats(1.0, 1e6, allow_nan=False) | st.floats(-1e6, -1e-9, allow_nan=False)
        )
        expect: tuple[str, ...] = ("spec.safetyMargin",)
    elif category == "policy-bounds":
        field, low, high = draw(
            st.sampled_from(
                [
                    ("defaultMaxReplicas", 1, 100_000),
                    ("staleAfterSeconds", 10, 86_400),
                    ("reservationTtlSeconds", 5, 3_600),
                ]
            )
        )
        spec[field] = draw(st.integers(-(2**31), low - 1) | st.integers(high + 1, 2**31))
        expect = (f"spec.{field}",)
    elif category == "policy-use-defaults-without-defaults":
        spec["unknownBudget"] = "UseDefaults"
        expect = ("unknownBudget: UseDefaults needs the limits to assume",)
    elif category == "policy-alert-order":
        warning = draw(st.floats(0.01, 0.98))
        critical = draw(st.floats(warning, 0.99))
        spec["alerts"] = {"warningHeadroom": warning, "criticalHeadroom": critical}
        expect = ("criticalHeadroom must be smaller than warningHeadroom",)
    elif category == "policy-bad-enum":
        spec["unknownBudget"] = draw(names.filter(lambda n: n not in ("Refuse", "UseDefaults")))
        expect = ("spec.unknownBudget",)
    else:
        name = draw(_unknown_name(POLICY_FIELDS))
        spec[name] = draw(st.integers() | st.text(max_size=4))
        expect = (f'unknown field "spec.{name}"',)
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ThreadBudgetPolicy",
        "metadata": {"name": f"invalid-{draw(names)}"},
        "spec": spec,
    }
    return manifest, expect


@st.composite
def invalid_objects(
    draw: Draw, namespace: str, placement: dict[str, Any], existing_cell: str | None = None
) -> InvalidCase:
    """One invalid StreamCell (created, or replacing `existing_cell`) or policy."""
    category = draw(st.sampled_from(CELL_CATEGORIES + POLICY_CATEGORIES))
    if category in POLICY_CATEGORIES:
        manifest, expect = _policy_case(category, draw)
        return InvalidCase("ThreadBudgetPolicy", category, manifest, expect)
    spec = _valid_cell_spec(draw, placement)
    expect = _spec_mutation(category, draw, spec)
    replace = existing_cell is not None and draw(st.integers(0, 3)) == 0
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "StreamCell",
        "metadata": {
            "name": existing_cell if replace and existing_cell else f"bad-{draw(names)}",
            "namespace": namespace,
        },
        "spec": spec,
    }
    return InvalidCase("StreamCell", category, manifest, expect, replace=replace)


@st.composite
def malformed_templates(draw: Draw, namespace: str, placement: dict[str, Any]) -> InvalidCase:
    """Cells whose template is an object (as the schema asks) holding the wrong shapes:
    the schema cannot see inside it (preserve-unknown-fields), so the webhook must."""
    spec = _valid_cell_spec(draw, placement)
    which = draw(st.sampled_from(["spec-not-object", "tolerations", "nodeSelector"]))
    if which == "spec-not-object":
        spec["template"]["spec"] = draw(st.lists(st.integers(), max_size=2) | st.text(max_size=5))
    elif which == "tolerations":
        spec["template"]["spec"]["tolerations"] = [
            draw(
                st.sampled_from(
                    [
                        {"key": "k", "operator": "Bogus"},
                        {"operator": "Equal"},
                        {"key": "k", "effect": "Sometimes"},
                    ]
                )
            )
        ]
    else:
        spec["template"]["spec"]["nodeSelector"] = draw(
            st.lists(st.text(max_size=3), min_size=1, max_size=2) | st.text(min_size=1, max_size=4)
        )
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "StreamCell",
        "metadata": {"name": f"bad-{draw(names)}", "namespace": namespace},
        "spec": spec,
    }
    return InvalidCase("StreamCell", f"malformed-template-{which}", manifest, ("spec.template",))


# ---------------------------------------------------------------------- submitting


@dataclass(frozen=True)
class Answer:
    status: int
    message: str
    seconds: float


def submit_dry_run(api: client.CustomObjectsApi, case: InvalidCase) -> Answer:
    """Send the case to the API server as a dry run with strict field validation."""
    started = time.perf_counter()
    manifest = case.manifest
    try:
        if case.kind == "ThreadBudgetPolicy":
            api.create_cluster_custom_object(
                GROUP,
                VERSION,
                POLICY_PLURAL,
                manifest,
                dry_run="All",
                field_validation="Strict",
                _request_timeout=30,
            )
        elif case.replace:
            namespace, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
            manifest = copy.deepcopy(manifest)
            # The operator refreshes the target's status every few seconds, which moves its
            # resourceVersion: a 409 only means "read again", so read again (a few times).
            for attempt in range(5):
                current: Any = api.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, STREAMCELL_PLURAL, name
                )
                manifest["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                started = time.perf_counter()  # time the write only
                try:
                    api.replace_namespaced_custom_object(
                        GROUP,
                        VERSION,
                        namespace,
                        STREAMCELL_PLURAL,
                        name,
                        manifest,
                        dry_run="All",
                        field_validation="Strict",
                        _request_timeout=30,
                    )
                    break
                except ApiException as conflict:
                    if conflict.status != 409 or attempt == 4:
                        raise
        else:
            api.create_namespaced_custom_object(
                GROUP,
                VERSION,
                manifest["metadata"]["namespace"],
                STREAMCELL_PLURAL,
                manifest,
                dry_run="All",
                field_validation="Strict",
                _request_timeout=30,
            )
    except ApiException as exc:
        body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else exc.body
        try:
            message = str(json.loads(body or "").get("message", body))
        except (TypeError, ValueError):
            message = str(body)
        return Answer(int(exc.status or 0), message, time.perf_counter() - started)
    return Answer(200, "accepted", time.perf_counter() - started)


REFUSED = (400, 403, 422)


def judge(case: InvalidCase, answer: Answer) -> str | None:
    """None when the refusal is right: a 4xx that names the field or the reason."""
    if answer.status not in REFUSED:
        return f"HTTP {answer.status} for {case.describe()}: {answer.message[:400]}"
    if not any(fragment in answer.message for fragment in case.expect):
        return (
            f"HTTP {answer.status} without any of {case.expect} for {case.describe()}: "
            f"{answer.message[:400]}"
        )
    return None
