"""Which nodes a cell's pods may land on: selectors, taints, readiness, isolation."""

from __future__ import annotations

import pytest

from cellguard.api.v1alpha1 import Isolation, StreamCell, Toleration
from cellguard.budget import CellView, NodeView, Taint, eligible_nodes
from cellguard.budget.eligibility import ineligibility, tolerates, tolerates_all

from .helpers import cell, node, snapshot

DEDICATED = Taint("dedicated", "stream", "NoSchedule")


def _toleration(**fields: object) -> Toleration:
    return Toleration.model_validate(fields)


@pytest.mark.parametrize(
    ("toleration", "taint", "expected"),
    [
        ({"key": "dedicated", "value": "stream"}, DEDICATED, True),  # Equal is the default
        ({"key": "dedicated", "value": "batch"}, DEDICATED, False),
        ({"key": "dedicated", "operator": "Exists"}, DEDICATED, True),
        ({"key": "other", "operator": "Exists"}, DEDICATED, False),
        ({"operator": "Exists"}, DEDICATED, True),  # empty key + Exists: every taint
        ({"operator": "Exists", "effect": "NoExecute"}, DEDICATED, False),
        ({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}, DEDICATED, True),
        ({"key": "dedicated", "value": "stream", "effect": "NoExecute"}, DEDICATED, False),
        ({"key": "flag"}, Taint("flag", "", "NoSchedule"), True),  # Equal on empty values
        ({"key": "flag", "value": "x"}, Taint("flag", "", "NoSchedule"), False),
    ],
)
def test_toleration_semantics(toleration: dict[str, str], taint: Taint, expected: bool) -> None:
    assert tolerates(_toleration(**toleration), taint) is expected


def test_prefer_no_schedule_never_blocks() -> None:
    assert tolerates_all((), [Taint("soft", "", "PreferNoSchedule")])
    assert not tolerates_all((), [Taint("hard", "", "NoExecute")])


def test_every_blocking_taint_needs_a_toleration() -> None:
    taints = [DEDICATED, Taint("gpu", "", "NoExecute")]
    one = [_toleration(key="dedicated", operator="Exists")]
    both = [*one, _toleration(key="gpu", operator="Exists", effect="NoExecute")]
    assert not tolerates_all(one, taints)
    assert tolerates_all(both, taints)


def test_selector_taints_readiness_and_cordon() -> None:
    nodes = [
        node("plain", labels={"zone": "a"}),
        node("other-zone", labels={"zone": "b"}),
        node("tainted", labels={"zone": "a"}, taints=[DEDICATED]),
        node("soft-tainted", labels={"zone": "a"}, taints=[Taint("x", "", "PreferNoSchedule")]),
        # NotReady but not yet tainted: the scheduler may still use it, so it counts.
        node("not-ready", labels={"zone": "a"}, ready=False),
        node(
            "not-ready-tainted",
            labels={"zone": "a"},
            ready=False,
            taints=[Taint("node.kubernetes.io/not-ready", "", "NoSchedule")],
        ),
        node("cordoned", labels={"zone": "a"}, unschedulable=True),
    ]
    picky = cell("picky", replicas=0, node_selector={"zone": "a"})
    tolerant = cell(
        "tolerant",
        replicas=0,
        node_selector={"zone": "a"},
        tolerations=[_toleration(key="dedicated", operator="Exists")],
        service="other",
    )
    anywhere = cell("anywhere", replicas=0, service="third")
    snap = snapshot(nodes, [picky, tolerant, anywhere])
    assert eligible_nodes(snap, picky) == {"plain", "soft-tainted", "not-ready"}
    assert eligible_nodes(snap, tolerant) == {"plain", "soft-tainted", "tainted", "not-ready"}
    assert eligible_nodes(snap, anywhere) == {"plain", "other-zone", "soft-tainted", "not-ready"}
    assert ineligibility(snap, picky) == {
        "do not match its nodeSelector": 1,
        "have taints it does not tolerate": 2,
        "are cordoned": 1,
    }


def test_selector_with_several_labels_needs_all() -> None:
    nodes = [
        node("both", labels={"zone": "a", "disk": "ssd"}),
        node("zone-only", labels={"zone": "a"}),
        node("disk-only", labels={"disk": "ssd"}),
    ]
    wants = cell("c", replicas=0, node_selector={"zone": "a", "disk": "ssd"})
    assert eligible_nodes(snapshot(nodes, [wants]), wants) == {"both"}


@pytest.mark.parametrize(
    ("mine", "theirs", "excluded"),
    [
        (Isolation.NODE_EXCLUSIVE, Isolation.NODE_EXCLUSIVE, True),
        (Isolation.NODE_EXCLUSIVE, Isolation.SHARED, True),
        # Their pods' required anti-affinity refuses mine too (it is symmetric).
        (Isolation.SHARED, Isolation.NODE_EXCLUSIVE, True),
        (Isolation.SHARED, Isolation.SHARED, False),
    ],
)
def test_isolation_between_cells_of_one_service(
    mine: Isolation, theirs: Isolation, excluded: bool
) -> None:
    nodes = [node("n1"), node("n2")]
    a = cell("a", replicas=1, isolation=mine)
    b = cell("b", replicas=1, isolation=theirs)
    snap = snapshot(nodes, [a, b], {a.key: {"n1": 1}, b.key: {"n2": 1}})
    assert eligible_nodes(snap, a) == ({"n1"} if excluded else {"n1", "n2"})


def test_isolation_is_per_service_and_namespace() -> None:
    nodes = [node("n1"), node("n2"), node("n3")]
    a = cell("a", replicas=1)
    other_service = cell("b", replicas=1, service="billing")
    other_namespace = cell("c", replicas=1, namespace="staging")
    snap = snapshot(
        nodes,
        [a, other_service, other_namespace],
        {a.key: {"n1": 1}, other_service.key: {"n2": 1}, other_namespace.key: {"n3": 1}},
    )
    assert eligible_nodes(snap, a) == {"n1", "n2", "n3"}


def test_node_view_from_manifest() -> None:
    raw = {
        "metadata": {"name": "n1", "labels": {"zone": "a"}},
        "spec": {
            "unschedulable": True,
            "taints": [{"key": "dedicated", "value": "stream", "effect": "NoSchedule"}],
        },
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    view = NodeView.from_manifest(raw, None)
    assert view.labels == {"zone": "a"}
    assert view.taints == (DEDICATED,)
    assert view.ready and view.unschedulable
    not_ready = {**raw, "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}
    assert not NodeView.from_manifest(not_ready, None).ready


def test_cell_view_merges_template_placement() -> None:
    streamcell = StreamCell.model_validate(
        {
            "metadata": {"name": "ingest-a", "namespace": "prod"},
            "spec": {
                "replicas": 4,
                "service": "ingest",
                "threads": {"base": 40, "perPeer": 2},
                "placement": {
                    "nodeSelector": {"zone": "a"},
                    "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                },
                "template": {
                    "spec": {
                        "nodeSelector": {"disk": "ssd", "zone": "b"},
                        "tolerations": [{"key": "gpu", "operator": "Exists"}],
                    }
                },
            },
        }
    )
    view = CellView.from_streamcell(streamcell)
    # spec.placement wins on a conflicting key, as in the Deployment builder.
    assert view.node_selector == {"disk": "ssd", "zone": "a"}
    assert [t.key for t in view.tolerations] == ["gpu", "dedicated"]
    assert (view.base, view.per_peer, view.replicas, view.policy_name) == (40, 2, 4, "default")
    assert CellView.from_streamcell(streamcell, replicas=9).replicas == 9
