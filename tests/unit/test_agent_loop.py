"""The agent's write path and loop: the requests the Kubernetes client really sends (to a
tiny recording HTTP server, not a mock of the client), retries, pacing, and signals.

The end-to-end proof against a real API server lives with the e2e tests."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from kubernetes import client

from cellguard import __version__
from cellguard.agent.cli import main
from cellguard.agent.kube import NodeBudgetPublisher
from cellguard.agent.loop import PublishError, Reporter, run_reports
from cellguard.api.v1alpha1 import KubepodsPids, NodeBudget, NodeBudgetSpec, PodThreads

NODE = "node-a"
NODE_PATH = f"/api/v1/nodes/{NODE}"
BUDGET_PATH = f"/apis/cellguard.io/v1alpha1/nodebudgets/{NODE}"
NODE_UID = "6d3c8f2e-0000-4000-8000-000000000001"
POD_UID = "0b6c5bd8-2f4e-4c8a-9d1e-5a7f3c2b1a00"
OTHER_POD_UID = "3f2a9e4d-7b1c-4e5f-8a6d-1c9b8e7f6d11"
REPO_OPERATOR_DIR = Path(__file__).resolve().parents[2] / "operator"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeApiServer:
    """Answers from `routes` ((method, path) -> (status, JSON body)), records each request."""

    url: str
    routes: dict[tuple[str, str], tuple[int, dict[str, Any]]]
    requests: list[Recorded] = field(default_factory=list)
    # Set to hold PATCH requests until released; `patch_arrived` tells the test one is held.
    hold_patches: threading.Event | None = None
    patch_arrived: threading.Event = field(default_factory=threading.Event)

    def paths(self) -> list[tuple[str, str]]:
        return [(request.method, request.path) for request in self.requests]


@pytest.fixture
def api_server() -> Iterator[FakeApiServer]:
    state: FakeApiServer

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            url = urlsplit(self.path)
            state.requests.append(
                Recorded(
                    method=self.command,
                    path=url.path,
                    query=parse_qs(url.query),
                    headers={name.lower(): value for name, value in self.headers.items()},
                    body=self.rfile.read(length),
                )
            )
            if self.command == "PATCH":
                state.patch_arrived.set()
                if state.hold_patches is not None:
                    state.hold_patches.wait(timeout=30)
            status, payload = state.routes.get(
                (self.command, url.path),
                (
                    404,
                    {"kind": "Status", "code": 404, "message": "not found", "reason": "NotFound"},
                ),
            )
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PATCH = _answer  # noqa: N815 - BaseHTTPRequestHandler's naming

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # An agent that abandoned its write has hung up: answering it fails, harmlessly.
    server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
    state = FakeApiServer(url=f"http://127.0.0.1:{server.server_address[1]}", routes={})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        if state.hold_patches is not None:
            state.hold_patches.set()
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def _restore_agent_log_level() -> Iterator[None]:
    # main() sets the agent logger's level, which would outlive the test that called it.
    agent_logger = logging.getLogger("cellguard.agent")
    level = agent_logger.level
    yield
    agent_logger.setLevel(level)


def node_exists(server: FakeApiServer) -> None:
    server.routes[("GET", NODE_PATH)] = (
        200,
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "uid": NODE_UID}},
    )


def budget_accepted(server: FakeApiServer) -> None:
    server.routes[("PATCH", BUDGET_PATH)] = (200, {"apiVersion": "cellguard.io/v1alpha1"})


def publisher_for(server: FakeApiServer) -> NodeBudgetPublisher:
    configuration = client.Configuration(host=server.url)
    return NodeBudgetPublisher(client.ApiClient(configuration), NODE)


def a_spec(**changes: Any) -> NodeBudgetSpec:
    spec = NodeBudgetSpec(
        node_name=NODE,
        threads_max=126544,
        pid_max=4194304,
        threads_in_use=1234,
        kubepods=KubepodsPids(cgroup_version="v2", path="/sys/fs/cgroup/kubepods.slice", max=8192),
        pod_pids_limit=None,
        pods=[
            PodThreads(uid=POD_UID, threads=212, peak=230),
            PodThreads(uid=OTHER_POD_UID, threads=31),
        ],
        observed_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        agent_version=__version__,
        errors=["/sys/fs/cgroup/kubepods.slice/pids.current: Permission denied"],
    )
    return spec.model_copy(update=changes)


def patches(server: FakeApiServer) -> list[Recorded]:
    return [request for request in server.requests if request.method == "PATCH"]


# --------------------------------------------------------------------------- the write path


def test_the_budget_is_server_side_applied_as_the_agent_and_owned_by_the_node(
    api_server: FakeApiServer,
) -> None:
    node_exists(api_server)
    budget_accepted(api_server)

    publisher_for(api_server)(a_spec())

    assert api_server.paths() == [("GET", NODE_PATH), ("PATCH", BUDGET_PATH)]
    (patch,) = patches(api_server)
    assert patch.headers["content-type"] == "application/apply-patch+yaml"
    assert patch.query == {"fieldManager": ["cellguard-agent"], "force": ["true"]}
    body = yaml.safe_load(patch.body)  # the client sends JSON, which is YAML
    assert body == {
        "apiVersion": "cellguard.io/v1alpha1",
        "kind": "NodeBudget",
        "metadata": {
            "name": NODE,
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": NODE_UID}
            ],
        },
        "spec": {
            "nodeName": NODE,
            "threadsMax": 126544,
            "pidMax": 4194304,
            "threadsInUse": 1234,
            # Unknown figures (current, podPidsLimit) are left out, not sent as null.
            "kubepods": {
                "cgroupVersion": "v2",
                "path": "/sys/fs/cgroup/kubepods.slice",
                "max": 8192,
                "unlimited": False,
            },
            # A pod's unknown peak (a kernel without pids.peak) is left out likewise.
            "pods": [
                {"uid": POD_UID, "threads": 212, "peak": 230},
                {"uid": OTHER_POD_UID, "threads": 31},
            ],
            "observedAt": "2026-01-02T03:04:05Z",
            "agentVersion": __version__,
            "errors": ["/sys/fs/cgroup/kubepods.slice/pids.current: Permission denied"],
        },
    }
    # What was sent is a valid NodeBudget that round-trips to the same spec.
    assert NodeBudget.model_validate(body).spec == a_spec()


def test_the_node_is_looked_up_until_found_then_remembered(api_server: FakeApiServer) -> None:
    budget_accepted(api_server)
    publish = publisher_for(api_server)

    publish(a_spec())  # the Node does not exist (yet): no owner
    node_exists(api_server)
    publish(a_spec())
    publish(a_spec())

    assert api_server.paths() == [
        ("GET", NODE_PATH),
        ("PATCH", BUDGET_PATH),
        ("GET", NODE_PATH),
        ("PATCH", BUDGET_PATH),
        ("PATCH", BUDGET_PATH),
    ]
    owners = [json.loads(p.body)["metadata"].get("ownerReferences") for p in patches(api_server)]
    assert [owner is None for owner in owners] == [True, False, False]


def test_without_permission_to_read_nodes_the_budget_is_still_written(
    api_server: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    api_server.routes[("GET", NODE_PATH)] = (403, {"kind": "Status", "reason": "Forbidden"})
    budget_accepted(api_server)
    publish = publisher_for(api_server)

    publish(a_spec())
    publish(a_spec())

    # Asked once, warned once, then no more asking.
    assert api_server.paths() == [
        ("GET", NODE_PATH),
        ("PATCH", BUDGET_PATH),
        ("PATCH", BUDGET_PATH),
    ]
    assert all("ownerReferences" not in json.loads(p.body)["metadata"] for p in patches(api_server))
    assert sum("not allowed to get node" in r.message for r in caplog.records) == 1


def test_a_failed_node_lookup_fails_the_report_rather_than_drop_the_owner(
    api_server: FakeApiServer,
) -> None:
    # A server error says nothing about whether the node exists: the report waits for the
    # next interval rather than guess.
    api_server.routes[("GET", NODE_PATH)] = (500, {"kind": "Status", "message": "etcd down"})
    budget_accepted(api_server)

    with pytest.raises(PublishError, match="HTTP 500 Internal Server Error: etcd down"):
        publisher_for(api_server)(a_spec())

    assert patches(api_server) == []


def test_an_api_error_is_one_readable_line(api_server: FakeApiServer) -> None:
    node_exists(api_server)
    api_server.routes[("PATCH", BUDGET_PATH)] = (
        422,
        {"kind": "Status", "code": 422, "message": 'NodeBudget "node-a" is invalid: spec.pidMax'},
    )

    with pytest.raises(PublishError) as raised:
        publisher_for(api_server)(a_spec())

    assert str(raised.value) == (
        'nodebudgets/node-a: HTTP 422 Unprocessable Entity: NodeBudget "node-a" is invalid: '
        "spec.pidMax"
    )


def test_an_unreachable_api_server_is_a_publish_error() -> None:
    configuration = client.Configuration(host="http://127.0.0.1:9")  # discard port: refused
    configuration.retries = 0
    publish = NodeBudgetPublisher(client.ApiClient(configuration), NODE)

    with pytest.raises(PublishError, match="nodebudgets/node-a: "):
        publish(a_spec())


def test_a_failed_report_is_retried_next_interval_without_crashing(
    api_server: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    node_exists(api_server)
    api_server.routes[("PATCH", BUDGET_PATH)] = (500, {"kind": "Status", "message": "etcd down"})
    report = Reporter(lambda: a_spec(), publisher_for(api_server))
    caplog.set_level(logging.DEBUG, logger="cellguard.agent")

    assert report() is False
    budget_accepted(api_server)
    assert report() is True

    assert len(patches(api_server)) == 2
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert any("HTTP 500" in w and "etcd down" in w for w in warnings)
    debug = [r.message for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(m.startswith("reported node=node-a threads=1234") for m in debug)
    assert any(" pods=2 " in m for m in debug)


# --------------------------------------------------------------------------- the reporter


def test_read_errors_are_warned_when_they_change_not_every_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="cellguard.agent")
    specs = iter([a_spec(), a_spec(), a_spec(errors=[]), a_spec(errors=["/x: gone"])])
    report = Reporter(lambda: next(specs), lambda spec: None)

    for _ in range(4):
        assert report() is True

    assert [r.message for r in caplog.records if r.levelno >= logging.INFO] == [
        "cannot read /sys/fs/cgroup/kubepods.slice/pids.current: Permission denied",
        "all figures readable again",
        "cannot read /x: gone",
    ]


def test_an_unexpected_failure_is_logged_with_its_traceback_and_survived(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken_read() -> NodeBudgetSpec:
        raise RuntimeError("a bug")

    assert Reporter(broken_read, lambda spec: None)() is False
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None


# --------------------------------------------------------------------------- pacing


class RecordingStop(threading.Event):
    """A stop event whose waits return at once, recording how long they were asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.waits.append(timeout)
        return self.is_set()


