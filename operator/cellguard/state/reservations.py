"""Reservations: threads held for admitted scale changes the cluster has not applied yet.

Two scale-ups that each fit alone must not both pass when together they do not fit. An
admitted change therefore holds, per node, the threads its decision projected, until the
reconciler sees the cell's pods at the new size or the reservation expires. A cell holds
at most one reservation: a newer admitted change replaces the older one.
"""

from __future__ import annotations

from datetime import datetime

from cellguard.budget import CellKey, Reservation


class ReservationLedger:
    """Active reservations by cell. Not thread-safe: callers serialize decisions."""

    def __init__(self) -> None:
        self._by_cell: dict[CellKey, Reservation] = {}
        self.version = 0  # bumped on every change, so cached snapshots know they are old

    def hold(self, reservation: Reservation) -> None:
        self._by_cell[CellKey(*reservation.cell)] = reservation
        self.version += 1

    def release(self, cell: tuple[str, str]) -> Reservation | None:
        released = self._by_cell.pop(CellKey(*cell), None)
        if released is not None:
            self.version += 1
        return released

    def expire(self, now: datetime) -> list[Reservation]:
        expired = [r for r in self._by_cell.values() if r.expires_at <= now]
        for reservation in expired:
            self.release(reservation.cell)
        return expired

    def get(self, cell: tuple[str, str]) -> Reservation | None:
        return self._by_cell.get(CellKey(*cell))

    def live(self, now: datetime) -> list[Reservation]:
        return [r for r in self._by_cell.values() if r.expires_at > now]

    def __len__(self) -> int:
        return len(self._by_cell)
