"""kubectl and Helm against a cluster the demo did not make: a kubeconfig and a context."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cellguard.devcluster.toolchain import cache_dir


class Refusal(RuntimeError):  # noqa: N818 - it reads as what the demo does
    """The cluster lacks what the demo needs: it stops before changing anything (exit 2)."""


def find_tools() -> tuple[Path, Path]:
    """kubectl and helm: the toolchain's (`make toolchain`), else the ones on PATH."""
    for directory in (os.environ.get("CELLGUARD_BIN_DIR"), str(cache_dir() / "bin")):
        if directory and all((Path(directory) / b).is_file() for b in ("kubectl", "helm")):
            return Path(directory) / "kubectl", Path(directory) / "helm"
    kubectl, helm = shutil.which("kubectl"), shutil.which("helm")
    if kubectl is None or helm is None:
        missing = " and ".join(n for n, p in (("kubectl", kubectl), ("helm", helm)) if p is None)
        raise Refusal(f"the demo needs {missing} on PATH (or `make toolchain`)")
    return Path(kubectl), Path(helm)


@dataclass(frozen=True)
class Kube:
    kubectl_path: Path
    helm_path: Path
    kubeconfig: Path
    context: str | None = None

    def _kubectl_flags(self) -> list[str]:
        flags = [f"--kubeconfig={self.kubeconfig}"]
        return flags + ([f"--context={self.context}"] if self.context else [])

    def kubectl_command(self, *args: str) -> list[str]:
        return [str(self.kubectl_path), *self._kubectl_flags(), *args]

    def kubectl(
        self, *args: str, stdin: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.kubectl_command(*args),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def get(self, *args: str) -> Any:
        """`kubectl get ARGS -o json`, parsed; None when it failed (e.g. not found)."""
        result = self.kubectl("get", *args, "-o", "json")
        return json.loads(result.stdout) if result.returncode == 0 else None

    def items(self, *args: str) -> list[dict[str, Any]]:
        found = self.get(*args)
        return list(found["items"]) if found else []

    def apply(self, manifests: Iterable[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(list(manifests)))

    def can_i(self, verb: str, resource: str, namespace: str | None = None) -> bool:
        scope = ["-n", namespace] if namespace else ["--all-namespaces"]
        return self.kubectl("auth", "can-i", verb, resource, *scope).stdout.strip() == "yes"

    def helm(self, *args: str, timeout: float = 360.0) -> subprocess.CompletedProcess[str]:
        flags = [f"--kubeconfig={self.kubeconfig}"]
        flags += [f"--kube-context={self.context}"] if self.context else []
        return subprocess.run(
            [str(self.helm_path), *flags, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
