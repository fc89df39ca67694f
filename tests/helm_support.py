"""Running Helm on the chart in helm/cellguard: shared by the unit and end-to-end tests."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "helm" / "cellguard"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
# The server version the chart is rendered for without a cluster (helm's own default, from
# how it was built, may be older than the chart's kubeVersion).
KUBE_VERSION = "1.36.3"

Manifest = dict[str, Any]


class HelmError(AssertionError):
    pass


@dataclass(frozen=True)
class Helm:
    binary: Path
    kubeconfig: Path | None = None

    def run(
        self, *args: str, check: bool = True, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        if self.kubeconfig is not None:
            env["KUBECONFIG"] = str(self.kubeconfig)
        result = subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if check and result.returncode != 0:
            raise HelmError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def template(
        self,
        *,
        release: str = "cg",
        namespace: str = "cellguard-system",
        values: Sequence[Path] = (),
        set_values: Sequence[str] = (),
        chart: Path = CHART,
        extra: Sequence[str] = (),
    ) -> list[Manifest]:
        """Every object `helm template` renders (hooks and tests included)."""
        return parse(
            self.template_text(
                release=release,
                namespace=namespace,
                values=values,
                set_values=set_values,
                chart=chart,
                extra=extra,
            )
        )

    def template_text(
        self,
        *,
        release: str = "cg",
        namespace: str = "cellguard-system",
        values: Sequence[Path] = (),
        set_values: Sequence[str] = (),
        chart: Path = CHART,
        extra: Sequence[str] = (),
    ) -> str:
        args = ["template", release, str(chart), "--namespace", namespace]
        args += ["--kube-version", KUBE_VERSION]
        for path in values:
            args += ["--values", str(path)]
        for item in set_values:
            args += ["--set", item]
        return self.run(*args, *extra).stdout


def parse(text: str) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(manifests: Sequence[Manifest], kind: str, name: str | None = None) -> Manifest:
    matches = [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]
    if len(matches) != 1:
        raise AssertionError(f"expected one {kind} {name or ''}, found {len(matches)}")
    return matches[0]


def all_of(manifests: Sequence[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def is_hook(manifest: Manifest) -> bool:
    return "helm.sh/hook" in manifest["metadata"].get("annotations", {})


def policy_from_hook(manifests: Sequence[Manifest]) -> Manifest:
    """The ThreadBudgetPolicy the default-policy hook Job applies (a heredoc in its script)."""
    job = find(manifests, "Job")
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    match = re.search(r"<<'POLICY'\n(.*?)\nPOLICY\n", script, re.DOTALL)
    if match is None:
        raise AssertionError(f"no policy in the hook's script:\n{script}")
    policy: Manifest = yaml.safe_load(match.group(1))
    return policy
