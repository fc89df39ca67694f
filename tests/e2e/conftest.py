"""The operator, running as a real local process against the real control plane."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cellguard.devcluster.cluster import LocalCluster

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

