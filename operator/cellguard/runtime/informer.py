"""List and watch one kind, as client-go's informers do, into the operator's cache.

Each source (a kind, in one namespace or everywhere) gets a thread of its own that lists
it a page at a time - every object parsed into its small record at once and the page
dropped, so that memory never holds the raw listing - and then watches from the listing's
resourceVersion. A broken watch resumes from the last resourceVersion it saw, so no event
is lost; when the API server no longer has that version (410 Gone) the kind is listed
again and the listing replaces the cache's view of it, which also forgets what was
deleted in the gap. A periodic relisting (`--resync`) is the last safety net.

The threads only read and parse; every change of the cache is handed to the event loop
(`CacheFeed`), where decisions are made. During a relisting a kind's events wait: the
watch resumes from the listing's version, so the cache never goes back in time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cellguard import kubeclient
from cellguard.listing import Source, pages
from cellguard.state.feed import CacheFeed
from cellguard.state.records import Key, Parsed, key_of, parse

log = logging.getLogger(__name__)

WATCH_SECONDS = 300  # the API server ends a watch after this; it is resumed at once
MAX_BACKOFF_SECONDS = 30.0


class Expired(Exception):  # noqa: N818 - the API server's word for it
    """The resourceVersion to resume from is gone (410): list again."""


class Informer:
    """One source, listed and watched by a daemon thread (it dies with the process)."""

    def __init__(
        self,
        api: client.ApiClient,
        source: Source,
        feed: CacheFeed,
        loop: asyncio.AbstractEventLoop,
        *,
        resync_seconds: float,
        stop: threading.Event,
        on_relist: Callable[[Source, str], None] = lambda _source, _why: None,
    ) -> None:
        self.api = api
        self.source = source
        self.feed = feed
        self.loop = loop
        self.resync_seconds = resync_seconds
        self.stop = stop
        self.on_relist = on_relist
        name = f"informer-{source.kind.value}" + (
            f"-{source.namespace}" if source.namespace else ""
        )
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        version: str | None = None
        relist_at = 0.0
        backoff = 1.0
        why = "start"
        while not self.stop.is_set():
            try:
                if version is None or time.monotonic() >= relist_at:
                    self.on_relist(self.source, why)
                    version = self._list()
                    relist_at = time.monotonic() + self.resync_seconds
                    why = "resync"
                version = self._watch(version, relist_at)
                backoff = 1.0
            except Expired:
                log.info("%s: resourceVersion %s expired, listing again", self._name, version)
                version, why = None, "expired"
            except Exception as exc:  # the API server may be away: resume from `version`
                log.warning("%s: %s; retrying in %.0f s", self._name, _describe(exc), backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    @property
    def _name(self) -> str:
        return self._thread.name

    def _list(self) -> str:
        """List the source into records; hand them to the cache. Returns the version."""
        kind = self.source.kind
        items: dict[Key, Parsed] = {}
        version = ""
        try:
            for page in pages(self.api, self.source):
                version = version or page.get("metadata", {}).get("resourceVersion", "")
                for raw in page.get("items", []):
                    items[key_of(kind, raw)] = parse(kind, raw)
                del page  # one page at a time in memory
        except ApiException as exc:
            if exc.status == 410:  # the continue token outlived the listing's version
                raise Expired from exc
            raise
        self._deliver(self.feed.replaced, kind, items, self.source.namespace)
        return version

    def _watch(self, version: str, relist_at: float) -> str:
        """Watch from `version` until the server ends the watch or a relisting is due;
        returns the last version seen."""
        remaining = max(1, min(WATCH_SECONDS, int(relist_at - time.monotonic())))
        query = [
            ("watch", "true"),
            ("resourceVersion", version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(remaining)),
            *self.source.query(),
        ]
        try:
            response = kubeclient.open_stream(
                self.api, self.source.path, query, read_timeout=remaining + 30
            )
        except ApiException as exc:
            if exc.status == 410:  # the version to resume from is gone
                raise Expired from exc
            raise
        kind = self.source.kind
        try:
            for line in _lines(response):
                if self.stop.is_set():
                    break
                event = json.loads(line)
                event_type = event.get("type")
                raw = event.get("object") or {}
                if event_type == "ERROR":
                    if raw.get("code") == 410:
                        raise Expired
                    raise RuntimeError(f"watch error: {raw.get('message', raw)}")
                version = (raw.get("metadata") or {}).get("resourceVersion") or version
                if event_type == "BOOKMARK":
                    continue
                parsed = parse(kind, raw)
                self._deliver(self.feed.changed, kind, event_type, key_of(kind, raw), parsed)
        finally:
            response.release_conn()
        return version

    def _deliver(self, method: Callable[..., None], *args: Any) -> None:
        self.loop.call_soon_threadsafe(method, *args)


def _lines(response: Any) -> Any:
    """The stream's lines (one JSON event each)."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=True):
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        yield from (line for line in complete if line.strip())
    if buffer.strip():
        yield buffer


def _describe(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return kubeclient.describe_api_error(exc)
    return f"{type(exc).__name__}: {exc}"


def start_informers(
    api: client.ApiClient,
    sources: list[Source],
    feed: CacheFeed,
    *,
    resync_seconds: float,
    stop: threading.Event,
    on_relist: Callable[[Source, str], None] = lambda _source, _why: None,
) -> list[Informer]:
    loop = asyncio.get_running_loop()
    informers = [
        Informer(
            api,
            source,
            feed,
            loop,
            resync_seconds=resync_seconds,
            stop=stop,
            on_relist=on_relist,
        )
        for source in sources
    ]
    for informer in informers:
        informer.start()
    return informers
