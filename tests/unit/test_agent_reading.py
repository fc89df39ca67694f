"""The agent's host reader: fixture trees for every layout it knows, every way a file can
be bad, and the real /proc of this machine against independent readings."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from cellguard import __version__
from cellguard.agent.reading import (
    MAX_PODS,
    HostPaths,
    read_node_budget,
    read_pods,
    threads_from_loadavg,
    threads_from_status_files,
)
from cellguard.api.v1alpha1 import CgroupVersion, KubepodsPids, NodeBudgetSpec, PodThreads

OBSERVED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def fixed_clock() -> datetime:
    return OBSERVED_AT


def write(root: Path, relative: str, content: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


# Where each layout keeps kubepods, relative to <sys>/fs/cgroup, and the marker that tells
# the hierarchy apart.
LAYOUTS = {
    "v2-systemd": (CgroupVersion.V2, "kubepods.slice"),
    "v2-cgroupfs": (CgroupVersion.V2, "kubepods"),
    "v1-cgroupfs": (CgroupVersion.V1, "pids/kubepods"),
    "v1-systemd": (CgroupVersion.V1, "pids/kubepods.slice"),
}


def make_cgroup(sys_root: Path, layout: str, *, pids_max: str, pids_current: str) -> Path:
    version, kubepods = LAYOUTS[layout]
    cgroup_root = sys_root / "fs/cgroup"
    if version is CgroupVersion.V2:
        write(cgroup_root, "cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n")
    else:
        (cgroup_root / "pids").mkdir(parents=True, exist_ok=True)
    write(cgroup_root, f"{kubepods}/pids.max", pids_max)
    write(cgroup_root, f"{kubepods}/pids.current", pids_current)
    return cgroup_root / kubepods


def make_proc(proc: Path) -> Path:
    write(proc, "sys/kernel/threads-max", "126544\n")
    write(proc, "sys/kernel/pid_max", "4194304\n")
    write(proc, "loadavg", "0.52 0.58 0.59 3/1234 56789\n")
    return proc


@pytest.fixture
def host(tmp_path: Path) -> HostPaths:
    """A healthy host: kernel limits, loadavg and a v2 systemd kubepods cgroup."""
    proc, sys = make_proc(tmp_path / "proc"), tmp_path / "sys"
    make_cgroup(sys, "v2-systemd", pids_max="8192\n", pids_current="345\n")
    return HostPaths(proc_root=proc, sys_root=sys)


# --------------------------------------------------------------------------- healthy layouts


def test_a_healthy_host_is_read_completely(host: HostPaths) -> None:
    spec = read_node_budget("node-a", host, now=fixed_clock)

    assert spec.node_name == "node-a"
    assert (spec.threads_max, spec.pid_max, spec.threads_in_use) == (126544, 4194304, 1234)
    assert spec.kubepods == KubepodsPids(
        cgroup_version=CgroupVersion.V2,
        path=str(host.sys_root / "fs/cgroup/kubepods.slice"),
        max=8192,
        unlimited=False,
        current=345,
    )
    assert spec.pod_pids_limit is None  # no source configured
    assert spec.observed_at == OBSERVED_AT
    assert spec.agent_version == __version__
    assert spec.errors == []


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_cgroup_layout_is_found(tmp_path: Path, layout: str) -> None:
    directory = make_cgroup(tmp_path, layout, pids_max="1000\n", pids_current="17\n")
    proc = make_proc(tmp_path / "proc")

    spec = read_node_budget("node-a", HostPaths(sys_root=tmp_path, proc_root=proc))

    version, _ = LAYOUTS[layout]
    assert spec.kubepods == KubepodsPids(
        cgroup_version=version, path=str(directory), max=1000, unlimited=False, current=17
    )
    assert spec.errors == []


def test_v2_prefers_the_systemd_slice_when_both_exist(tmp_path: Path) -> None:
    make_cgroup(tmp_path, "v2-cgroupfs", pids_max="1\n", pids_current="1\n")
    systemd = make_cgroup(tmp_path, "v2-systemd", pids_max="2\n", pids_current="2\n")

    kubepods = read_node_budget("n", HostPaths(sys_root=tmp_path)).kubepods

    assert (kubepods.path, kubepods.max) == (str(systemd), 2)


def test_a_hybrid_host_reads_the_v1_pids_hierarchy(tmp_path: Path) -> None:
    # systemd's hybrid mode: v1 controllers, plus a v2 tree under unified/ with no pids.
    write(tmp_path, "fs/cgroup/unified/cgroup.controllers", "")
    directory = make_cgroup(tmp_path, "v1-cgroupfs", pids_max="500\n", pids_current="5\n")

    kubepods = read_node_budget("n", HostPaths(sys_root=tmp_path)).kubepods

    assert (kubepods.cgroup_version, kubepods.path, kubepods.max) == (
        CgroupVersion.V1,
        str(directory),
        500,
    )


@pytest.mark.parametrize("layout", ["v2-systemd", "v1-cgroupfs"])
def test_pids_max_of_max_means_unlimited_not_unknown(tmp_path: Path, layout: str) -> None:
    make_cgroup(tmp_path, layout, pids_max="max\n", pids_current="99\n")
    proc = make_proc(tmp_path / "proc")

    spec = read_node_budget("n", HostPaths(sys_root=tmp_path, proc_root=proc))

    assert (spec.kubepods.max, spec.kubepods.unlimited, spec.kubepods.current) == (None, True, 99)
    assert spec.errors == []


# --------------------------------------------------------------------------- missing and bad


def test_a_missing_file_leaves_that_figure_empty_and_says_why(host: HostPaths) -> None:
    host.threads_max.unlink()

    spec = read_node_budget("node-a", host)

    assert spec.threads_max is None
    assert spec.errors == [f"{host.threads_max}: No such file or directory"]
    assert (spec.pid_max, spec.threads_in_use, spec.kubepods.max) == (4194304, 1234, 8192)


def test_an_empty_host_crashes_nothing_and_invents_nothing(tmp_path: Path) -> None:
    paths = HostPaths(
        proc_root=tmp_path / "proc",
        sys_root=tmp_path / "sys",
        kubelet_config=tmp_path / "kubelet.yaml",
    )

    spec = read_node_budget("node-a", paths, now=fixed_clock)

    assert (spec.threads_max, spec.pid_max, spec.threads_in_use, spec.pod_pids_limit) == (
        None,
        None,
        None,
        None,
    )
    assert spec.kubepods == KubepodsPids(cgroup_version=CgroupVersion.UNKNOWN)
    assert spec.errors == [
        f"{paths.threads_max}: No such file or directory",
        f"{paths.pid_max}: No such file or directory",
        f"{paths.loadavg}: No such file or directory; {paths.proc_root}: No such file or directory",
        f"{paths.cgroup_root}: neither cgroup v2 (cgroup.controllers) nor a v1 pids hierarchy",
        f"{paths.kubelet_config}: No such file or directory",
    ]


def test_a_cgroup_hierarchy_without_kubepods_names_what_was_tried(tmp_path: Path) -> None:
    write(tmp_path, "fs/cgroup/cgroup.controllers", "pids\n")
    cgroup_root = tmp_path / "fs/cgroup"

    spec = read_node_budget("n", HostPaths(sys_root=tmp_path))

    assert spec.kubepods == KubepodsPids(cgroup_version=CgroupVersion.V2)
    assert (
        f"{cgroup_root}: no kubepods cgroup (tried {cgroup_root}/kubepods.slice, "
        f"{cgroup_root}/kubepods)"
    ) in spec.errors


def test_kubepods_without_the_pids_controller_files(tmp_path: Path) -> None:
    # cgroup v2 with the pids controller not enabled for the slice: the directory exists,
    # its pids.* files do not.
    write(tmp_path, "fs/cgroup/cgroup.controllers", "cpu memory\n")
    directory = tmp_path / "fs/cgroup/kubepods.slice"
    directory.mkdir()

    spec = read_node_budget("n", HostPaths(sys_root=tmp_path))

    assert spec.kubepods == KubepodsPids(cgroup_version=CgroupVersion.V2, path=str(directory))
    assert spec.errors[-2:] == [
        f"{directory}/pids.max: No such file or directory",
        f"{directory}/pids.current: No such file or directory",
    ]


def test_a_directory_where_a_file_belongs_is_unreadable(host: HostPaths) -> None:
    host.pid_max.unlink()
    host.pid_max.mkdir()

    spec = read_node_budget("node-a", host)

    assert spec.pid_max is None
    assert spec.errors == [f"{host.pid_max}: Is a directory"]


def test_a_permission_denied_file_is_unreadable(
    host: HostPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root, which chmod 000 does not stop: refuse this one path instead.
    forbidden = host.sys_root / "fs/cgroup/kubepods.slice/pids.current"
    real_open = Path.open

    def open_refusing_one(self: Path, *args: object, **kwargs: object) -> object:
        if self == forbidden:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", open_refusing_one)

    spec = read_node_budget("node-a", host)

    assert (spec.kubepods.current, spec.kubepods.max) == (None, 8192)
    assert spec.errors == [f"{forbidden}: Permission denied"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("", "not an integer: ''"),
        ("abc\n", "not an integer: 'abc'"),
        ("12 34\n", "not an integer: '12 34'"),
        ("1e5\n", "not an integer: '1e5'"),
        ("+5\n", "not an integer: '+5'"),
        ("١٢٣\n", "not an integer: '١٢٣'"),  # Arabic-Indic digits: int() would take them
        ("\x00\xff\xfe", "not an integer: "),
        ("0\n", "out of range: 0 (expected at least 1)"),
        ("-5\n", "out of range: -5 (expected at least 1)"),
    ],
)
def test_garbage_is_an_error_never_a_number(host: HostPaths, content: str, reason: str) -> None:
    host.threads_max.write_text(content, encoding="latin-1" if "\xff" in content else "utf-8")

    spec = read_node_budget("node-a", host)

    assert spec.threads_max is None
    assert len(spec.errors) == 1
    assert spec.errors[0].startswith(f"{host.threads_max}: {reason}")


def test_garbage_is_quoted_short(host: HostPaths) -> None:
    host.pid_max.write_text("x" * 1000)

    (error,) = read_node_budget("node-a", host).errors

    assert error == f"{host.pid_max}: not an integer: '{'x' * 40}...'"


def test_an_oversized_file_is_refused_not_cut_to_a_number(host: HostPaths) -> None:
    host.threads_max.write_text("9" * 10_000)

    spec = read_node_budget("node-a", host)

    assert spec.threads_max is None
    assert spec.errors == [f"{host.threads_max}: larger than 4096 bytes"]


def test_garbage_pids_files(tmp_path: Path) -> None:
    directory = make_cgroup(tmp_path, "v2-systemd", pids_max="unlimited\n", pids_current="12k\n")

    spec = read_node_budget("n", HostPaths(sys_root=tmp_path))

    assert spec.kubepods == KubepodsPids(cgroup_version=CgroupVersion.V2, path=str(directory))
    assert spec.errors[-2:] == [
        f"{directory}/pids.max: not an integer: 'unlimited'",
        f"{directory}/pids.current: not an integer: '12k'",
    ]


# --------------------------------------------------------------------------- pods in kubepods

UID_A = "0b6c5bd8-2f4e-4c8a-9d1e-5a7f3c2b1a00"
UID_B = "3f2a9e4d-7b1c-4e5f-8a6d-1c9b8e7f6d11"
UID_C = "8e1d7c6b-5a4f-4e3d-9c2b-0a1f2e3d4c22"
STATIC_UID = "6f1e9a2b3c4d5e6f7a8b9c0d1e2f3a4b"  # a static pod: the kubelet's hash, no dashes


def pod_cgroup(layout: str, qos: str, uid: str) -> str:
    """Where a kubelet puts a pod's cgroup, relative to kubepods, spelled out per driver."""
    if layout.endswith("cgroupfs"):
        return {
            "guaranteed": f"pod{uid}",
            "burstable": f"burstable/pod{uid}",
            "besteffort": f"besteffort/pod{uid}",
        }[qos]
    escaped = uid.replace("-", "_")
    return {
        "guaranteed": f"kubepods-pod{escaped}.slice",
        "burstable": f"kubepods-burstable.slice/kubepods-burstable-pod{escaped}.slice",
        "besteffort": f"kubepods-besteffort.slice/kubepods-besteffort-pod{escaped}.slice",
    }[qos]


