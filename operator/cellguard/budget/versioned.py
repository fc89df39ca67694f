"""Persistent mappings: a new version in O(changed keys), every older one left as it was.

The reservation ledger changes one cell at a time while snapshots taken before the change
may still be read. Copying a per-node total for thousands of nodes on every change costs
more than the decisions; re-summing every reservation costs far more. So the versions share
one dict (Baker's trick for persistent arrays): the newest version owns it, and each older
version keeps only the values that differ from the next newer one. Reading the newest
version is a dict lookup; reading an older one walks the differences to the newest. Making
a new version from an older one first moves the dict there ("rerooting", O(differences on
the way)), so any version can be extended, and every version keeps its own contents.

Not thread-safe (like everything the gate reads: callers serialize). No cellguard imports:
a leaf.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar, cast, overload

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class _Absent:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT: Any = _Absent()


class Versioned(Mapping[K, V], Generic[K, V]):
    """One version of a persistent mapping (immutable to its readers)."""

    __slots__ = ("_data", "_newer", "_undo")

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        # The newest version: `_data` is the shared dict. An older one: `_data` is None,
        # `_undo` holds its values for the keys that differ in `_newer` (_ABSENT: no key).
        self._data: dict[K, V] | None = dict(items)
        self._undo: dict[K, Any] = {}
        self._newer: Versioned[K, V] | None = None

    # ------------------------------------------------------------------ reading

    @overload
    def get(self, key: K, /) -> V | None: ...

    @overload
    def get(self, key: K, /, default: V | T) -> V | T: ...

    def get(self, key: K, /, default: Any = None) -> Any:
        version = self
        while version._data is None:
            undo = version._undo
            if key in undo:
                found = undo[key]
                return default if found is _ABSENT else found
            version = cast(Versioned[K, V], version._newer)
        return version._data.get(key, default)

    def __getitem__(self, key: K) -> V:
        found = self.get(key, _ABSENT)
        if found is _ABSENT:
            raise KeyError(key)
        return cast(V, found)

    def __contains__(self, key: object) -> bool:
        return self.get(cast(K, key), _ABSENT) is not _ABSENT

    def __iter__(self) -> Iterator[K]:
        return iter(self._contents())

    def __len__(self) -> int:
        return len(self._contents())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._contents()!r})"

    def _getter(self) -> Any:
        """`get` for a burst of lookups while no new version is made: the dict's own (in
        C) for the newest version."""
        return self._data.get if self._data is not None else self.get

    def as_dict(self) -> Mapping[K, V]:
        """Every entry, for a pass over all of them: the newest version's own dict (read
        it before any new version is made from an older one), or an older one's contents
        rebuilt in O(size + differences)."""
        return self._contents()

    @property
    def newest(self) -> bool:
        """Whether this is the newest version (its lookups are plain dict lookups)."""
        return self._data is not None

    def _contents(self) -> dict[K, V]:
        """The newest version's dict itself (never to be changed), or an older version's
        contents rebuilt: O(size + differences)."""
        if self._data is not None:
            return self._data
        chain: list[Versioned[K, V]] = []
        version = self
        while version._data is None:
            chain.append(version)
            version = cast(Versioned[K, V], version._newer)
        contents = dict(version._data)
        for older in reversed(chain):
            for key, value in older._undo.items():
                if value is _ABSENT:
                    contents.pop(key, None)
                else:
                    contents[key] = value
        return contents

    # ------------------------------------------------------------------ new versions

    def updated(self, values: Mapping[K, V], removed: Iterable[K] = ()) -> Versioned[K, V]:
        """A new version with `values` set and `removed` gone; this one stays as it is."""
        self._reroot()
        data = cast(dict[K, V], self._data)
        undo: dict[K, Any] = {}
        get = data.get
        for key in removed:
            if key in data and key not in undo:
                undo[key] = data.pop(key)
        for key, value in values.items():
            if key not in undo:
                undo[key] = get(key, _ABSENT)
            data[key] = value
        return self._hand_over(undo)

    def _hand_over(self, undo: dict[K, Any]) -> Versioned[K, V]:
        """Give the (already changed) dict to a new newest version; keep `undo` here."""
        if not undo:
            return self
        newer: Versioned[K, V] = object.__new__(type(self))
        newer._data, newer._undo, newer._newer = self._data, {}, None
        self._data, self._undo, self._newer = None, undo, newer
        return newer

    def _reroot(self) -> None:
        """Make this version the newest: move the dict here, reversing the differences on
        the way (each version keeps its contents)."""
        if self._data is not None:
            return
        chain: list[Versioned[K, V]] = []
        version = self
        while version._data is None:
            chain.append(version)
            version = cast(Versioned[K, V], version._newer)
        data = version._data
        newest = version
        for older in reversed(chain):
            # `newest` owns the dict at its contents; give it to `older`.
            redo: dict[K, Any] = {}
            for key, value in older._undo.items():
                redo[key] = data.get(key, _ABSENT)
                if value is _ABSENT:
                    data.pop(key, None)
                else:
                    data[key] = value
            newest._data, newest._undo, newest._newer = None, redo, older
            older._data, older._undo, older._newer = data, {}, None
            newest = older

    def changed_keys(self, other: Versioned[K, V]) -> set[K] | None:
        """Keys whose values may differ between this version and `other`, in O(differences
        between them); None when they do not share a history (compare contents instead)."""
        path: dict[int, int] = {}
        versions: list[Versioned[K, V]] = []
        version: Versioned[K, V] | None = self
        while version is not None:
            path[id(version)] = len(versions)
            versions.append(version)
            version = version._newer
        keys: set[K] = set()
        version = other
        while id(version) not in path:
            keys.update(version._undo)
            version = version._newer
            if version is None:
                return None
        for older in versions[: path[id(version)]]:
            keys.update(older._undo)
        return keys


class Totals(Versioned[str, int]):
    """node -> a positive count (threads): absent means 0 (ask `get(node, 0)`), and 0 is
    never kept."""

    __slots__ = ()

    def plus(self, delta: Mapping[str, int]) -> Totals:
        """A new version with `delta` added node by node (entries that reach 0 dropped)."""
        self._reroot()
        data = cast(dict[str, int], self._data)
        undo: dict[str, Any] = {}
        get = data.get
        for node, change in delta.items():
            if not change:
                continue
            before = get(node, 0)
            if node not in undo:
                undo[node] = before if before else _ABSENT
            after = before + change
            if after:
                data[node] = after
            else:
                del data[node]
        return cast(Totals, self._hand_over(undo))

    def delta_to(self, other: Totals) -> dict[str, int] | None:
        """node -> other's count less this one's, on the nodes where they may differ
        (O(differences) when they share a history; None when they do not)."""
        keys = self.changed_keys(other)
        if keys is None:
            return None
        get, other_get = self._getter(), other._getter()
        return {node: other_get(node, 0) - get(node, 0) for node in keys}
