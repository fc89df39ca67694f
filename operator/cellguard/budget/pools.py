"""Cell node pools: which nodes belong to which NodeExclusive cell of a service.

The kube-scheduler's hostname spread counts every node that matches a pod's node
affinity and tolerates its taints as a spread domain, including nodes the cell's
anti-affinity keeps it off. Beside a sibling cell those nodes hold 0 of its pods, so
maxSkew 1 would cap the cell at one pod a node and admitted pods would stay Pending.
A NodeExclusive cell's pods therefore select their pool's label: the spread domains are
exactly the pool's nodes, which is what the planner water-fills. One label key per
service, so a node can be in the pool of at most one cell of that service.

    cellpool.cellguard.io/<service> = <namespace>.<cell>

Shared cells of the service keep off every pool (node affinity `DoesNotExist` on the
key): their domains are the nodes no NodeExclusive cell of the service owns.
"""

from __future__ import annotations

import hashlib

POOL_LABEL_PREFIX = "cellpool.cellguard.io/"
_VALUE_LIMIT = 63  # a label value's length limit


def pool_label_key(service: str) -> str:
    """The node label whose value names the cell of `service` that owns the node."""
    return POOL_LABEL_PREFIX + service


def pool_label_value(namespace: str, cell: str) -> str:
    """`<namespace>.<cell>`, or a hashed form when that is longer than a label value may be.

    Namespace and cell names are DNS names: lower-case alphanumerics, '-' and '.', so the
    value is a valid label value that starts and ends with an alphanumeric.
    """
    value = f"{namespace}.{cell}"
    if len(value) <= _VALUE_LIMIT:
        return value
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    return f"{value[: _VALUE_LIMIT - 11].rstrip('.-')}-{digest}"


def is_pool_label(key: str) -> bool:
    return key.startswith(POOL_LABEL_PREFIX)