def make_pod(
    kubepods: Path, layout: str, qos: str, uid: str, *, current: str, peak: str | None = None
) -> Path:
    directory = kubepods / pod_cgroup(layout, qos, uid)
    write(directory, "pids.current", current)
    if peak is not None:
        write(directory, "pids.peak", peak)
    return directory


def node_with_pods(tmp_path: Path, layout: str = "v2-systemd") -> tuple[HostPaths, Path]:
    kubepods = make_cgroup(tmp_path / "sys", layout, pids_max="max\n", pids_current="500\n")
    paths = HostPaths(proc_root=make_proc(tmp_path / "proc"), sys_root=tmp_path / "sys")
    return paths, kubepods


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_pod_of_every_qos_class_is_reported_by_uid(tmp_path: Path, layout: str) -> None:
    paths, kubepods = node_with_pods(tmp_path, layout)
    make_pod(kubepods, layout, "burstable", UID_C, current="31\n", peak="40\n")
    make_pod(kubepods, layout, "guaranteed", UID_A, current="212\n", peak="230\n")
    make_pod(kubepods, layout, "besteffort", UID_B, current="0\n", peak="3\n")
    make_pod(kubepods, layout, "guaranteed", STATIC_UID, current="9\n", peak="9\n")

    spec = read_node_budget("n", paths)

    assert spec.pods == [
        PodThreads(uid=UID_A, threads=212, peak=230),
        PodThreads(uid=UID_B, threads=0, peak=3),
        PodThreads(uid=STATIC_UID, threads=9, peak=9),
        PodThreads(uid=UID_C, threads=31, peak=40),
    ]
    assert spec.errors == []


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_only_the_pod_level_file_is_read_and_other_entries_are_ignored(
    tmp_path: Path, layout: str
) -> None:
    paths, kubepods = node_with_pods(tmp_path, layout)
    pod = make_pod(kubepods, layout, "burstable", UID_A, current="57\n")
    # Container cgroups inside the pod: already counted by the pod's own pids.current.
    for container in ("cri-containerd-1f2e.scope", "4d5c6b7a8f9e", "pod" + UID_B):
        write(pod, f"{container}/pids.current", "50\n")
    # Not pods: the kubepods files, other directories, names that only look like a pod.
    write(kubepods, "cgroup.procs", "")
    for stray in (
        "system.slice",
        "pod",  # no uid
        f"pod{UID_B}.scope",
        f"pod{'a' * 65}",  # longer than any uid
        "kubepods-guaranteed.slice",
        "kubepods-podbad-uid.slice",  # a '-' cannot be part of a systemd slice's uid
        f"kubepods-besteffort-pod{UID_B.replace('-', '_')}.slice",  # in the wrong parent
        f"burstable-pod{UID_B}",
    ):
        write(kubepods, f"{stray}/pids.current", "1000\n")
    write(kubepods, f"pod{UID_C}", "a file, not a cgroup")

    spec = read_node_budget("n", paths)

    assert spec.pods == [PodThreads(uid=UID_A, threads=57, peak=None)]
    assert spec.errors == []


