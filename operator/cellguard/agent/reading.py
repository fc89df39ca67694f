"""Read a node's thread and PID limits and usage, and the threads of each of its pods, from
/proc, /sys and the kubelet config.

Pure of Kubernetes: plain file reads under configurable roots, so the agent can read the
host's `/proc` and `/sys` mounted into its container (`/host/proc`, `/host/sys`, like
node_exporter's `--path.procfs`) and tests can point it at a fixture tree.

A figure that cannot be read is left empty and the reason is recorded in `errors` as
"<path>: <reason>". Nothing here raises for a bad host, and nothing is guessed.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeVar

import yaml

from cellguard import __version__
from cellguard.api.v1alpha1 import CgroupVersion, KubepodsPids, NodeBudgetSpec, PodThreads

_T = TypeVar("_T")

DEFAULT_PROC_ROOT = Path("/proc")
DEFAULT_SYS_ROOT = Path("/sys")

# Kernel files hold a few bytes; a cap keeps a garbage file from costing memory.
_SMALL_FILE_LIMIT = 4096
_QUOTED_CONTENT_LIMIT = 40

# Where kubelets put the kubepods cgroup, in the order tried. cgroup v2: systemd cgroup
# driver, then cgroupfs driver. cgroup v1: the pids hierarchy, cgroupfs then systemd.
V2_KUBEPODS_DIRS = ("kubepods.slice", "kubepods")
V1_KUBEPODS_DIRS = ("pids/kubepods", "pids/kubepods.slice")

# The most pods one NodeBudget holds (the API's bound on spec.pods).
MAX_PODS = 1024


class ReadError(Exception):
    """A figure could not be read; the message is "<path>: <reason>"."""


def _unreadable(path: Path, reason: str) -> ReadError:
    return ReadError(f"{path}: {reason}")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class HostPaths:
    """Where the host's files are, as seen by the agent."""

    proc_root: Path = DEFAULT_PROC_ROOT
    sys_root: Path = DEFAULT_SYS_ROOT
    kubelet_config: Path | None = None

    @property
    def threads_max(self) -> Path:
        return self.proc_root / "sys/kernel/threads-max"

    @property
    def pid_max(self) -> Path:
        return self.proc_root / "sys/kernel/pid_max"

    @property
    def loadavg(self) -> Path:
        return self.proc_root / "loadavg"

    @property
    def cgroup_root(self) -> Path:
        return self.sys_root / "fs/cgroup"


@dataclass
class _Collected:
    errors: list[str] = field(default_factory=list)

    def attempt(self, read: Callable[[], _T]) -> _T | None:
        """Run one reader; on failure keep the reason and leave the figure empty."""
        try:
            return read()
        except ReadError as exc:
            self.errors.append(str(exc))
            return None


# --------------------------------------------------------------------------- file parsing


