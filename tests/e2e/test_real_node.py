"""A real kubelet node (containerd, real pods in real cgroups) beside the control plane.

The pod image is packed on the spot from the toolchain's static `cellguard-pause` program
(no registry, no busybox): `imagePullPolicy: Never` finds it in containerd's k8s.io
namespace. The kernel enforces the kubelet's PID limits, which is what cellguard's budgets
are about; and a real node must leave the machine as it found it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cellguard.devcluster.ociimage import ImageFile, pack_image
from cellguard.devcluster.realnode import (
    CGROUP_ROOT,
    REAL_NODE_LABEL,
    TEST_IMAGE,
    RealNode,
    kubepods_cgroups,
    read_sysctls,
    recover_abandoned_node,
)

pytestmark = pytest.mark.e2e


def _pod(name: str, command: list[str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": TEST_IMAGE, "imagePullPolicy": "Never"}
    if command:
        container["command"] = command
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeSelector": {REAL_NODE_LABEL: "true"},
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            "containers": [container],
        },
    }


def _run_pod(
    node: RealNode,
    command: list[str] | None = None,
    phases: tuple[str, ...] = ("Running",),
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Create a pod for the real node and return it once in one of `phases`."""
    name = f"real-{uuid.uuid4().hex[:8]}"
    node.cluster.apply([_pod(name, command)])
    deadline = time.monotonic() + timeout
    pod: dict[str, Any] = {}
    while time.monotonic() < deadline:
        pod = json.loads(node.cluster.kubectl("get", "pod", name, "-o", "json").stdout)
        if pod.get("status", {}).get("phase") in phases:
            return pod
        time.sleep(0.3)
    raise AssertionError(
        f"pod {name} not {'/'.join(phases)} after {timeout:.0f} s: "
        f"{json.dumps(pod.get('status'))}\n{node.log_tails()}"
    )


def _delete_pod(node: RealNode, pod: dict[str, Any]) -> None:
    node.cluster.kubectl("delete", "pod", pod["metadata"]["name"], "--wait=true", timeout=60)


def test_pod_runs_on_the_real_node_under_its_pid_limit(real_node: RealNode) -> None:
    pod = _run_pod(real_node)
    try:
        assert pod["spec"]["nodeName"] == real_node.name
        assert pod["status"]["podIP"], "no pod IP from the CNI bridge"
        cgroup = real_node.pod_cgroup(pod["metadata"]["uid"])
        assert cgroup is not None, "the pod has no cgroup under kubepods"
        # The kubelet's podPidsLimit, enforced by the kernel on the pod's cgroup.
        limit = (cgroup / "pids.max").read_text().strip()
        assert limit == str(real_node.config.pod_pids_limit)
        assert int((cgroup / "pids.current").read_text()) >= 2  # pause + the container
        # All pods together: the machine's PIDs less the system reservation.
        reserved = real_node.config.system_reserved_pids or 0
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
        kubepods = cgroup.parents[1] if cgroup.parent.name != "kubepods" else cgroup.parent
        assert (kubepods / "pids.max").read_text().strip() == str(pid_max - reserved)
        # kube-apiserver reaches the kubelet (logs, exec) with its client certificate.
        logs = real_node.cluster.kubectl("logs", pod["metadata"]["name"]).stdout
        assert "cellguard-pause: running" in logs
    finally:
        _delete_pod(real_node, pod)


