"""The thread model fitted to what a cell's pods were seen to hold.

A cell's pods are observed to hold some threads per pod at each size N the cell runs at
(status.threadSamples). The model says `threads = base + perPeer * (N - 1)`; the fit is
the least-squares line through the samples, with x = N - 1 (so `base` is the line at one
replica, where a pod has no peer):

    perPeer = Σ (xᵢ - x̄)(yᵢ - ȳ) / Σ (xᵢ - x̄)²        base = ȳ - perPeer · x̄

It is computed in exact rational arithmetic (the samples are integers or floats, both
exact as fractions) and rounded once, to the nearest float, at the end: noiseless samples
of an integer model give back exactly that model, and a residual of exactly 0, whatever
the samples' order.

Error under bounded noise. The fit is linear in the observations, so if every observation
is off the true line by at most e (|εᵢ| ≤ e), with m samples, D = max N - min N (the
spread of sizes) and Sxx = Σ (xᵢ - x̄)²:

    |ΔperPeer| = |Σ (xᵢ - x̄) εᵢ| / Sxx  ≤ e · Σ|xᵢ - x̄| / Sxx    (reached at εᵢ = ±e)
                                         ≤ e · √(m / Sxx)          (Cauchy-Schwarz)
                                         ≤ e · √(2m) / D           (Sxx ≥ D²/2: the two
                                                                    extreme sizes alone)
    |Δbase|    = |ε̄ - ΔperPeer · x̄|     ≤ e · (1 + (N̄ - 1) · √(2m) / D)

where N̄ is the mean size. perPeer is as good as the sizes are spread (16 samples over
sizes at least 8 apart: within 0.71 e); base is an extrapolation to one replica, so it
is looser the further the sizes are from 1. The residual (root mean square error) is at
most e: the true line is one of the lines the fit chose among.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

# A fitted value at most this far above an integer is that integer (see suggested_model).
ROUNDING_SLACK = 1e-6


@dataclass(frozen=True)
class ThreadFit:
    """The least-squares thread model over a cell's samples."""

    base: float  # threads per pod at one replica
    per_peer: float  # threads per pod added by each other replica
    residual: float  # root mean square error of the fit, in threads per pod
    sizes: int  # distinct sizes (replicas) among the samples
    samples: int  # samples the fit used


def fit_thread_model(samples: Iterable[tuple[int, float]]) -> ThreadFit | None:
    """Fit `threads per pod = base + per_peer * (replicas - 1)` to (replicas, threads per
    pod) samples by least squares; several samples may share a size.

    None with fewer than 2 distinct sizes: one size fixes a point, not a line.
    Raises ValueError for replicas below 1 or threads that are not finite.
    """
    points: list[tuple[Fraction, Fraction]] = []
    for replicas, threads in samples:
        if replicas < 1:
            raise ValueError(f"a sample needs replicas >= 1, not {replicas}")
        if not math.isfinite(threads):
            raise ValueError(f"a sample needs a finite thread count, not {threads}")
        points.append((Fraction(replicas - 1), Fraction(threads)))
    sizes = len({x for x, _ in points})
    if sizes < 2:
        return None
    m = len(points)
    mean_x = sum((x for x, _ in points), Fraction(0)) / m
    mean_y = sum((y for _, y in points), Fraction(0)) / m
    sxx = sum(((x - mean_x) ** 2 for x, _ in points), Fraction(0))
    sxy = sum(((x - mean_x) * (y - mean_y) for x, y in points), Fraction(0))
    syy = sum(((y - mean_y) ** 2 for _, y in points), Fraction(0))
    per_peer = sxy / sxx  # sxx > 0: two distinct sizes
    base = mean_y - per_peer * mean_x
    squared_error = syy - sxy * sxy / sxx  # the sum of squared residuals, exactly
    return ThreadFit(
        base=float(base),
        per_peer=float(per_peer),
        residual=math.sqrt(squared_error / m),
        sizes=sizes,
        samples=m,
    )


def _round_up(value: float) -> int:
    return math.ceil(value - ROUNDING_SLACK)


def suggested_model(fit: ThreadFit) -> tuple[int, int]:
    """The integer (base, perPeer) for spec.threads: the fit rounded up, never below it.

    Rounding up keeps the model at or above the fitted line at every size, so it never
    budgets fewer threads than the fit. A value within ROUNDING_SLACK (a millionth of a
    thread) above an integer counts as that integer: 100.0000001 gives 100, not 101. The
    fit is exact but for its last rounding to float (half an ulp: below 1e-9 up to
    base's maximum of 4,194,304), so noiseless samples land far inside the slack; dropping
    at most 1e-6 from base and from perPeer budgets at most 1e-6 * N threads per pod less
    than the fitted line, less than one thread below a million replicas, where counts
    are whole threads.

    A negative fitted perPeer (threads falling with size) gives 0: the line is then
    highest at one replica, so base alone covers it. base is at least 1 (a pod holds a
    thread; spec.threads.base has minimum 1), and rounds up the same way.
    """
    per_peer = max(0, _round_up(fit.per_peer))
    base = max(1, _round_up(fit.base))
    return base, per_peer
