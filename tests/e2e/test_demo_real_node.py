"""`cellguard demo` where it meets real nodes: `--real-node`, and `--kubeconfig` on a cluster
that exists.

- `--real-node` (its own control plane and real kubelet node): the story with servers
  holding real threads, refused at the computed size, then the guard off - every running
  server dies of EAGAIN and restarts - and the machine left as it was.
- `--kubeconfig` on the session's real-node cluster (an existing cluster to the demo, as a
  kind cluster would be, the images preloaded as `kind load` does): the chart installed
  in-cluster with its agent DaemonSet, so the NodeBudget the cell is sized from is the one
  the real agent read on the host; the cluster left as it was, down to node labels.
- `--kubeconfig` with an identity that may do nothing: exit 2 naming what it lacks, nothing
  changed.

Opt-out like the other real-node tests: skipped, naming what is missing, where the machine
cannot run a real node or build the image.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cellguard import __version__
from cellguard.demo.kube import Kube
from cellguard.demo.release import Install, uninstall
from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.fleet import import_cellguard_images, real_node_chart_values
from cellguard.devcluster.images import IMAGE, supports_image_build
from cellguard.devcluster.realnode import (
    MARKER,
    REAL_NODE_LABEL,
    TEST_IMAGE,
    RealNode,
    kube_iptables_chains,
    kube_proxy_missing,
    kubepods_cgroups,
    read_sysctls,
    supports_real_node,
)
from cellguard.devcluster.toolchain import ensure_binaries
from cellguard.devcluster.waiting import wait_for
from helm_support import CHART, REPO, Helm

pytestmark = pytest.mark.e2e


def _demo(*args: str, timeout: float = 900) -> tuple[int, str]:
    """Run `cellguard demo ARGS --non-interactive`: exit code and output on single spaces."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "cellguard", "demo", *args, "--non-interactive"],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        check=False,
    )
    raw = result.stdout + result.stderr
    print(f"cellguard demo {' '.join(args)}: exit {result.returncode} in "
          f"{time.monotonic() - started:.1f} s\n{raw[-6000:]}")  # fmt: skip
    # The console wraps long lines to its width: compare on single-spaced text.
    return result.returncode, " ".join(raw.split())


def _node_running_here() -> bool:
    """A real node started by this very process (the session's `real_node` fixture)."""
    with contextlib.suppress(OSError, ValueError):
        return bool(json.loads(MARKER.read_text()).get("pid") == os.getpid())
    return False


@pytest.fixture
def machine_free_of_real_nodes(request: pytest.FixtureRequest) -> Iterator[None]:
    """The demo starts the machine's one real node itself: a session node running in this
    process is stopped for it and started again afterwards (as test_real_node.py does)."""
    session_node: RealNode | None = None
    if _node_running_here():
        session_node = request.getfixturevalue("real_node")
        session_node.stop()
    try:
        bin_dir = ensure_binaries(progress=lambda m: print(m, flush=True))
        reason = supports_real_node(bin_dir) or kube_proxy_missing(bin_dir)
        reason = reason or supports_image_build()
        if reason is not None:
            pytest.skip(f"no real node on this machine: {reason}")
        yield
    finally:
        if session_node is not None and not session_node.running:
            session_node.start()


