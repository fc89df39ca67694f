"""Randomized placement scenarios on the real scheduler: admitted means placed (issue 13).

Runs N seeded scenarios of cellguard/devcluster/scenarios/placement.py (random pool sizes,
taints, sibling cells NodeExclusive and Shared, uneven placements, random scale-ups and
rollouts) against one local control plane with the operator, and reports the mismatches -
an admitted change left Pending, a refusal that moved a Deployment, a node holding more
pods than the plan assumed - which must be 0, and how long it took.

    .venv/bin/python bench/placement.py --scenarios 100
"""

from __future__ import annotations

import argparse
import time

from _support import cellguard_cluster, load, start_operator, write_result
from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.scenarios import placement

Outcome = placement.Outcome


def _run(cluster: LocalCluster, first: int, count: int) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for seed in range(first, first + count):
        outcome = placement.run_scenario(cluster, seed)
        outcomes.append(outcome)
        print(
            f"seed {seed}: {outcome.changes} changes, {outcome.admitted} admitted, "
            f"{outcome.refused} refused, {len(outcome.mismatches)} mismatches, "
            f"{outcome.seconds:.1f} s",
            flush=True,
        )
        for mismatch in outcome.mismatches:
            print(f"  MISMATCH {mismatch}", flush=True)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", type=int, default=100)
    parser.add_argument("--seed", type=int, default=5000, help="first seed")
    args = parser.parse_args()
    outcomes: list[Outcome] = []
    started = time.monotonic()
    with cellguard_cluster() as (cluster, kubeconfig):
        operator = start_operator(cluster, kubeconfig, status_interval=None)
        try:
            outcomes += _run(cluster, args.seed, args.scenarios)
        finally:
            operator.stop()
    elapsed = time.monotonic() - started
    mismatches = [m for o in outcomes for m in o.mismatches]
    summary = {
        "scenarios": len(outcomes),
        "changes": sum(o.changes for o in outcomes),
        "admitted": sum(o.admitted for o in outcomes),
        "refused": sum(o.refused for o in outcomes),
        "mismatches": len(mismatches),
        "seconds": round(elapsed, 1),
        "seconds_per_scenario": round(elapsed / max(1, len(outcomes)), 2),
        "load": load(),
    }
    print()
    print("| scenarios | changes | admitted | refused | mismatches | total s | s/scenario |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(
        f"| {summary['scenarios']} | {summary['changes']} | {summary['admitted']} | "
        f"{summary['refused']} | {summary['mismatches']} | {summary['seconds']} | "
        f"{summary['seconds_per_scenario']} |"
    )
    write_result("placement", {**summary, "mismatch_details": mismatches})
    return 1 if mismatches else 0


if __name__ == "__main__":
    raise SystemExit(main())
