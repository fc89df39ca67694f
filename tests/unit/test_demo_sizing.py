"""The demo's thread model, sized to a node's real figures: admitted fits, the replay does not."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cellguard.budget import BudgetStatus, NodeLimits
from cellguard.demo.sizing import MIN_ALLOWANCE, Sizes, SizingError, size_model

MARGIN = 0.2


def limits(allowed: int | None, observed: int | None, pod_pids_limit: int | None) -> NodeLimits:
    return NodeLimits(
        node="n1",
        status=BudgetStatus.KNOWN,
        limit=None if allowed is None else allowed * 5 // 4,
        allowed=allowed,
        observed=observed,
        pod_pids_limit=pod_pids_limit,
        limit_source="kernel.pid_max",
        from_defaults=False,
        detail="" if allowed is not None else "no NodeBudget",
        observed_at=None,
    )


@given(
    allowed=st.integers(2_000, 4_000_000),
    in_use_share=st.floats(0.0, 0.5),
    pod_pids_limit=st.one_of(st.none(), st.integers(300, 100_000)),
)
def test_the_admitted_size_fits_and_the_replay_does_not(
    allowed: int, in_use_share: float, pod_pids_limit: int | None
) -> None:
    # Room for at least 40 threads a pod at 6 pods in every example: a model must exist.
    figures = limits(allowed, int(allowed * in_use_share), pod_pids_limit)
    model = size_model(figures, MARGIN)
    sizes = Sizes()
    assert model.fits(sizes.start) and model.fits(sizes.admitted)
    assert not model.fits(sizes.replay)
    # Far from the line either way, so rounding never decides the outcome.
    per_pod = model.threads(sizes.admitted)
    assert model.pod_allowed is None or per_pod <= 0.85 * model.pod_allowed + 1
    assert sizes.admitted * per_pod <= 0.85 * model.node_room + sizes.admitted


def test_holding_real_threads_crosses_the_kernels_per_pod_limit() -> None:
    model = size_model(limits(26_214, 1_000, 321), MARGIN, real_threads=True)
    assert model.threads(Sizes().replay) > 321  # without the guard the pods really fail
    assert model.threads(Sizes().admitted) <= 256  # 321 less 20%


def test_a_node_without_room_or_budget_or_pod_limit_is_refused_with_the_reason() -> None:
    with pytest.raises(SizingError, match="no known budget"):
        size_model(limits(None, None, None), MARGIN)
    with pytest.raises(SizingError, match="too little for the story"):
        size_model(limits(10_000, 10_000 - MIN_ALLOWANCE * 6 + 1, None), MARGIN)
    with pytest.raises(SizingError, match="no per-pod PID limit"):
        size_model(limits(26_214, 1_000, None), MARGIN, real_threads=True)
