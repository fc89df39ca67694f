"""`cellguard demo --real-node`: the story with real threads on one real kubelet node.

A local control plane with one real node (containerd and a kubelet on this machine, root
only: `cellguard.devcluster.realnode`), the cellguard image built by buildah and imported
into the node, the chart installed in-cluster with its node agent - then the same story as
on any cluster (`--kubeconfig`), its servers holding their threads for real, and what the
same growth does once the guard is off: every server, the running ones too, dies of EAGAIN
at the pod's pids.max and restarts. On exit (also after a failure, Ctrl-C or SIGTERM) the
node and the control plane are torn down: pods, kubelet, containerd, the bridge, the
kubepods cgroups, iptables chains, mounts and the host sysctls the kubelet changed.
"""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

from rich.console import Console

from cellguard.demo.clusterstory import ClusterStory
from cellguard.demo.existing import raise_on_sigterm, tell, uninterrupted
from cellguard.demo.kube import Kube
from cellguard.demo.narration import dimmed
from cellguard.demo.release import InstallOptions
from cellguard.devcluster.cluster import ClusterError, LocalCluster
from cellguard.devcluster.fleet import import_cellguard_images, real_node_chart_values
from cellguard.devcluster.images import ImageBuildError, supports_image_build
from cellguard.devcluster.realnode import RealNodeConfig, kube_proxy_missing, supports_real_node
from cellguard.devcluster.toolchain import ToolchainError, ensure_binaries

# A small per-pod PID limit keeps the threads the story needs (a few thousand) modest.
DEMO_NODE = RealNodeConfig(
    name="real-0", pod_pids_limit=321, system_reserved_pids=1000, kube_proxy=True, max_pods=30
)


def run_real_node(workdir: Path | None, *, interactive: bool, budget_timeout: float) -> int:
    console = Console()
    raise_on_sigterm()
    progress = dimmed(console)
    try:
        bin_dir = ensure_binaries(progress=progress)
    except ToolchainError as error:
        console.print(f"[red]error:[/] {error}")
        return 2
    reason = supports_real_node(bin_dir) or kube_proxy_missing(bin_dir) or supports_image_build()
    if reason is not None:
        console.print(f"[red]cannot run a real node here:[/] {reason}", highlight=False)
        return 2
    cluster = LocalCluster(bin_dir, workdir=workdir, progress=progress, real_nodes=[DEMO_NODE])
    try:
        with console.status("starting the control plane and the real node ..."):
            cluster.start()
        node = cluster.real_nodes[0]
        with console.status("building the cellguard image (cached) and importing it ..."):
            # buildah's own output (indented) stays out of the story.
            images = import_cellguard_images(
                node, lambda m: None if m.startswith("  ") else progress(m)
            )
        kube = Kube(bin_dir / "kubectl", bin_dir / "helm", cluster.kubeconfig)
        console.print(
            f"[green]Ready:[/] a control plane and real node {node.name} (podPidsLimit "
            f"{DEMO_NODE.pod_pids_limit}) at {cluster.server_url}; "
            f"export KUBECONFIG={cluster.kubeconfig}",
            highlight=False,
        )
        return tell(
            console,
            kube,
            InstallOptions(values=real_node_chart_values(node, images)),
            workdir=cluster.workdir,
            interactive=interactive,
            real_threads=True,
            budget_timeout=budget_timeout,
            clean_up=False,  # the whole cluster goes
            epilogue=ClusterStory.replay_without_guard,
        )
    except (ClusterError, ImageBuildError, RuntimeError, OSError) as error:
        console.print(f"[red]demo step failed:[/] {error}", highlight=False)
        console.print(cluster.log_tails(20), highlight=False)
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        return 130
    finally:
        uninterrupted()
        with console.status("tearing down the real node and the control plane ..."):
            # Nothing may recreate the node's pods while it drains (the agent's DaemonSet
            # would, on a cordoned node too): in this throwaway cluster all are the demo's.
            # A terminal's Ctrl-C reaches this process only (spawn_daemon): the control
            # plane still answers here, so the node drains before it stops.
            with contextlib.suppress(ClusterError, OSError, subprocess.SubprocessError):
                cluster.check_alive()
                cluster.kubectl(
                    "delete", "daemonsets,deployments", "--all", "--all-namespaces",
                    "--wait=false", check=False, timeout=10,
                )  # fmt: skip
            cluster.stop()
        left = [item for n in cluster.real_nodes for item in n.leftovers()]
        if left:
            console.print(f"[red]left behind on this machine:[/] {', '.join(left)}")
        else:
            console.print("[green]stopped; the real node and the control plane are gone")
