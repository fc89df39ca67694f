"""1,000 generated invalid StreamCells and policies against the real API server and webhook.

The hypothesis strategies of cellguard/devcluster/scenarios/invalid_specs.py, which
tests/e2e/test_load_faults.py uses too (one thing broken in an otherwise valid object:
negative replicas or perPeer, margin >= 1, unknown fields, wrong types, missing required
fields, bad enums, CEL rules, templates with nodeName ...), each sent as a
server-side dry run with strict field validation, create or replace. Every one must be
refused with 400/403/422 naming the field or the reason - never accepted, never a 5xx.
Also sends --malformed cells whose template (an object the schema cannot look into) holds
wrong shapes, which only the webhook can catch.

Prints a table by category and writes bench/results/invalid.json.

    .venv/bin/python bench/invalid.py [--count 1000] [--malformed 100]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter, defaultdict
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from kubernetes import client

from _support import (
    add_pool,
    cellguard_cluster,
    load,
    say,
    start_operator,
    summary_ms,
    write_result,
)
from cellguard.devcluster.cells import (
    apply_admitted,
    cell_manifest,
    ensure_namespace,
    wait_cell_pods,
)
from cellguard.devcluster.scenarios import invalid_specs

NS = "bench-invalid"


def run(strategy: Any, count: int, api: client.CustomObjectsApi) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    @settings(
        max_examples=count,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def send(case: invalid_specs.InvalidCase) -> None:
        answer = invalid_specs.submit_dry_run(api, case)
        rows.append(
            {
                "category": case.category,
                "status": answer.status,
                "seconds": answer.seconds,
                "problem": invalid_specs.judge(case, answer),
                "message": answer.message[:300],
            }
        )

    send()
    return rows


def table(title: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_category: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_category[row["category"]].append(row)
    print(f"\n{title}")
    header = f"{'category':<40} {'n':>5} {'statuses':<26} {'p50 ms':>8} {'p99 ms':>8} {'wrong':>6}"
    print(header)
    print("-" * len(header))
    summary = []
    for category in sorted(by_category):
        items = by_category[category]
        statuses = Counter(r["status"] for r in items)
        latency = summary_ms([r["seconds"] for r in items])
        wrong = [r for r in items if r["problem"]]
        status_text = " ".join(f"{k}x{v}" for k, v in sorted(statuses.items()))
        print(
            f"{category:<40} {len(items):>5} {status_text:<26} {latency['p50_ms']:>8.1f} "
            f"{latency['p99_ms']:>8.1f} {len(wrong):>6}"
        )
        summary.append(
            {
                "category": category,
                "n": len(items),
                "statuses": dict(statuses),
                "latency": latency,
                "wrong": len(wrong),
                "examples_of_wrong": [r["problem"] for r in wrong[:3]],
                "example_message": items[0]["message"],
            }
        )
    statuses = Counter(r["status"] for r in rows)
    total = summary_ms([r["seconds"] for r in rows])
    wrong_total = sum(1 for r in rows if r["problem"])
    print(
        f"{'all':<40} {len(rows):>5} "
        f"{' '.join(f'{k}x{v}' for k, v in sorted(statuses.items())):<26} "
        f"{total['p50_ms']:>8.1f} {total['p99_ms']:>8.1f} {wrong_total:>6}"
    )
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000)
    parser.add_argument("--malformed", type=int, default=100)
    args = parser.parse_args()

    with cellguard_cluster() as (cluster, kubeconfig):
        operator = start_operator(cluster, kubeconfig)
        try:
            ensure_namespace(cluster, NS)
            pool = add_pool(cluster, "inv", 1)
            target = cell_manifest(
                NS, "target", service="target", replicas=1, base=10, per_peer=0, pool=pool
            )
            apply_admitted(cluster, target)
            wait_cell_pods(cluster, NS, "target", 1)
            api = client.CustomObjectsApi(cluster.api_client())
            say(f"sending {args.count} invalid objects")
            started = time.monotonic()
            rows = run(
                invalid_specs.invalid_objects(NS, pool.placement, existing_cell="target"),
                args.count,
                api,
            )
            elapsed = time.monotonic() - started
            load_invalid = load()
            say(f"sending {args.malformed} malformed templates")
            malformed = run(
                invalid_specs.malformed_templates(NS, pool.placement), args.malformed, api
            )
        finally:
            operator.stop()
    print(f"\nload average (1/5/15 min) after the invalid batch: {load_invalid}")
    invalid_summary = table(
        f"{len(rows)} invalid objects in {elapsed:.1f} s (dry run, strict field validation)",
        rows,
    )
    malformed_summary = table(f"{len(malformed)} cells with malformed templates", malformed)
    out = write_result(
        "invalid",
        {
            "load_average_after_invalid": load_invalid,
            "invalid": {
                "count": len(rows),
                "seconds": round(elapsed, 1),
                "statuses": dict(Counter(r["status"] for r in rows)),
                "wrong": sum(1 for r in rows if r["problem"]),
                "by_category": invalid_summary,
            },
            "malformed_templates": {
                "count": len(malformed),
                "statuses": dict(Counter(r["status"] for r in malformed)),
                "wrong": sum(1 for r in malformed if r["problem"]),
                "by_category": malformed_summary,
            },
        },
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