def test_systemd_slice_names_give_back_the_uid_with_dashes(tmp_path: Path) -> None:
    paths, kubepods = node_with_pods(tmp_path, "v1-systemd")
    write(
        kubepods,
        "kubepods-besteffort.slice/"
        "kubepods-besteffort-pod0b6c5bd8_2f4e_4c8a_9d1e_5a7f3c2b1a00.slice/pids.current",
        "4\n",
    )

    (pod,) = read_node_budget("n", paths).pods

    assert pod.uid == "0b6c5bd8-2f4e-4c8a-9d1e-5a7f3c2b1a00"


def test_peak_is_reported_where_the_kernel_has_it(tmp_path: Path) -> None:
    # Before Linux 6.1 a pod's cgroup has no pids.peak: no figure, and no error either.
    paths, kubepods = node_with_pods(tmp_path)
    make_pod(kubepods, "v2-systemd", "guaranteed", UID_A, current="12\n", peak="80\n")
    make_pod(kubepods, "v2-systemd", "guaranteed", UID_B, current="12\n")

    spec = read_node_budget("n", paths)

    assert [(pod.uid, pod.peak) for pod in spec.pods] == [(UID_A, 80), (UID_B, None)]
    assert spec.errors == []


def test_pods_that_come_and_go_between_two_reports(tmp_path: Path) -> None:
    paths, kubepods = node_with_pods(tmp_path, "v2-cgroupfs")
    leaving = make_pod(kubepods, "v2-cgroupfs", "burstable", UID_A, current="10\n")
    make_pod(kubepods, "v2-cgroupfs", "besteffort", UID_B, current="20\n")
    first = read_node_budget("n", paths)

    shutil.rmtree(leaving)
    make_pod(kubepods, "v2-cgroupfs", "guaranteed", UID_C, current="30\n")
    (kubepods / pod_cgroup("v2-cgroupfs", "besteffort", UID_B) / "pids.current").write_text("21")
    second = read_node_budget("n", paths)

    assert [(pod.uid, pod.threads) for pod in first.pods] == [(UID_A, 10), (UID_B, 20)]
    assert [(pod.uid, pod.threads) for pod in second.pods] == [(UID_B, 21), (UID_C, 30)]
    assert first.errors == second.errors == []


