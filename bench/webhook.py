"""What the admission webhook adds to a scale: round trip and `kubectl scale` with vs without.

On a local real control plane with the operator running (URL webhook on loopback), one
cell on a pool of nodes is scaled up 1 -> 2 (timed) and back down (untimed; scale-downs
skip the webhook by its match conditions), in interleaved blocks: with cellguard's
ValidatingWebhookConfiguration registered, then with it removed (the operator keeps
running), and so on, so that both variants see the same machine load. Each block starts
only once the API server is seen to call (or not call) the webhook: a dry-run scale beyond
the cell size cap is refused with it and passes without it.

Measured, per variant:
- `kubectl scale` wall time (a kubectl process each time, as a user would);
- the same PATCH of /scale from this process (no kubectl start-up in the figure);
and, for the webhook alone:
- the operator's own histogram (cellguard_admission_duration_seconds, the handler's time),
  as deltas over the webhook-on blocks only;
- AdmissionReview POSTs sent straight to the operator's webhook URL on a kept-alive TLS
  connection (what the API server's webhook client pays, without the API server).

Target: kubectl scale p50 with the webhook <= 1.15x without.

    .venv/bin/python bench/webhook.py [--n 50] [--block 5] [--direct 300]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import random
import ssl
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from _support import (
    add_pool,
    cellguard_cluster,
    load,
    say,
    start_operator,
    summary_ms,
    write_result,
)
from cellguard.constants import (
    GROUP,
    STREAMCELL_PLURAL,
    VERSION,
    WEBHOOK_CONFIGURATION_NAME,
    WEBHOOK_STREAMCELL_SCALE,
)
from cellguard.devcluster.cells import (
    apply_admitted,
    cell,
    cell_manifest,
    ensure_namespace,
    get_json,
    wait_cell_pods,
)
from cellguard.devcluster.cluster import LocalCluster
from cellguard.metrics import ADMISSION_DURATION as ADMISSION_DURATION_METRIC

NS = "bench-webhook"
CELL = "probe"


# ---------------------------------------------------------------------- toggling the webhook


def saved_configuration(cluster: LocalCluster) -> dict[str, Any]:
    config: dict[str, Any] = get_json(
        cluster, "validatingwebhookconfiguration", WEBHOOK_CONFIGURATION_NAME
    )
    metadata = config["metadata"]
    config["metadata"] = {"name": metadata["name"], "labels": metadata.get("labels", {})}
    return config


def webhook_active(api: client.CustomObjectsApi) -> bool:
    """True when the API server calls the webhook: it refuses a dry run past the size cap."""
    try:
        api.patch_namespaced_custom_object_scale(
            GROUP,
            VERSION,
            NS,
            STREAMCELL_PLURAL,
            CELL,
            {"spec": {"replicas": 99_999}},
            dry_run="All",
        )
    except ApiException as exc:
        if exc.status == 403:
            return True
        raise
    return False


def set_webhook(
    cluster: LocalCluster, api: client.CustomObjectsApi, config: dict[str, Any], on: bool
) -> float:
    """Register or remove the configuration; wait until the API server acts on it."""
    started = time.monotonic()
    if on:
        cluster.kubectl("create", "-f", "-", input_text=json.dumps(config))
    else:
        cluster.kubectl("delete", "validatingwebhookconfiguration", WEBHOOK_CONFIGURATION_NAME)
    while webhook_active(api) != on:
        if time.monotonic() - started > 60:
            raise RuntimeError(f"the API server did not pick up webhook {'on' if on else 'off'}")
        time.sleep(0.05)
    return time.monotonic() - started


# ---------------------------------------------------------------------- the operator's histogram


def histogram(metrics_text: str, handler: str) -> dict[float, float]:
    """Cumulative bucket counts (upper bound -> count) of one handler's admission histogram."""
    buckets: dict[float, float] = {}
    prefix = f"{ADMISSION_DURATION_METRIC}_bucket{{"
    for line in metrics_text.splitlines():
        if not line.startswith(prefix) or f'webhook="{handler}"' not in line:
            continue
        labels, value = line.rsplit(" ", 1)
        le = labels.split('le="', 1)[1].split('"', 1)[0]
        buckets[float("inf") if le == "+Inf" else float(le)] = float(value)
    for name in ("sum", "count"):
        for line in metrics_text.splitlines():
            if (
                line.startswith(f"{ADMISSION_DURATION_METRIC}_{name}{{")
                and f'webhook="{handler}"' in line
            ):
                buckets[-1.0 if name == "sum" else -2.0] = float(line.rsplit(" ", 1)[1])
    return buckets