def test_reports_start_every_interval_until_stopped() -> None:
    stop = RecordingStop()
    clock = iter([0.0, 4.0, 30.0, 31.0, 60.0, 60.5])  # start and end of each report
    calls: list[int] = []

    def report() -> bool:
        calls.append(len(calls))
        if len(calls) == 3:
            stop.set()
        return True

    assert run_reports(report, interval=30.0, stop=stop, monotonic=lambda: next(clock)) is True
    # 30 s start to start: the time a report took is taken off the wait.
    assert stop.waits == [26.0, 29.0]
    assert calls == [0, 1, 2]


def test_a_report_slower_than_the_interval_is_followed_at_once() -> None:
    stop = RecordingStop()
    clock = iter([0.0, 45.0, 45.0, 46.0])
    results = iter([False, True])

    def report() -> bool:
        result = next(results)
        if result:
            stop.set()
        return result

    assert run_reports(report, interval=30.0, stop=stop, monotonic=lambda: next(clock)) is True
    assert stop.waits == [0.0]


def test_once_reports_once_and_returns_its_outcome() -> None:
    stop = RecordingStop()
    assert run_reports(lambda: False, interval=30.0, stop=stop, once=True) is False
    assert stop.waits == []


# --------------------------------------------------------------------------- the command


def write_fixture_host(root: Path) -> tuple[Path, Path]:
    proc, sys = root / "proc", root / "sys"
    for relative, content in {
        "sys/kernel/threads-max": "126544\n",
        "sys/kernel/pid_max": "4194304\n",
        "loadavg": "0.52 0.58 0.59 3/1234 56789\n",
    }.items():
        (proc / relative).parent.mkdir(parents=True, exist_ok=True)
        (proc / relative).write_text(content)
    kubepods = sys / "fs/cgroup/kubepods.slice"
    kubepods.mkdir(parents=True)
    (sys / "fs/cgroup/cgroup.controllers").write_text("pids\n")
    (kubepods / "pids.max").write_text("max\n")
    (kubepods / "pids.current").write_text("77\n")
    # A Guaranteed pod on a kernel with pids.peak, a Burstable one without.
    guaranteed = kubepods / f"kubepods-pod{POD_UID.replace('-', '_')}.slice"
    guaranteed.mkdir()
    (guaranteed / "pids.current").write_text("40\n")
    (guaranteed / "pids.peak").write_text("52\n")
    burstable = kubepods / "kubepods-burstable.slice"
    burstable = burstable / f"kubepods-burstable-pod{OTHER_POD_UID.replace('-', '_')}.slice"
    burstable.mkdir(parents=True)
    (burstable / "pids.current").write_text("37\n")
    return proc, sys


