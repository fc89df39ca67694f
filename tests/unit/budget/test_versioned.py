"""Persistent maps: every version keeps its contents, whatever is made from which."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cellguard.budget.versioned import Totals, Versioned

NODES = ["a", "b", "c", "d", "e"]


def test_a_new_version_leaves_the_old_one_as_it_was() -> None:
    first = Totals({"a": 1, "b": 2})
    second = first.plus({"a": 2, "b": -2, "c": 5})
    assert dict(second) == {"a": 3, "c": 5} and second.newest and not first.newest
    assert dict(first) == {"a": 1, "b": 2} and first.get("c", 0) == 0 and "b" in first
    assert first.delta_to(second) == {"a": 2, "b": -2, "c": 5}
    # Made from the older version: each of the three keeps its own contents.
    third = first.plus({"d": 1})
    assert dict(third) == {"a": 1, "b": 2, "d": 1}
    assert dict(second) == {"a": 3, "c": 5} and dict(first) == {"a": 1, "b": 2}
    assert second.delta_to(third) == {"a": -2, "b": 2, "c": -5, "d": 1}
    assert Totals({"a": 1}).delta_to(first) is None  # no shared history
    assert first.plus({}) is first


def test_a_versioned_mapping_sets_and_removes() -> None:
    first: Versioned[str, str] = Versioned({"x": "1"})
    second = first.updated({"y": "2"}, removed=["x", "absent"])
    assert dict(second) == {"y": "2"} and dict(first) == {"x": "1"}
    assert second.changed_keys(first) == {"x", "y"}
    assert first.updated({}) is first


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 50),  # which existing version to extend (modulo their number)
            st.dictionaries(st.sampled_from(NODES), st.integers(-3, 3), max_size=4),
            st.integers(0, 50),  # which version to read next (rerooting happens on writes)
        ),
        max_size=25,
    )
)
def test_every_version_keeps_its_contents(
    steps: list[tuple[int, dict[str, int], int]],
) -> None:
    versions = [Totals({"a": 1})]
    expected = [{"a": 1}]
    for parent, delta, probe in steps:
        index = parent % len(versions)
        base = expected[index]
        # Totals hold positive counts; keep the model so (as the ledger does).
        delta = {n: d for n, d in delta.items() if base.get(n, 0) + d >= 0}
        child = versions[index].plus(delta)
        model = {n: base.get(n, 0) + delta.get(n, 0) for n in {*base, *delta}}
        versions.append(child)
        expected.append({n: v for n, v in model.items() if v})
        other = probe % len(versions)
        for version, contents in zip(versions, expected, strict=True):
            assert dict(version) == contents
            assert all(version.get(n, 0) == contents.get(n, 0) for n in NODES)
        difference = versions[other].delta_to(child)
        assert difference is not None
        truth = {n: expected[-1].get(n, 0) - expected[other].get(n, 0) for n in NODES}
        assert {n: d for n, d in difference.items() if d} == {n: d for n, d in truth.items() if d}