def remove_on_open(
    monkeypatch: pytest.MonkeyPatch, opened: Path, removed: Path, *, error: OSError | None = None
) -> None:
    """The cgroup `removed` goes away the moment `opened` is opened, as when a pod ends
    between the listing and the read; with `error`, the open fails with that instead."""
    real_open = Path.open

    def open_racing(self: Path, *args: object, **kwargs: object) -> object:
        if self == opened:
            shutil.rmtree(removed)
            if error is not None:
                raise error
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", open_racing)


@pytest.mark.parametrize(
    "error",
    [None, OSError(errno.ENODEV, "No such device")],  # ENODEV: the cgroup died under the read
)
def test_a_pod_that_ends_between_listing_and_reading_is_left_out_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError | None
) -> None:
    paths, kubepods = node_with_pods(tmp_path)
    ending = make_pod(kubepods, "v2-systemd", "burstable", UID_A, current="10\n", peak="11\n")
    make_pod(kubepods, "v2-systemd", "burstable", UID_B, current="20\n", peak="21\n")
    remove_on_open(monkeypatch, ending / "pids.current", ending, error=error)

    spec = read_node_budget("n", paths)

    assert spec.pods == [PodThreads(uid=UID_B, threads=20, peak=21)]
    assert spec.errors == []


