"""Raw API objects (dicts) as the operator's cache receives them, for the unit tests."""

from __future__ import annotations

import datetime
from typing import Any

NOW = datetime.datetime(2026, 11, 25, 12, 0, tzinfo=datetime.UTC)


def node(name: str, **labels: str) -> dict[str, Any]:
    """A Ready node with its hostname label (and `labels`)."""
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
        "spec": {},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


def budget(name: str, in_use: int = 1_000, observed: datetime.datetime = NOW) -> dict[str, Any]:
    """The node's NodeBudget: 32,768 threads and PIDs, `in_use` of them used, unlimited
    kubepods, observed at `observed`."""
    return {
        "metadata": {"name": name},
        "spec": {
            "nodeName": name,
            "threadsMax": 32_768,
            "pidMax": 32_768,
            "threadsInUse": in_use,
            "kubepods": {"cgroupVersion": "v2", "unlimited": True},
            "observedAt": observed.isoformat(),
        },
    }


def cell_spec(
    replicas: int, base: int = 3_000, per_peer: int = 100, **extra: Any
) -> dict[str, Any]:
    """A StreamCell spec: Shared, service "svc" unless `extra` says otherwise."""
    return {
        "replicas": replicas,
        "service": extra.pop("service", "svc"),
        "isolation": extra.pop("isolation", "Shared"),
        "threads": {"base": base, "perPeer": per_peer},
        "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}},
        **extra,
    }


def cell(namespace: str, name: str, *, generation: int = 1, **spec: Any) -> dict[str, Any]:
    """A StreamCell; `spec` as `cell_spec` takes it."""
    return {
        "metadata": {
            "namespace": namespace,
            "name": name,
            "uid": f"uid-{name}",
            "generation": generation,
        },
        "spec": cell_spec(**spec),
    }


def pod(
    namespace: str, name: str, cell_name: str, node_name: str | None, phase: str = "Running"
) -> dict[str, Any]:
    """A pod of the cell, bound to `node_name` (None: not yet)."""
    return {
        "metadata": {
            "namespace": namespace,
            "name": name,
            "labels": {"cellguard.io/cell": cell_name},
            "uid": f"uid-{namespace}-{name}",
        },
        "spec": {"nodeName": node_name} if node_name else {},
        "status": {"phase": phase},
    }
