"""Finds (and if needed builds) the control-plane binaries, and installs Prometheus.

The binaries are built from Go modules by `toolchain/build.sh` in the repository into a
cache outside it; `CELLGUARD_BIN_DIR` points at a prepared directory instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

# build.sh also builds the real node's kubelet and the programs of its local images
# (realnode.REAL_NODE_BINARIES); supports_real_node() checks for those where one starts.
# It builds helm-docs too, which only tests/unit/test_chart_readme.py needs (it checks for it).
CONTROL_PLANE_BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "helm",
)


class ToolchainError(RuntimeError):
    pass


def repo_root() -> Path | None:
    """The source checkout this package runs from, if any (editable install or tests)."""
    candidate = Path(__file__).resolve().parents[3]
    return candidate if (candidate / "toolchain" / "build.sh").is_file() else None


def cache_dir() -> Path:
    explicit = os.environ.get("CELLGUARD_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "cellguard"


def ensure_binaries(progress: Callable[[str], None] = print) -> Path:
    """Return the directory holding every control-plane binary, building what is missing."""
    explicit = os.environ.get("CELLGUARD_BIN_DIR")
    if explicit:
        bin_dir = Path(explicit)
        _check_present(bin_dir)
        return bin_dir
    root = repo_root()
    if root is None:
        raise ToolchainError(
            "cannot build the control plane: no cellguard source checkout found and "
            "CELLGUARD_BIN_DIR is not set"
        )
    if shutil.which("go") is None:
        raise ToolchainError("the Go toolchain is needed to build the control plane: install go")
    progress("Checking the control-plane toolchain (a cold build takes a while) ...")
    # build.sh prints its progress on stderr (passed through) and the bin dir last on stdout.
    result = subprocess.run(
        ["bash", str(root / "toolchain" / "build.sh")],
        stdout=subprocess.PIPE,
        stderr=sys.stderr,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ToolchainError(f"toolchain/build.sh failed with exit code {result.returncode}")
    bin_dir = Path(result.stdout.strip().splitlines()[-1])
    _check_present(bin_dir)
    return bin_dir


def _check_present(bin_dir: Path) -> None:
    missing = [b for b in CONTROL_PLANE_BINARIES if not (bin_dir / b).is_file()]
    if missing:
        raise ToolchainError(f"missing control-plane binaries in {bin_dir}: {', '.join(missing)}")


def ensure_prometheus(progress: Callable[[str], None] = print) -> tuple[Path, Path]:
    """Paths of prometheus and promtool, installing Debian's `prometheus` package if needed."""
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus and promtool:
        return Path(prometheus), Path(promtool)
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise ToolchainError(
            "prometheus/promtool not found; install Debian's package: apt-get install prometheus"
        )
    progress("Installing Debian's prometheus package (prometheus, promtool) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "prometheus"],
        check=True,
        env=env,
    )
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not (prometheus and promtool):
        raise ToolchainError("apt-get installed prometheus but prometheus/promtool are not on PATH")
    return Path(prometheus), Path(promtool)