def test_a_pod_that_ends_between_its_two_files_keeps_its_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, kubepods = node_with_pods(tmp_path)
    ending = make_pod(kubepods, "v2-systemd", "guaranteed", UID_A, current="10\n", peak="11\n")
    remove_on_open(monkeypatch, ending / "pids.peak", ending)

    spec = read_node_budget("n", paths)

    assert spec.pods == [PodThreads(uid=UID_A, threads=10, peak=None)]
    assert spec.errors == []


def test_a_whole_qos_class_that_goes_away_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, kubepods = node_with_pods(tmp_path, "v1-cgroupfs")
    besteffort = make_pod(kubepods, "v1-cgroupfs", "besteffort", UID_A, current="1\n").parent
    make_pod(kubepods, "v1-cgroupfs", "burstable", UID_B, current="2\n")
    real_scandir = os.scandir

    def scandir_racing(path: Path | int) -> object:
        if not isinstance(path, int) and Path(path) == besteffort:  # rmtree passes fds
            shutil.rmtree(besteffort)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_racing)

    spec = read_node_budget("n", paths)

    assert [pod.uid for pod in spec.pods] == [UID_B]
    assert spec.errors == []


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("garbage", "not an integer: 'lots'"),
        ("negative", "out of range: -3 (expected at least 0)"),
        ("directory", "Is a directory"),
        ("missing", "No such file or directory"),  # the pids controller is off for the pod
    ],
)
def test_a_pod_whose_threads_cannot_be_read_is_left_out_and_said_why(
    tmp_path: Path, bad: str, reason: str
) -> None:
    paths, kubepods = node_with_pods(tmp_path)
    make_pod(kubepods, "v2-systemd", "burstable", UID_A, current="10\n")
    broken = make_pod(kubepods, "v2-systemd", "burstable", UID_B, current="20\n") / "pids.current"
    make_pod(kubepods, "v2-systemd", "besteffort", UID_C, current="30\n")
    broken.unlink()
    if bad == "garbage":
        broken.write_text("lots\n")
    elif bad == "negative":
        broken.write_text("-3\n")
    elif bad == "directory":
        broken.mkdir()

    spec = read_node_budget("n", paths)

    assert [pod.uid for pod in spec.pods] == [UID_A, UID_C]
    assert spec.errors == [f"{broken}: {reason}"]
    assert (spec.kubepods.current, spec.kubepods.unlimited) == (500, True)


