"""The README's main command, run non-interactively end to end: every step's outcome."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_demo_tells_the_whole_story() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cellguard", "demo", "--non-interactive"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
        check=False,
    )
    raw = result.stdout + result.stderr
    assert result.returncode == 0, raw[-4000:]
    # The console wraps long lines to its width: compare on single-spaced text.
    out = " ".join(raw.split())
    # 1. the cell is created and its status is filled (printer columns).
    assert "streamcell.cellguard.io/ingest-a created" in out
    assert re.search(r"ingest-a 10 10 \d+ 0\.\d\d stream-\d\d", out)
    # 2. the safe scale-up is admitted.
    assert "streamcell.cellguard.io/ingest-a scaled" in out
    # 3. the Kinesis replay is refused, naming node, figure, limit and what fits.
    assert re.search(
        r"scaling streams/ingest-a from 14 to 18 replicas would put node stream-\d\d at "
        r"[\d,]+ threads \(limit 32,768 less 20% margin = 26,214\); at most 17 replicas fit; "
        r"add a cell",
        out,
    )
    # 4. the same capacity as a second cell is admitted.
    assert "streamcell.cellguard.io/ingest-b created" in out
    assert re.search(r"ingest-b 4 4 \d+", out)
    # ... each cell on a node pool of its own: 14 nodes for ingest-a, 4 for ingest-b.
    assert len(re.findall(r"stream-\d\d Ready \S+ \S+ \S+ streams\.ingest-a\b", out)) == 14
    assert len(re.findall(r"stream-\d\d Ready \S+ \S+ \S+ streams\.ingest-b\b", out)) == 4
    # 5. the headroom in Prometheus, the alert firing, the refusal counted.
    assert re.search(
        r"FIRING CellguardNodeThreadHeadroomCritical node=stream-\d\d severity=critical", out
    )
    # One refused request, counted once per admission call: the API server calls the webhook
    # again when it judged the scale against a stale cached copy of the cell.
    counted = re.search(r"cellguard_decisions_total refused = (\d+)", out)
    assert counted, out[-3000:]
    assert 1 <= int(counted.group(1)) <= 2, counted.group(0)
    # Everything torn down.
    assert "stopped; everything cleaned up" in out
