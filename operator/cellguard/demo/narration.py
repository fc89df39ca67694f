"""How every demo tells its story: a panel per step, each command shown with its output, and
the few cell operations every story uses (scale, wait for pods, the cells table)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.panel import Panel

from cellguard.devcluster.waiting import wait_for


class DemoFailure(RuntimeError):  # noqa: N818 - it reads as what happened
    """A step's outcome was not what the demo says it is."""


def dimmed(console: Console) -> Callable[[str], None]:
    """Progress messages, printed dim and as written."""

    def progress(message: str) -> None:
        console.print(f"[dim]{message}", highlight=False)

    return progress


class Narrator:
    """A story told in `namespace`; subclasses say how kubectl reaches their cluster."""

    def __init__(self, console: Console, namespace: str) -> None:
        self.console = console
        self.namespace = namespace

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        raise NotImplementedError

    def say(self, title: str, text: str) -> None:
        # Sentences are written across source lines; rich wraps them to the terminal.
        self.console.print(
            Panel(" ".join(text.split()), title=f"[bold]{title}", title_align="left")
        )

    def show(self, command: str, result: subprocess.CompletedProcess[str]) -> None:
        self.console.print(f"[bold cyan]$ {command}", highlight=False)
        output = (result.stdout + result.stderr).strip()
        style = "green" if result.returncode == 0 else "red"
        self.console.print(f"[{style}]{output}", highlight=False)

    def scale(self, cell: str, replicas: int) -> subprocess.CompletedProcess[str]:
        args = ("scale", f"streamcell/{cell}", "-n", self.namespace, f"--replicas={replicas}")
        result = self.kubectl(*args)
        self.show(f"kubectl {' '.join(args)}", result)
        return result

    def pods(self, cell: str) -> list[dict[str, Any]]:
        out = self.kubectl(
            "get", "pods", "-n", self.namespace, "-l", f"cellguard.io/cell={cell}", "-o", "json"
        ).stdout
        items: list[dict[str, Any]] = json.loads(out or '{"items": []}')["items"]
        return items

    def running(self, cell: str) -> int:
        return sum(1 for p in self.pods(cell) if p["status"].get("phase") == "Running")

    def wait_running(self, cell: str, replicas: int, timeout: float = 90) -> None:
        with self.console.status(f"waiting for {replicas} pods of {cell} to run ..."):
            wait_for(
                lambda: self.running(cell) == replicas,
                what=f"{replicas} running pods of {cell}",
                timeout=timeout,
                interval=1.0,
                error=DemoFailure,
            )

    def wait_status(self, cell: str) -> None:
        def filled() -> bool:
            out = self.kubectl("get", "streamcell", cell, "-n", self.namespace, "-o", "json")
            status = json.loads(out.stdout or "{}").get("status", {})
            return bool(status.get("maxSafeReplicas") is not None and status.get("readyReplicas"))

        wait_for(filled, what=f"the status of {cell}", timeout=90, interval=1.0, error=DemoFailure)

    def cells_table(self) -> None:
        result = self.kubectl("get", "streamcells", "-n", self.namespace)
        self.show(f"kubectl get streamcells -n {self.namespace}", result)
