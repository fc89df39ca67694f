"""Cell node pools, kept in the cluster: nodes join a cell's pool before its pods need
them, and leave once the cell no longer does (see `settling`). The labelling itself is
injected (the client lives at the edge); the decisions about it are made here."""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Iterable
from typing import Any

from cellguard.budget import pool_label_key, pool_label_value
from cellguard.state.gate import ScaleGate
from cellguard.state.reservations import ReservationLedger
from cellguard.state.settling import releasable_pool_labels
from cellguard.state.store import CellRecord, ClusterState

# (node name, labels to set, None to remove) -> the node as stored.
NodeLabeler = Callable[[str, dict[str, str | None]], dict[str, Any]]

log = logging.getLogger(__name__)


class NodePools:
    def __init__(
        self,
        state: ClusterState,
        ledger: ReservationLedger,
        gate: ScaleGate,
        label_node: NodeLabeler | None,
        *,
        now: Callable[[], datetime.datetime],
    ) -> None:
        self.state = state
        self.ledger = ledger
        self.gate = gate
        self._label_node = label_node
        self.now = now

    async def join(self, record: CellRecord, nodes: Iterable[str]) -> list[str]:
        """Label `nodes` into the cell's pool (those not labelled yet); the nodes labelled."""
        key = pool_label_key(record.spec.service)
        value = pool_label_value(record.namespace, record.name)
        todo = [
            name
            for name in sorted(nodes)
            if name in self.state.nodes and self.state.nodes[name].labels.get(key) != value
        ]
        for name in todo:
            await self._set_node_labels(name, {key: value})
            log.info("node %s joined the pool of %s/%s", name, record.namespace, record.name)
        return todo

    async def tend(self) -> list[tuple[str, str]]:
        """Take nodes out of pools their cell no longer needs; the (node, label) removed.

        Decided under the gate's lock, so no decision plans with a node while it leaves.
        """
        if not self.state.synced or self._label_node is None:
            return []
        async with self.gate.exclusive():
            released = releasable_pool_labels(self.state, self.ledger, self.now())
            for name, key in released:
                await self._set_node_labels(name, {key: None})
                log.info("node %s left pool %s", name, key)
        return released

    async def _set_node_labels(self, name: str, labels: dict[str, str | None]) -> None:
        if self._label_node is None:
            raise RuntimeError("these node pools cannot label nodes")
        stored = await asyncio.to_thread(self._label_node, name, labels)
        self.state.upsert_node(stored)  # decide on the new labels before the watch says so