def test_demo_on_a_real_node_with_the_guard_and_without(machine_free_of_real_nodes: None) -> None:
    sysctls = read_sysctls()
    code, out = _demo("--real-node")
    assert code == 0, out[-3000:]
    assert "installed: Helm release cellguard in cellguard-system" in out
    # The agent's NodeBudget, and the cell sized from it: 256 a pod is the kubelet's
    # podPidsLimit 321 less the margin; the model puts 6 replicas under it and 10 over.
    assert re.search(r"real-0 │ [\d,]+ \(kubepods pids\.max\) │ [\d,]+ │ [\d,]+ │ 321", out), out
    sized = re.search(
        r"Node real-0 allows 256 threads a pod \(the kubelet's podPidsLimit 321 less the 20% "
        r"margin\).*? holds (\d+) threads plus (\d+) per peer: 6 replicas fit and 10 do not",
        out,
    )
    assert sized is not None, out
    base, per_peer = int(sized.group(1)), int(sized.group(2))
    assert base + per_peer * 5 <= 256 < 321 < base + per_peer * 9
    # Real servers holding those threads, admitted at 4 and 6.
    assert "streamcell.cellguard.io/ingest-a created" in out
    assert f"3 peers, holding {base + per_peer * 3} threads" in out
    assert "streamcell.cellguard.io/ingest-a scaled" in out
    assert f"5 peers, holding {base + per_peer * 5} threads" in out
    # The replay refused by the in-cluster webhook, naming node, figure and limit.
    refusal = re.search(
        r'admission webhook "validate-streamcell-scale\.cellguard\.io" denied the request: '
        r"scaling cellguard-demo-[0-9a-f]{6}/ingest-a from 6 to 10 replicas would need "
        r"([\d,]+) threads per pod \(pod PID limit 321 less 20% margin = 256 on node real-0\)",
        out,
    )
    assert refusal is not None, out
    assert int(refusal.group(1).replace(",", "")) >= base + per_peer * 9
    # The operator's own metrics, through port-forward.
    assert_refusal_counted(out)
    assert re.search(r'cellguard_cell_replicas\{cell="ingest-a",[^}]*\} 6\.0', out), out
    # Without the guard: every server that ran failed as the Go runtime does at EAGAIN.
    assert 'validatingwebhookconfiguration.admissionregistration.k8s.io "cellguard" deleted' in out
    assert "every one of the 6 running servers failed" in out
    assert "failed to create new OS thread" in out and "errno=11" in out
    assert len(re.findall(r"ingest-a-\S+ \(was running\) │ [1-9]\d* │ 2 │", out)) == 6, out
    # And the machine as it was.
    assert "stopped; the real node and the control plane are gone" in out
    assert not MARKER.exists()
    assert kubepods_cgroups() == []
    assert kube_iptables_chains() == []
    assert not Path("/sys/class/net/cellguard0").exists()
    assert read_sysctls() == sysctls
    kubelets = subprocess.run(["pgrep", "-x", "kubelet"], capture_output=True, check=False)
    assert kubelets.returncode == 1, kubelets.stdout


# --------------------------------------------------------------------------- --kubeconfig

CLUSTER_SCOPED = (
    "namespaces",
    "customresourcedefinitions",
    "clusterroles",
    "clusterrolebindings",
    "validatingwebhookconfigurations",
    "mutatingwebhookconfigurations",
    "validatingadmissionpolicies",
    "validatingadmissionpolicybindings",
    "priorityclasses",
)
NAMESPACED = (
    "deployments", "daemonsets", "services", "serviceaccounts", "secrets", "configmaps",
    "roles", "rolebindings", "pods", "jobs",
)  # fmt: skip


def _state(cluster: LocalCluster) -> dict[str, Any]:
    """What the demo could have left behind: objects by kind, and every node's labels."""
    state: dict[str, Any] = {}
    for kind in CLUSTER_SCOPED:
        out = cluster.kubectl("get", kind, "-o", "name").stdout
        state[kind] = sorted(out.split())
    for kind in NAMESPACED:
        out = cluster.kubectl(
            "get", kind, "-A", "-o",
            "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}{'\\n'}{end}",
        ).stdout  # fmt: skip
        state[kind] = sorted(out.split())
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    state["node labels"] = {n["metadata"]["name"]: n["metadata"]["labels"] for n in nodes}
    return state


BYSTANDER = "demo-bystander"
CELLGUARD_CRDS = (
    "streamcells.cellguard.io",
    "threadbudgetpolicies.cellguard.io",
    "nodebudgets.cellguard.io",
)


