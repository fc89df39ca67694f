"""Reservations: threads held for admitted scale changes the cluster has not applied yet.

Two scale-ups that each fit alone must not both pass when together they do not fit. An
admitted change therefore holds, per node, the threads its decision projected, until the
reconciler sees the cell's pods at the new size or the reservation expires. A cell holds
at most one reservation: a newer admitted change replaces the older one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

CellKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Reservation:
    cell: CellKey
    target_replicas: int
    threads_by_node: Mapping[str, int]
    expires_at: datetime


class ReservationLedger:
    """Active reservations by cell. Not thread-safe: callers serialize decisions."""

    def __init__(self) -> None:
        self._by_cell: dict[CellKey, Reservation] = {}

    def hold(self, reservation: Reservation) -> None:
        self._by_cell[reservation.cell] = reservation

    def release(self, cell: CellKey) -> Reservation | None:
        return self._by_cell.pop(cell, None)

    def release_if_applied(self, cell: CellKey, observed_pods: int) -> bool:
        """Drop the cell's reservation once its pods reached the reserved size."""
        held = self._by_cell.get(cell)
        if held is not None and observed_pods >= held.target_replicas:
            del self._by_cell[cell]
            return True
        return False

    def expire(self, now: datetime) -> list[Reservation]:
        expired = [r for r in self._by_cell.values() if r.expires_at <= now]
        for reservation in expired:
            del self._by_cell[reservation.cell]
        return expired

    def get(self, cell: CellKey) -> Reservation | None:
        return self._by_cell.get(cell)

    def threads_by_node(self, now: datetime, *, excluding: CellKey | None = None) -> dict[str, int]:
        """Reserved threads per node of every live reservation except `excluding`'s."""
        totals: dict[str, int] = {}
        for reservation in self._by_cell.values():
            if reservation.cell == excluding or reservation.expires_at <= now:
                continue
            for node, threads in reservation.threads_by_node.items():
                totals[node] = totals.get(node, 0) + threads
        return totals

    def __len__(self) -> int:
        return len(self._by_cell)
