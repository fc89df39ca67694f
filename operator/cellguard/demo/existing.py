"""`cellguard demo --kubeconfig PATH [--context C]`: the story on a cluster that exists.

Before changing anything the demo checks that it can reach the cluster, that cellguard's
CRDs there (if any) are this version's, and that its identity may do what it needs (exit 2,
naming what is missing, otherwise). It reuses a cellguard it finds, or installs the chart
(`--image`, `--image-pull-policy`, `--set`, `--values`) with its node agent DaemonSet and
waits for the nodes' budgets; sizes its cell from them; tells the story; and on exit - also
after a failure or Ctrl-C - removes what it created and nothing else.
"""

from __future__ import annotations

import contextlib
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.panel import Panel

from cellguard.demo.clusterstory import ClusterStory
from cellguard.demo.kube import Kube, Refusal, find_tools
from cellguard.demo.narration import DemoFailure, dimmed
from cellguard.demo.release import (
    RELEASE_NAMESPACE,
    Install,
    InstallOptions,
    check_crds,
    check_permissions,
    find_install,
    install_chart,
    planned_install,
    uninstall,
)


def raise_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C: every `finally` (the clean-up) runs."""

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)


def uninterrupted() -> None:
    """Clean-up must finish: a second Ctrl-C (or SIGTERM) no longer interrupts it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def hold_until_interrupted(console: Console, look: str) -> None:
    console.print(Panel(look, title="[bold]Look further", title_align="left"))
    console.print("Press Ctrl-C to stop and clean up.")
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


def tell(
    console: Console,
    kube: Kube,
    options: InstallOptions,
    *,
    workdir: Path,
    interactive: bool,
    real_threads: bool = False,
    budget_timeout: float = 120.0,
    clean_up: bool = True,
    epilogue: Callable[[ClusterStory], None] | None = None,
) -> int:
    """Find or install cellguard, tell the story (then `epilogue`), clean up; the exit code."""
    install: Install | None = None
    story: ClusterStory | None = None
    progress = dimmed(console)
    try:
        reach = kube.kubectl("get", "--raw", "/version", timeout=30)
        if reach.returncode != 0:
            raise Refusal(f"cannot reach the cluster: {reach.stderr.strip()}")
        crds = check_crds(kube)
        install = find_install(kube)
        if install is None and crds:
            raise Refusal(
                f"cellguard's CRDs are installed ({', '.join(crds)}) but no cellguard runs (no "
                "Helm release of the chart, no cellguard webhook): every change to a cell would "
                "go unchecked. Install cellguard there, or remove the CRDs."
            )
        namespace = install.namespace if install else RELEASE_NAMESPACE
        check_permissions(kube, installing=install is None, namespace=namespace)
        if install is not None:
            console.print(
                f"[green]cellguard found:[/] {install.description}. The demo uses it as it is "
                "and leaves it installed.",
                highlight=False,
            )
            if options.image or options.set_values or options.values_files:
                console.print("[yellow]--image, --set and --values are not applied to it.")
        else:
            install = planned_install(kube)
            with console.status("installing cellguard with its Helm chart (and node agents) ..."):
                install_chart(kube, install, options, workdir, progress)
            console.print(
                f"[green]installed:[/] {install.description}; uninstalled again on exit.",
                highlight=False,
            )
        story = ClusterStory(
            console, kube, install, real_threads=real_threads, budget_timeout=budget_timeout
        )
        story.run()
        if epilogue is not None:
            epilogue(story)
        if interactive:
            flags = f"--kubeconfig={kube.kubeconfig}" + (
                f" --context={kube.context}" if kube.context else ""
            )
            hold_until_interrupted(
                console,
                f"kubectl {flags} get streamcells -n {story.namespace}\n"
                f"kubectl {flags} describe streamcell ingest-a -n {story.namespace}\n"
                f"kubectl {flags} get nodebudgets",
            )
        console.print("[bold green]demo complete")
        return 0
    except Refusal as refusal:
        console.print(f"[red]cannot run the demo on this cluster:[/] {refusal}", highlight=False)
        return 2
    except (DemoFailure, RuntimeError, OSError) as failure:
        console.print(f"[red]demo step failed:[/] {failure}", highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        return 130
    finally:
        if clean_up and (story is not None or (install is not None and install.by_demo)):
            uninterrupted()
            with console.status("removing what the demo created ..."):
                removed = story.cleanup() if story is not None else []
                if install is not None and install.by_demo:
                    uninstall(kube, install, progress)
                    removed.append(f"release {install.release} in {install.namespace}")
                    removed += [f"crd/{name}" for name in install.created_crds]
                    if install.created_namespace:
                        removed.append(f"namespace/{install.namespace}")
            console.print(f"[green]removed what the demo created:[/] {', '.join(removed)}")


def run_existing(
    kubeconfig: Path,
    context: str | None,
    options: InstallOptions,
    *,
    interactive: bool,
    budget_timeout: float,
) -> int:
    console = Console()
    raise_on_sigterm()
    try:
        kubectl, helm = find_tools()
    except Refusal as refusal:
        console.print(f"[red]error:[/] {refusal}")
        return 2
    if not kubeconfig.is_file():
        console.print(f"[red]error:[/] no kubeconfig at {kubeconfig}")
        return 2
    kube = Kube(kubectl, helm, kubeconfig, context)
    with tempfile.TemporaryDirectory(prefix="cellguard-demo-") as workdir:
        return tell(
            console,
            kube,
            options,
            workdir=Path(workdir),
            interactive=interactive,
            budget_timeout=budget_timeout,
        )
