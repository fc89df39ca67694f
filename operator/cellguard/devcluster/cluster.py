"""A local, real Kubernetes control plane with simulated nodes, for tests and the demo.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler run as local processes on
loopback with free ports and freshly generated certificates; kwok turns Node objects into
Ready simulated nodes and makes their pods Running. Opt-in `real_nodes` adds a real kubelet
with containerd on this machine (`cellguard.devcluster.realnode`, root only) beside them.
Everything is torn down on `stop()`,
on leaving the `with` block, at interpreter exit, and - through PR_SET_PDEATHSIG - even
when the Python process itself is killed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cellguard import pki

if TYPE_CHECKING:
    from cellguard.devcluster.realnode import RealNode, RealNodeConfig

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_CUSTOM_STATUS_ANNOTATION = "kwok.x-k8s.io/status"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.128.0.1/10"  # kwok hands out fake pod IPs from here; nothing is ever sent there.
_PR_SET_PDEATHSIG = 1


class ClusterError(RuntimeError):
    pass


@dataclass(frozen=True)
class NodeSpec:
    """A simulated node: what kwok will pretend exists."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()
    cpu: str = "32"
    memory: str = "256Gi"
    pods: str = "110"

    def manifest(self) -> dict[str, Any]:
        labels = {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "type": "kwok",
            **self.labels,
        }
        resources_ = {"cpu": self.cpu, "memory": self.memory, "pods": self.pods}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": {KWOK_NODE_ANNOTATION: "fake"},
            },
            "spec": {"taints": [dict(t) for t in self.taints]},
            "status": {"allocatable": resources_, "capacity": resources_},
        }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGTERM it when we die.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn_daemon(
    args: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process this one owns (a control-plane component, a real node's daemon,
    the operator, Prometheus), its output appended to `log_path`.

    In a process group of its own: a terminal's Ctrl-C reaches only this process, which
    then stops everything in order (the operator while the API server still answers, the
    API server before etcd). Before, every daemon got the SIGINT at once, etcd died first,
    and the demo's teardown waited out the rest against a dead store (40 s, now 7.5 s).
    If this process dies, the kernel SIGTERMs it (PR_SET_PDEATHSIG: when the *thread* that
    spawned it ends, so spawn from a thread that lives as long as the process should)."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            list(args),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=dict(env),
            process_group=0,
            preexec_fn=_die_with_parent,
        )


@dataclass
class Daemon:
    """A process the cluster (or its real node) started, and where its output goes."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path


def log_tails(daemons: Iterable[Daemon], lines: int = 30) -> str:
    """The last `lines` of each daemon's log under a header saying whether it still runs."""
    parts = []
    for daemon in daemons:
        try:
            tail = daemon.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            tail = ["(no log)"]
        state = daemon.popen.poll()
        header = f"----- {daemon.name} ({'running' if state is None else f'exited {state}'})"
        parts.append("\n".join([header, *tail]))
    return "\n".join(parts)