def test_the_kernel_holds_a_pod_to_its_pid_limit(real_node: RealNode) -> None:
    """Threads count against pids.max: within the limit a pod holds them, past it the
    kernel refuses the next thread and the program dies (as a stream server would)."""
    limit = real_node.config.pod_pids_limit
    within = _run_pod(real_node, ["/threads", str(limit // 2)])
    beyond = _run_pod(real_node, ["/threads", str(limit + 50)], phases=("Failed", "Succeeded"))
    try:
        name = within["metadata"]["name"]
        deadline = time.monotonic() + 30
        while "holding" not in real_node.cluster.kubectl("logs", name).stdout:
            assert time.monotonic() < deadline, f"{name} never held its threads"
            time.sleep(0.3)
        cgroup = real_node.pod_cgroup(within["metadata"]["uid"])
        assert cgroup is not None
        assert limit // 2 < int((cgroup / "pids.current").read_text()) <= limit

        assert beyond["status"]["phase"] == "Failed"
        terminated = beyond["status"]["containerStatuses"][0]["state"]["terminated"]
        assert terminated["exitCode"] == 2  # the Go runtime's fatal error
        logs = real_node.cluster.kubectl("logs", beyond["metadata"]["name"]).stdout
        assert "failed to create new OS thread" in logs, logs[-2000:]
    finally:
        _delete_pod(real_node, within)
        _delete_pod(real_node, beyond)


def test_stop_leaves_the_machine_as_it_was(real_node: RealNode) -> None:
    """Stop the node, start a fresh one with a pod, stop it: nothing of it is left."""
    real_node.stop()
    assert real_node.leftovers() == []
    before = read_sysctls()
    try:
        real_node.start()
        pod = _run_pod(real_node)
        assert Path("/sys/class/net", real_node.config.bridge).exists()
        assert kubepods_cgroups(), "no kubepods cgroup while a pod runs"
        started = time.monotonic()
        real_node.stop()
        print(f"real node teardown with one pod: {time.monotonic() - started:.1f} s")

        assert not Path("/sys/class/net", real_node.config.bridge).exists()
        assert not [p for p in real_node.daemons.values() if p.popen.poll() is None]
        assert not _processes_naming(str(real_node.socket)), "containerd or a shim still runs"
        assert not kubepods_cgroups()
        assert not list(CGROUP_ROOT.glob("*/kubepods"))
        assert read_sysctls() == before
        mountinfo = Path("/proc/self/mountinfo").read_text()
        assert str(real_node.workdir) not in mountinfo
        assert real_node.leftovers() == []
        nodes = real_node.cluster.kubectl("get", "nodes", "-o", "name").stdout
        assert f"node/{real_node.name}" not in nodes
        assert pod["metadata"]["name"] not in real_node.cluster.kubectl("get", "pods").stdout
    finally:
        if not real_node.running:
            real_node.start()  # for later tests and the session's own teardown check


def test_stop_cleans_up_after_the_kubelet_died(real_node: RealNode) -> None:
    """A kubelet killed with pods running: stop() removes them through containerd itself."""
    before = real_node.saved_sysctls
    pod = _run_pod(real_node)
    netns = [line.split()[4] for line in _mountinfo() if "/netns/" in line.split()[4]]
    assert netns, "the pod's network namespace is not mounted"
    kubelet = real_node.daemons["kubelet"].popen
    os.kill(kubelet.pid, signal.SIGKILL)
    kubelet.wait(timeout=10)
    try:
        real_node.stop()
        assert real_node.leftovers() == []
        assert not [line for line in _mountinfo() if line.split()[4] in netns], "netns left"
        assert not _processes_naming(str(real_node.socket)), "containerd or a shim still runs"
        assert not Path("/sys/class/net", real_node.config.bridge).exists()
        assert not kubepods_cgroups()
        assert read_sysctls() == before
        pods = real_node.cluster.kubectl("get", "pods", "-o", "name").stdout
        assert f"pod/{pod['metadata']['name']}" not in pods, "the dead node's pod is still listed"
    finally:
        if not real_node.running:
            real_node.start()


# A process that runs a real node with a pod, says READY and waits to be killed.
_OWNER = """
import json, sys, time
from pathlib import Path
from cellguard.devcluster.cluster import LocalCluster
cluster = LocalCluster(Path(sys.argv[1]), workdir=Path(sys.argv[2]), real_nodes=1)
cluster.start()
cluster.apply([json.loads(sys.argv[3])])
cluster.kubectl("wait", "--for=condition=Ready", "pod/abandoned", "--timeout=60s")
print("READY", cluster.etcd_data, flush=True)
time.sleep(300)
"""


def test_a_node_abandoned_by_a_killed_process_is_cleaned_up(
    real_node: RealNode, tmp_path: Path
) -> None:
    """SIGKILL the process that runs a real node: the next start cleans up what it left."""
    real_node.stop()
    before = read_sysctls()
    # Short: the kubelet's and containerd's unix sockets live under it.
    workdir = Path(tempfile.mkdtemp(prefix="cg-owner-"))
    pod = json.dumps(_pod("abandoned"))
    owner_log, said = tmp_path / "owner.log", []
    with owner_log.open("w") as log:
        owner = subprocess.Popen(
            [sys.executable, "-c", _OWNER, str(real_node.cluster.bin_dir), str(workdir), pod],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    try:
        assert owner.stdout is not None
        said = owner.stdout.readline().split()
        assert said[:1] == ["READY"], "the owner failed:\n" + (owner_log).read_text()[-3000:]
    finally:
        owner.kill()
        owner.wait(timeout=30)
    try:
        time.sleep(1)  # its kubelet and containerd get SIGTERM as their parent died
        assert kubepods_cgroups(), "the killed owner left no cgroups: nothing was tested"
        assert _shims_serving(workdir), "no shim outlived the owner"
        assert recover_abandoned_node()
        assert not kubepods_cgroups()
        assert not _shims_serving(workdir)
        assert not Path("/sys/class/net", real_node.config.bridge).exists()
        assert str(workdir) not in Path("/proc/self/mountinfo").read_text()
        assert read_sysctls() == before
    finally:
        real_node.start()  # would recover too, had the test not
        # The owner's control plane (started in its workdir) is not the node's business:
        # its kube-apiserver drains for a minute after the SIGTERM it got. Clean it up here.
        for pid in _processes_naming(str(workdir)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if len(said) == 2 and said[1].startswith("/dev/shm/cellguard-etcd-"):
            shutil.rmtree(said[1], ignore_errors=True)
        if str(workdir) not in Path("/proc/self/mountinfo").read_text():
            shutil.rmtree(workdir, ignore_errors=True)


def test_packed_images_are_reproducible(tmp_path: Path) -> None:
    files = [ImageFile("bin/hello", data=b"#!/bin/true\n"), ImageFile("etc/motd", data=b"hi\n")]
    first = pack_image(tmp_path / "a.tar", "localhost/x:1", files, ["/bin/hello"])
    second = pack_image(tmp_path / "b.tar", "localhost/x:1", files[::-1], ["/bin/hello"])
    assert first.manifest_digest == second.manifest_digest
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as archive:
        names = set(archive.getnames())
        index = json.loads(archive.extractfile("index.json").read())  # type: ignore[union-attr]
    assert {"oci-layout", "index.json"} <= names
    entry = index["manifests"][0]
    assert entry["digest"] == first.manifest_digest
    assert entry["annotations"]["io.containerd.image.name"] == "localhost/x:1"
    assert f"blobs/sha256/{first.manifest_digest.removeprefix('sha256:')}" in names


def _shims_serving(workdir: Path) -> list[int]:
    shims = _processes_naming("containerd-shim")
    return [pid for pid in shims if pid in _processes_naming(str(workdir))]


def _mountinfo() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()


def _processes_naming(needle: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