def test_an_unreadable_peak_is_an_error_but_the_threads_stay(tmp_path: Path) -> None:
    paths, kubepods = node_with_pods(tmp_path)
    pod = make_pod(kubepods, "v2-systemd", "guaranteed", UID_A, current="10\n", peak="many\n")

    spec = read_node_budget("n", paths)

    assert spec.pods == [PodThreads(uid=UID_A, threads=10, peak=None)]
    assert spec.errors == [f"{pod}/pids.peak: not an integer: 'many'"]


def test_a_qos_class_that_cannot_be_listed_is_an_error_the_others_still_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths, kubepods = node_with_pods(tmp_path)
    make_pod(kubepods, "v2-systemd", "guaranteed", UID_A, current="1\n")
    burstable = make_pod(kubepods, "v2-systemd", "burstable", UID_B, current="2\n").parent
    make_pod(kubepods, "v2-systemd", "besteffort", UID_C, current="3\n")
    real_scandir = os.scandir

    def scandir_refusing(path: Path | int) -> object:
        if not isinstance(path, int) and Path(path) == burstable:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_refusing)

    spec = read_node_budget("n", paths)

    assert [pod.uid for pod in spec.pods] == [UID_A, UID_C]
    assert spec.errors == [f"{burstable}: Permission denied"]


def test_one_uid_in_two_cgroups_is_not_guessed_at(tmp_path: Path) -> None:
    paths, kubepods = node_with_pods(tmp_path, "v1-cgroupfs")
    make_pod(kubepods, "v1-cgroupfs", "guaranteed", UID_A, current="5\n")
    burstable = make_pod(kubepods, "v1-cgroupfs", "burstable", UID_B, current="6\n")
    besteffort = make_pod(kubepods, "v1-cgroupfs", "besteffort", UID_B, current="7\n")

    spec = read_node_budget("n", paths)

    assert [pod.uid for pod in spec.pods] == [UID_A]
    assert spec.errors == [f"{besteffort}: pod {UID_B} has another cgroup: {burstable}"]


def test_no_kubepods_cgroup_means_no_pods_and_no_second_error(tmp_path: Path) -> None:
    write(tmp_path, "fs/cgroup/cgroup.controllers", "pids\n")

    spec = read_node_budget("n", HostPaths(sys_root=tmp_path))

    assert spec.pods == []
    assert sum("kubepods" in error for error in spec.errors) == 1


def test_more_pods_than_a_budget_holds_keeps_the_first_by_uid_and_says_so(
    tmp_path: Path,
) -> None:
    kubepods = tmp_path / "kubepods"
    uids = [f"00000000-0000-4000-8000-{index:012d}" for index in range(MAX_PODS + 2)]
    for uid in reversed(uids):
        write(kubepods, f"pod{uid}/pids.current", "1\n")

    pods, errors = read_pods(kubepods)

    assert [pod.uid for pod in pods] == uids[:MAX_PODS]
    assert errors == [
        f"{kubepods}: {MAX_PODS + 2} pods, more than the {MAX_PODS} a NodeBudget holds: "
        "the last 2 by uid left out"
    ]
    # The bound is the API's own.
    spec = NodeBudgetSpec(node_name="n", observed_at=OBSERVED_AT, pods=pods)
    with pytest.raises(ValidationError, match="at most 1024 items"):
        spec.pods = [*pods, PodThreads(uid="one-more", threads=1)]


# --------------------------------------------------------------------------- threads in use


def test_threads_come_from_the_loadavg_total(tmp_path: Path) -> None:
    loadavg = write(tmp_path, "loadavg", "0.00 0.01 0.05 1/123 4567\n")
    assert threads_from_loadavg(loadavg) == 123


