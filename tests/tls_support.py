"""What a TLS client sees of the webhook's certificate (unit and end-to-end tests alike)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cellguard import pki


def der(path: Path) -> bytes:
    """A PEM certificate file's DER bytes (what a TLS peer presents)."""
    return x509.load_pem_x509_certificate(path.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )


def presented(port: int, ca: pki.KeyPair) -> bytes:
    """The certificate a server on 127.0.0.1:`port` presents on a new connection, verified
    against `ca`, connecting by IP (no SNI, as the API server does for an IP address in a
    webhook URL)."""
    client = ssl.create_default_context(cafile=str(ca.cert_path))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        client.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        certificate = tls.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate
