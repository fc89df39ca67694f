"""The demo cell's thread model, sized to one node's real allowance (pure: no I/O).

The story needs three sizes: the cell is created at `start`, grows to `admitted` (fits) and
is then asked for `replay` (a small capacity add that does not fit: every pod's threads
grow with the fleet). From the node's figures - the per-pod allowance (the kubelet's
podPidsLimit less the policy's margin) and the room left on the node (its limit less the
margin, less the threads already in use) - the model is chosen so that `admitted` uses at
most 85% of what one pod (and the node) may hold and `replay` needs at least 115%: far
enough from the line that the operator's own rounding and the threads a runtime adds never
decide the outcome. With `real_threads` (the pods hold them: `cellguard demo --real-node`)
`replay` also needs more than the kernel's per-pod limit, so that without the guard the
pods really fail.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cellguard.budget import NodeLimits, threads_per_pod

FITS, CROSSES, REAL_CROSSES = 0.85, 1.15, 1.1
# Below this per pod the story would be about rounding, not about threads.
MIN_ALLOWANCE = 40


class SizingError(ValueError):
    pass


@dataclass(frozen=True)
class Sizes:
    start: int = 4
    admitted: int = 6
    replay: int = 10


@dataclass(frozen=True)
class Model:
    node: str
    base: int
    per_peer: int
    sizes: Sizes
    pod_allowed: int | None  # threads one pod may hold (podPidsLimit less the margin)
    node_room: int  # threads the node may still take (its allowed figure less those in use)

    def threads(self, replicas: int) -> int:
        return threads_per_pod(self.base, self.per_peer, replicas)

    def fits(self, replicas: int) -> bool:
        per_pod = self.threads(replicas)
        within_pod = self.pod_allowed is None or per_pod <= self.pod_allowed
        return within_pod and replicas * per_pod <= self.node_room

    def binding(self, replicas: int) -> str:
        """Which limit `replicas` crosses (or comes nearest to)."""
        per_pod = self.threads(replicas)
        pod_share = per_pod / self.pod_allowed if self.pod_allowed else 0.0
        return "per pod" if pod_share >= replicas * per_pod / self.node_room else "per node"


def pod_allowance(limits: NodeLimits, margin_kept: float) -> int | None:
    if limits.pod_pids_limit is None or limits.pod_pids_limit <= 0:
        return None
    return math.floor(limits.pod_pids_limit * margin_kept)


def size_model(
    limits: NodeLimits,
    margin: float,
    sizes: Sizes = Sizes(),
    *,
    real_threads: bool = False,
) -> Model:
    """A thread model for `limits.node` under which `sizes.admitted` fits and `sizes.replay`
    does not (SizingError when the node's figures leave no room for the story)."""
    if limits.allowed is None or limits.observed is None:
        raise SizingError(f"node {limits.node} has no known budget: {limits.detail}")
    pod_allowed = pod_allowance(limits, 1 - margin)
    room = limits.allowed - limits.observed

    def cap(replicas: int) -> int:
        node_share = room // replicas
        return node_share if pod_allowed is None else min(pod_allowed, node_share)

    if cap(sizes.admitted) < MIN_ALLOWANCE:
        raise SizingError(
            f"node {limits.node} has room for {max(room, 0):,} more threads "
            f"({cap(sizes.admitted)} a pod at {sizes.admitted} pods): too little for the story"
        )
    admitted = math.floor(FITS * cap(sizes.admitted))
    replay = max(math.ceil(CROSSES * cap(sizes.replay)), admitted + sizes.replay - sizes.admitted)
    if real_threads:
        if pod_allowed is None or limits.pod_pids_limit is None:
            raise SizingError(
                f"node {limits.node} has no per-pod PID limit: holding the threads for real "
                "would take them from the whole node"
            )
        replay = max(replay, math.ceil(REAL_CROSSES * limits.pod_pids_limit))
    steps = sizes.replay - sizes.admitted
    # Most of a pod's threads are per peer, as in the Kinesis front-end fleet.
    per_peer = max(
        math.ceil((replay - admitted) / steps), math.ceil(admitted / 2 / (sizes.admitted - 1))
    )
    base = admitted - per_peer * (sizes.admitted - 1)
    model = Model(limits.node, max(base, 1), per_peer, sizes, pod_allowed, room)
    if not (model.fits(sizes.start) and model.fits(sizes.admitted)) or model.fits(sizes.replay):
        raise SizingError(f"no thread model tells the story on node {limits.node}: {model}")
    return model
