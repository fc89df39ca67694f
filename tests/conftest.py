"""Shared fixtures. The `cluster` fixture is a real local control plane, started once."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pytest

from cellguard.devcluster.cluster import LocalCluster, NodeSpec
from cellguard.devcluster.toolchain import ensure_binaries

# Six simulated nodes in two zones: enough to see spreading and isolation.
E2E_NODES = [
    NodeSpec(name=f"e2e-{i}", labels={"topology.kubernetes.io/zone": f"zone-{i % 2}"})
    for i in range(1, 7)
]


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    bin_dir = ensure_binaries(progress=lambda m: print(m, flush=True))
    local = LocalCluster(
        bin_dir,
        nodes=E2E_NODES,
        keep_workdir=bool(os.environ.get("CELLGUARD_KEEP_CLUSTER")),
        progress=lambda m: print(m, flush=True),
    )
    local.start()
    request.config.stash[_CLUSTER_KEY] = local
    try:
        yield local
    finally:
        local.stop()


_CLUSTER_KEY = pytest.StashKey[LocalCluster]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # On a failed end-to-end test, show what each component said last.
    if report.failed and "cluster" in getattr(item, "fixturenames", ()):
        local = item.config.stash.get(_CLUSTER_KEY, None)
        if local is not None:
            report.sections.append(("control plane logs (tails)", local.log_tails(40)))
    return report
