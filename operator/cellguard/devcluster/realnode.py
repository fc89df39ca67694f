"""One real Kubernetes node beside the simulated ones: containerd and a kubelet on this machine.

`RealNode` starts a containerd of its own (root, state, sockets, runc root, the pods'
network namespaces and the CNI bridge configuration all under its working directory),
imports locally packed images (the sandbox "pause" image and a test image, built from the
toolchain's static `cellguard-pause` and `cellguard-threads`; no registry involved), starts
a kubelet that joins a `LocalCluster` as `system:node:<name>` and waits until the node is
Ready. Its pods are real processes in real cgroups, so the kubelet's PID limits
(`podPidsLimit`, the system PID reservation) are enforced by the kernel, as on a production
node.

    cluster = LocalCluster(bin_dir, real_nodes=1)     # or RealNode(cluster).start()
    cluster.start()                                   # ... node real-0 Ready
    node = cluster.real_nodes[0]                      # pods: image TEST_IMAGE, pull Never
    cluster.stop()                                    # the node first, then the control plane

`stop()` takes everything down again, also after a failed start: the node's pods (through
the kubelet while it runs, then whatever containerd still has), the kubelet, containerd and
its shims, every mount under the working directory (root filesystems, volumes, network
namespaces), the bridge, the kubelet's `kubepods` cgroups, the Node object and the host
sysctls the kubelet and the bridge plugin change (restored to the values read at start).
`leftovers()` lists what is still there. A process killed without stop() leaves containers
behind (their shims outlive containerd): a marker in /run says what, and the next start()
on the machine cleans it up first (`recover_abandoned_node`).

With `RealNodeConfig(kube_proxy=True)` kube-proxy (iptables mode, built by the toolchain)
runs beside the kubelet, so pods reach Services by ClusterIP - the API server too: with a
real node, `LocalCluster` has the API server listen on the node IP as well, advertise it as
the `kubernetes` Service's endpoint, and call webhooks at their Service's endpoints (pod IPs
on the node's bridge). That is what an in-cluster client (`KUBERNETES_SERVICE_HOST`, the
ClusterIP) and a chart's Service-backed webhook need, as on a real cluster. There is no
cluster DNS: pods fall back to the host's resolver (the kubelet says MissingClusterDNS).
stop() also removes every KUBE-* iptables chain (the kubelet's and kube-proxy's).

Needs root, containerd + runc + the CNI plugins (Debian: containerd, runc,
containernetworking-plugins; `scripts/ensure-debian-packages.sh`), a cgroup pids controller
and the kubelet built by `toolchain/build.sh`; `supports_real_node()` names what is missing.
One real node per machine: the kubelet's `kubepods` cgroups are machine-wide.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cellguard.devcluster.cluster import ClusterError, Daemon, free_port, log_tails, spawn_daemon
from cellguard.devcluster.ociimage import ImageFile, PackedImage, import_image, pack_image

if TYPE_CHECKING:
    from cellguard.devcluster.cluster import LocalCluster

PAUSE_IMAGE = "localhost/cellguard-pause:local"
# The test image: /pause (its entrypoint: runs until SIGTERM), /threads N (holds N OS
# threads; past the pod's PID limit it dies with "failed to create new OS thread") and
# /peers SERVICE BASE PER_PEER (holds BASE + PER_PEER threads for every other endpoint of
# its Service, read from the API with its ServiceAccount every second).
TEST_IMAGE = "localhost/cellguard-test:local"
REAL_NODE_BINARIES = ("kubelet", "cellguard-pause", "cellguard-threads", "cellguard-peers")
# With RealNodeConfig(kube_proxy=True): Services' ClusterIPs answer on the node, as pods'
# in-cluster clients expect (KUBERNETES_SERVICE_HOST is the `kubernetes` Service's ClusterIP).
KUBE_PROXY_BINARY = "kube-proxy"
REAL_NODE_LABEL = "cellguard.io/real-node"
CNI_BIN_DIR = Path("/usr/lib/cni")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# The kubelet sets the first three at start (unless protectKernelDefaults); the CNI bridge
# plugin, as a gateway, turns on forwarding; kube-proxy is told to leave route_localnet (and
# conntrack's settings) alone, but it is restored all the same. All are restored by stop().
SYSCTLS = (
    "vm.overcommit_memory",
    "kernel.panic",
    "kernel.panic_on_oops",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
)
# The kubelet (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT) and kube-proxy
# (KUBE-SERVICES, KUBE-SVC-*, KUBE-SEP-*, ...) name every iptables chain they add KUBE-*;
# stop() removes them all (v4 and v6), with the rules that jump to them.
IPTABLES_CHAIN_PREFIX = "KUBE-"
# Machine-wide: which process runs the real node, where, and the sysctls to restore; lets
# the next start clean up after a process that died without stop(). /run: gone at reboot.
MARKER = Path("/run/cellguard-realnode.json")
_MNT_DETACH = 2
# containerd refuses socket paths longer than this (sun_path is 108 bytes with its NUL).
_MAX_SOCKET_PATH = 104


class RealNodeError(ClusterError):
    pass


@dataclass(frozen=True)
class RealNodeConfig:
    """What the kubelet is told; the defaults suit one small development machine."""

    name: str = "real-0"
    pod_pids_limit: int = 1024
    # PIDs kept back for the system (systemReserved pid): node allocatable PIDs are the
    # machine's pid_max less this, and the `kubepods` cgroup's pids.max is set to it.
    system_reserved_pids: int | None = None
    max_pods: int = 20
    pod_subnet: str = "10.88.0.0/24"
    bridge: str = "cellguard0"
    labels: dict[str, str] = field(default_factory=dict)
    # Run kube-proxy (iptables mode) beside the kubelet: pods reach Services, and the API
    # server, by ClusterIP. Needs `iptables`; its rules are removed again by stop().
    kube_proxy: bool = False


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def read_sysctls() -> dict[str, str]:
    """The current values of the sysctls a real node changes."""
    values = {}
    for name in SYSCTLS:
        with contextlib.suppress(OSError):
            values[name] = _sysctl_path(name).read_text().strip()
    return values


def default_route_address() -> str | None:
    """The source address of the default route (no packet is sent), or None without one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("1.1.1.1", 9))  # any off-link address: only the route is looked up
        except OSError:
            return None
        address: str = sock.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def kubepods_cgroups() -> list[Path]:
    """The kubelet's top `kubepods` cgroup in every hierarchy that has one."""
    if not CGROUP_ROOT.is_dir():
        return []
    found = [CGROUP_ROOT / "kubepods"] if (CGROUP_ROOT / "kubepods").is_dir() else []
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        candidate = hierarchy / "kubepods"
        with contextlib.suppress(OSError):
            if hierarchy.is_dir() and not hierarchy.is_symlink() and candidate.is_dir():
                found.append(candidate)
    return found


