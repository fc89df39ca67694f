"""The operator, running as a real local process against the real control plane."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.realnode import (
    RealNode,
    RealNodeConfig,
    kube_proxy_missing,
    supports_real_node,
)
from cellguard.devcluster.toolchain import ensure_binaries

from .harness import OperatorOptions, OperatorProcess, apply_policy, install_cellguard


@pytest.fixture(scope="session")
def cellguard_operator(cluster: LocalCluster) -> Iterator[OperatorProcess]:
    kubeconfig = install_cellguard(cluster)
    apply_policy(cluster)
    options = OperatorOptions(kubeconfig=kubeconfig, identity="e2e-operator", status_interval=2)
    process = OperatorProcess(options, cluster.workdir / "operator.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def operator(cellguard_operator: OperatorProcess) -> Iterator[OperatorProcess]:
    """The running operator; restarted if a test left it stopped."""
    if not cellguard_operator.running:
        cellguard_operator.start()
    yield cellguard_operator
    if not cellguard_operator.running:
        cellguard_operator.start()


# The real node's PID limits: small and unusual, so a test sees they come from here.
REAL_NODE_CONFIG = RealNodeConfig(
    name="real-0", pod_pids_limit=321, system_reserved_pids=1000, kube_proxy=True
)


@pytest.fixture(scope="session")
def real_node() -> Iterator[RealNode]:
    """One real node (containerd + kubelet on this machine) in a control plane of its own.

    Its own LocalCluster (own working directory, no simulated nodes, no operator), started
    only when a test asks for it: the `cluster` fixture's tests never see a node that runs
    real pods, and the real node never sees theirs. Skipped, naming what is missing, where
    the machine cannot run one (not root, no containerd, no pids cgroup controller ...).
    At session end it asserts that nothing is left behind.
    """
    bin_dir = ensure_binaries(progress=lambda m: print(m, flush=True))
    reason = supports_real_node(bin_dir) or kube_proxy_missing(bin_dir)
    if reason is not None:
        pytest.skip(f"no real node on this machine: {reason}")
    started = time.monotonic()
    local = LocalCluster(
        bin_dir,
        keep_workdir=bool(os.environ.get("CELLGUARD_KEEP_CLUSTER")),
        progress=lambda m: print(m, flush=True),
        real_nodes=[REAL_NODE_CONFIG],
    )
    local.start()
    node = local.real_nodes[0]
    print(f"control plane + real node Ready in {time.monotonic() - started:.1f} s", flush=True)
    try:
        yield node
    finally:
        local.stop()
    assert node.leftovers() == [], f"real node left behind: {node.leftovers()}"