def read_small_file(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            raw = handle.read(_SMALL_FILE_LIMIT + 1)
    except OSError as exc:
        raise _unreadable(path, _os_reason(exc)) from exc
    # Cut short, a long run of digits would still parse: as a number nobody wrote.
    if len(raw) > _SMALL_FILE_LIMIT:
        raise _unreadable(path, f"larger than {_SMALL_FILE_LIMIT} bytes")
    return raw.decode("utf-8", errors="replace")


def _os_reason(exc: OSError) -> str:
    return exc.strerror or exc.__class__.__name__


def _quoted(text: str) -> str:
    text = text.strip()
    if len(text) > _QUOTED_CONTENT_LIMIT:
        text = text[:_QUOTED_CONTENT_LIMIT] + "..."
    return repr(text)


def parse_int(path: Path, text: str, *, minimum: int) -> int:
    """One integer, alone in the file (a trailing newline is fine), at least `minimum`."""
    stripped = text.strip()
    # int() would also take "+5", " 5", "5_000" and non-ASCII digits; kernel files hold
    # plain decimal, and anything else is a sign the file is not what we think it is.
    body = stripped[1:] if stripped.startswith("-") else stripped
    if not (body.isascii() and body.isdigit()):
        raise _unreadable(path, f"not an integer: {_quoted(text)}")
    value = int(stripped)
    if value < minimum:
        raise _unreadable(path, f"out of range: {value} (expected at least {minimum})")
    return value


def read_int(path: Path, *, minimum: int) -> int:
    return parse_int(path, read_small_file(path), minimum=minimum)


# --------------------------------------------------------------------------- threads in use


def threads_from_loadavg(path: Path) -> int:
    """Total tasks on the host: `/proc/loadavg` fields are `1m 5m 15m running/total lastpid`."""
    text = read_small_file(path)
    fields = text.split()
    if len(fields) < 4 or fields[3].count("/") != 1:
        raise _unreadable(path, f"no running/total field: {_quoted(text)}")
    _, total = fields[3].split("/")
    # The agent itself is a task, so a total of 0 means the file is not loadavg.
    return parse_int(path, total, minimum=1)


def threads_from_status_files(proc_root: Path) -> int:
    """Sum of `Threads:` over `<proc>/<pid>/status`: slower, and a snapshot that is not
    atomic, but it needs no more than the per-process files."""
    try:
        pid_dirs = [entry for entry in os.listdir(proc_root) if entry.isdigit()]
    except OSError as exc:
        raise _unreadable(proc_root, _os_reason(exc)) from exc
    total = 0
    for pid in pid_dirs:
        status = proc_root / pid / "status"
        try:
            with status.open("rb") as handle:
                text = handle.read(_SMALL_FILE_LIMIT).decode("utf-8", errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            # The process exited between the listing and the read: it holds no threads.
            continue
        except OSError as exc:
            raise _unreadable(status, _os_reason(exc)) from exc
        total += _threads_field(status, text)
    if total == 0:
        raise _unreadable(proc_root, "no process status with a Threads: line")
    return total


def _threads_field(path: Path, status_text: str) -> int:
    for line in status_text.splitlines():
        if line.startswith("Threads:"):
            return parse_int(path, line.removeprefix("Threads:"), minimum=1)
    return 0


def read_threads_in_use(proc_root: Path) -> int:
    try:
        return threads_from_loadavg(proc_root / "loadavg")
    except ReadError as loadavg_error:
        try:
            return threads_from_status_files(proc_root)
        except ReadError as walk_error:
            # Both ways of counting failed: one entry with both reasons.
            raise ReadError(f"{loadavg_error}; {walk_error}") from walk_error


# --------------------------------------------------------------------------- kubepods cgroup


def read_kubepods_pids(cgroup_root: Path) -> tuple[KubepodsPids, list[str]]:
    """The pids controller of the kubepods cgroup (which hierarchy, where, max and
    current), and what could not be read of it."""
    version, candidates = _kubepods_candidates(cgroup_root)
    if version is CgroupVersion.UNKNOWN:
        reason = "neither cgroup v2 (cgroup.controllers) nor a v1 pids hierarchy"
        return KubepodsPids(cgroup_version=version), [f"{cgroup_root}: {reason}"]
    directory = next((path for path in candidates if path.is_dir()), None)
    if directory is None:
        tried = ", ".join(str(path) for path in candidates)
        reason = f"no kubepods cgroup (tried {tried})"
        return KubepodsPids(cgroup_version=version), [f"{cgroup_root}: {reason}"]

    collected = _Collected()
    limit = collected.attempt(lambda: _read_pids_max(directory / "pids.max"))
    current = collected.attempt(lambda: read_int(directory / "pids.current", minimum=0))
    unlimited = limit == "max"
    kubepods = KubepodsPids(
        cgroup_version=version,
        path=str(directory),
        max=limit if isinstance(limit, int) else None,
        unlimited=unlimited,
        current=current,
    )
    return kubepods, collected.errors


def _kubepods_candidates(cgroup_root: Path) -> tuple[CgroupVersion, list[Path]]:
    # A hybrid host (v1 controllers, v2 only under unified/) has no cgroup.controllers at
    # the root, so it is rightly taken as v1: that is where its pids controller lives.
    if (cgroup_root / "cgroup.controllers").exists():
        return CgroupVersion.V2, [cgroup_root / name for name in V2_KUBEPODS_DIRS]
    if (cgroup_root / "pids").is_dir():
        return CgroupVersion.V1, [cgroup_root / name for name in V1_KUBEPODS_DIRS]
    return CgroupVersion.UNKNOWN, []


def _read_pids_max(path: Path) -> int | Literal["max"]:
    text = read_small_file(path)
    if text.strip() == "max":
        return "max"
    # 0 is a legal pids.max (no new tasks at all) but never one a kubelet sets: treat it
    # as a misread rather than publish a limit that would refuse every pod.
    return parse_int(path, text, minimum=1)


# --------------------------------------------------------------------------- pods in kubepods

# QoS classes with a cgroup of their own inside kubepods; Guaranteed pods sit in kubepods.
_QOS_CLASSES = ("burstable", "besteffort")
_SLICE = ".slice"


@dataclass(frozen=True)
class _PodNaming:
    """How the kubelet's cgroup driver names the cgroups inside kubepods.

    cgroupfs: `kubepods/pod<uid>`, `kubepods/burstable/pod<uid>`, `kubepods/besteffort/...`.
    systemd: `kubepods.slice/kubepods-pod<uid>.slice`,
    `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`, ..., the
    uid's `-` written `_` (in a slice name, `-` separates the levels).
    """

    guaranteed: re.Pattern[str]  # a pod cgroup directly in kubepods
    qos: dict[str, re.Pattern[str]]  # a QoS cgroup's name -> a pod cgroup in it
    systemd: bool

    def uid(self, pattern: re.Pattern[str], name: str) -> str | None:
        match = pattern.fullmatch(name)
        if match is None:
            return None
        return match["uid"].replace("_", "-") if self.systemd else match["uid"]


def _pod_naming(kubepods_dir: Path) -> _PodNaming:
    # A uid is at most 64 characters, as PodThreads.uid: a UUID (a static pod: a hash).
    if not kubepods_dir.name.endswith(_SLICE):
        pod = re.compile(r"pod(?P<uid>[0-9A-Za-z-]{1,64})")
        return _PodNaming(guaranteed=pod, qos=dict.fromkeys(_QOS_CLASSES, pod), systemd=False)

    def pod_slice(parent: str) -> re.Pattern[str]:
        return re.compile(rf"{re.escape(parent)}-pod(?P<uid>[0-9A-Za-z_]{{1,64}})\.slice")

    stem = kubepods_dir.name.removesuffix(_SLICE)  # "kubepods"
    return _PodNaming(
        guaranteed=pod_slice(stem),
        qos={f"{stem}-{qos}{_SLICE}": pod_slice(f"{stem}-{qos}") for qos in _QOS_CLASSES},
        systemd=True,
    )


def read_pods(kubepods_dir: Path) -> tuple[list[PodThreads], list[str]]:
    """Threads of every pod in the kubepods cgroup, sorted by uid: its cgroup's
    `pids.current`, and `pids.peak` where the kernel has it (Linux 6.1+); and what could not
    be read. One listing per QoS cgroup; a pod's container cgroups are not read, its own
    pids.current counts them all.

    A pod whose cgroup is gone by the time it is read has ended: it is left out, no error.
    A pod whose pids.current cannot be read is left out, with the reason in the errors.
    """
    naming = _pod_naming(kubepods_dir)
    collected = _Collected()
    top = collected.attempt(functools.partial(_subdirectories, kubepods_dir)) or []
    listings = [(kubepods_dir, top, naming.guaranteed)]
    # In name order, as every list here: the same host gives the same report, errors too.
    for name in sorted(top):
        pattern = naming.qos.get(name)
        if pattern is not None:
            qos_dir = kubepods_dir / name
            names = collected.attempt(functools.partial(_subdirectories, qos_dir)) or []
            listings.append((qos_dir, names, pattern))

    found: dict[str, list[Path]] = {}
    for directory, names, pattern in listings:
        for name in names:
            uid = naming.uid(pattern, name)
            if uid is not None:
                found.setdefault(uid, []).append(directory / name)

    pods: list[PodThreads] = []
    for uid in sorted(found):
        first, *others = sorted(found[uid])
        if others:
            # A uid names one pod, of one QoS class: which cgroup is it? Not guessed.
            also = ", ".join(str(path) for path in others)
            collected.errors.append(f"{first}: pod {uid} has another cgroup: {also}")
            continue
        pod = _read_pod(uid, first, collected)
        if pod is not None:
            pods.append(pod)
    if len(pods) > MAX_PODS:
        collected.errors.append(
            f"{kubepods_dir}: {len(pods)} pods, more than the {MAX_PODS} a NodeBudget "
            f"holds: the last {len(pods) - MAX_PODS} by uid left out"
        )
        del pods[MAX_PODS:]
    return pods, collected.errors


def _subdirectories(directory: Path) -> list[str]:
    """Names of the directories in `directory`; none when it is gone (a QoS cgroup
    removed meanwhile holds no pods)."""
    try:
        with os.scandir(directory) as entries:
            return [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise _unreadable(directory, _os_reason(exc)) from exc


def _read_pod(uid: str, directory: Path, collected: _Collected) -> PodThreads | None:
    try:
        threads = read_int(directory / "pids.current", minimum=0)
    except ReadError as exc:
        if not _absent(directory):
            collected.errors.append(str(exc))
        return None
    peak_path = directory / "pids.peak"
    try:
        peak: int | None = read_int(peak_path, minimum=0)
    except ReadError as exc:
        peak = None
        # No pids.peak before Linux 6.1, nor once the pod has ended: not an error.
        if not _absent(peak_path):
            collected.errors.append(str(exc))
    return PodThreads(uid=uid, threads=threads, peak=peak)


def _absent(path: Path) -> bool:
    """True when `path` does not exist; False when it does, or cannot be told."""
    try:
        path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


# --------------------------------------------------------------------------- pod PID limit


def pod_pids_limit_from_value(value: int) -> int | None:
    """The kubelet applies podPidsLimit only when it is positive; -1 (its default) and 0
    mean no per-pod cap."""
    return value if value > 0 else None


def read_pod_pids_limit_from_kubelet_config(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _unreadable(path, _os_reason(exc)) from exc
    except UnicodeDecodeError as exc:
        raise _unreadable(path, "not UTF-8 text") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _unreadable(path, f"not YAML: {_first_line(exc)}") from exc
    if not isinstance(document, dict):
        raise _unreadable(path, "not a KubeletConfiguration mapping")
    if "podPidsLimit" not in document:
        return None
    value = document["podPidsLimit"]
    # bool is an int in Python; `podPidsLimit: true` is still a broken config.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _unreadable(path, f"podPidsLimit is not an integer: {_quoted(str(value))}")
    return pod_pids_limit_from_value(value)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__


# --------------------------------------------------------------------------- the whole budget


def read_node_budget(
    node_name: str,
    paths: HostPaths | None = None,
    *,
    pod_pids_limit: int | None = None,
    now: Callable[[], datetime] = utc_now,
) -> NodeBudgetSpec:
    """Everything the agent reports about one node, read now.

    `pod_pids_limit` is the kubelet's `--pod-max-pids` value when known; it wins over the
    kubelet config file, as the kubelet's own flags do.
    """
    paths = paths or HostPaths()
    collected = _Collected()
    threads_max = collected.attempt(lambda: read_int(paths.threads_max, minimum=1))
    pid_max = collected.attempt(lambda: read_int(paths.pid_max, minimum=1))
    threads_in_use = collected.attempt(lambda: read_threads_in_use(paths.proc_root))
    kubepods, kubepods_errors = read_kubepods_pids(paths.cgroup_root)
    collected.errors.extend(kubepods_errors)
    pods: list[PodThreads] = []
    if kubepods.path is not None:
        pods, pod_errors = read_pods(Path(kubepods.path))
        collected.errors.extend(pod_errors)

    pod_limit: int | None = None
    if pod_pids_limit is not None:
        pod_limit = pod_pids_limit_from_value(pod_pids_limit)
    elif paths.kubelet_config is not None:
        config = paths.kubelet_config
        pod_limit = collected.attempt(lambda: read_pod_pids_limit_from_kubelet_config(config))

    return NodeBudgetSpec(
        node_name=node_name,
        threads_max=threads_max,
        pid_max=pid_max,
        threads_in_use=threads_in_use,
        kubepods=kubepods,
        pod_pids_limit=pod_limit,
        pods=pods,
        observed_at=now(),
        agent_version=__version__,
        errors=collected.errors,
    )


def describe(spec: NodeBudgetSpec) -> str:
    """One log line: the figures, `?` where unknown."""

    def figure(value: int | None) -> str:
        return "?" if value is None else str(value)

    kubepods_max = "max" if spec.kubepods.unlimited else figure(spec.kubepods.max)
    parts = [
        f"node={spec.node_name}",
        f"threads={figure(spec.threads_in_use)}",
        f"threads-max={figure(spec.threads_max)}",
        f"pid_max={figure(spec.pid_max)}",
        f"kubepods={figure(spec.kubepods.current)}/{kubepods_max}"
        f"({spec.kubepods.cgroup_version.value})",
        f"pod-pids-limit={figure(spec.pod_pids_limit)}",
        f"pods={len(spec.pods)}",
        f"errors={len(spec.errors)}",
    ]
    return " ".join(parts)
