"""What the benchmarks on the real local control plane share.

A cluster with cellguard installed and the operator running as a local process (the
package's `OperatorProcess`, as the e2e tests run it, at the production status interval
unless told), percentiles, load averages next to every figure, and the JSON result files in
bench/results/. What the benchmarks share with the e2e tests (pools, cells, the storm, the
placement scenarios, the invalid objects) lives in `cellguard.devcluster`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.install import apply_policy, install_cellguard
from cellguard.devcluster.pools import NodePool, make_pool
from cellguard.devcluster.processes import OperatorOptions, OperatorProcess
from cellguard.devcluster.toolchain import ensure_binaries

REPO = Path(__file__).resolve().parents[1]
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


def add_pool(
    cluster: LocalCluster,
    name: str,
    count: int,
    *,
    pods: str = "110",
    first: int = 1,
    **budget: Any,
) -> NodePool:
    """Create a pool of Ready kwok nodes NAME-00001 ... with a NodeBudget each (figures as
    keyword args); `first` numbers the nodes on when a pool grows."""
    return make_pool(
        cluster, name, count, first=first, digits=5, pods=pods, ready_timeout=600, **budget
    )


@contextlib.contextmanager
def cellguard_cluster(
    progress: bool = True, policy: dict[str, Any] | None = None, **cluster_options: Any
) -> Iterator[tuple[LocalCluster, Path]]:
    """A fresh control plane with cellguard's CRDs, RBAC and default policy installed.

    Yields the cluster and the operator's kubeconfig; the operator is started by the
    benchmark (so it can measure the start). `cluster_options` go to LocalCluster (its
    opt-in `extra_flags` and `kwok_options`).
    """
    say = (
        (lambda m: print(f"  [{time.strftime('%H:%M:%S')}] {m}", flush=True))
        if progress
        else (lambda _m: None)
    )
    bin_dir = ensure_binaries(progress=say)
    cluster = LocalCluster(bin_dir, progress=say, **cluster_options)
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
    *,
    status_interval: float | None = 10,
    profile: Path | None = None,
    log_name: str = "operator.log",
    wait: bool = True,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> OperatorProcess:
    """Start the operator as the benchmarks run it: the production status interval (10 s,
    not the e2e tests' 2 s; None: the operator's default), under cProfile with `profile`,
    logging to the cluster's working directory; with `wait`, up to 10 minutes to be ready."""
    options = OperatorOptions(
        kubeconfig=kubeconfig,
        identity="bench-operator",
        status_interval=status_interval,
        extra_args=tuple(extra_args),
    )
    operator = OperatorProcess(options, cluster.workdir / log_name, profile=profile, env=env)
    operator.start(wait=wait, timeout=600)
    return operator


def say(message: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {message}  (load {load()[0]})", flush=True)


def control_plane_memory(cluster: LocalCluster) -> dict[str, float]:
    """RSS of each control-plane process and the size of etcd's data directory (on tmpfs
    it is memory too), in MiB. The processes' RSS leaves out shared-memory pages (RssShmem:
    etcd's memory map of its database on tmpfs), which the data directory counts."""
    figures: dict[str, float] = {}
    for name, daemon in cluster.processes.items():
        if daemon.popen.poll() is None:
            with contextlib.suppress(OSError, KeyError, ValueError):
                status = Path(f"/proc/{daemon.popen.pid}/status").read_text().splitlines()
                fields = {
                    key: int(value.split()[0])
                    for key, _, value in (line.partition(":") for line in status)
                    if key in ("RssAnon", "RssFile")
                }
                figures[name] = round((fields["RssAnon"] + fields["RssFile"]) / 1024, 1)
    etcd_data = getattr(cluster, "etcd_data", None)
    if etcd_data is not None:
        size = sum(f.stat().st_size for f in Path(etcd_data).rglob("*") if f.is_file())
        figures["etcd_data_dir"] = round(size / 1024 / 1024, 1)
    figures["total"] = round(sum(figures.values()), 1)
    # What of the API server's RSS is live heap (the rest is garbage not yet collected,
    # and memory the Go runtime has not handed back): from its own /metrics.
    with contextlib.suppress(OSError, ValueError):
        code, body = cluster.api_get("/metrics", timeout=30)
        if code == 200:
            for line in body.decode(errors="replace").splitlines():
                name, _, value = line.partition(" ")
                if name in ("go_memstats_heap_inuse_bytes", "go_memstats_heap_alloc_bytes"):
                    key = "kube-apiserver_" + name.removeprefix("go_memstats_").removesuffix(
                        "_bytes"
                    )
                    figures[key] = round(float(value) / 1024 / 1024, 1)
    return figures


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def control_plane_cpu(cluster: LocalCluster) -> dict[str, float]:
    """CPU seconds (user + system) each running control-plane process has used so far."""
    figures: dict[str, float] = {}
    for name, daemon in cluster.processes.items():
        with contextlib.suppress(OSError, IndexError):
            figures[name] = process_cpu_s(daemon.popen.pid)
    return figures


_REQUEST_LABELS = re.compile(r'(\w+)="([^"]*)"')


def api_requests(cluster: LocalCluster) -> dict[str, float]:
    """Requests kube-apiserver has served so far, by "VERB resource[/subresource]" (its
    apiserver_request_total, every response code and user together)."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_text, _, value = line.rpartition("} ")
        labels = dict(_REQUEST_LABELS.findall(labels_text))
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        key = f"{labels.get('verb', '')} {resource}"
        totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def requests_used(
    before: dict[str, float], after: dict[str, float], *, at_least: int = 100
) -> dict[str, int]:
    """The requests served between two `api_requests` readings, most first (kinds with
    fewer than `at_least` left out)."""
    used = {key: int(count - before.get(key, 0.0)) for key, count in after.items()}
    return dict(sorted(((k, n) for k, n in used.items() if n >= at_least), key=lambda kv: -kv[1]))


def cpu_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per process between two `control_plane_cpu` readings (a process started
    in between counts from its start)."""
    return {
        name: round(
            seconds - before.get(name, 0.0) if seconds >= before.get(name, 0.0) else seconds, 1
        )
        for name, seconds in after.items()
    }
