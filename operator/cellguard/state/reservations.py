"""Reservations: threads held for admitted scale changes the cluster has not applied yet.

Two scale-ups that each fit alone must not both pass when together they do not fit. An
admitted change therefore holds, per node, the threads its decision projected, until the
reconciler sees the cell's pods at the new size or the reservation expires; as the change's
pods are bound it shrinks to what its pods still to come may need (`settling`). A cell
holds at most one reservation: a newer admitted change replaces the older one.

The ledger keeps the per-node totals of what it holds (and each cell's map), adjusted on
every hold, release and expiry in O(nodes of that reservation), as persistent maps: a
snapshot takes them as they are in O(1) and keeps seeing them so, whatever the ledger does
next (`budget.with_reserved`). Decisions never re-sum the reservations.
"""

from __future__ import annotations

import heapq
from dataclasses import replace
from datetime import datetime

from cellguard.budget import (
    CellKey,
    NodeSetInterner,
    Reservation,
    Reserved,
    empty_reserved,
    grouped,
)


class ReservationLedger:
    """Active reservations by cell. Not thread-safe: callers serialize decisions."""

    def __init__(self) -> None:
        self._by_cell: dict[CellKey, Reservation] = {}
        # Figures of every reservation held, expired or not (a snapshot drops the expired).
        self._reserved: Reserved = empty_reserved()
        # (expires_at, sequence, cell) of every hold, soonest first; the entries of replaced
        # holds are skipped when they come up (the cell's sequence moved on).
        self._expiries: list[tuple[datetime, int, CellKey]] = []
        self._sequence_of: dict[CellKey, int] = {}
        self._sequence = 0
        # cell -> what its reservation was last judged on (`settling`); a hold or release
        # of the cell forgets it.
        self._judged: dict[CellKey, object] = {}
        self.version = 0  # bumped on every change, so cached snapshots know they are old
        # The node sets of held maps, shared between reservations (see budget.nodecounts).
        self._node_sets = NodeSetInterner()

    def hold(self, reservation: Reservation) -> None:
        key = CellKey(*reservation.cell)
        # Kept grouped: a change over thousands of nodes holds the same on most of them.
        reservation = replace(
            reservation,
            threads_by_node=grouped(reservation.threads_by_node, self._node_sets),
            new_pods=(
                grouped(reservation.new_pods, self._node_sets)
                if reservation.new_pods is not None
                else None
            ),
        )
        before = self._by_cell.get(key)
        self._by_cell[key] = reservation
        self._change(key, before, reservation)
        self._sequence += 1
        self._sequence_of[key] = self._sequence
        heapq.heappush(self._expiries, (reservation.expires_at, self._sequence, key))

    def release(self, cell: tuple[str, str]) -> Reservation | None:
        key = CellKey(*cell)
        released = self._by_cell.pop(key, None)
        if released is not None:
            del self._sequence_of[key]
            self._change(key, released, None)
        return released

    def judged(self, cell: tuple[str, str]) -> object | None:
        """What the cell's current reservation was last judged on (None: not yet)."""
        return self._judged.get(CellKey(*cell))

    def note_judged(self, cell: tuple[str, str], basis: object) -> None:
        """Remember what the cell's current reservation was judged on, so that the same
        question is not asked again until the reservation or the basis changes."""
        key = CellKey(*cell)
        if key in self._by_cell:
            self._judged[key] = basis

    def _change(self, key: CellKey, before: Reservation | None, after: Reservation | None) -> None:
        self._judged.pop(key, None)
        removed = (before,) if before is not None else ()
        added = (after,) if after is not None else ()
        self._reserved, _ = self._reserved.changed(removed, added, whole=added)
        self.version += 1

    def expire(self, now: datetime) -> list[Reservation]:
        expired = []
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            _, sequence, key = heapq.heappop(expiries)
            if self._sequence_of.get(key) == sequence:
                released = self.release(key)
                assert released is not None
                expired.append(released)
        return expired

    def get(self, cell: tuple[str, str]) -> Reservation | None:
        return self._by_cell.get(CellKey(*cell))

    def live(self, now: datetime) -> list[Reservation]:
        return [r for r in self._by_cell.values() if r.expires_at > now]

    def held(self) -> tuple[Reservation, ...]:
        """Every reservation held, expired or not (`reserved` counts exactly these)."""
        return tuple(self._by_cell.values())

    @property
    def reserved(self) -> Reserved:
        """The figures of `held()`: per-node totals and per-cell maps, kept up to date. A
        value that never changes: the next hold or release makes a new one."""
        expiries, current = self._expiries, self._sequence_of
        while expiries and current.get(expiries[0][2]) != expiries[0][1]:
            heapq.heappop(expiries)  # a replaced or released hold's entry
        soonest = expiries[0][0] if expiries else None
        if self._reserved.next_expiry != soonest:
            self._reserved = replace(self._reserved, next_expiry=soonest)
        return self._reserved

    def __len__(self) -> int:
        return len(self._by_cell)