def _has_pids_controller() -> bool:
    if (CGROUP_ROOT / "pids" / "cgroup.procs").is_file():  # cgroup v1 (or hybrid)
        return True
    try:  # cgroup v2
        return "pids" in (CGROUP_ROOT / "cgroup.controllers").read_text().split()
    except OSError:
        return False


def supports_real_node(bin_dir: Path | None = None) -> str | None:
    """None when this machine can run a real node, else what is missing (one sentence)."""
    if os.uname().sysname != "Linux":
        return "a real node needs Linux"
    if os.geteuid() != 0:
        return "a real node needs root (containerd, cgroups, network namespaces)"
    missing = [b for b in ("containerd", "ctr", "containerd-shim-runc-v2") if not shutil.which(b)]
    if not (shutil.which("runc") or Path("/usr/sbin/runc").is_file()):
        missing.append("runc")
    if missing:
        return (
            f"no {', '.join(missing)} on PATH: run scripts/ensure-debian-packages.sh "
            "(apt-get install containerd runc containernetworking-plugins)"
        )
    plugins = [p for p in ("bridge", "host-local", "loopback") if not (CNI_BIN_DIR / p).is_file()]
    if plugins:
        return (
            f"no CNI plugins {', '.join(plugins)} in {CNI_BIN_DIR}: "
            "apt-get install containernetworking-plugins"
        )
    if not shutil.which("ip"):
        return "no `ip` command (iproute2) to remove the pod bridge on teardown"
    if not _has_pids_controller():
        return f"no cgroup pids controller under {CGROUP_ROOT}"
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "overlay" not in filesystems:
        return "no overlay filesystem in /proc/filesystems (containerd's snapshotter)"
    if default_route_address() is None:
        return "no default route: the kubelet needs a non-loopback node IP"
    existing = kubepods_cgroups()
    if existing and _abandoned_marker() is None:  # abandoned ones are cleaned up at start
        return f"{existing[0]} exists: another kubelet runs on this machine (one per machine)"
    if bin_dir is not None:
        absent = [b for b in REAL_NODE_BINARIES if not (bin_dir / b).is_file()]
        if absent:
            return f"no {', '.join(absent)} in {bin_dir}: run toolchain/build.sh"
    return None


