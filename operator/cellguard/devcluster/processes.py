"""cellguard's own commands as local processes: the one place their command lines are built.

The e2e tests, the benchmarks and the demo run the operator (`cellguard run`) and the node
agent (`cellguard agent`) on this machine against a local control plane. Each process's
output goes to a log file (appended, so a restart keeps what the last run said), and a
`stop` is a SIGTERM with a deadline, then a SIGKILL.

    options = OperatorOptions(kubeconfig=kubeconfig, identity="e2e-operator", status_interval=2)
    operator = OperatorProcess(options, workdir / "operator.log")
    operator.start()            # and waits for /readyz
    operator.metrics()          # the /metrics text
    operator.stop()
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cellguard.devcluster.cluster import free_port, spawn_daemon
from cellguard.devcluster.waiting import wait_for
from cellguard.metrics import NODE_BUDGET_KNOWN

LOOPBACK = "127.0.0.1"
DEFAULT_OPERATOR_NAMESPACE = "cellguard-system"


def cellguard_command(*args: str, profile: Path | None = None) -> list[str]:
    """`python -m cellguard ARGS` with this interpreter; under cProfile (its output written
    to `profile` when the process exits) if a path is given."""
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
    return [sys.executable, *profiler, "-m", "cellguard", *args]


def _tail(path: Path, lines: int, missing: str) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return missing


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """Whether a GET of `url` answers 200 (False on any connection error)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class LoggedProcess:
    """A local child process whose stdout and stderr are appended to `log_path`; `what`
    names it in errors ("the operator exited (1): ...")."""

    def __init__(
        self,
        command: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        what: str = "the process",
    ) -> None:
        self.command = list(command)
        self.log_path = log_path
        self.env = dict(env or {})
        self.what = what
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Spawn the process (unbuffered Python output, `env` over this process's)."""
        self.popen = spawn_daemon(
            self.command,
            self.log_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40.0) -> None:
        """Send `sig` (SIGTERM: a clean stop) and wait; SIGKILL after `timeout` seconds."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(sig)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines, f"(no log at {self.log_path})")

    def check_alive(self) -> None:
        """RuntimeError with the log's tail if the process has exited."""
        if self.popen is not None and self.popen.poll() is not None:
            raise RuntimeError(f"{self.what} exited ({self.popen.returncode}):\n{self.log_tail()}")

    def wait_http(self, url: str, timeout: float = 60.0) -> None:
        """Poll `url` until it answers 200; RuntimeError (with the log's tail) if the
        process exits first or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            if http_ok(url):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.what} not ready after {timeout:.0f} s ({url}); "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.5)


# ---------------------------------------------------------------------- the operator


@dataclass(frozen=True)
class OperatorOptions:
    """What a local `cellguard run` is told: its identity, where it listens, what it watches.

    The webhook and the probes listen on `host` (loopback). In `webhook_mode="url"` the
    operator registers its webhooks by URL (https://127.0.0.1:WEBHOOK_PORT unless
    `extra_args` give a --webhook-url), as a process off the cluster must. A field left at
    None is the operator's own default.
    """

    kubeconfig: Path
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE
    identity: str | None = None  # None: the host name (the Lease holder's name)
    namespaces: tuple[str, ...] = ()  # watched namespaces; none: every namespace
    webhook_mode: Literal["url", "service"] = "url"
    host: str = LOOPBACK
    webhook_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    status_interval: float | None = None  # seconds; None: the operator's default (10)
    extra_args: tuple[str, ...] = ()  # any further flags, last

    def args(self) -> list[str]:
        """The command line after `cellguard`."""
        return [
            "run",
            f"--kubeconfig={self.kubeconfig}",
            f"--webhook-mode={self.webhook_mode}",
            f"--webhook-host={self.host}",
            f"--webhook-port={self.webhook_port}",
            f"--probe-host={self.host}",
            f"--health-port={self.health_port}",
            f"--metrics-port={self.metrics_port}",
            f"--operator-namespace={self.operator_namespace}",
            *(f"--namespace={n}" for n in self.namespaces),
            *([f"--identity={self.identity}"] if self.identity is not None else []),
            *(
                [f"--status-interval={self.status_interval:g}"]
                if self.status_interval is not None
                else []
            ),
            *self.extra_args,
        ]


class OperatorProcess(LoggedProcess):
    """`cellguard run` as a local process, ready when its /readyz answers 200."""

    def __init__(
        self,
        options: OperatorOptions,
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        profile: Path | None = None,
    ) -> None:
        command = cellguard_command(*options.args(), profile=profile)
        super().__init__(command, log_path, env=env, what="the operator")
        self.options = options

    @property
    def webhook_port(self) -> int:
        return self.options.webhook_port

    @property
    def health_port(self) -> int:
        return self.options.health_port

    @property
    def metrics_port(self) -> int:
        return self.options.metrics_port

    @property
    def readyz_url(self) -> str:
        return f"http://{self.options.host}:{self.health_port}/readyz"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.options.host}:{self.metrics_port}/metrics"

    def start(self, wait: bool = True, timeout: float = 60.0) -> None:
        """Spawn the operator; with `wait`, return once it is ready (see `wait_ready`)."""
        super().start()
        if wait:
            self.wait_ready(timeout=timeout)

    def ready(self) -> bool:
        return http_ok(self.readyz_url)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until /readyz answers 200; RuntimeError with the log's tail if the operator exits
        first or does not get ready in time."""
        self.wait_http(self.readyz_url, timeout=timeout)

    def metrics(self, timeout: float = 5.0) -> str:
        """The Prometheus text of /metrics."""
        with urllib.request.urlopen(self.metrics_url, timeout=timeout) as response:
            text: str = response.read().decode()
            return text

    def wait_knows_budgets(self, nodes: Iterable[str], timeout: float = 30.0) -> None:
        """Wait until the operator's planner snapshot knows the budget of each of `nodes`
        (`cellguard_node_budget_known` 1 for each, from its last status round). It takes
        budget reports at most once a second: a cell created just after its pool's first
        reports may be admitted on the nodes known so far, and claim fewer of them than
        the test then expects."""
        wanted = set(nodes)

        def known() -> bool | None:
            text = self.metrics()
            seen = {n for n in wanted if f'{NODE_BUDGET_KNOWN}{{node="{n}"}} 1.0' in text}
            return True if seen == wanted else None

        wait_for(known, what=f"the operator's budgets of {sorted(wanted)}", timeout=timeout)


# ---------------------------------------------------------------------- the node agent


@dataclass(frozen=True)
class AgentOptions:
    """What a local `cellguard agent` is told: which node it reports, as whom, how often."""

    node_name: str
    kubeconfig: Path | None = None  # None: in-cluster, else ~/.kube/config
    interval: float | None = None  # seconds between reports; None: the agent's default
    sys_root: Path | None = None  # None: /sys
    proc_root: Path | None = None  # None: /proc
    log_level: Literal["debug", "info", "warning", "error"] | None = None
    once: bool = False  # report once and exit
    extra_args: tuple[str, ...] = ()

    def args(self) -> list[str]:
        """The command line after `cellguard`."""
        optional = {
            "--interval": f"{self.interval:g}" if self.interval is not None else None,
            "--kubeconfig": self.kubeconfig,
            "--sys-root": self.sys_root,
            "--proc-root": self.proc_root,
            "--log-level": self.log_level,
        }
        return [
            "agent",
            *(["--once"] if self.once else []),
            f"--node-name={self.node_name}",
            *(f"{flag}={value}" for flag, value in optional.items() if value is not None),
            *self.extra_args,
        ]


class AgentProcess(LoggedProcess):
    """`cellguard agent` as a local process (it reads this machine's /proc and /sys)."""

    def __init__(
        self, options: AgentOptions, log_path: Path, *, env: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(cellguard_command(*options.args()), log_path, env=env, what="the agent")
        self.options = options

    @property
    def node(self) -> str:
        return self.options.node_name

    def terminate(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; the exit status and how long the agent took to exit."""
        assert self.popen is not None, "the agent was never started"
        started = time.monotonic()
        self.popen.send_signal(signal.SIGTERM)
        code = self.popen.wait(timeout=timeout)
        return code, time.monotonic() - started