@pytest.mark.parametrize("content", ["", "0.00 0.01 0.05\n", "0.1 0.2 0.3 12 99\n", "a b c d/e f"])
def test_unreadable_loadavg_falls_back_to_summing_process_threads(
    tmp_path: Path, content: str
) -> None:
    proc = make_proc(tmp_path / "proc")
    write(proc, "loadavg", content)
    write(proc, "1/status", "Name:\tinit\nState:\tS (sleeping)\nThreads:\t1\n")
    write(proc, "42/status", "Name:\tjava\nThreads:\t310\nVmRSS:\t1 kB\n")
    write(proc, "77/status", "Name:\tkthreadd\nThreads:\t1\n")
    (proc / "99").mkdir()  # exited between listing and reading: no status file
    write(proc, "self/status", "Threads:\t1000\n")  # not a pid: already counted by its pid

    spec = read_node_budget("n", HostPaths(proc_root=proc))

    assert spec.threads_in_use == 312
    assert not any(error.startswith(str(proc)) for error in spec.errors)


def test_when_both_thread_counts_fail_both_reasons_are_kept(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    write(proc, "loadavg", "garbage")
    write(proc, "5/status", "Name:\tx\nThreads:\tmany\n")

    spec = read_node_budget("n", HostPaths(proc_root=proc))

    assert spec.threads_in_use is None
    assert (
        f"{proc}/loadavg: no running/total field: 'garbage'; "
        f"{proc}/5/status: not an integer: 'many'"
    ) in spec.errors


def test_a_status_walk_without_any_threads_line_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "3/status", "Name:\tx\n")
    with pytest.raises(Exception, match="no process status with a Threads: line"):
        threads_from_status_files(tmp_path)


def test_a_status_file_that_cannot_be_read_for_another_reason_is_an_error(
    tmp_path: Path,
) -> None:
    write(tmp_path, "3/status", "Threads:\t4\n")
    (tmp_path / "4/status").mkdir(parents=True)
    with pytest.raises(Exception, match=r"4/status: Is a directory"):
        threads_from_status_files(tmp_path)


# --------------------------------------------------------------------------- pod PID limit


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n"
         "podPidsLimit: 1024\n", 1024),
        ("kind: KubeletConfiguration\npodPidsLimit: -1\n", None),
        ("kind: KubeletConfiguration\npodPidsLimit: 0\n", None),
        ("kind: KubeletConfiguration\nmaxPods: 110\n", None),
    ],
)  # fmt: skip
def test_pod_pids_limit_from_the_kubelet_config(
    host: HostPaths, tmp_path: Path, config: str, expected: int | None
) -> None:
    paths = HostPaths(host.proc_root, host.sys_root, write(tmp_path, "kubelet.yaml", config))

    spec = read_node_budget("n", paths)

    assert spec.pod_pids_limit == expected
    assert spec.errors == []


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ("podPidsLimit: [1\n", "not YAML: "),
        ("- podPidsLimit: 5\n", "not a KubeletConfiguration mapping"),
        ("", "not a KubeletConfiguration mapping"),
        ("podPidsLimit: lots\n", "podPidsLimit is not an integer: 'lots'"),
        ("podPidsLimit: true\n", "podPidsLimit is not an integer: 'True'"),
        ("podPidsLimit: 1.5\n", "podPidsLimit is not an integer: '1.5'"),
    ],
)
def test_a_broken_kubelet_config_is_an_error(
    host: HostPaths, tmp_path: Path, config: str, reason: str
) -> None:
    config_path = write(tmp_path, "kubelet.yaml", config)

    spec = read_node_budget("n", HostPaths(host.proc_root, host.sys_root, config_path))

    assert spec.pod_pids_limit is None
    assert len(spec.errors) == 1
    assert spec.errors[0].startswith(f"{config_path}: {reason}")


def test_a_kubelet_config_that_is_not_text_is_an_error(host: HostPaths, tmp_path: Path) -> None:
    config_path = tmp_path / "kubelet.yaml"
    config_path.write_bytes(b"\xff\xfe\x00garbage")

    spec = read_node_budget("n", HostPaths(host.proc_root, host.sys_root, config_path))

    assert spec.errors == [f"{config_path}: not UTF-8 text"]


@pytest.mark.parametrize(("flag", "expected"), [(512, 512), (-1, None)])
def test_the_flag_wins_over_the_kubelet_config(
    host: HostPaths, tmp_path: Path, flag: int, expected: int | None
) -> None:
    config_path = write(tmp_path, "kubelet.yaml", "podPidsLimit: 1024\n")
    paths = HostPaths(host.proc_root, host.sys_root, config_path)

    spec = read_node_budget("n", paths, pod_pids_limit=flag)

    assert spec.pod_pids_limit == expected
    assert spec.errors == []