def _bystander(cluster: LocalCluster) -> None:
    """Something of the cluster's own: a namespace, a ConfigMap and a pod on the real node."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper", "namespace": BYSTANDER},
        "spec": {
            "nodeSelector": {REAL_NODE_LABEL: "true"},
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "containers": [{"name": "main", "image": TEST_IMAGE, "imagePullPolicy": "Never"}],
        },
    }
    config = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "keep-me", "namespace": BYSTANDER},
        "data": {"a": "b"},
    }
    cluster.kubectl("create", "namespace", BYSTANDER)
    cluster.apply([config, pod])
    cluster.kubectl("wait", "--for=condition=Ready", "pod/sleeper", "-n", BYSTANDER,
                    "--timeout=60s")  # fmt: skip


@pytest.fixture(scope="module")
def preloaded(real_node: RealNode, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `kind load docker-image` does for a kind cluster: the images on the node. The
    chart values the real node needs besides the image (its agent's host paths), as a file."""
    reason = supports_image_build()
    if reason is not None:
        pytest.skip(f"cannot build the image here: {reason}")
    images = import_cellguard_images(real_node, progress=lambda m: print(m, flush=True))
    values = real_node_chart_values(real_node, images)
    del values["image"]  # given with --image and --image-pull-policy
    path = tmp_path_factory.mktemp("demo-values") / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _other_version_crd(cluster: LocalCluster) -> None:
    """streamcells.cellguard.io as another cellguard version would have it."""
    crd = yaml.safe_load((REPO / "crds" / "streamcells.cellguard.io.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["spec"]["properties"]["shards"] = {"type": "integer"}
    crd["metadata"].setdefault("labels", {})["app.kubernetes.io/version"] = "0.0.9"
    cluster.kubectl("apply", "-f", "-", input_text=yaml.safe_dump(crd))


def _uninstall(cluster: LocalCluster) -> None:
    """A release installed by the test, and what the chart keeps: as the demo removes its own."""
    kube = Kube(cluster.bin_dir / "kubectl", cluster.bin_dir / "helm", cluster.kubeconfig)
    ours = Install(
        namespace="cellguard-system", release="cellguard", by_demo=True, description="",
        created_namespace=True, created_crds=CELLGUARD_CRDS,
    )  # fmt: skip
    uninstall(kube, ours, progress=lambda m: print(m, flush=True))


def _left_as_it_was(cluster: LocalCluster, before: dict[str, Any]) -> dict[str, Any]:
    after = _state(cluster)

    def settled() -> dict[str, Any] | None:  # pods of the demo may still be terminating
        nonlocal after
        after = _state(cluster)
        return after if after == before else None

    with contextlib.suppress(AssertionError):
        wait_for(settled, timeout=30, interval=2, what="the cluster as it was")
    assert after == before
    return after


def _story_told(out: str, limit: int) -> None:
    """Sized from the agent's real reading (the kubelet's podPidsLimit on this node),
    admitted at 4 and 6, refused at 10 naming the node, the figure and the limit."""
    allowed = limit * 4 // 5
    assert f"Node real-0 allows {allowed} threads a pod" in out, out
    assert f"podPidsLimit {limit} less the 20% margin" in out
    assert "Its pods only sleep: the operator budgets the model" in out
    assert "streamcell.cellguard.io/ingest-a created" in out
    assert "streamcell.cellguard.io/ingest-a scaled" in out
    refusal = re.search(
        r"from 6 to 10 replicas would need [\d,]+ threads per pod \(pod PID limit "
        rf"{limit} less 20% margin = {allowed} on node real-0\)",
        out,
    )
    assert refusal is not None, out
    assert_refusal_counted(out)


def test_demo_on_an_existing_cluster_leaves_it_as_it_was(
    real_node: RealNode, preloaded: Path
) -> None:
    cluster = real_node.cluster
    image = ("--image", IMAGE, "--image-pull-policy", "Never", "--values", str(preloaded))
    # CRDs of another cellguard version: refused before anything is changed.
    _other_version_crd(cluster)
    try:
        code, out = _demo("--kubeconfig", str(cluster.kubeconfig), *image)
        assert code == 2, out
        assert (
            "cannot run the demo on this cluster: the cluster's CRD streamcells.cellguard.io "
            "(app version 0.0.9) is not this cellguard's"
        ) in out
        assert cluster.kubectl("get", "namespace", "cellguard-system", check=False).returncode
    finally:
        cluster.kubectl("delete", "crd", "streamcells.cellguard.io", "--ignore-not-found")
    _bystander(cluster)
    try:
        before = _state(cluster)
        code, out = _demo("--kubeconfig", str(cluster.kubeconfig), *image)
        assert code == 0, out[-3000:]
        assert "installed: Helm release cellguard in cellguard-system, installed by the demo" in out
        _story_told(out, real_node.config.pod_pids_limit)
        assert re.search(
            r"removed what the demo created: namespace/cellguard-demo-[0-9a-f]{6}, "
            r"threadbudgetpolicy/cellguard-demo-[0-9a-f]{6}, release cellguard in "
            r"cellguard-system, crd/nodebudgets\.cellguard\.io, crd/streamcells\.cellguard\.io, "
            r"crd/threadbudgetpolicies\.cellguard\.io, namespace/cellguard-system",
            out,
        ), out
        after = _left_as_it_was(cluster, before)
        assert f"{BYSTANDER}/sleeper" in after["pods"]
        assert f"{BYSTANDER}/keep-me" in after["configmaps"]
    finally:
        cluster.kubectl("delete", "namespace", BYSTANDER, "--ignore-not-found", "--timeout=60s",
                        check=False, timeout=90)  # fmt: skip


def test_demo_reuses_a_cellguard_it_finds(real_node: RealNode, preloaded: Path) -> None:
    """A release installed before (here by the test, one operator replica): the demo says
    so, tells the story with it, and leaves it - and everything else - as it was."""
    cluster = real_node.cluster
    helm = Helm(cluster.bin_dir / "helm", kubeconfig=cluster.kubeconfig)
    repository, tag = IMAGE.rsplit(":", 1)
    try:
        helm.run(
            "install", "cellguard", str(CHART), "-n", "cellguard-system", "--create-namespace",
            "-f", str(preloaded), "--set", f"image.repository={repository}",
            "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
            "--set", "operator.replicas=1", "--set", "defaultPolicy.create=false",
            "--wait", "--timeout=300s", timeout=330,
        )  # fmt: skip
        before = _state(cluster)
        code, out = _demo("--kubeconfig", str(cluster.kubeconfig))
        assert code == 0, out[-3000:]
        assert (
            "cellguard found: Helm release cellguard in cellguard-system (chart cellguard-0.1.0, "
            f"app version {__version__}). The demo uses it as it is and leaves it installed."
        ) in out
        _story_told(out, real_node.config.pod_pids_limit)
        removed = out.split("removed what the demo created: ")[-1]
        assert re.fullmatch(
            r"namespace/cellguard-demo-[0-9a-f]{6}, threadbudgetpolicy/cellguard-demo-[0-9a-f]{6}",
            removed,
        ), removed
        _left_as_it_was(cluster, before)
        assert helm.run("status", "cellguard", "-n", "cellguard-system").returncode == 0
    finally:
        _uninstall(cluster)


def test_demo_refuses_an_identity_without_permissions(cluster: LocalCluster) -> None:
    """Exit 2 before changing anything, naming what the identity may not do."""
    kubeconfig = cluster.user_kubeconfig("demo-nobody")
    before = cluster.kubectl("get", "namespaces", "-o", "name").stdout
    code, out = _demo("--kubeconfig", str(kubeconfig), "--budget-timeout", "5")
    assert code == 2, out
    assert "cannot run the demo on this cluster: demo-nobody may not create namespaces" in out
    assert "run it as a cluster admin" in out
    assert cluster.kubectl("get", "namespaces", "-o", "name").stdout == before


def assert_refusal_counted(out: str) -> None:
    """The refused request in the operator's metrics: once per admission call, and the API
    server calls again when it judged the scale against a stale cached copy of the cell."""
    counted = re.search(
        r'cellguard_decisions_total\{decision="refused",reason="PodPidLimit"\} (\d+)\.0', out
    )
    assert counted, out
    assert 1 <= int(counted.group(1)) <= 2, counted.group(0)