def histogram_summary(delta: dict[float, float]) -> dict[str, float]:
    """p50/p90/p99 by linear interpolation inside the buckets, and the exact mean."""
    count = delta.get(-2.0, 0.0)
    total = delta.get(-1.0, 0.0)
    bounds = sorted(b for b in delta if b >= 0)

    def quantile(q: float) -> float:
        rank = q * count
        lower_bound, lower_count = 0.0, 0.0
        for bound in bounds:
            if delta[bound] >= rank:
                if bound == float("inf"):
                    return lower_bound * 1000
                span = delta[bound] - lower_count
                fraction = (rank - lower_count) / span if span else 1.0
                return (lower_bound + (bound - lower_bound) * fraction) * 1000
            lower_bound, lower_count = bound, delta[bound]
        return float("nan")

    return {
        "n": int(count),
        "p50_ms": round(quantile(0.5), 2),
        "p90_ms": round(quantile(0.9), 2),
        "p99_ms": round(quantile(0.99), 2),
        "mean_ms": round(total / count * 1000, 3) if count else float("nan"),
    }


# ---------------------------------------------------------------------- direct AdmissionReviews


def admission_review(replicas_from: int, replicas_to: int) -> bytes:
    def scale(replicas: int) -> dict[str, Any]:
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": CELL, "namespace": NS},
            "spec": {"replicas": replicas},
        }

    resource = {"group": GROUP, "version": VERSION, "resource": STREAMCELL_PLURAL}
    kind = {"group": "autoscaling", "version": "v1", "kind": "Scale"}
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": kind,
            "resource": resource,
            "subResource": "scale",
            "requestKind": kind,
            "requestResource": resource,
            "requestSubResource": "scale",
            "name": CELL,
            "namespace": NS,
            "operation": "UPDATE",
            "userInfo": {"username": "bench"},
            "object": scale(replicas_to),
            "oldObject": scale(replicas_from),
            "dryRun": True,  # nothing is reserved for it
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions"},
        },
    }
    return json.dumps(review).encode()


