"""A complete listing of what cellguard looks at, as raw objects (dicts).

The operator loads it into its cache at start-up and on resync; `cellguard plan` and
`cellguard status` read a live cluster through it, or a snapshot file holding the same
listing (so a what-if can be asked of a cluster one cannot reach).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from cellguard import kubeclient
from cellguard.constants import (
    GROUP,
    LABEL_CELL,
    NODEBUDGET_PLURAL,
    POLICY_PLURAL,
    STREAMCELL_PLURAL,
    VERSION,
)
from cellguard.state.records import Kind

Listing = dict[str, list[dict[str, Any]]]
KINDS = tuple(kind.value for kind in Kind)
# Finished pods hold no threads: the API server leaves them out of lists and watches.
UNFINISHED_PODS = "status.phase!=Succeeded,status.phase!=Failed"
PAGE_SIZE = 500


@dataclass(frozen=True)
class Source:
    """Where one kind is listed and watched: a URL path and its selectors."""

    kind: Kind
    path: str
    namespace: str | None = None  # None: cluster-scoped, or every namespace
    label_selector: str | None = None
    field_selector: str | None = None

    def query(self) -> list[tuple[str, str]]:
        selectors = [("labelSelector", self.label_selector), ("fieldSelector", self.field_selector)]
        return [(name, value) for name, value in selectors if value]


def sources(namespaces: Iterable[str] = ()) -> list[Source]:
    """Every kind the operator caches, in `namespaces` (or everywhere) where namespaced."""
    crd = f"/apis/{GROUP}/{VERSION}"
    wanted: list[str | None] = list(namespaces) or [None]

    def namespaced(kind: Kind, group_path: str, plural: str, **selectors: str) -> list[Source]:
        return [
            Source(
                kind,
                f"{group_path}/namespaces/{ns}/{plural}" if ns else f"{group_path}/{plural}",
                ns,
                **selectors,
            )
            for ns in wanted
        ]

    return [
        Source(Kind.BUDGETS, f"{crd}/{NODEBUDGET_PLURAL}"),
        Source(Kind.NODES, "/api/v1/nodes"),
        Source(Kind.POLICIES, f"{crd}/{POLICY_PLURAL}"),
        *namespaced(Kind.CELLS, crd, STREAMCELL_PLURAL),
        *namespaced(
            Kind.PODS,
            "/api/v1",
            "pods",
            label_selector=LABEL_CELL,
            field_selector=UNFINISHED_PODS,
        ),
        *namespaced(Kind.DEPLOYMENTS, "/apis/apps/v1", "deployments", label_selector=LABEL_CELL),
    ]


def pages(api: client.ApiClient, source: Source) -> Iterator[dict[str, Any]]:
    """A consistent listing of `source`, a page at a time (each page's items and metadata;
    `metadata.resourceVersion` of every page is the listing's)."""
    token = ""
    while True:
        query = [("limit", str(PAGE_SIZE)), *source.query()]
        if token:
            query.append(("continue", token))
        page = kubeclient.request_json(api, "GET", source.path, query=query, timeout=120)
        yield page
        token = page.get("metadata", {}).get("continue") or ""
        if not token:
            return


def list_cluster(api: client.ApiClient, namespaces: Iterable[str] = ()) -> Listing:
    """Every node, NodeBudget, policy, and the cells with their pods and Deployments
    (in `namespaces`, or everywhere), as raw objects. Blocking: run it in a thread from
    async code."""
    listing: Listing = {kind: [] for kind in KINDS}
    for source in sources(namespaces):
        for page in pages(api, source):
            listing[source.kind.value].extend(page.get("items", []))
    return listing


def write_snapshot(path: Path, listing: Listing, taken_at: datetime.datetime) -> None:
    document: dict[str, Any] = {"takenAt": taken_at.isoformat(), **listing}
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def node_names(api: client.ApiClient) -> set[str]:
    """The names of every node, as metadata only (cheap even for thousands of nodes)."""
    names: set[str] = set()
    token = ""
    while True:
        query = [("limit", "1000")]
        if token:
            query.append(("continue", token))
        page = kubeclient.request_json(
            api,
            "GET",
            "/api/v1/nodes",
            query=query,
            accept="application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1",
            timeout=60,
        )
        names.update(item["metadata"]["name"] for item in page.get("items", []))
        token = page.get("metadata", {}).get("continue") or ""
        if not token:
            return names


def read_snapshot(path: Path) -> tuple[Listing, datetime.datetime | None]:
    """A listing saved by `cellguard status --save-snapshot` (YAML or JSON), and when it
    was taken: budgets are judged as of then, so an old snapshot does not turn stale."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not set(data) <= {*KINDS, "takenAt"}:
        raise ValueError(f"{path}: not a cellguard snapshot (expected keys {', '.join(KINDS)})")
    taken = data.get("takenAt")
    taken_at = datetime.datetime.fromisoformat(str(taken)) if taken else None
    return {kind: list(data.get(kind) or []) for kind in KINDS}, taken_at
