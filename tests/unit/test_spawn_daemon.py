"""Processes the dev cluster, the demo and the tests start: out of the terminal's reach,
never outliving the process that owns them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from cellguard.devcluster.cluster import spawn_daemon

# A parent that starts a daemon, says its pid, then waits to be killed.
PARENT = """
import sys, time
from pathlib import Path
from cellguard.devcluster.cluster import spawn_daemon
popen = spawn_daemon(["sleep", "60"], Path(sys.argv[1]), env={"PATH": "/usr/bin:/bin"})
print(popen.pid, flush=True)
time.sleep(60)
"""


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z":  # exited; its parent (init here) has not reaped it yet
            return True
        time.sleep(0.05)
    return False


def test_a_daemon_has_its_own_process_group_so_a_terminals_ctrl_c_misses_it(
    tmp_path: Path,
) -> None:
    popen = spawn_daemon(["sleep", "60"], tmp_path / "sleep.log", env={"PATH": "/usr/bin:/bin"})
    try:
        assert os.getpgid(popen.pid) == popen.pid != os.getpgid(0)
    finally:
        popen.kill()
        popen.wait()


def test_a_daemon_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "daemon.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    daemon_pid = int(parent.stdout.readline())
    assert not _gone(daemon_pid, timeout=0.2)
    parent.kill()  # no clean-up code runs: the kernel must stop the daemon
    parent.wait()
    assert _gone(daemon_pid), f"daemon {daemon_pid} outlived its parent"
