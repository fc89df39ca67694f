"""What the benchmarks on the real local control plane share.

A cluster with cellguard installed and the operator running as a local process (the e2e
harness's `OperatorProcess`, with the operator's flags open to the benchmark), percentiles,
load averages next to every figure, and the JSON result files in bench/results/.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the e2e harness lives in tests/e2e
    sys.path.insert(0, str(REPO))

from tests.e2e import harness, invalid_specs, placement  # noqa: E402
from tests.e2e import load as load_helpers  # noqa: E402
from tests.e2e.harness import (  # noqa: E402
    POOL_LABEL,
    NodePool,
    OperatorProcess,
    apply_policy,
    budget_manifest,
    install_cellguard,
)

from cellguard.devcluster.cluster import LocalCluster, NodeSpec  # noqa: E402
from cellguard.devcluster.toolchain import ensure_binaries  # noqa: E402

__all__ = ["harness", "invalid_specs", "load_helpers", "placement"]

RESULTS = Path(__file__).parent / "results"


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded (report them next to every figure)."""
    return [round(x, 2) for x in os.getloadavg()]


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of the samples."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """n, p50, p90, p99, max and mean of durations given in seconds, in milliseconds."""
    ms = [s * 1000 for s in samples_s]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else float("nan"),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
    }


def code_version() -> str:
    """The commit the operator code was taken from (+dirty when operator/ has local edits)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "operator"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}+dirty" if dirty else head


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    body = {
        "commit": code_version(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_end": load(),
        **payload,
    }
    out.write_text(json.dumps(body, indent=2) + "\n")
    return out


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB, from /proc/<pid>/status."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            figures[key] = int(value.split()[0])
    return figures


# ---------------------------------------------------------------------- the operator


@dataclass
class BenchOperator(OperatorProcess):
    """The e2e harness's operator process, with the operator's flags open to the bench.

    Defaults to the production status interval (10 s) rather than the e2e tests' 2 s.
    """

    extra_args: list[str] = field(default_factory=lambda: ["--status-interval=10"])
    profile: Path | None = None  # cProfile output of the operator process, written on stop

    def start(self, wait: bool = True) -> None:
        log = self.log_path.open("ab")
        profiler = ["-m", "cProfile", "-o", str(self.profile)] if self.profile else []
        entry = ["-m", "cellguard"]
        self.popen = subprocess.Popen(
            [
                sys.executable,
                *profiler,
                *entry,
                "run",
                f"--kubeconfig={self.kubeconfig}",
                "--webhook-mode=url",
                "--webhook-host=127.0.0.1",
                f"--webhook-port={self.webhook_port}",
                "--probe-host=127.0.0.1",
                f"--health-port={self.health_port}",
                f"--metrics-port={self.metrics_port}",
                "--operator-namespace=cellguard-system",
                "--identity=bench-operator",
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        if wait:
            self.wait_ready(timeout=600)

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            text: str = response.read().decode()
            return text


def pool_nodes(name: str, count: int, pods: str = "110", first: int = 1) -> list[NodeSpec]:
    """Nodes of a pool: the harness's pool label and matching NoSchedule taint."""
    return [
        NodeSpec(
            name=f"{name}-{i:05d}",
            labels={POOL_LABEL: name},
            taints=({"key": POOL_LABEL, "value": name, "effect": "NoSchedule"},),
            pods=pods,
        )
        for i in range(first, first + count)
    ]


def add_pool(
    cluster: LocalCluster,
    name: str,
    count: int,
    *,
    pods: str = "110",
    first: int = 1,
    **budget: Any,
) -> NodePool:
    """Create a pool of Ready kwok nodes with a NodeBudget each (figures as keyword args);
    `first` numbers the nodes on when a pool grows."""
    specs = pool_nodes(name, count, pods, first)
    for start in range(0, len(specs), 500):
        cluster.add_nodes(specs[start : start + 500], parallelism=16)
    cluster.wait_nodes_ready([s.name for s in specs], timeout=600)
    pool = NodePool(cluster, name, [s.name for s in specs])
    for start in range(0, len(pool.nodes), 200):
        cluster.apply([budget_manifest(n, **budget) for n in pool.nodes[start : start + 200]])
    return pool


@contextlib.contextmanager
def cellguard_cluster(
    progress: bool = True, policy: dict[str, Any] | None = None
) -> Iterator[tuple[LocalCluster, Path]]:
    """A fresh control plane with cellguard's CRDs, RBAC and default policy installed.

    Yields the cluster and the operator's kubeconfig; the operator is started by the
    benchmark (so it can measure the start).
    """
    say = (
        (lambda m: print(f"  [{time.strftime('%H:%M:%S')}] {m}", flush=True))
        if progress
        else (lambda _m: None)
    )
    bin_dir = ensure_binaries(progress=say)
    cluster = LocalCluster(bin_dir, progress=say)
    cluster.start()
    try:
        kubeconfig = install_cellguard(cluster)
        apply_policy(cluster, **(policy or {}))
        yield cluster, kubeconfig
    finally:
        cluster.stop()


def start_operator(
    cluster: LocalCluster,
    kubeconfig: Path,
    extra_args: list[str] | None = None,
    profile: Path | None = None,
) -> BenchOperator:
    operator = BenchOperator(
        cluster=cluster,
        kubeconfig=kubeconfig,
        log_path=cluster.workdir / "operator.log",
        extra_args=extra_args if extra_args is not None else ["--status-interval=10"],
        profile=profile,
    )
    operator.start()
    return operator


def say(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}  (load {load()[0]})", flush=True)


def apply_admitted(cluster: LocalCluster, manifest: dict[str, Any], timeout: float = 60) -> None:
    """Apply a cell, retrying while the operator has not seen fresh budgets yet (it folds
    budget reports into its snapshot at most once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        result = harness.apply_yaml(cluster, manifest)
        if result.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{manifest['metadata']['name']} refused: {result.stderr}")
        time.sleep(0.5)