class LocalCluster:
    """A real control plane on loopback. Use as a context manager or call start()/stop()."""

    def __init__(
        self,
        bin_dir: Path,
        *,
        nodes: Sequence[NodeSpec] = (),
        workdir: Path | None = None,
        keep_workdir: bool = False,
        progress: Callable[[str], None] = lambda _msg: None,
        real_nodes: int | Sequence[RealNodeConfig] = 0,
        extra_flags: Mapping[str, Sequence[str]] | None = None,
        kwok_options: Mapping[str, Any] | None = None,
        extra_env: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        """`real_nodes`: how many real kubelets to start (named real-0, ...), or their
        configurations; 0 by default. See `cellguard.devcluster.realnode` (root only).

        Opt-in tuning for large benchmark clusters, nothing by default: `extra_flags` are
        appended to a component's command line, by process name (etcd, kube-apiserver,
        kube-controller-manager, kube-scheduler, kwok; a flag given again wins over the
        default); `kwok_options` go into kwok's KwokConfiguration (e.g.
        podPlayStageParallelism); `extra_env` sets environment variables of a component,
        by process name (e.g. GOMEMLIMIT). See also `restart_component`."""
        self.bin_dir = bin_dir
        self.initial_nodes = list(nodes)
        if (real_nodes if isinstance(real_nodes, int) else len(real_nodes)) > 1:
            raise ClusterError("one real node per machine: the kubelet's cgroups are machine-wide")
        self.real_node_configs = real_nodes
        self.extra_flags: dict[str, list[str]] = {
            name: list(flags) for name, flags in (extra_flags or {}).items()
        }
        self.kwok_options = dict(kwok_options or {})
        self.extra_env = {name: dict(env) for name, env in (extra_env or {}).items()}
        self.real_nodes: list[RealNode] = []
        self.progress = progress
        self._own_workdir = workdir is None
        self.keep_workdir = keep_workdir
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="cellguard-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki_dir = self.workdir / "pki"
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.processes: dict[str, Daemon] = {}
        self.apiserver_port = 0
        self.etcd_port = 0
        self.ca: pki.KeyPair | None = None
        self.admin: pki.KeyPair | None = None
        # With a real node its pods must reach the API server (see _start_apiserver).
        self.node_ip: str | None = None
        self._stopped = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def server_url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def start(self, timeout: float = 120.0) -> None:
        atexit.register(self.stop)
        started = time.monotonic()
        try:
            if self.real_node_configs:
                from cellguard.devcluster.realnode import default_route_address

                self.node_ip = default_route_address()
            self._make_pki()
            self._start_etcd()
            self._start_apiserver()
            self._wait_apiserver(deadline=started + timeout)
            self._start_controller_manager()
            self._start_scheduler()
            self._start_kwok()
            self._wait_component_health(deadline=started + timeout)
            self._wait_default_service_account(deadline=started + timeout)
            if self.initial_nodes:
                self.add_nodes(self.initial_nodes)
                self.wait_nodes_ready(
                    [n.name for n in self.initial_nodes], timeout=max(30.0, timeout / 2)
                )
            self._start_real_nodes()
        except BaseException:
            self.progress("control plane failed to start; component logs follow")
            self.progress(self.log_tails())
            self.stop()
            raise
        self.progress(f"control plane ready in {time.monotonic() - started:.1f} s")

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        # Real nodes first, while the API server still answers: their pods are drained.
        for node in reversed(self.real_nodes):
            node.stop()
        # Reverse start order: kwok and controllers first, etcd last.
        for proc in reversed(list(self.processes.values())):
            if proc.popen.poll() is None:
                proc.popen.terminate()
        deadline = time.monotonic() + 15
        for proc in reversed(list(self.processes.values())):
            # kube-apiserver drains for 20 s and more after SIGTERM, for clients this
            # throwaway cluster no longer has: 2 s, then SIGKILL (as restart_apiserver).
            grace = 2.0 if proc.name == "kube-apiserver" else deadline - time.monotonic()
            try:
                proc.popen.wait(timeout=max(0.1, grace))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
        etcd_data = getattr(self, "etcd_data", None)
        if etcd_data is not None:
            shutil.rmtree(etcd_data, ignore_errors=True)
        # Never rmtree through a mount a real node could not undo (see its log).
        mounted = [m for node in self.real_nodes for m in node.mounts()]
        if mounted:
            self.progress(f"keeping {self.workdir}: still mounted there: {', '.join(mounted[:3])}")
        elif self._own_workdir and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(ValueError):
            atexit.unregister(self.stop)

    def restart_apiserver(
        self,
        down_seconds: float = 0.0,
        grace: float = 2.0,
        timeout: float = 60.0,
        while_down: Callable[[], None] | None = None,
    ) -> None:
        """Stop kube-apiserver and start it again with the same arguments and port.

        For fault tests: every client's watches and connections break while it is away
        (`down_seconds` after it stopped, and `while_down` is called then - e.g. to change
        etcd behind every watcher's back), then it comes back on the same URL, certificates
        and etcd (the stored objects are all still there). Returns once /readyz answers 200.

        SIGTERM first, SIGKILL after `grace` seconds: on SIGTERM kube-apiserver stops
        listening at once but its process drains for a minute or more, which would only
        stretch the outage (the new process binds the same port either way).
        """
        old = self.processes["kube-apiserver"]
        if old.popen.poll() is None:
            old.popen.terminate()
            try:
                old.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                old.popen.kill()
                old.popen.wait()
        time.sleep(down_seconds)
        if while_down is not None:
            while_down()
        # Same port, flags and files: _start_apiserver reads them all from self. The new
        # process replaces the old one in self.processes (its log is appended to).
        self._start_apiserver()
        self._wait_apiserver(deadline=time.monotonic() + timeout)

    def restart_component(
        self, name: str, extra_flags: Sequence[str] | None = None, timeout: float = 120.0
    ) -> None:
        """Stop kube-controller-manager, kube-scheduler or kwok and start it again, with
        `extra_flags` (when given) replacing the ones it had; returns once it is healthy.

        For benchmarks that build large clusters: e.g. the controller manager restarted
        with `--controllers=*,-replicaset-controller` while a benchmark writes pods itself,
        and again without it afterwards. A fresh process lists everything again, as after
        a crash or an upgrade.
        """
        starters = {
            "kube-controller-manager": self._start_controller_manager,
            "kube-scheduler": self._start_scheduler,
            "kwok": self._start_kwok,
        }
        if name not in starters:
            raise ClusterError(f"cannot restart {name}: one of {', '.join(starters)}")
        old = self.processes[name]
        if old.popen.poll() is None:
            old.popen.terminate()
            try:
                old.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                old.popen.kill()
                old.popen.wait()
        if extra_flags is not None:
            self.extra_flags[name] = list(extra_flags)
        starters[name]()
        if name != "kwok":
            self._wait_component_health(deadline=time.monotonic() + timeout, only=name)

    def compact_etcd(self, timeout: float = 300.0) -> dict[str, int]:
        """Compact etcd's history up to its current revision and defragment its database
        (the API server compacts every 5 minutes by itself, but a database file never
        shrinks without a defragmentation; on tmpfs its size is memory). For benchmarks
        after a bulk fill: what the API serves does not change. The database size before
        and after, in bytes."""

        def call(path: str, body: dict[str, Any]) -> Any:
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.etcd_port}{path}",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())

        before = call("/v3/maintenance/status", {})
        revision = int(before["header"]["revision"])
        with contextlib.suppress(urllib.error.HTTPError):  # already compacted that far
            call("/v3/kv/compaction", {"revision": revision, "physical": True})
        call("/v3/maintenance/defragment", {})
        after = call("/v3/maintenance/status", {})
        return {"before": int(before["dbSize"]), "after": int(after["dbSize"])}

    def _start_real_nodes(self) -> None:
        configs = self.real_node_configs
        if isinstance(configs, int) and configs == 0:
            return
        from cellguard.devcluster.realnode import RealNode, RealNodeConfig

        if isinstance(configs, int):
            configs = [RealNodeConfig(name=f"real-{i}") for i in range(configs)]
        for config in configs:
            node = RealNode(self, config, progress=self.progress)
            self.real_nodes.append(node)
            node.start()

    # ------------------------------------------------------------------ components

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        args = [*args, *self.extra_flags.get(name, ())]
        log_path = self.workdir / f"{name}.log"
        popen = spawn_daemon(
            args,
            log_path,
            env={**os.environ, **(env or {}), **self.extra_env.get(name, {})},
            cwd=self.workdir,
        )
        self.processes[name] = Daemon(name, popen, log_path)

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _make_pki(self) -> None:
        self.pki_dir.mkdir(exist_ok=True)
        self.ca = pki.make_ca(self.pki_dir, "cellguard-local-ca")
        self.apiserver_serving = pki.issue(
            self.ca,
            self.pki_dir,
            "apiserver",
            "kube-apiserver",
            dns_names=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ip_addresses=("127.0.0.1", "10.96.0.1", *([self.node_ip] if self.node_ip else [])),
            server=True,
        )
        self.admin = pki.issue(
            self.ca,
            self.pki_dir,
            "admin",
            "cellguard-admin",
            organizations=("system:masters",),
            client=True,
        )
        self.service_account_keys = pki.make_service_account_keys(self.pki_dir)
        # The aggregation layer: kube-apiserver proxies aggregated APIs (metrics adapters and
        # the like, registered with an APIService) presenting this client certificate, and
        # the aggregated server takes the user from X-Remote-User/-Group. A CA of its own,
        # so that no other certificate can assert identities through those headers.
        self.front_proxy_ca = pki.make_ca(self.pki_dir, "cellguard-front-proxy-ca")
        self.front_proxy_client = pki.issue(
            self.front_proxy_ca,
            self.pki_dir,
            "front-proxy-client",
            "front-proxy-client",
            client=True,
        )
        # kube-apiserver's identity towards real kubelets (logs, exec, port-forward).
        self.kubelet_client = pki.issue(
            self.ca,
            self.pki_dir,
            "apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            client=True,
        )
        self.apiserver_port = free_port()
        for component, user in (
            ("controller-manager", "system:kube-controller-manager"),
            ("scheduler", "system:kube-scheduler"),
        ):
            pair = pki.issue(self.ca, self.pki_dir, component, user, client=True)
            self._write_kubeconfig(self.workdir / f"{component}.kubeconfig", pair, user)
        self._write_kubeconfig(self.kubeconfig, self.admin, "cellguard-admin")

    def user_kubeconfig(self, username: str, groups: tuple[str, ...] = ()) -> Path:
        """A kubeconfig that authenticates as `username` (in `groups`) by client certificate.

        A service account's name works too (system:serviceaccount:NS:NAME), so a local
        process can act with exactly the identity and RBAC it would have in the cluster.
        """
        assert self.ca is not None
        stem = "user-" + "".join(c if c.isalnum() else "-" for c in username)
        pair = pki.issue(self.ca, self.pki_dir, stem, username, organizations=groups, client=True)
        path = self.workdir / f"{stem}.kubeconfig"
        self._write_kubeconfig(path, pair, username)
        return path

    def _write_kubeconfig(self, path: Path, pair: pki.KeyPair, user: str) -> None:
        assert self.ca is not None
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "cellguard-local",
                    "cluster": {
                        "server": self.server_url,
                        "certificate-authority": str(self.ca.cert_path),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate": str(pair.cert_path),
                        "client-key": str(pair.key_path),
                    },
                }
            ],
            "contexts": [
                {"name": "cellguard-local", "context": {"cluster": "cellguard-local", "user": user}}
            ],
            "current-context": "cellguard-local",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)

    def _start_etcd(self) -> None:
        self.etcd_port, peer_port = free_port(), free_port()
        # tmpfs when there is one: etcd's fsyncs dominate API latency on a small disk.
        shm = Path("/dev/shm")
        data_root = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.workdir
        self.etcd_data = Path(tempfile.mkdtemp(prefix="cellguard-etcd-", dir=data_root))
        self._spawn(
            "etcd",
            [
                self._bin("etcd"),
                "--name=cellguard",
                f"--data-dir={self.etcd_data}",
                f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=cellguard=http://127.0.0.1:{peer_port}",
                "--listen-metrics-urls=",
                "--unsafe-no-fsync",
                "--quota-backend-bytes=8589934592",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self) -> None:
        assert self.ca is not None
        issuer = "https://kubernetes.default.svc.cluster.local"
        if self.node_ip:
            # A real node's pods reach the API server as in a real cluster: at the
            # `kubernetes` Service's ClusterIP (kube-proxy on the node), whose endpoint the
            # API server keeps at its advertised address - the node IP, as loopback is no
            # valid endpoint - so it listens there too (client certificates or tokens still
            # required). Webhooks behind a Service are called at the Service's endpoints (pod
            # IPs, routed to the node's bridge) rather than its ClusterIP, as on clusters
            # whose control plane runs off the pod network.
            network = [
                "--bind-address=0.0.0.0",
                f"--advertise-address={self.node_ip}",
                "--endpoint-reconciler-type=lease",
                "--enable-aggregator-routing=true",
            ]
        else:
            network = [
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                # No real network behind the fake nodes: nothing to reconcile endpoints to.
                "--endpoint-reconciler-type=none",
            ]
        self._spawn(
            "kube-apiserver",
            [
                self._bin("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                *network,
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={self.apiserver_serving.cert_path}",
                f"--tls-private-key-file={self.apiserver_serving.key_path}",
                f"--client-ca-file={self.ca.cert_path}",
                f"--service-account-issuer={issuer}",
                f"--service-account-key-file={self.service_account_keys.cert_path}",
                f"--service-account-signing-key-file={self.service_account_keys.key_path}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--requestheader-client-ca-file={self.front_proxy_ca.cert_path}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={self.front_proxy_client.cert_path}",
                f"--proxy-client-key-file={self.front_proxy_client.key_path}",
                # Real nodes (realnode.py): reach kubelets by their node IP, as a client
                # their --client-ca-file accepts; kwok's nodes are never dialled.
                "--kubelet-preferred-address-types=InternalIP,Hostname",
                f"--kubelet-client-certificate={self.kubelet_client.cert_path}",
                f"--kubelet-client-key={self.kubelet_client.key_path}",
                "--authorization-mode=Node,RBAC",
                "--allow-privileged=true",
                # One small machine under test load: don't let APF queue the test's own bursts.
                "--enable-priority-and-fairness=false",
                "--max-requests-inflight=2000",
                "--max-mutating-requests-inflight=1000",
                "--profiling=false",
                "--v=1",
            ],
        )

    def _start_controller_manager(self) -> None:
        assert self.ca is not None
        kubeconfig = self.workdir / "controller-manager.kubeconfig"
        self.controller_manager_port = free_port()
        self._spawn(
            "kube-controller-manager",
            [
                self._bin("kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.controller_manager_port}",
                f"--cert-dir={self.workdir / 'controller-manager-certs'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.service_account_keys.key_path}",
                f"--root-ca-file={self.ca.cert_path}",
                f"--cluster-signing-cert-file={self.ca.cert_path}",
                f"--cluster-signing-key-file={self.ca.key_path}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--kube-api-qps=200",
                "--kube-api-burst=400",
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
                # HorizontalPodAutoscalers act every 5 s instead of 15: tests see a step soon.
                "--horizontal-pod-autoscaler-sync-period=5s",
                "--v=1",
            ],
        )

    def _start_scheduler(self) -> None:
        kubeconfig = self.workdir / "scheduler.kubeconfig"
        config_path = self.workdir / "scheduler-config.yaml"
        config_path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "kubescheduler.config.k8s.io/v1",
                    "kind": "KubeSchedulerConfiguration",
                    "clientConnection": {"kubeconfig": str(kubeconfig), "qps": 300, "burst": 600},
                    "leaderElection": {"leaderElect": False},
                }
            )
        )
        self.scheduler_port = free_port()
        self._spawn(
            "kube-scheduler",
            [
                self._bin("kube-scheduler"),
                f"--config={config_path}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.scheduler_port}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                "--v=1",
            ],
        )

    def _start_kwok(self) -> None:
        stages = resources.files("cellguard.devcluster").joinpath("kwok-stages.yaml")
        config_path = self.workdir / "kwok.yaml"
        text = stages.read_text()
        if self.kwok_options:
            options = {
                "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
                "kind": "KwokConfiguration",
                "options": self.kwok_options,
            }
            text += "---\n" + yaml.safe_dump(options)
        config_path.write_text(text)
        self._spawn(
            "kwok",
            [
                self._bin("kwok"),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={config_path}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                f"--disregard-status-with-annotation-selector={KWOK_CUSTOM_STATUS_ANNOTATION}=custom",
                f"--cidr={POD_CIDR}",
                "--node-ip=10.255.0.1",
                "--node-lease-duration-seconds=40",
                # kwok logs every pod patch at INFO: thousands of lines in a failure's tail.
                "--v=WARN",
            ],
        )

    # ------------------------------------------------------------------ health

    def check_alive(self) -> None:
        for proc in self.processes.values():
            code = proc.popen.poll()
            if code is not None:
                raise ClusterError(f"{proc.name} exited with code {code}; see {proc.log_path}")

    def _admin_ssl_context(self) -> ssl.SSLContext:
        assert self.ca is not None and self.admin is not None
        context = ssl.create_default_context(cafile=str(self.ca.cert_path))
        context.load_cert_chain(str(self.admin.cert_path), str(self.admin.key_path))
        return context

    def api_get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """GET an API path as the cluster admin; (status, body)."""
        request = urllib.request.Request(self.server_url + path)
        try:
            with urllib.request.urlopen(
                request, context=self._admin_ssl_context(), timeout=timeout
            ) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def _wait_apiserver(self, deadline: float) -> None:
        self.progress("waiting for kube-apiserver /readyz ...")
        last_error = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                status, body = self.api_get("/readyz", timeout=5)
                if status == 200:
                    return
                last_error = body.decode(errors="replace")[-500:]
            except OSError as error:
                last_error = str(error)
            time.sleep(0.25)
        raise ClusterError(f"kube-apiserver not ready in time: {last_error}")

    def _wait_component_health(self, deadline: float, only: str | None = None) -> None:
        self.progress(
            f"waiting for {only or 'kube-controller-manager and kube-scheduler'} /healthz ..."
        )
        insecure = ssl.create_default_context()
        insecure.check_hostname = False
        insecure.verify_mode = ssl.CERT_NONE  # local self-signed serving certs
        pending = {
            "kube-controller-manager": self.controller_manager_port,
            "kube-scheduler": self.scheduler_port,
        }
        if only is not None:
            pending = {only: pending[only]}
        while pending and time.monotonic() < deadline:
            self.check_alive()
            for name, port in list(pending.items()):
                with contextlib.suppress(OSError):
                    url = f"https://127.0.0.1:{port}/healthz"
                    with urllib.request.urlopen(url, context=insecure, timeout=3) as response:
                        if response.status == 200:
                            del pending[name]
            time.sleep(0.25)
        if pending:
            raise ClusterError(f"not healthy in time: {', '.join(pending)}")

    def _wait_default_service_account(self, deadline: float) -> None:
        # Pods are refused until the service-account controller made `default`.
        while time.monotonic() < deadline:
            self.check_alive()
            status, _ = self.api_get("/api/v1/namespaces/default/serviceaccounts/default")
            if status == 200:
                return
            time.sleep(0.25)
        raise ClusterError("the default ServiceAccount never appeared")

    # ------------------------------------------------------------------ nodes and kubectl

    def kubectl(
        self,
        *args: str,
        input_text: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self._bin("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input_text,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise ClusterError(
                f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def apply(self, manifests: Iterable[dict[str, Any]]) -> None:
        text = yaml.safe_dump_all(list(manifests))
        self.kubectl("apply", "--server-side", "-f", "-", input_text=text)

    def add_nodes(self, nodes: Sequence[NodeSpec], parallelism: int = 16) -> None:
        """Create Node objects (status included) for kwok to bring up."""
        self.progress(f"creating {len(nodes)} simulated nodes ...")
        from kubernetes import client as k8s_client  # heavy import, only when needed

        api = k8s_client.CoreV1Api(self.api_client())

        def create(node: NodeSpec) -> None:
            # Node create keeps status (kubelets register that way), so one call per node.
            api.create_node(node.manifest())  # type: ignore[arg-type]  # dicts are accepted

        with ThreadPoolExecutor(max_workers=parallelism) as pool:
            list(pool.map(create, nodes))

    def api_client(self) -> Any:
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config

        configuration = k8s_client.Configuration()
        k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig), client_configuration=configuration
        )
        configuration.connection_pool_maxsize = 32
        return k8s_client.ApiClient(configuration)

    def ready_nodes(self) -> set[str]:
        status, body = self.api_get("/api/v1/nodes")
        if status != 200:
            raise ClusterError(f"listing nodes failed: {status} {body[:200]!r}")
        ready = set()
        for item in json.loads(body)["items"]:
            conditions = item.get("status", {}).get("conditions", [])
            # Ready, and the node lifecycle controller has lifted the not-ready taint it
            # puts on new nodes: only then does the scheduler (and cellguard) use the node.
            taints = {t.get("key") for t in item.get("spec", {}).get("taints") or []}
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) and not (
                taints & {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}
            ):
                ready.add(item["metadata"]["name"])
        return ready

    def wait_nodes_ready(self, names: Iterable[str], timeout: float = 60.0) -> None:
        wanted = set(names)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            missing = wanted - self.ready_nodes()
            if not missing:
                return
            time.sleep(0.25)
        raise ClusterError(f"nodes not Ready after {timeout:.0f} s: {sorted(missing)[:10]}")

    def log_tails(self, lines: int = 30) -> str:
        parts = [log_tails(self.processes.values(), lines)]
        parts += [node.log_tails(lines) for node in self.real_nodes]
        return "\n".join(parts)


def default_nodes(count: int, prefix: str = "node") -> list[NodeSpec]:
    width = max(2, len(str(count)))
    return [NodeSpec(name=f"{prefix}-{i:0{width}d}") for i in range(1, count + 1)]