def direct_round_trips(
    config: dict[str, Any], count: int, fresh: bool = False
) -> tuple[list[float], int]:
    """POST AdmissionReviews to the webhook URL over one kept-alive TLS connection (or a
    new connection, TLS handshake included, for each one when `fresh`)."""
    hook = next(h for h in config["webhooks"] if h["name"].startswith(WEBHOOK_STREAMCELL_SCALE))
    url = hook["clientConfig"]["url"]
    host_port, path = url.removeprefix("https://").split("/", 1)
    host, port = host_port.rsplit(":", 1)
    with tempfile.NamedTemporaryFile("wb", suffix=".crt", delete=False) as ca:
        ca.write(base64.b64decode(hook["clientConfig"]["caBundle"]))
    context = ssl.create_default_context(cafile=ca.name)
    Path(ca.name).unlink()
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
    samples, allowed = [], 0
    for index in range(count + 10):
        body = admission_review(1, 2)
        started = time.perf_counter()
        if fresh:
            connection.close()
            connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
        connection.request("POST", f"/{path}", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
        elapsed = time.perf_counter() - started
        if index >= 10:  # the first ones warm the connection and the handler up
            samples.append(elapsed)
            allowed += bool(answer["response"]["allowed"])
    connection.close()
    return samples, allowed


# ---------------------------------------------------------------------- main


def bootstrap_ratio_ci(
    with_: list[float], without: list[float], rounds: int = 2_000
) -> tuple[float, float]:
    """95% bootstrap interval of median(with) / median(without)."""
    rng = random.Random(1)
    ratios = sorted(
        statistics.median(rng.choices(with_, k=len(with_)))
        / statistics.median(rng.choices(without, k=len(without)))
        for _ in range(rounds)
    )
    return round(ratios[int(0.025 * rounds)], 3), round(ratios[int(0.975 * rounds)], 3)


def kubectl_scale(cluster: LocalCluster, replicas: int) -> float:
    started = time.perf_counter()
    cluster.kubectl("scale", f"streamcell/{CELL}", "-n", NS, f"--replicas={replicas}")
    return time.perf_counter() - started


def api_scale(api: client.CustomObjectsApi, replicas: int) -> float:
    started = time.perf_counter()
    api.patch_namespaced_custom_object_scale(
        GROUP, VERSION, NS, STREAMCELL_PLURAL, CELL, {"spec": {"replicas": replicas}}
    )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50, help="timed scale-ups per variant")
    parser.add_argument("--block", type=int, default=5, help="scale-ups per interleaved block")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--direct", type=int, default=300, help="direct AdmissionReviews")
    args = parser.parse_args()

    with cellguard_cluster() as (cluster, kubeconfig):
        operator = start_operator(cluster, kubeconfig)
        try:
            ensure_namespace(cluster, NS)
            pool = add_pool(cluster, "wh", args.nodes)
            manifest = cell_manifest(
                NS, CELL, service=CELL, replicas=1, base=10, per_peer=1, pool=pool
            )
            manifest["spec"]["isolation"] = "Shared"
            apply_admitted(cluster, manifest)
            wait_cell_pods(cluster, NS, CELL, 1)
            api = client.CustomObjectsApi(cluster.api_client())
            config = saved_configuration(cluster)
            # Warm-up: kubectl's discovery cache, connections, the operator's snapshot.
            for _ in range(3):
                kubectl_scale(cluster, 2)
                kubectl_scale(cluster, 1)

            samples: dict[str, dict[str, list[float]]] = {
                v: {"kubectl": [], "api": []} for v in ("webhook", "no_webhook")
            }
            toggles: list[float] = []
            handler_delta: dict[float, float] = {}
            say(f"{args.n} scale-ups each way, in blocks of {args.block}")
            started = time.monotonic()
            on = True
            done = {"webhook": 0, "no_webhook": 0}
            while min(done.values()) < args.n:
                variant = "webhook" if on else "no_webhook"
                before = histogram(operator.metrics(timeout=30), WEBHOOK_STREAMCELL_SCALE)
                for _ in range(min(args.block, args.n - done[variant])):
                    samples[variant]["kubectl"].append(kubectl_scale(cluster, 2))
                    cluster.kubectl("scale", f"streamcell/{CELL}", "-n", NS, "--replicas=1")
                    samples[variant]["api"].append(api_scale(api, 2))
                    api_scale(api, 1)
                    done[variant] += 1
                if on:
                    after = histogram(operator.metrics(timeout=30), WEBHOOK_STREAMCELL_SCALE)
                    for key, value in after.items():
                        handler_delta[key] = (
                            handler_delta.get(key, 0.0) + value - before.get(key, 0)
                        )
                on = not on
                toggles.append(set_webhook(cluster, api, config, on))
            scale_seconds = time.monotonic() - started
            load_scales = load()
            if not webhook_active(api):
                set_webhook(cluster, api, config, True)
            say(f"{args.direct} AdmissionReviews straight to the webhook")
            direct, direct_allowed = direct_round_trips(config, args.direct)
            fresh, _ = direct_round_trips(config, args.direct // 2, fresh=True)
            load_direct = load()
            final_replicas = cell(cluster, NS, CELL)["spec"]["replicas"]
        finally:
            operator.stop()

    rows = {
        variant: {kind: summary_ms(values) for kind, values in kinds.items()}
        for variant, kinds in samples.items()
    }
    ratios = {
        kind: {
            q: round(rows["webhook"][kind][q] / rows["no_webhook"][kind][q], 3)
            for q in ("p50_ms", "p99_ms", "mean_ms")
        }
        for kind in ("kubectl", "api")
    }
    ratio_ci = {
        kind: bootstrap_ratio_ci(samples["webhook"][kind], samples["no_webhook"][kind])
        for kind in ("kubectl", "api")
    }
    handler = histogram_summary(handler_delta)
    direct_summary = summary_ms(direct)

    print(f"\nscale-ups 1 -> 2, interleaved (load average 1/5/15 min at end: {load_scales})")
    print(f"{'what':<34} {'n':>4} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for kind, title in (("kubectl", "kubectl scale"), ("api", "PATCH /scale (python)")):
        for variant in ("webhook", "no_webhook"):
            r = rows[variant][kind]
            label = f"{title}, {'with' if variant == 'webhook' else 'without'} webhook"
            print(
                f"{label:<34} {r['n']:>4} {r['p50_ms']:>8.1f} {r['p90_ms']:>8.1f} "
                f"{r['p99_ms']:>8.1f} {r['mean_ms']:>8.1f}"
            )
        ratio = ratios[kind]
        low, high = ratio_ci[kind]
        print(
            f"{'  ratio with/without':<34} {'':>4} {ratio['p50_ms']:>7.2f}x {'':>8} "
            f"{ratio['p99_ms']:>7.2f}x {ratio['mean_ms']:>7.2f}x"
            f"   (p50 ratio 95% bootstrap interval {low:.2f}-{high:.2f}x)"
        )
    print(f"\nthe webhook alone (load average at end: {load_direct})")
    print(
        f"{'operator histogram (handler time)':<34} {handler['n']:>4} {handler['p50_ms']:>8.2f} "
        f"{handler['p90_ms']:>8.2f} {handler['p99_ms']:>8.2f} {handler['mean_ms']:>8.2f}"
    )
    d = direct_summary
    print(
        f"{'AdmissionReview POST, kept-alive':<34} {d['n']:>4} {d['p50_ms']:>8.2f} "
        f"{d['p90_ms']:>8.2f} {d['p99_ms']:>8.2f} {d['mean_ms']:>8.2f}"
    )
    f = summary_ms(fresh)
    print(
        f"{'AdmissionReview POST, new TLS each':<34} {f['n']:>4} {f['p50_ms']:>8.2f} "
        f"{f['p90_ms']:>8.2f} {f['p99_ms']:>8.2f} {f['mean_ms']:>8.2f}"
    )
    print(
        f"\ntarget: kubectl scale p50 with/without <= 1.15x: {ratios['kubectl']['p50_ms']:.2f}x "
        f"({'met' if ratios['kubectl']['p50_ms'] <= 1.15 else 'MISSED'}); "
        f"toggle wait p50 {summary_ms(toggles)['p50_ms']:.0f} ms; final replicas {final_replicas}"
    )
    out = write_result(
        "webhook",
        {
            "n": args.n,
            "block": args.block,
            "nodes": args.nodes,
            "scale_seconds": round(scale_seconds, 1),
            "load_average_after_scales": load_scales,
            "load_average_after_direct": load_direct,
            "scale_up": rows,
            "ratio_with_over_without": ratios,
            "p50_ratio_95pct_bootstrap_interval": ratio_ci,
            "operator_histogram_webhook_blocks": handler,
            "direct_admission_review": {**direct_summary, "allowed": direct_allowed},
            "direct_admission_review_new_connection_each": summary_ms(fresh),
            "toggle_wait": summary_ms(toggles),
        },
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