FIXTURE_PODS = [
    PodThreads(uid=POD_UID, threads=40, peak=52),
    PodThreads(uid=OTHER_POD_UID, threads=37, peak=None),
]


def write_kubeconfig(path: Path, server_url: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": server_url}}],
                "users": [{"name": "agent", "user": {"token": "t"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "agent"}}],
                "current-context": "fake",
            }
        )
    )
    return path


def host_args(tmp_path: Path) -> list[str]:
    proc, sys = write_fixture_host(tmp_path)
    return ["--node-name", NODE, "--proc-root", str(proc), "--sys-root", str(sys)]


def test_once_print_prints_the_budget_without_any_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kubelet_config = tmp_path / "kubelet.yaml"
    kubelet_config.write_text("podPidsLimit: 4096\n")

    status = main(
        [*host_args(tmp_path), "--kubelet-config", str(kubelet_config), "--once", "--print"]
    )

    assert status == 0
    documents = list(yaml.safe_load_all(capsys.readouterr().out))
    assert len(documents) == 1
    budget = NodeBudget.model_validate(documents[0])
    assert budget.metadata == {"name": NODE}
    assert (budget.spec.threads_in_use, budget.spec.pod_pids_limit) == (1234, 4096)
    assert (budget.spec.kubepods.unlimited, budget.spec.kubepods.current) == (True, 77)
    assert budget.spec.pods == FIXTURE_PODS
    assert budget.spec.errors == []


