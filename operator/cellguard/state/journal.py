"""A version counter that remembers which keys moved it.

The gate's snapshot follows the cache one change at a time (a cell created, a node
labelled into a pool) instead of rebuilding the world after each; it needs to know what
changed since the version it was built at, not only that something did.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

_K = TypeVar("_K")


class ChangeJournal(Generic[_K]):
    """`version` counts changes; the last `keep` of them are kept with their key."""

    def __init__(self, keep: int = 4096) -> None:
        self.version = 0
        self._entries: deque[tuple[int, _K]] = deque(maxlen=keep)

    def bump(self, key: _K) -> None:
        self.version += 1
        self._entries.append((self.version, key))

    def since(self, version: int) -> list[_K] | None:
        """The distinct keys changed after `version`, in the order of their last change;
        None when the journal no longer reaches back that far (or `version` is not
        one of its own)."""
        if version == self.version:
            return []
        if version > self.version or not self._entries or self._entries[0][0] > version + 1:
            return None
        changed: dict[_K, None] = {}
        for at, key in reversed(self._entries):
            if at <= version:
                break
            changed[key] = None
        return list(reversed(changed))
