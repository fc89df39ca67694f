"""The webhook's certificate follows its files: real files, real TLS handshakes on a local
socket, certificates made with cellguard.pki. No restart, no listener stopped."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import threading
import urllib.request
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import pytest

from cellguard import pki
from cellguard.runtime.tls import ReloadingCertificate, ReloadingWebhookServer
from tls_support import der, presented


def _pair(directory: Path, name: str) -> tuple[pki.KeyPair, pki.KeyPair]:
    """A CA of its own and a serving certificate for 127.0.0.1 (name in the CN)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = pki.make_ca(directory, f"ca-{name}")
    serving = pki.issue(
        ca, directory, "tls", name, dns_names=("localhost",), ip_addresses=("127.0.0.1",),
        server=True,
    )  # fmt: skip
    return ca, serving


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ReloadingCertificate, int, Path]]:
    """A threaded TLS server on the reloading context; files in tmp_path/live."""
    live = tmp_path / "live"
    _, a = _pair(tmp_path / "a", "cert-a")
    live.mkdir()
    for src, dst in ((a.cert_path, live / "tls.crt"), (a.key_path, live / "tls.key")):
        dst.write_bytes(src.read_bytes())
    certificate = ReloadingCertificate(live / "tls.crt", live / "tls.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with certificate.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield certificate, port, tmp_path
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def _replace(src: pki.KeyPair, live: Path, *, key: bool = True) -> None:
    """Plain file replacement (write a temporary file, rename over the old one)."""
    files = [(src.cert_path, live / "tls.crt")] + (
        [(src.key_path, live / "tls.key")] if key else []
    )
    for source, target in files:
        temporary = target.with_suffix(".new")
        temporary.write_bytes(source.read_bytes())
        os.replace(temporary, target)


def test_plain_file_replacement_is_served_at_the_next_handshake(
    served: tuple[ReloadingCertificate, int, Path],
) -> None:
    certificate, port, tmp = served
    ca_a = pki.KeyPair(tmp / "a" / "ca-cert-a.crt", tmp / "a" / "ca-cert-a.key")
    assert presented(port, ca_a) == der(tmp / "a" / "tls.crt")
    ca_b, b = _pair(tmp / "b", "cert-b")
    _replace(b, tmp / "live")
    assert presented(port, ca_b) == der(b.cert_path)
    assert certificate.reloads == 1
    # Unchanged files: no reload on later handshakes.
    assert presented(port, ca_b) == der(b.cert_path)
    assert certificate.reloads == 1


def test_in_place_rewrite_is_served_too(served: tuple[ReloadingCertificate, int, Path]) -> None:
    _, port, tmp = served
    ca_b, b = _pair(tmp / "b", "cert-b")
    (tmp / "live" / "tls.key").write_bytes(b.key_path.read_bytes())
    (tmp / "live" / "tls.crt").write_bytes(b.cert_path.read_bytes())
    assert presented(port, ca_b) == der(b.cert_path)


def test_half_replaced_pair_keeps_serving_the_old_one_until_complete(
    served: tuple[ReloadingCertificate, int, Path],
) -> None:
    certificate, port, tmp = served
    ca_a = pki.KeyPair(tmp / "a" / "ca-cert-a.crt", tmp / "a" / "ca-cert-a.key")
    ca_b, b = _pair(tmp / "b", "cert-b")
    _replace(b, tmp / "live", key=False)  # B's certificate, A's key: not a pair
    assert presented(port, ca_a) == der(tmp / "a" / "tls.crt")
    assert certificate.reloads == 0
    _replace(b, tmp / "live")
    assert presented(port, ca_b) == der(b.cert_path)
    assert certificate.reloads == 1


def _secret_volume(directory: Path, version: str, pair: pki.KeyPair) -> None:
    """What the kubelet does for a Secret volume: the files in a timestamped directory,
    `..data` pointing at it, `tls.crt` -> `..data/tls.crt`; an update writes a new directory
    and swaps `..data` atomically (rename of a new symlink over the old)."""
    data = directory / f"..{version}"
    data.mkdir()
    (data / "tls.crt").write_bytes(pair.cert_path.read_bytes())
    (data / "tls.key").write_bytes(pair.key_path.read_bytes())
    link = directory / "..data_tmp"
    link.symlink_to(data.name)
    os.replace(link, directory / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")


async def _kopf_serving(
    server: ReloadingWebhookServer,
) -> AsyncGenerator[dict[str, Any]]:
    async def review(request: dict[str, Any], **_: Any) -> dict[str, Any]:
        return {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": request["request"]["uid"], "allowed": True},
        }

    async for config in server(review):  # type: ignore[arg-type]
        yield dict(config)


def _post(port: int, ca: pki.KeyPair) -> dict[str, Any]:
    client = ssl.create_default_context(cafile=str(ca.cert_path))
    body = json.dumps({"request": {"uid": "u-1"}}).encode()
    request = urllib.request.Request(
        f"https://127.0.0.1:{port}/validate-x", data=body, method="POST"
    )
    with urllib.request.urlopen(request, context=client, timeout=5) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def test_kopf_server_follows_a_secret_volume_swap_without_restarting(tmp_path: Path) -> None:
    ca_a, a = _pair(tmp_path / "a", "cert-a")
    ca_b, b = _pair(tmp_path / "b", "cert-b")
    volume = tmp_path / "volume"
    volume.mkdir()
    _secret_volume(volume, "2026_01_01_00_00_00.1", a)
    certificate = ReloadingCertificate(volume / "tls.crt", volume / "tls.key")
    port = ReloadingWebhookServer._allocate_free_port()
    server = ReloadingWebhookServer(
        certificate, ca_a.cert_path.read_bytes(), addr="127.0.0.1", port=port
    )

    async def scenario() -> None:
        configs = _kopf_serving(server)
        config = await anext(configs)
        assert config["url"] == f"https://127.0.0.1:{port}"
        assert await asyncio.to_thread(presented, port, ca_a) == der(a.cert_path)
        answer = await asyncio.to_thread(_post, port, ca_a)
        assert answer["response"]["allowed"] is True
        _secret_volume(volume, "2026_02_01_00_00_00.2", b)
        assert await asyncio.to_thread(presented, port, ca_b) == der(b.cert_path)
        answer = await asyncio.to_thread(_post, port, ca_b)
        assert answer["response"]["allowed"] is True
        # kopf did not restart its listener: its generator has not moved on.
        pending = asyncio.ensure_future(anext(configs))
        await asyncio.sleep(0.2)
        assert not pending.done()
        pending.cancel()  # and with it kopf's server (its listener is cleaned up)
        with contextlib.suppress(asyncio.CancelledError):
            await pending
        await configs.aclose()

    asyncio.run(scenario())
    assert certificate.reloads == 1


def test_unusable_files_at_start_fail_loudly(tmp_path: Path) -> None:
    _, a = _pair(tmp_path / "a", "cert-a")
    _, b = _pair(tmp_path / "b", "cert-b")
    with pytest.raises(ssl.SSLError):
        ReloadingCertificate(a.cert_path, b.key_path)
