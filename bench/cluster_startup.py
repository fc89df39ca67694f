"""How long the local real control plane takes to be ready with N simulated nodes.

Prints a table and writes bench/results/cluster_startup.json. A benchmark, not a test:
the figure depends on the machine (target: 100 nodes ready in <= 30 s on a warm cache).

    .venv/bin/python bench/cluster_startup.py --nodes 10 100
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from cellguard.devcluster.cluster import LocalCluster, default_nodes
from cellguard.devcluster.toolchain import ensure_binaries

RESULTS = Path(__file__).parent / "results"


def measure(bin_dir: Path, node_count: int) -> dict[str, float]:
    started = time.monotonic()
    cluster = LocalCluster(bin_dir)
    cluster.start()
    control_plane = time.monotonic() - started
    try:
        nodes = default_nodes(node_count)
        cluster.add_nodes(nodes)
        created = time.monotonic() - started
        cluster.wait_nodes_ready([n.name for n in nodes], timeout=300)
        ready = time.monotonic() - started
    finally:
        cluster.stop()
    return {
        "nodes": node_count,
        "control_plane_ready_s": round(control_plane, 2),
        "nodes_created_s": round(created, 2),
        "all_nodes_ready_s": round(ready, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 100])
    args = parser.parse_args()
    tool_started = time.monotonic()
    bin_dir = ensure_binaries(progress=lambda _m: None)
    toolchain_s = time.monotonic() - tool_started
    rows = [measure(bin_dir, n) for n in args.nodes]
    print(f"toolchain check: {toolchain_s:.2f} s")
    print(f"{'nodes':>6} {'control plane (s)':>18} {'nodes created (s)':>18} {'all ready (s)':>14}")
    for row in rows:
        print(
            f"{row['nodes']:>6} {row['control_plane_ready_s']:>18.2f} "
            f"{row['nodes_created_s']:>18.2f} {row['all_nodes_ready_s']:>14.2f}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "cluster_startup.json"
    out.write_text(json.dumps({"toolchain_check_s": round(toolchain_s, 2), "runs": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
