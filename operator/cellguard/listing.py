"""A complete listing of what cellguard looks at, as raw objects (dicts).

The operator loads it into its cache at start-up and on resync; `cellguard plan` and
`cellguard status` read a live cluster through it, or a snapshot file holding the same
listing (so a what-if can be asked of a cluster one cannot reach).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
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

Listing = dict[str, list[dict[str, Any]]]
KINDS = ("nodes", "budgets", "cells", "policies", "pods", "deployments")


def _list_all(
    api: client.ApiClient, path: str, label_selector: str | None = None
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    token = ""
    while True:
        query = [("limit", "500")]
        if token:
            query.append(("continue", token))
        if label_selector:
            query.append(("labelSelector", label_selector))
        page = kubeclient.request_json(api, "GET", path, query=query, timeout=120)
        items.extend(page.get("items", []))
        token = page.get("metadata", {}).get("continue") or ""
        if not token:
            return items


def list_cluster(api: client.ApiClient, namespaces: Iterable[str] = ()) -> Listing:
    """Every node, NodeBudget, policy, and the cells with their pods and Deployments
    (in `namespaces`, or everywhere). Blocking: run it in a thread from async code."""
    crd = f"/apis/{GROUP}/{VERSION}"
    wanted = list(namespaces)

    def namespaced(group_path: str, plural: str, selector: str | None = None) -> list[Any]:
        if not wanted:
            return _list_all(api, f"{group_path}/{plural}", selector)
        return [
            item
            for ns in wanted
            for item in _list_all(api, f"{group_path}/namespaces/{ns}/{plural}", selector)
        ]

    return {
        "nodes": _list_all(api, "/api/v1/nodes"),
        "budgets": _list_all(api, f"{crd}/{NODEBUDGET_PLURAL}"),
        "cells": namespaced(crd, STREAMCELL_PLURAL),
        "policies": _list_all(api, f"{crd}/{POLICY_PLURAL}"),
        "pods": namespaced("/api/v1", "pods", LABEL_CELL),
        "deployments": namespaced("/apis/apps/v1", "deployments", LABEL_CELL),
    }


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
