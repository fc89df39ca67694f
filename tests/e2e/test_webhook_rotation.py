"""The webhook's certificate is rotated under a running operator, on the real control plane.

The operator serves its webhook from files laid out as the kubelet lays out a Secret volume
(`..data` swapped atomically); the test replaces them with a certificate from a new CA and
patches the webhook configuration's caBundle, as cert-manager's cainjector would. Scale-ups
go on being decided (one refused, one admitted) by the same process: no restart.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellguard import pki
from cellguard.devcluster.cluster import LocalCluster
from tls_support import der, presented

from .harness import (
    OperatorOptions,
    OperatorProcess,
    cell_world,
    deployment_replicas,
    get_json,
    wait_for,
)

pytestmark = pytest.mark.e2e

NAMESPACE = "e2e-rotation"
CONFIGURATION = "cellguard"  # the operator's own, applied in URL mode
DENIED = 'admission webhook "validate-streamcell-scale.cellguard.io" denied the request'
UNREACHABLE = "failed calling webhook"


def _issue(directory: Path, name: str) -> tuple[pki.KeyPair, pki.KeyPair]:
    directory.mkdir(parents=True)
    ca = pki.make_ca(directory, f"{name}-ca")
    serving = pki.issue(
        ca, directory, "tls", name, dns_names=("localhost",), ip_addresses=("127.0.0.1",),
        server=True,
    )  # fmt: skip
    return ca, serving


def _secret_volume(volume: Path, version: str, ca: pki.KeyPair, serving: pki.KeyPair) -> None:
    """Write tls.crt, tls.key and ca.crt as the kubelet updates a Secret volume: a new
    timestamped directory, then `..data` renamed atomically to point at it."""
    data = volume / f"..{version}"
    data.mkdir()
    (data / "tls.crt").write_bytes(serving.cert_path.read_bytes())
    (data / "tls.key").write_bytes(serving.key_path.read_bytes())
    (data / "ca.crt").write_bytes(ca.cert_path.read_bytes())
    staged = volume / "..data_tmp"
    staged.symlink_to(data.name)
    os.replace(staged, volume / "..data")
    for name in ("tls.crt", "tls.key", "ca.crt"):
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")


def _ca_bundles(cluster: LocalCluster) -> set[str]:
    vwc = get_json(cluster, "validatingwebhookconfiguration", CONFIGURATION)
    return {hook["clientConfig"]["caBundle"] for hook in vwc["webhooks"]}


def _patch_ca_bundle(cluster: LocalCluster, ca: pki.KeyPair) -> None:
    bundle = base64.b64encode(ca.cert_path.read_bytes()).decode()
    hooks = get_json(cluster, "validatingwebhookconfiguration", CONFIGURATION)["webhooks"]
    patch = [
        {"op": "replace", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": bundle}
        for i in range(len(hooks))
    ]
    cluster.kubectl(
        "patch", "validatingwebhookconfiguration", CONFIGURATION, "--type=json",
        "-p", json.dumps(patch),
    )  # fmt: skip


def _scale(cluster: LocalCluster, replicas: int) -> subprocess.CompletedProcess[str]:
    """Scale the cell, retrying only while the API server cannot call the webhook at all (a
    new caBundle reaches its webhook clients within moments): the webhook's answer."""
    deadline = time.monotonic() + 20
    while True:
        result = cluster.kubectl(
            "scale", "streamcell/web", "-n", NAMESPACE, f"--replicas={replicas}", check=False
        )
        if UNREACHABLE not in result.stderr or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


@pytest.fixture
def file_operator(
    cluster: LocalCluster, operator: OperatorProcess, tmp_path: Path
) -> Iterator[tuple[OperatorProcess, Path]]:
    """The shared operator steps aside (the `operator` fixture starts it again afterwards) for
    one that serves its webhook from the files in tmp_path/webhook, CA `a`."""
    ca_a, serving_a = _issue(tmp_path / "a", "cert-a")
    volume = tmp_path / "webhook"
    volume.mkdir()
    _secret_volume(volume, "2026_11_30_00_00_00.1", ca_a, serving_a)
    operator.stop()
    options = OperatorOptions(
        kubeconfig=operator.options.kubeconfig,
        identity="e2e-rotation",
        status_interval=2,
        extra_args=(
            f"--webhook-cert={volume / 'tls.crt'}",
            f"--webhook-key={volume / 'tls.key'}",
            f"--webhook-ca={volume / 'ca.crt'}",
        ),
    )
    process = OperatorProcess(options, tmp_path / "operator.log")
    process.start()
    try:
        yield process, tmp_path
    finally:
        process.stop()


def test_webhook_certificate_rotates_without_a_restart(
    cluster: LocalCluster, file_operator: tuple[OperatorProcess, Path]
) -> None:
    process, tmp = file_operator
    assert process.popen is not None
    pid = process.popen.pid
    port = process.webhook_port
    ca_a = pki.KeyPair(tmp / "a" / "cert-a-ca.crt", tmp / "a" / "cert-a-ca.key")
    assert presented(port, ca_a) == der(tmp / "a" / "tls.crt")
    assert _ca_bundles(cluster) == {base64.b64encode(ca_a.cert_path.read_bytes()).decode()}

    # Threads per pod 50 + 2000 per peer, three nodes at 26,214 allowed each (1,000 in use):
    # at most 6 replicas fit (two pods a node); 7 put three pods on a node.
    with cell_world(cluster, NAMESPACE, "rotation", 3) as world:
        # Made and running first: a scale of a cell the operator does not know yet is refused.
        world.create("web", replicas=2, base=50, per_peer=2000, retry=True)
        before = _scale(cluster, 3)
        assert before.returncode == 0, before.stderr

        # ---- rotate: a new CA and serving certificate, then the caBundle.
        ca_b, serving_b = _issue(tmp / "b", "cert-b")
        _secret_volume(tmp / "webhook", "2026_12_01_00_00_00.2", ca_b, serving_b)
        assert presented(port, ca_b) == der(serving_b.cert_path)  # the next handshake
        _patch_ca_bundle(cluster, ca_b)
        assert _ca_bundles(cluster) == {base64.b64encode(ca_b.cert_path.read_bytes()).decode()}

        # ---- scale-ups are still decided: one refused with its reason, one admitted.
        refused = _scale(cluster, 7)
        assert refused.returncode != 0
        assert DENIED in refused.stderr, refused.stderr
        assert "at most 6 replicas fit" in refused.stderr, refused.stderr
        admitted = _scale(cluster, 4)
        assert admitted.returncode == 0, admitted.stderr
        wait_for(
            lambda: deployment_replicas(cluster, NAMESPACE, "web") == 4,
            timeout=60,
            what="the admitted scale-up to reach the Deployment",
        )
        assert presented(port, ca_b) == der(serving_b.cert_path)

    # The same process all along: started once, reloaded once.
    assert process.running and process.popen.pid == pid
    log = process.log_path.read_text()
    assert log.count("cache synced") == 1, process.log_tail()
    assert log.count("webhook certificate reloaded") == 1, process.log_tail()