def test_once_writes_through_the_kubeconfig_and_reports_the_outcome(
    tmp_path: Path, api_server: FakeApiServer
) -> None:
    node_exists(api_server)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api_server.url)
    args = [*host_args(tmp_path), "--kubeconfig", str(kubeconfig), "--once"]

    assert main(args) == 1  # no route for the PATCH yet: 404
    budget_accepted(api_server)
    assert main(args) == 0

    assert [request.headers["authorization"] for request in api_server.requests] == [
        "Bearer t"
    ] * len(api_server.requests)
    assert ("GET", NODE_PATH) in api_server.paths()
    written = json.loads(patches(api_server)[-1].body)
    assert written["spec"]["threadsInUse"] == 1234
    assert written["spec"]["pods"] == [
        {"uid": POD_UID, "threads": 40, "peak": 52},
        {"uid": OTHER_POD_UID, "threads": 37},
    ]
    assert NodeBudget.model_validate(written).spec.pods == FIXTURE_PODS


def test_without_a_node_name_the_agent_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)

    assert main(["--once", "--print"]) == 2
    assert "--node-name or $NODE_NAME is required" in capsys.readouterr().err


def test_node_name_defaults_to_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NODE_NAME", "from-env")

    assert main(["--once", "--print", "--proc-root", str(tmp_path)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["metadata"]["name"] == "from-env"


# --------------------------------------------------------------------------- signals


def start_agent(args: list[str]) -> subprocess.Popen[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO_OPERATOR_DIR)}
    return subprocess.Popen(
        [sys.executable, "-m", "cellguard.agent", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
    )


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_wait_between_reports_with_status_0(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    agent = start_agent([*host_args(tmp_path), "--print", "--interval", "600"])
    try:
        assert agent.stdout is not None
        assert agent.stdout.readline() == "---\n"  # the first report is out: now waiting

        agent.send_signal(stop_signal)

        assert agent.wait(timeout=10) == 0  # far less than the 600 s interval
    finally:
        agent.kill()
        agent.communicate()


def test_a_stop_signal_lets_the_write_in_progress_finish(
    tmp_path: Path, api_server: FakeApiServer
) -> None:
    node_exists(api_server)
    budget_accepted(api_server)
    api_server.hold_patches = threading.Event()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api_server.url)
    agent = start_agent([*host_args(tmp_path), "--kubeconfig", str(kubeconfig)])
    try:
        assert api_server.patch_arrived.wait(timeout=30)
        agent.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert agent.poll() is None  # still waiting for its write

        api_server.hold_patches.set()

        assert agent.wait(timeout=10) == 0
        assert len(patches(api_server)) == 1  # and no second report was started
    finally:
        agent.kill()
        _, stderr = agent.communicate()
    assert "SIGTERM received: stopping after this report" in stderr
    assert "report abandoned" not in stderr


def test_a_second_stop_signal_abandons_the_write(tmp_path: Path, api_server: FakeApiServer) -> None:
    node_exists(api_server)
    budget_accepted(api_server)
    api_server.hold_patches = threading.Event()
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api_server.url)
    agent = start_agent([*host_args(tmp_path), "--kubeconfig", str(kubeconfig)])
    try:
        assert api_server.patch_arrived.wait(timeout=30)
        agent.send_signal(signal.SIGTERM)
        # Two signals sent back to back may be handled as one: let the first land.
        time.sleep(0.5)
        agent.send_signal(signal.SIGTERM)

        assert agent.wait(timeout=10) == 0  # while the server still holds the write
        assert not api_server.hold_patches.is_set()
    finally:
        agent.kill()
        _, stderr = agent.communicate()
    assert "SIGTERM received: stopping after this report" in stderr
    assert "second stop signal: report abandoned" in stderr
