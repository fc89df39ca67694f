"""The webhook's serving certificate, following its files without a restart.

The certificate and key are mounted from a Secret (cert-manager renews it; the chart
regenerates it when its host names change) or given as plain files (URL mode). When they
change, the API server soon trusts only the new CA (cainjector, the chart, a person patching
the caBundle): a server still presenting the old certificate would fail every admission
closed, and every scale-up with it.

`ReloadingCertificate` keeps one listening `ssl.SSLContext` whose `sni_callback` runs at the
start of every handshake (with or without SNI: the API server sends none for an IP). It looks
at the files' stat (through symlinks: a Secret volume swaps its `..data` link atomically,
and a plain replacement gets a new inode or mtime) and, when they changed, loads them into a
*fresh* context; the handshake then continues on the newest good context. A half-written
pair (a certificate that does not match its key) is not taken: the last good one keeps
serving and the next handshake tries again. The listener itself never stops, so nothing is
refused while a certificate changes.

kopf's own `WebhookServer` can re-read its files too, but by restarting its listener (a gap
in which the API server's calls are refused) and only every `file_check_interval` (60 s).
`ReloadingWebhookServer` gives kopf our context instead and no files to watch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import kopf
from cryptography import x509

log = logging.getLogger(__name__)

_Stamp = tuple[tuple[int, int, int, int], ...]


def _stamp(*paths: Path) -> _Stamp:
    """What changes when a file is replaced or rewritten: device, inode, size, mtime
    (os.stat follows symlinks, so a swapped `..data` link shows as a new inode)."""
    result = []
    for path in paths:
        st = os.stat(path)
        result.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(result)


def _server_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose=ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certfile), str(keyfile))
    return context


@dataclass(frozen=True)
class _Loaded:
    stamp: _Stamp
    context: ssl.SSLContext


class ReloadingCertificate:
    """A server `ssl.SSLContext` (`.context`) that presents whatever `certfile`/`keyfile`
    hold at the time of each handshake. Raises at construction if they are unusable."""

    def __init__(self, certfile: Path, keyfile: Path) -> None:
        self.certfile = certfile
        self.keyfile = keyfile
        self._lock = threading.Lock()
        stamp = _stamp(certfile, keyfile)
        self._current = _Loaded(stamp, _server_context(certfile, keyfile))
        self._failed: _Stamp | None = None
        self.reloads = 0
        # The listening context: its own certificate serves only if a handshake could not be
        # switched; the callback moves every handshake to the current context.
        self.context = _server_context(certfile, keyfile)
        self.context.sni_callback = self._on_client_hello
        log.info("webhook certificate from %s: %s", certfile, _describe(certfile))

    def _on_client_hello(
        self, connection: ssl.SSLObject | ssl.SSLSocket, _server_name: str | None, _ctx: object
    ) -> None:
        current = self.current()
        if connection.context is not current:
            connection.context = current
        return None

    def current(self) -> ssl.SSLContext:
        """The context of the newest usable pair, reloading it first if the files changed."""
        self.refresh()
        return self._current.context

    def refresh(self) -> bool:
        """Load the files again if their stat changed; whether a new pair was taken."""
        try:
            before = _stamp(self.certfile, self.keyfile)
        except OSError as exc:  # mid-swap, or gone: keep serving what we have
            log.debug("webhook certificate files not readable: %s", exc)
            return False
        if before == self._current.stamp or before == self._failed:
            return False
        with self._lock:
            if before == self._current.stamp:
                return False
            try:
                context = _server_context(self.certfile, self.keyfile)
                after = _stamp(self.certfile, self.keyfile)
            except (OSError, ssl.SSLError, ValueError) as exc:
                # A certificate that does not (yet) match its key, a file half written: the
                # old pair keeps serving; the files are tried again once they change again.
                log.warning(
                    "webhook certificate %s not reloaded, still serving the previous one: %s",
                    self.certfile,
                    exc,
                )
                self._failed = before
                return False
            # Taken even if the files moved on while loading (the pair matched, so it is a
            # whole one); then the stamp is left stale, and the next handshake loads again.
            self._current = _Loaded(before if after == before else (), context)
            self._failed = None
            self.reloads += 1
        log.info(
            "webhook certificate reloaded from %s: %s", self.certfile, _describe(self.certfile)
        )
        return True


def _describe(certfile: Path) -> str:
    """Serial number and expiry of the (first) certificate in `certfile`, for the log."""
    try:
        cert = x509.load_pem_x509_certificate(certfile.read_bytes())
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    return (
        f"serial {cert.serial_number:x}, valid until {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    )


class ReloadingWebhookServer(kopf.WebhookServer):
    """kopf's webhook server on a `ReloadingCertificate`'s context.

    kopf (1.45) builds its context in `_build_ssl`; this returns ours and the CA bundle, and
    gives kopf no certificate files, so its own watcher (which restarts the listener when
    they change) has nothing to watch.
    """

    def __init__(
        self,
        certificate: ReloadingCertificate,
        ca_bundle: bytes,
        *,
        addr: str | None = None,
        port: int | None = None,
        host: str | None = None,
    ) -> None:
        super().__init__(addr=addr, port=port, host=host, cadata=ca_bundle)
        self.certificate = certificate
        # Set once the listener is bound: readiness waits for it (kopf's ready flag does not).
        self.listening = asyncio.Event()

    def _build_ssl(self) -> tuple[bytes | None, ssl.SSLContext | None]:
        return self.cadata, self.certificate.context

    async def __call__(self, fn: kopf.WebhookFn) -> AsyncIterator[kopf.WebhookClientConfig]:
        async for client_config in super().__call__(fn):
            self.listening.set()  # kopf yields the client config once its site started
            yield client_config
