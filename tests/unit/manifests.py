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