class RealNode:
    """containerd + kubelet joined to `cluster`. start() / stop(), or a `with` block."""

    def __init__(
        self,
        cluster: LocalCluster,
        config: RealNodeConfig | None = None,
        *,
        workdir: Path | None = None,
        progress: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        self.cluster = cluster
        self.config = config or RealNodeConfig()
        self.name = self.config.name
        self.workdir = (workdir or cluster.workdir / f"realnode-{self.name}").absolute()
        self.progress = progress
        self.socket = self.workdir / "containerd.sock"
        self.kubelet_root = self.workdir / "kubelet"
        self.node_ip = ""
        self.kubelet_port = 0
        self.images: dict[str, PackedImage] = {}
        self.saved_sysctls: dict[str, str] = {}
        self.daemons: dict[str, Daemon] = {}
        self.timings: dict[str, float] = {}
        self._started = False
        self._stopped = False

    @property
    def running(self) -> bool:
        """Started and not stopped (stop() then start() brings up a fresh node)."""
        return self._started and not self._stopped

    def __enter__(self) -> RealNode:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ start

    def start(self, timeout: float = 120.0) -> None:
        if self.running:
            raise RealNodeError(f"real node {self.name} is running already")
        recover_abandoned_node(self.progress)
        reason = supports_real_node(self.cluster.bin_dir)
        if reason is None and self.config.kube_proxy:
            reason = kube_proxy_missing(self.cluster.bin_dir)
        if reason is not None:
            raise RealNodeError(f"cannot start real node {self.name}: {reason}")
        longest = self.kubelet_root / "device-plugins" / "kubelet.sock"
        if len(str(longest)) > _MAX_SOCKET_PATH:
            raise RealNodeError(
                f"working directory {self.workdir} is too long for the unix sockets under it "
                f"(at most {_MAX_SOCKET_PATH - len(str(longest)) + len(str(self.workdir))} "
                "characters): pass a shorter workdir"
            )
        node_ip = default_route_address()
        assert node_ip is not None  # supports_real_node checked it
        self.node_ip = node_ip
        self._started, self._stopped = True, False
        self.daemons, self.timings = {}, {}
        atexit.register(self.stop)
        started = time.monotonic()
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.saved_sysctls = read_sysctls()
            marker = {
                "pid": os.getpid(),
                "workdir": str(self.workdir),
                "socket": str(self.socket),
                "bridge": self.config.bridge,
                "sysctls": self.saved_sysctls,
                "started_at": time.time(),
            }
            MARKER.write_text(json.dumps(marker, indent=2))
            self._start_containerd()
            self._import_images()
            self._start_kubelet()
            if self.config.kube_proxy:
                self._start_kube_proxy()
            self._wait_ready(deadline=started + timeout)
        except BaseException:
            self.progress(f"real node {self.name} failed to start; logs follow")
            self.progress(self.log_tails())
            self.stop()
            raise
        self.timings["ready_s"] = time.monotonic() - started
        self.progress(f"real node {self.name} Ready in {self.timings['ready_s']:.1f} s")

    def _spawn(self, name: str, args: list[str]) -> None:
        log_path = self.workdir / f"{name}.log"
        popen = spawn_daemon(
            args,
            log_path,
            env={**os.environ, "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin"},
            cwd=self.workdir,
        )
        self.daemons[name] = Daemon(name, popen, log_path)

    def check_alive(self) -> None:
        """Raise RealNodeError if containerd or the kubelet exited."""
        for daemon in self.daemons.values():
            code = daemon.popen.poll()
            if code is not None:
                raise RealNodeError(f"{daemon.name} exited with code {code}; see {daemon.log_path}")

    def ctr(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run `ctr` against this node's containerd, in the kubelet's namespace k8s.io."""
        return subprocess.run(
            [
                "ctr",
                "--connect-timeout",
                "1s",
                "--address",
                str(self.socket),
                "-n",
                "k8s.io",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _containerd_answers(self) -> bool:
        if not self.socket.is_socket():
            return False
        try:
            return self.ctr("version", timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _write_containerd_config(self) -> Path:
        def q(path: Path) -> str:
            return json.dumps(str(path))  # a JSON string is a TOML basic string

        cni_dir = self.workdir / "cni"
        cni_dir.mkdir(exist_ok=True)
        conflist = {
            "cniVersion": "1.0.0",
            "name": "cellguard-realnode",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.config.bridge,
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(self.workdir / "cni-ipam"),
                        "ranges": [[{"subnet": self.config.pod_subnet}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                },
            ],
        }
        (cni_dir / "10-cellguard.conflist").write_text(json.dumps(conflist, indent=2))
        runc = shutil.which("runc") or "/usr/sbin/runc"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        text = f"""version = 2
root = {q(self.workdir / "containerd-root")}
state = {q(self.workdir / "containerd-state")}

[grpc]
  address = {q(self.socket)}

[ttrpc]
  address = {q(self.workdir / "containerd.sock.ttrpc")}

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  disable_apparmor = true
  # Without CAP_SYS_RESOURCE runc cannot lower oom_score_adj: every sandbox would fail
  # with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  # Pods' network namespaces under our state directory, not the machine's /run/netns.
  netns_mounts_under_state_dir = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = {q(Path(runc))}
        Root = {q(self.workdir / "runc")}
  [{cri}.cni]
    bin_dir = {q(CNI_BIN_DIR)}
    conf_dir = {q(cni_dir)}
    max_conf_num = 1
"""
        path = self.workdir / "containerd.toml"
        path.write_text(text)
        return path

    def _start_containerd(self) -> None:
        t0 = time.monotonic()
        config = self._write_containerd_config()
        self._spawn("containerd", ["containerd", "--config", str(config)])
        deadline = time.monotonic() + 20
        while not self._containerd_answers():
            self.check_alive()
            if time.monotonic() > deadline:
                raise RealNodeError(f"containerd did not answer on {self.socket} within 20 s")
            time.sleep(0.1)
        self.timings["containerd_s"] = time.monotonic() - t0
        self.progress(f"containerd ready in {self.timings['containerd_s']:.2f} s")

    def _import_images(self) -> None:
        t0 = time.monotonic()
        pause = ImageFile("pause", source=self.cluster.bin_dir / "cellguard-pause")
        threads = ImageFile("threads", source=self.cluster.bin_dir / "cellguard-threads")
        peers = ImageFile("peers", source=self.cluster.bin_dir / "cellguard-peers")
        images = self.workdir / "images"
        for reference, archive, files in (
            (PAUSE_IMAGE, "pause.tar", [pause]),
            (TEST_IMAGE, "test.tar", [pause, threads, peers]),
        ):
            image = pack_image(images / archive, reference, files, ["/pause"])
            import_image(image, self.socket)
            self.images[reference] = image
        self.timings["images_s"] = time.monotonic() - t0

    def _kubelet_config(self) -> dict[str, Any]:
        assert self.cluster.ca is not None
        config: dict[str, Any] = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # cgroup v1 hosts: 1.36 still runs there when told to.
            "failCgroupV1": False,
            # containerd 1.6 has no RuntimeConfig RPC: the kubelet uses this value.
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": True,
            "enforceNodeAllocatable": ["pods"],
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            "imageServiceEndpoint": f"unix://{self.socket}",
            "podPidsLimit": self.config.pod_pids_limit,
            "failSwapOn": False,
            "address": self.node_ip,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            # Only the API server reaches the kubelet, with its client certificate.
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.cluster.ca.cert_path)},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "podLogsDir": str(self.workdir / "pod-logs"),
            "volumePluginDir": str(self.kubelet_root / "volume-plugins"),
            "resolvConf": "/etc/resolv.conf",
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "registerNode": True,
            "maxPods": self.config.max_pods,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "2%",
                "imagefs.available": "2%",
            },
            "imageGCHighThresholdPercent": 99,
            "imageGCLowThresholdPercent": 98,
            "nodeStatusReportFrequency": "10s",
            "syncFrequency": "10s",
            "fileCheckFrequency": "10s",
        }
        if self.config.system_reserved_pids is not None:
            config["systemReserved"] = {"pid": str(self.config.system_reserved_pids)}
        return config

    def _start_kubelet(self) -> None:
        self.kubelet_root.mkdir(parents=True, exist_ok=True)
        (self.workdir / "pod-logs").mkdir(exist_ok=True)
        self.kubelet_port = free_port()
        config_path = self.workdir / "kubelet-config.yaml"
        config_path.write_text(yaml.safe_dump(self._kubelet_config()))
        kubeconfig = self.cluster.user_kubeconfig(f"system:node:{self.name}", ("system:nodes",))
        labels = {REAL_NODE_LABEL: "true", **self.config.labels}
        self._spawn(
            "kubelet",
            [
                str(self.cluster.bin_dir / "kubelet"),
                f"--config={config_path}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.kubelet_root / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.node_ip}",
                "--node-labels=" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
                "--v=1",
            ],
        )

    def _start_kube_proxy(self) -> None:
        """kube-proxy in iptables mode for this node, changing nothing else on the host:
        conntrack's sysctls stay as they are and localhost node ports are off (no
        route_localnet). Its chains are removed by stop() (`remove_kube_iptables`)."""
        kubeconfig = self.cluster.user_kubeconfig("system:kube-proxy")  # system:node-proxier
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables",
            "hostnameOverride": self.name,
            "clusterCIDR": self.config.pod_subnet,
            "bindAddress": self.node_ip,
            "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            "iptables": {"localhostNodePorts": False, "syncPeriod": "10s"},
            # 0: leave the kernel's conntrack table size and timeouts as they are.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        path = self.workdir / "kube-proxy-config.yaml"
        path.write_text(yaml.safe_dump(config))
        self._spawn(
            "kube-proxy",
            [str(self.cluster.bin_dir / KUBE_PROXY_BINARY), f"--config={path}", "--v=1"],
        )

    def _wait_ready(self, deadline: float) -> None:
        self.progress(f"waiting for real node {self.name} to be Ready ...")
        while time.monotonic() < deadline:
            self.check_alive()
            self.cluster.check_alive()
            if self.name in self.cluster.ready_nodes():
                return
            time.sleep(0.3)
        raise RealNodeError(f"real node {self.name} not Ready in time")

    # ------------------------------------------------------------------ inspection

    def pod_cgroup(self, uid: str, controller: str = "pids") -> Path | None:
        """A pod's cgroup directory in `controller`'s hierarchy (kubepods/<qos>/pod<uid>)."""
        root = CGROUP_ROOT / controller / "kubepods"
        if not root.is_dir():
            root = CGROUP_ROOT / "kubepods"
        wanted = f"pod{uid}"
        for candidate in (root / wanted, root / "burstable" / wanted, root / "besteffort" / wanted):
            if candidate.is_dir():
                return candidate
        return None

    def log_tails(self, lines: int = 30) -> str:
        return log_tails(self.daemons.values(), lines)

    def _our_shims(self) -> list[int]:
        return _shims_of(self.socket)

    def mounts(self) -> list[str]:
        """Mount points under the working directory, and the pods' network namespaces."""
        return _mounts_under(self.workdir)

    def leftovers(self) -> list[str]:
        """What of this node is still there (empty after a complete stop())."""
        left = [
            f"{name} pid {d.popen.pid}" for name, d in self.daemons.items() if self._running(name)
        ]
        left += [f"containerd-shim pid {pid}" for pid in self._our_shims()]
        if Path("/sys/class/net", self.config.bridge).exists():
            left.append(f"bridge {self.config.bridge}")
        left += [f"cgroup {path}" for path in kubepods_cgroups()]
        left += [f"iptables chain {chain}" for chain in kube_iptables_chains()]
        left += [f"mount {path}" for path in self.mounts()]
        if self._started:
            now = read_sysctls()
            left += [
                f"sysctl {name}={now.get(name)} (was {value})"
                for name, value in self.saved_sysctls.items()
                if now.get(name) != value
            ]
        return left

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Take everything down; each step runs even when an earlier one failed."""
        if self._stopped or not self._started:
            return
        self._stopped = True
        t0 = time.monotonic()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("drain the node's pods", self._drain),
            ("stop kube-proxy", lambda: self._terminate("kube-proxy", grace=5)),
            ("stop the kubelet", lambda: self._terminate("kubelet", grace=10)),
            ("remove containers", self._remove_containers),
            ("stop containerd", lambda: self._terminate("containerd", grace=10)),
            ("kill containerd shims", self._kill_shims),
            ("unmount", self._unmount),
            ("delete the bridge", self._delete_bridge),
            ("remove kubepods cgroups", self._remove_cgroups),
            ("remove KUBE-* iptables chains", remove_kube_iptables),
            ("restore sysctls", self._restore_sysctls),
            ("remove runtime state", self._remove_state),
            ("delete the Node object", self._delete_node_object),
            ("check that nothing is left", self._forget),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as error:  # keep going: later steps clean up other things
                self.progress(f"real node {self.name}: could not {what}: {error}")
        with contextlib.suppress(ValueError):
            atexit.unregister(self.stop)
        self.timings["teardown_s"] = time.monotonic() - t0
        self.progress(f"real node {self.name} torn down in {self.timings['teardown_s']:.1f} s")

    def _running(self, name: str) -> bool:
        daemon = self.daemons.get(name)
        return daemon is not None and daemon.popen.poll() is None

    def _api_alive(self) -> bool:
        try:
            self.cluster.check_alive()
            return self.cluster.api_get("/readyz", timeout=3)[0] == 200
        except (ClusterError, OSError):
            return False

    def _pods_on_node(self) -> list[dict[str, Any]]:
        selector = urllib.parse.quote(f"spec.nodeName={self.name}")
        status, body = self.cluster.api_get(f"/api/v1/pods?fieldSelector={selector}", timeout=5)
        if status != 200:
            raise RealNodeError(f"listing pods on {self.name}: HTTP {status}")
        items: list[dict[str, Any]] = json.loads(body)["items"]
        return items

    def _running_tasks(self) -> list[str]:
        if not self._running("containerd"):
            return []
        result = self.ctr("tasks", "ls", timeout=10)
        return [
            line.split()[0]
            for line in result.stdout.splitlines()[1:]
            if line.strip() and "RUNNING" in line
        ]

    def _drain(self) -> None:
        """While the kubelet runs: cordon, delete the node's pods, wait until they are gone.

        The kubelet then stops each pod's containers and its sandbox (which tears the pod's
        network down through CNI), as on a real node.
        """
        if not (self._running("kubelet") and self._api_alive()):
            return
        self.cluster.kubectl("cordon", self.name, check=False, timeout=15)
        self.cluster.kubectl(
            "delete", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={self.name}",
            "--grace-period=1", "--wait=false", check=False, timeout=15,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self._running("kubelet"):
            if not self._pods_on_node() and not self._running_tasks():
                return
            time.sleep(0.3)
        self.progress(f"real node {self.name}: pods still there after 30 s; removing them")

    def _terminate(self, name: str, grace: float) -> None:
        daemon = self.daemons.get(name)
        if daemon is None or daemon.popen.poll() is not None:
            return
        daemon.popen.terminate()
        try:
            daemon.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            daemon.popen.kill()
            daemon.popen.wait(timeout=10)

    def _remove_containers(self) -> None:
        """Kill and delete what containerd still has (its network namespaces are unmounted
        with everything else under the working directory)."""
        if not self._containerd_answers():
            return
        ids = [line.strip() for line in self.ctr("containers", "ls", "-q").stdout.splitlines()]
        for task in self._running_tasks():
            self.ctr("tasks", "kill", "--signal", "SIGKILL", task)
        deadline = time.monotonic() + 10
        while self._running_tasks() and time.monotonic() < deadline:
            time.sleep(0.2)
        for container_id in filter(None, ids):
            self.ctr("tasks", "delete", "--force", container_id)
            self.ctr("containers", "delete", container_id)

    def _kill_shims(self) -> None:
        _kill_shims(self.socket)

    def _unmount(self) -> None:
        _unmount(self.workdir)

    def _delete_bridge(self) -> None:
        _delete_link(self.config.bridge)

    def _remove_cgroups(self) -> None:
        _remove_kubepods()

    def _restore_sysctls(self) -> None:
        _restore_sysctls(self.saved_sysctls)

    def _forget(self) -> None:
        """Drop the machine-wide marker once nothing of the node is left."""
        left = self.leftovers()
        if left:
            raise RealNodeError(f"left behind: {', '.join(left)}")
        with contextlib.suppress(FileNotFoundError):
            if json.loads(MARKER.read_text()).get("workdir") == str(self.workdir):
                MARKER.unlink()

    def _remove_state(self) -> None:
        _remove_state(self.workdir)

    def _delete_node_object(self) -> None:
        """The Node, and pods still bound to it (a dead kubelet never confirmed them gone)."""
        if not self._api_alive():
            return
        self.cluster.kubectl(
            "delete", "pods", "--all-namespaces", f"--field-selector=spec.nodeName={self.name}",
            "--force", "--grace-period=0", "--wait=false", timeout=15,
        )  # fmt: skip
        self.cluster.kubectl(
            "delete", "node", self.name, "--ignore-not-found", "--wait=false", timeout=15
        )


def _walk_dirs(root: Path) -> Iterator[Path]:
    yield root
    with contextlib.suppress(OSError):
        for child in root.iterdir():
            if child.is_dir() and not child.is_symlink():
                yield from _walk_dirs(child)


# ---------------------------------------------------------------------- clean-up helpers
# Module functions, so that a node abandoned by a killed process can be cleaned up from
# what its marker recorded (recover_abandoned_node) as well as by RealNode.stop().


def _shims_of(socket_path: Path) -> list[int]:
    """containerd-shim processes serving the containerd at `socket_path` (they outlive it)."""
    pids = []
    needle = str(socket_path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes()
            if b"containerd-shim" in cmdline and needle in cmdline:
                pids.append(int(entry.name))
    return pids


def _kill_shims(socket_path: Path) -> None:
    for pid in _shims_of(socket_path):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _shims_of(socket_path) and time.monotonic() < deadline:
        time.sleep(0.1)


def _mounts_under(workdir: Path) -> list[str]:
    """Mount points under `workdir` (overlay root filesystems, volumes, network namespaces)."""
    prefix = str(workdir.resolve()) + "/"
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mount_point = line.split()[4].encode().decode("unicode_escape")
            if mount_point.startswith(prefix):
                found.append(mount_point)
    return found


def _unmount(workdir: Path) -> None:
    """Detach every mount under `workdir`, deepest first."""
    libc = ctypes.CDLL(None, use_errno=True)
    for _attempt in range(3):
        mounts = _mounts_under(workdir)
        if not mounts:
            break
        for mount_point in sorted(mounts, key=len, reverse=True):
            libc.umount2(mount_point.encode(), _MNT_DETACH)
    left = _mounts_under(workdir)
    if left:
        raise RealNodeError(f"still mounted: {', '.join(left[:5])}")


def _delete_link(name: str) -> None:
    if Path("/sys/class/net", name).exists():
        subprocess.run(["ip", "link", "delete", name], capture_output=True, check=True, timeout=10)


def kube_proxy_missing(bin_dir: Path) -> str | None:
    """None when kube-proxy can run beside a real node here, else what is missing."""
    if not (bin_dir / KUBE_PROXY_BINARY).is_file():
        return f"no {KUBE_PROXY_BINARY} in {bin_dir}: run toolchain/build.sh"
    if not (shutil.which("iptables") or Path("/usr/sbin/iptables").is_file()):
        return "kube-proxy needs iptables (apt-get install iptables)"
    return None


def _iptables_tools() -> list[tuple[str, str]]:
    """(save, edit) command pairs present on this machine: IPv4 and IPv6."""
    found = []
    for family in ("iptables", "ip6tables"):
        save = shutil.which(f"{family}-save") or f"/usr/sbin/{family}-save"
        edit = shutil.which(family) or f"/usr/sbin/{family}"
        if Path(save).is_file() and Path(edit).is_file():
            found.append((save, edit))
    return found


def kube_iptables_chains() -> list[str]:
    """`family table chain` of every KUBE-* iptables chain on the machine."""
    chains = []
    for save, _edit in _iptables_tools():
        family = Path(save).name.removesuffix("-save")
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            text = subprocess.run(
                [save], capture_output=True, text=True, timeout=20, check=False
            ).stdout
            table = ""
            for line in text.splitlines():
                if line.startswith("*"):
                    table = line[1:]
                elif line.startswith(":" + IPTABLES_CHAIN_PREFIX):
                    chains.append(f"{family} {table} {line[1:].split()[0]}")
    return chains


def remove_kube_iptables() -> None:
    """Delete the rules that jump to KUBE-* chains, then flush and delete those chains
    (what the kubelet and kube-proxy add; nothing else is touched)."""
    for save, edit in _iptables_tools():
        text = subprocess.run([save], capture_output=True, text=True, timeout=20, check=True).stdout
        table, jumps, chains = "", [], []
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":" + IPTABLES_CHAIN_PREFIX):
                chains.append((table, line[1:].split()[0]))
            elif line.startswith("-A ") and not line.startswith("-A " + IPTABLES_CHAIN_PREFIX):
                words = shlex.split(line)
                if any(w.startswith(IPTABLES_CHAIN_PREFIX) for w in words[2:]):
                    jumps.append((table, ["-D", *words[1:]]))
        for table, rule in jumps:
            subprocess.run([edit, "-w", "-t", table, *rule], capture_output=True, check=False)
        for table, chain in chains:
            subprocess.run([edit, "-w", "-t", table, "-F", chain], capture_output=True, check=False)
        for table, chain in chains:
            subprocess.run([edit, "-w", "-t", table, "-X", chain], capture_output=True, check=False)
    left = kube_iptables_chains()
    if left:
        raise RealNodeError(f"iptables chains left: {', '.join(left[:5])}")


def _remove_kubepods() -> None:
    """rmdir the kubepods trees, deepest first, killing any process still inside."""
    for _attempt in range(20):
        roots = kubepods_cgroups()
        if not roots:
            return
        for root in roots:
            for directory in sorted(_walk_dirs(root), key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    for pid in (directory / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                with contextlib.suppress(OSError):
                    directory.rmdir()
        time.sleep(0.1)
    raise RealNodeError(f"kubepods cgroups left: {kubepods_cgroups()}")


def _restore_sysctls(saved: dict[str, str]) -> None:
    for name, value in saved.items():
        path = _sysctl_path(name)
        if path.read_text().strip() != value:
            path.write_text(value + "\n")


def _remove_state(workdir: Path) -> None:
    """Delete containerd's and the kubelet's files (logs and configurations stay)."""
    if _mounts_under(workdir):
        raise RealNodeError(f"mounts remain under {workdir}; its files are kept")
    for name in ("containerd-root", "containerd-state", "runc", "kubelet", "cni-ipam"):
        shutil.rmtree(workdir / name, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _abandoned_marker() -> dict[str, Any] | None:
    """The marker of a real node whose process is gone, if there is one."""
    try:
        marker: dict[str, Any] = json.loads(MARKER.read_text())
        owner = int(marker["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return None if _pid_alive(owner) else marker


def recover_abandoned_node(progress: Callable[[str], None] = lambda _msg: None) -> bool:
    """Clean up after a real node whose process died without stop() (SIGKILL, a crash).

    Its kubelet and containerd died with it (PR_SET_PDEATHSIG), but containers, their shims,
    the kubepods cgroups, mounts, the bridge and the changed sysctls outlive it. The marker
    it wrote at start says where and what; True when something was cleaned up.
    """
    marker = _abandoned_marker()
    if marker is None:
        return False
    workdir = Path(marker["workdir"])
    progress(f"cleaning up a real node abandoned by pid {marker.get('pid')} in {workdir}")
    errors = []
    steps: list[tuple[str, Callable[[], None]]] = [
        ("kill shims", lambda: _kill_shims(Path(marker["socket"]))),
        ("remove kubepods cgroups", _remove_kubepods),
        ("remove KUBE-* iptables chains", remove_kube_iptables),
        ("unmount", lambda: _unmount(workdir)),
        ("delete the bridge", lambda: _delete_link(marker["bridge"])),
        ("restore sysctls", lambda: _restore_sysctls(marker["sysctls"])),
        ("remove runtime state", lambda: _remove_state(workdir)),
    ]
    for what, step in steps:
        try:
            step()
        except Exception as error:
            errors.append(f"{what}: {error}")
    if errors:
        raise RealNodeError(f"could not clean up the abandoned real node: {'; '.join(errors)}")
    MARKER.unlink(missing_ok=True)
    return True