def test_the_default_clock_is_utc_now(host: HostPaths) -> None:
    before = datetime.now(UTC)
    observed_at = read_node_budget("n", host).observed_at
    after = datetime.now(UTC)

    assert observed_at.tzinfo is not None
    assert before <= observed_at <= after


# --------------------------------------------------------------------------- this machine

REAL = HostPaths()


def count_tasks_by_walking_proc() -> int:
    """Threads on the machine counted another way: one entry per task in /proc/*/task."""
    total = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            # A process may exit while we walk.
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                total += len(os.listdir(f"/proc/{pid}/task"))
    return total


@pytest.fixture
def many_threads() -> Iterator[int]:
    """200 extra threads that exist until the test ends."""
    release = threading.Event()
    threads = [threading.Thread(target=release.wait, daemon=True) for _ in range(200)]
    for thread in threads:
        thread.start()
    try:
        yield len(threads)
    finally:
        release.set()
        for thread in threads:
            thread.join()


def test_real_kernel_limits_match_sysctl_and_the_pids_in_use() -> None:
    spec = read_node_budget("this-machine", REAL)

    sysctl = subprocess.run(
        ["sysctl", "-n", "kernel.threads-max", "kernel.pid_max"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert [spec.threads_max, spec.pid_max] == [int(sysctl[0]), int(sysctl[1])]
    # pid_max is a bound on every pid: a wrong number would sit below some of them.
    assert spec.pid_max is not None
    assert os.getpid() < spec.pid_max
    assert all(int(pid) < spec.pid_max for pid in os.listdir("/proc") if pid.isdigit())
    assert spec.pid_max <= 4_194_304  # PID_MAX_LIMIT on 64-bit kernels
    assert spec.threads_max is not None
    assert spec.threads_max >= 20  # the kernel's MIN_THREADS


def test_real_threads_in_use_agree_with_a_walk_of_proc(many_threads: int) -> None:
    first = read_node_budget("this-machine", REAL).threads_in_use
    walked = count_tasks_by_walking_proc()
    second = read_node_budget("this-machine", REAL).threads_in_use

    assert first is not None
    assert second is not None
    assert first >= len(os.listdir("/proc/self/task")) >= many_threads
    # Other processes (a build, say) start and stop threads meanwhile: allow for churn.
    slack = max(50, walked // 10)
    assert min(first, second) - slack <= walked <= max(first, second) + slack


def test_real_loadavg_and_status_walk_agree() -> None:
    from_loadavg = threads_from_loadavg(REAL.loadavg)
    from_status = threads_from_status_files(REAL.proc_root)

    assert abs(from_loadavg - from_status) <= max(50, from_loadavg // 10)


def test_real_threads_in_use_see_new_threads() -> None:
    before = read_node_budget("this-machine", REAL).threads_in_use
    release = threading.Event()
    threads = [threading.Thread(target=release.wait, daemon=True) for _ in range(300)]
    for thread in threads:
        thread.start()
    try:
        during = read_node_budget("this-machine", REAL).threads_in_use
    finally:
        release.set()
        for thread in threads:
            thread.join()

    assert before is not None
    assert during is not None
    assert 300 - 100 <= during - before <= 300 + 100


def cgroup_version_from_mounts() -> CgroupVersion:
    """Which hierarchy /sys/fs/cgroup is, from the mount table instead of the files."""
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    by_point = {fields[1]: fields for fields in mounts if len(fields) >= 4}
    root = by_point.get("/sys/fs/cgroup")
    if root is not None and root[2] == "cgroup2":
        return CgroupVersion.V2
    pids = by_point.get("/sys/fs/cgroup/pids")
    if pids is not None and pids[2] == "cgroup" and "pids" in pids[3].split(","):
        return CgroupVersion.V1
    return CgroupVersion.UNKNOWN


def test_real_cgroup_version_matches_the_mount_table() -> None:
    spec = read_node_budget("this-machine", REAL)

    assert spec.kubepods.cgroup_version == cgroup_version_from_mounts()
    # Not a node: no kubepods here, and the reader says so rather than inventing one.
    if spec.kubepods.path is None:
        assert any("no kubepods cgroup" in error for error in spec.errors)
        assert spec.pods == []
    else:
        assert spec.kubepods.current is not None
