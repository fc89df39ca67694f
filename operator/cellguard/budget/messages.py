"""The sentences a decision shows: the node, the figures, and what to do about it."""

from __future__ import annotations

import math
from fractions import Fraction


def figure(value: int) -> str:
    """An integer with thousands separators: 31120 -> '31,120'."""
    return f"{value:,}"


def percent(fraction: Fraction) -> str:
    """0.2 -> '20%', 0.125 -> '12.5%'."""
    value = fraction * 100
    if value.denominator == 1:
        return f"{value.numerator}%"
    return f"{float(value):g}%"


def limit_clause(limit: int, margin: Fraction, allowed: int) -> str:
    """'limit 32,768 less 20% margin = 26,214'."""
    return f"limit {figure(limit)} less {percent(margin)} margin = {figure(allowed)}"


def change(cell: str, from_replicas: int, to_replicas: int) -> str:
    return f"scaling {cell} from {figure(from_replicas)} to {figure(to_replicas)} replicas"


def what_fits(max_safe: int, current: int) -> str:
    if max_safe > current:
        return f"at most {figure(max_safe)} replicas fit"
    if max_safe == current:
        return f"no more than the current {figure(current)} replicas fit"
    return f"at most {figure(max_safe)} replicas fit now, fewer than the current {figure(current)}"


def remedy(per_peer: int) -> str:
    # With per-peer threads a cell's cost grows with its size squared: splitting it is
    # what helps. Without, more nodes help as much as another cell.
    return "add a cell" if per_peer > 0 else "add nodes or a cell"


def headroom_text(headroom: float | None) -> str | None:
    """Headroom as status shows it: two decimals, rounded down (never flatter the node)."""
    if headroom is None:
        return None
    hundredths = math.floor(round(headroom * 100, 9))  # 0.29 * 100 is 28.999999999999996
    sign = "-" if hundredths < 0 else ""
    hundredths = abs(hundredths)
    return f"{sign}{hundredths // 100}.{hundredths % 100:02d}"
