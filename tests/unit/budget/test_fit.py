"""The thread model fitted to observed samples: exact on exact data, bounded under noise.

The noise bound checked here (derived in cellguard/budget/fit.py): m samples, each off the
true line by at most e, sizes spread D = max N - min N apart, mean size N̄:

    |ΔperPeer| ≤ e · Σ|xᵢ - x̄| / Sxx ≤ e · √(2m) / D
    |Δbase|    ≤ e · (1 + (N̄ - 1) · √(2m) / D)

with x = N - 1 and Sxx = Σ (xᵢ - x̄)². The first, data-dependent bound is reached.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellguard.budget import ThreadFit, fit_thread_model, suggested_model
from cellguard.budget.fit import ROUNDING_SLACK

BASES = st.integers(0, 10_000)
PER_PEERS = st.integers(0, 500)
# No deadline: exact rational arithmetic on two shared cores takes what it takes.
SETTINGS = settings(deadline=None)


@st.composite
def sizes_of_samples(draw: st.DrawFn, min_sizes: int = 2) -> list[int]:
    """The replicas of each sample: at least `min_sizes` distinct, some repeated, shuffled."""
    distinct = draw(st.lists(st.integers(1, 2_000), min_size=min_sizes, max_size=8, unique=True))
    repeats = draw(st.lists(st.sampled_from(distinct), max_size=8))
    return draw(st.permutations(distinct + repeats))


def _line(base: int, per_peer: int, replicas: int) -> int:
    return base + per_peer * (replicas - 1)


def _spread(sizes: list[int]) -> tuple[Fraction, Fraction, Fraction]:
    """Σ|xᵢ - x̄|, Sxx and x̄ of x = N - 1, exactly."""
    xs = [Fraction(n - 1) for n in sizes]
    mean = sum(xs, Fraction(0)) / len(xs)
    spread = sum((abs(x - mean) for x in xs), Fraction(0))
    return spread, sum(((x - mean) ** 2 for x in xs), Fraction(0)), mean


def test_an_example_by_hand() -> None:
    # x = N - 1: (0, 99), (0, 101), (2, 110), (4, 120). x̄ = 1.5, ȳ = 107.5, Sxx = 11,
    # Sxy = 55: perPeer 5, base 107.5 - 5 * 1.5 = 100; residuals -1, 1, 0, 0.
    fit = fit_thread_model([(1, 99), (1, 101), (3, 110), (5, 120)])
    assert fit == ThreadFit(base=100.0, per_peer=5.0, residual=math.sqrt(0.5), sizes=3, samples=4)
    assert fit is not None and suggested_model(fit) == (100, 5)


def test_the_kinesis_shape() -> None:
    # 500 threads alone, 130 per peer, seen at 10, 20 and 40 pods with some jitter.
    samples = [(10, 1_672), (10, 1_668), (20, 2_971), (40, 5_571)]
    fit = fit_thread_model(samples)
    assert fit is not None
    assert fit.per_peer == pytest.approx(130, abs=0.1)
    assert fit.base == pytest.approx(500, abs=3)
    base, per_peer = suggested_model(fit)
    assert per_peer == math.ceil(fit.per_peer)
    # Never under the fitted line, at any size.
    assert all(_line(base, per_peer, n) >= fit.base + fit.per_peer * (n - 1) for n in range(1, 500))


@SETTINGS
@given(BASES, PER_PEERS, sizes_of_samples())
def test_exact_samples_give_the_model_back_exactly(
    base: int, per_peer: int, sizes: list[int]
) -> None:
    fit = fit_thread_model([(n, _line(base, per_peer, n)) for n in sizes])
    assert fit is not None
    assert fit.base == base and fit.per_peer == per_peer
    assert fit.residual == 0.0
    assert fit.sizes == len(set(sizes)) and fit.samples == len(sizes)
    assert suggested_model(fit) == (max(base, 1), per_peer)


@SETTINGS
@given(
    BASES,
    PER_PEERS,
    st.integers(1, 2_000),
    st.integers(0, 8),
    st.lists(st.integers(0, 100_000), max_size=8),
)
def test_one_size_is_no_fit(
    base: int, per_peer: int, replicas: int, extra: int, jitter: list[int]
) -> None:
    threads = _line(base, per_peer, replicas)
    samples = [(replicas, threads)] * (1 + extra) + [(replicas, j) for j in jitter]
    assert fit_thread_model(samples) is None


def test_no_samples_is_no_fit() -> None:
    assert fit_thread_model([]) is None


@SETTINGS
@given(
    BASES,
    PER_PEERS,
    st.floats(0, 200),
    sizes_of_samples().flatmap(
        lambda sizes: st.lists(st.floats(-1, 1), min_size=len(sizes), max_size=len(sizes)).map(
            lambda unit: list(zip(sizes, unit, strict=True))
        )
    ),
)
def test_bounded_noise_moves_the_fit_a_bounded_amount(
    base: int, per_peer: int, e: float, noisy: list[tuple[int, float]]
) -> None:
    samples = [(n, _line(base, per_peer, n) + u * e) for n, u in noisy]
    # The noise as the fit sees it: the sum above rounds to float (by far less than e).
    worst = max(abs(Fraction(y) - _line(base, per_peer, n)) for n, y in samples)
    assert worst <= Fraction(e) * (1 + Fraction(1, 10**12)) + Fraction(1, 10**9)
    fit = fit_thread_model(samples)
    assert fit is not None
    sizes = [n for n, _ in noisy]
    m, spread = len(sizes), max(sizes) - min(sizes)
    absolute, sxx, mean_x = _spread(sizes)
    tight = float(worst * absolute / sxx)
    closed = float(worst) * math.sqrt(2 * m) / spread
    slack = 1e-9 * (1 + base + per_peer * max(sizes))  # the fit's last rounding to float
    assert abs(fit.per_peer - per_peer) <= tight + slack
    assert tight <= closed * (1 + 1e-12) + 1e-12
    assert (
        abs(fit.base - base)
        <= float(worst) * (1 + float(mean_x) * math.sqrt(2 * m) / spread) + slack
    )
    assert fit.residual <= float(worst) + slack  # the true line is a candidate: its RMS ≤ e


@SETTINGS
@given(BASES, PER_PEERS, st.integers(1, 200), sizes_of_samples())
def test_the_per_peer_bound_is_reached(base: int, per_peer: int, e: int, sizes: list[int]) -> None:
    # Noise +e above the mean size and -e below it moves perPeer by e·Σ|xᵢ - x̄|/Sxx exactly.
    absolute, sxx, mean_x = _spread(sizes)
    samples = [
        (n, _line(base, per_peer, n) + e * ((n - 1 > mean_x) - (n - 1 < mean_x))) for n in sizes
    ]
    fit = fit_thread_model(samples)
    assert fit is not None
    assert fit.per_peer == pytest.approx(per_peer + float(e * absolute / sxx), rel=1e-12)


@SETTINGS
@given(
    st.lists(st.tuples(st.integers(1, 2_000), st.integers(0, 1_000_000)), min_size=2, max_size=16),
    st.randoms(use_true_random=False),
)
def test_the_order_of_samples_does_not_matter(
    samples: list[tuple[int, int]], rng: random.Random
) -> None:
    shuffled = list(samples)
    rng.shuffle(shuffled)
    assert fit_thread_model(shuffled) == fit_thread_model(samples)
    assert fit_thread_model(reversed(samples)) == fit_thread_model(samples)


@SETTINGS
@given(
    st.lists(st.tuples(st.integers(1, 2_000), st.integers(0, 1_000_000)), min_size=2, max_size=16)
)
def test_the_suggested_model_is_never_under_the_fit(samples: list[tuple[int, int]]) -> None:
    fit = fit_thread_model(samples)
    if fit is None:
        return
    base, per_peer = suggested_model(fit)
    assert base >= 1 and per_peer >= 0
    for n in (1, 2, 3, 10, 100, 1_000, 100_000):
        assert _line(base, per_peer, n) >= fit.base + fit.per_peer * (n - 1) - ROUNDING_SLACK * n
    # And no more than rounding up asks for.
    assert base == max(1, math.ceil(fit.base - ROUNDING_SLACK))
    assert per_peer == max(0, math.ceil(fit.per_peer - ROUNDING_SLACK))


@pytest.mark.parametrize(
    ("base", "per_peer", "expected"),
    [
        (100.0, 5.0, (100, 5)),
        (100.0000001, 5.0000001, (100, 5)),  # float dust over an integer: that integer
        (99.9999999, 4.9999999, (100, 5)),
        (100.00001, 5.00001, (101, 6)),  # a real excess, however small: round up
        (100.5, 0.2, (101, 1)),
        (120.0, -0.4, (120, 0)),  # threads falling with size: base covers every size
        (-30.0, 7.5, (1, 8)),  # base at least 1, as spec.threads.base must be
        (0.0, 0.0, (1, 0)),
    ],
)
def test_suggested_model_rounding(base: float, per_peer: float, expected: tuple[int, int]) -> None:
    fit = ThreadFit(base=base, per_peer=per_peer, residual=0.0, sizes=2, samples=2)
    assert suggested_model(fit) == expected


@pytest.mark.parametrize("sample", [(0, 100), (-3, 100), (2, math.nan), (2, math.inf)])
def test_bad_samples_are_refused(sample: tuple[int, float]) -> None:
    with pytest.raises(ValueError, match="a sample needs"):
        fit_thread_model([(1, 100), (5, 140), sample])
