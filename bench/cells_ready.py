"""How long 1,000 new cells take to reach Ready=True.

A local real control plane with a pool of kwok nodes (NodeBudgets on all), the operator
running as a local process with the production status interval (10 s, --status-interval
to change it). 1,000 small cells (1 replica each; 10 cells per service, NodeExclusive, so
each service's cells land on distinct nodes) are created at once from 16 client threads,
each through the admission webhook. Polled every second: pods Running (what the control
plane and kwok deliver) and cells whose Ready condition is True (what the operator reports).

In the same run, first, the baseline: as many plain one-replica Deployments with the same
pod template (the one the operator writes into a cell's Deployment, taken from a probe
cell, with cellguard's label and annotation keys renamed so that the operator takes no
notice of them) created the same way on the same nodes, polled every second until each is
Available with its replica available; then deleted (and their pods gone) before the cells.
A second baseline (`--baseline children`; both run by default) gives each Deployment the
headless Service and the PodDisruptionBudget the operator writes for a cell (as the probe
cell's): every object a cell makes, created by hand, without cellguard. The control plane's
CPU seconds (each process, and the operator's) are recorded for each of the three, and
each round's CPU over the machine's cores (`cpu_floor_s`): the time the same work takes
with every core busy, which no order of the same requests beats on this machine. The
Service-and-PDB baseline's floor over the plain Deployments' time says how near 1.5x any
operator that makes those objects could come here.

Targets: all 1,000 Ready within 60 s of the first create; and within 1.5x the time the
baseline's Deployments took to all be Available.

    .venv/bin/python bench/cells_ready.py [--cells 1000] [--nodes 120] [--status-interval 10]
        [--baseline plain|children|both|none] [--compare-args=--converge-workers=48]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from _support import (
    add_pool,
    api_requests,
    cellguard_cluster,
    control_plane_cpu,
    cpu_used,
    load,
    process_cpu_s,
    requests_used,
    rss_kib,
    say,
    start_operator,
    summary_ms,
    write_result,
)
from cellguard.constants import GROUP, STREAMCELL_PLURAL, VERSION
from cellguard.devcluster.cells import cell_manifest, ensure_namespace, get_json
from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.pools import NodePool
from cellguard.devcluster.processes import OperatorProcess
from cellguard.devcluster.scenarios import load as load_helpers

NS = "bench-ready"
BASE_NS = "bench-ready-base"
PROBE_NS = "bench-ready-probe"
PROBE_CELL, PROBE_SERVICE = "zzprobecell", "zzprobesvc"
BASE_LABELS = "baseline.cellguard.test/"
CELL_POOL_PREFIX = "cellpool.cellguard.io/"


def cpu_floor_s(cpu: Mapping[str, float]) -> float:
    """The CPU seconds a round used (control plane, and the operator for the cells) over the
    machine's cores: no order of the same requests gets them done sooner on this machine."""
    return round(sum(cpu.values()) / (os.cpu_count() or 1), 1)


def is_ready(cell: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (cell.get("status") or {}).get("conditions") or []
    )


def is_available(deployment: dict[str, Any]) -> bool:
    status = deployment.get("status") or {}
    return (status.get("availableReplicas") or 0) >= 1 and any(
        c.get("type") == "Available" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def list_cells(api: client.CustomObjectsApi, namespace: str) -> list[dict[str, Any]]:
    listed: Any = api.list_namespaced_custom_object(
        GROUP, VERSION, namespace, STREAMCELL_PLURAL, _request_timeout=60
    )
    cells: list[dict[str, Any]] = listed["items"]
    return cells


@dataclass
class Followed:
    """A round of creations followed to its end."""

    started: float
    created_at: dict[str, float] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)  # never admitted (refused 2 minutes)
    done_at: dict[str, float] = field(default_factory=dict)  # when each was first seen done
    pods_running_at: float | None = None
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # s, running, done


def follow(
    cluster: LocalCluster,
    namespace: str,
    args: argparse.Namespace,
    creations: tuple[Callable[[dict[str, Any]], object], list[dict[str, Any]]],
    objects: Callable[[], list[dict[str, Any]]],
    done: Callable[[dict[str, Any]], bool],
    progress: str,
) -> Followed:
    """Create the manifests from 16 threads (`creations`: how, what) and poll every second
    until the creations are over and every object created is `done` (or the timeout)."""
    create, manifests = creations
    round_ = Followed(started=time.monotonic())
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool_exec:
        submitting = [
            pool_exec.submit(create_with_retries, create, m, round_.created_at, round_.refused)
            for m in manifests
        ]
        while time.monotonic() - round_.started < args.timeout:
            if all(f.done() for f in submitting) and len(round_.done_at) >= len(round_.created_at):
                break  # every object that was admitted is done
            time.sleep(1.0)
            now = time.monotonic()
            for item in objects():
                name = item["metadata"]["name"]
                if name not in round_.done_at and done(item):
                    round_.done_at[name] = now
            running = load_helpers.count_pods(cluster, namespace, "status.phase=Running")
            round_.timeline.append((round(now - round_.started, 1), running, len(round_.done_at)))
            if round_.pods_running_at is None and running >= args.cells:
                round_.pods_running_at = now
            if int(now - round_.started) % 10 == 0:
                say(progress.format(running=running, done=len(round_.done_at)))
        for future in submitting:
            future.result()
    return round_


def create_with_retries(
    create: Callable[[dict[str, Any]], object],
    manifest: dict[str, Any],
    created_at: dict[str, float],
    refused: list[str],
) -> None:
    """Refusals while earlier cells' reservations are held (worst case on every node, until
    their pods are bound) are retried for up to two minutes."""
    name = manifest["metadata"]["name"]
    for _attempt in range(240):
        try:
            create(manifest)
            created_at[name] = time.monotonic()
            return
        except ApiException as exc:
            if exc.status == 409:
                created_at[name] = time.monotonic()
                return
            if exc.status not in (403, 429, 500, 503, 504):
                raise
            time.sleep(0.5)
    refused.append(name)


def probe_template(
    cluster: LocalCluster, pool: NodePool, base: int, per_peer: int
) -> dict[str, Any]:
    """The Deployment the operator writes for a cell shaped like the benchmark's (a probe
    cell in a namespace of its own, deleted again): its template and rollout settings."""
    ensure_namespace(cluster, PROBE_NS)
    manifest = cell_manifest(
        PROBE_NS,
        PROBE_CELL,
        service=PROBE_SERVICE,
        replicas=1,
        base=base,
        per_peer=per_peer,
        pool=pool,
    )
    api = client.CustomObjectsApi(cluster.api_client())
    create_with_retries(
        lambda m: api.create_namespaced_custom_object(
            GROUP, VERSION, PROBE_NS, STREAMCELL_PLURAL, m, _request_timeout=60
        ),
        manifest,
        {},
        [],
    )
    deadline = time.monotonic() + 120
    while True:
        found = cluster.kubectl(
            "get", "deployment", PROBE_CELL, "-n", PROBE_NS, "-o", "json", check=False
        )
        if found.returncode == 0:
            deployment: dict[str, Any] = json.loads(found.stdout)
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the probe cell's Deployment never appeared")
        time.sleep(0.5)
    children = {}
    for kind in ("service", "poddisruptionbudget"):
        found = cluster.kubectl("get", kind, PROBE_CELL, "-n", PROBE_NS, "-o", "json", check=False)
        if found.returncode == 0:
            children[kind] = {"spec": json.loads(found.stdout)["spec"]}
    cluster.kubectl("delete", "streamcell", PROBE_CELL, "-n", PROBE_NS, "--wait=false")
    spec = deployment["spec"]
    probe = {
        key: spec[key]
        for key in ("template", "strategy", "minReadySeconds", "progressDeadlineSeconds")
        if key in spec
    }
    return {**probe, "_children": children}


def without_cell_pools(probe: dict[str, Any]) -> dict[str, Any]:
    """The probe's Deployment spec less the node labels only the operator sets: a cell's
    pods are pinned (nodeSelector or node affinity on cellpool.cellguard.io/<service>) to
    the nodes the operator has labelled for its service, which a plain Deployment's are
    not. Every other constraint (pool, tolerations, spread, anti-affinity) stays."""
    spec: dict[str, Any] = json.loads(json.dumps(probe))
    spec.pop("_children", None)
    pod = spec["template"]["spec"]
    selector = pod.get("nodeSelector") or {}
    for key in [k for k in selector if k.startswith(CELL_POOL_PREFIX)]:
        del selector[key]
    required = ((pod.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or []:
        term["matchExpressions"] = [
            e
            for e in term.get("matchExpressions") or []
            if not e["key"].startswith(CELL_POOL_PREFIX)
        ]
    if required and not any(
        t.get("matchExpressions") or t.get("matchFields") for t in required["nodeSelectorTerms"]
    ):
        del pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    return spec


def baseline_manifest(probe: dict[str, Any], name: str, service: str) -> dict[str, Any]:
    """A plain Deployment of one replica with the probe's pod template (see
    `without_cell_pools`), its cell and service names replaced and cellguard's label keys
    and managed-by value renamed (so the operator, which watches pods labelled
    cellguard.io/cell, never sees its pods)."""
    text = (
        json.dumps(without_cell_pools(probe))
        .replace(
            '"app.kubernetes.io/managed-by": "cellguard"', '"app.kubernetes.io/managed-by": "bench"'
        )
        .replace("cellguard.io/", BASE_LABELS)
        .replace(PROBE_CELL, name)
        .replace(PROBE_SERVICE, service)
    )
    spec = json.loads(text)
    labels = spec["template"]["metadata"]["labels"]
    selector = {k: v for k, v in labels.items() if v == name} or labels
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": BASE_NS, "labels": {"app": service}},
        "spec": {"replicas": 1, "selector": {"matchLabels": selector}, **spec},
    }


def renamed(probe_object: dict[str, Any], name: str, service: str) -> dict[str, Any]:
    """A spec of the probe cell's (its Service's, its PDB's) for the baseline's `name`,
    with cellguard's label keys renamed as in `baseline_manifest`."""
    text = (
        json.dumps(probe_object)
        .replace("cellguard.io/", BASE_LABELS)
        .replace(PROBE_CELL, name)
        .replace(PROBE_SERVICE, service)
    )
    renamed_object: dict[str, Any] = json.loads(text)
    spec = renamed_object["spec"]
    for key in ("clusterIP", "clusterIPs"):  # assigned by the API server
        if spec.get(key) != "None":
            spec.pop(key, None)
    return renamed_object


def run_baseline(
    cluster: LocalCluster,
    probe: dict[str, Any],
    args: argparse.Namespace,
    *,
    with_children: bool = False,
) -> dict[str, Any]:
    """The plain Deployments: created from 16 threads, polled until all Available. With
    `with_children`, each also gets the Service and PodDisruptionBudget the operator
    writes for a cell (as the probe cell's), created with it: every object a cell makes,
    without cellguard."""
    api_client = cluster.api_client()
    apps = client.AppsV1Api(api_client)
    core = client.CoreV1Api(api_client)
    policy = client.PolicyV1Api(api_client)
    ensure_namespace(cluster, BASE_NS)
    names = [
        (f"base-{i:04d}", f"bsvc-{i // args.cells_per_service:03d}") for i in range(args.cells)
    ]
    manifests = [baseline_manifest(probe, name, service) for name, service in names]
    children = probe.get("_children", {}) if with_children else {}
    child_manifests = {
        name: [
            (
                kind,
                {"metadata": {"name": name, "namespace": BASE_NS}, **renamed(body, name, service)},
            )
            for kind, body in children.items()
        ]
        for name, service in names
    }

    def create(manifest: dict[str, Any]) -> None:
        name = manifest["metadata"]["name"]
        for kind, body in child_manifests[name]:
            try:
                if kind == "service":
                    core.create_namespaced_service(BASE_NS, body, _request_timeout=60)  # type: ignore[arg-type]
                else:
                    policy.create_namespaced_pod_disruption_budget(
                        BASE_NS,
                        body,  # type: ignore[arg-type]
                        _request_timeout=60,
                    )
            except ApiException as exc:
                if exc.status != 409:  # made by an earlier attempt
                    raise
        apps.create_namespaced_deployment(
            BASE_NS,
            manifest,  # type: ignore[arg-type]  # dicts are accepted
            _request_timeout=60,
        )

    what = "Deployments with a Service and a PDB each" if children else "plain Deployments"
    say(f"baseline: creating {args.cells} {what} of 1 replica")
    cpu_before = control_plane_cpu(cluster)
    requests_before = api_requests(cluster)
    followed = follow(
        cluster,
        BASE_NS,
        args,
        (create, manifests),
        lambda: list(get_json(cluster, "deployments", "-n", BASE_NS)["items"]),
        is_available,
        "baseline: {running} pods running, {done} Available",
    )
    started, created_at, available_at = followed.started, followed.created_at, followed.done_at
    pods_running_at, timeline = followed.pods_running_at, followed.timeline
    cpu = cpu_used(cpu_before, control_plane_cpu(cluster))
    requests = requests_used(requests_before, api_requests(cluster))
    all_available = (
        max(available_at.values()) - started if len(available_at) == args.cells else None
    )
    latencies = [available_at[n] - created_at[n] for n in available_at if n in created_at]
    result = {
        "deployments": args.cells,
        "submit_all_s": round(max(created_at.values()) - started, 1) if created_at else None,
        "pods_all_running_s": round(pods_running_at - started, 1) if pods_running_at else None,
        "all_available_s": round(all_available, 1) if all_available is not None else None,
        "available": len(available_at),
        "create_to_available": summary_ms(latencies),
        "with_service_and_pdb": bool(children),
        "control_plane_cpu_s": cpu,
        "cpu_floor_s": cpu_floor_s(cpu),
        "api_requests": requests,
        "load_average": load(),
        "timeline_s_running_available": timeline,
    }
    say("baseline: deleting what it made and waiting for its pods to go")
    for kind in ("deployments", "services", "poddisruptionbudgets"):
        cluster.kubectl("delete", kind, "--all", "-n", BASE_NS, "--wait=false")
    deadline = time.monotonic() + 600
    while load_helpers.count_pods(cluster, BASE_NS) and time.monotonic() < deadline:
        time.sleep(2.0)
    return result


def run_cells(
    cluster: LocalCluster,
    operator: OperatorProcess,
    pool: NodePool,
    args: argparse.Namespace,
    namespace: str,
) -> dict[str, Any]:
    """Create the cells from 16 threads, poll until every admitted one is Ready."""
    ensure_namespace(cluster, namespace)
    api = client.CustomObjectsApi(cluster.api_client())
    names = [f"cell-{i:04d}" for i in range(args.cells)]
    manifests = [
        cell_manifest(
            namespace,
            name,
            service=f"svc-{i // args.cells_per_service:03d}",
            replicas=1,
            base=50,
            per_peer=0,
            pool=pool,
        )
        for i, name in enumerate(names)
    ]

    def create(manifest: dict[str, Any]) -> None:
        api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, STREAMCELL_PLURAL, manifest, _request_timeout=60
        )

    say(f"creating {args.cells} cells on {args.nodes} nodes in {namespace}")
    cpu_before = control_plane_cpu(cluster)
    requests_before = api_requests(cluster)
    operator_cpu_before = process_cpu_s(operator.popen.pid) if operator.popen else 0.0
    followed = follow(
        cluster,
        namespace,
        args,
        (create, manifests),
        lambda: list_cells(api, namespace),
        is_ready,
        "{running} pods running, {done} cells Ready",
    )
    started, created_at, ready_at = followed.started, followed.created_at, followed.done_at
    pods_running_at, timeline, refused = (
        followed.pods_running_at,
        followed.timeline,
        followed.refused,
    )
    submitted_at = max(created_at.values()) if created_at else started
    cpu = cpu_used(cpu_before, control_plane_cpu(cluster))
    requests = requests_used(requests_before, api_requests(cluster))
    if operator.popen:
        cpu["operator"] = round(process_cpu_s(operator.popen.pid) - operator_cpu_before, 1)
    all_ready = max(ready_at.values()) - started if len(ready_at) == args.cells else None
    return {
        "submit_all_s": round(submitted_at - started, 1),
        "pods_all_running_s": round(pods_running_at - started, 1) if pods_running_at else None,
        "cells_all_ready_s": round(all_ready, 1) if all_ready is not None else None,
        "cells_ready": len(ready_at),
        "refused_after_retries": refused,
        "create_to_ready": summary_ms(
            [ready_at[n] - created_at[n] for n in ready_at if n in created_at]
        ),
        "control_plane_cpu_s": cpu,
        "cpu_floor_s": cpu_floor_s(cpu),
        "api_requests": requests,
        "operator_rss_kib": rss_kib(operator.popen.pid) if operator.popen else {},
        "load_average": load(),
        "timeline_s_running_ready": timeline,
    }


def profile_apiserver(cluster: LocalCluster, out: Path, *, seconds: int) -> None:
    """Start a CPU profile of kube-apiserver for `seconds`, written to `out` (a thread)."""

    def take() -> None:
        query = f"/debug/pprof/profile?seconds={seconds}"
        with out.open("wb") as sink:
            subprocess.run(
                [
                    str(cluster.bin_dir / "kubectl"),
                    f"--kubeconfig={cluster.kubeconfig}",
                    *("get", "--raw", query),
                ],
                stdout=sink,
                check=True,
                timeout=seconds + 60,
            )
        say(f"kube-apiserver's CPU profile: {out}")

    threading.Thread(target=take, name="apiserver-profile", daemon=True).start()


def clear_cells(cluster: LocalCluster, namespace: str) -> None:
    """Delete the namespace's cells; wait for their pods to go and their nodes to leave
    the cells' pools (the operator releases them), so the next round starts as this one."""
    say(f"deleting the cells of {namespace}; waiting for their pods and pool labels to go")
    cluster.kubectl("delete", "streamcells", "--all", "-n", namespace, "--wait=false")
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        nodes = get_json(cluster, "nodes")["items"]
        pooled = sum(
            1
            for n in nodes
            if any(k.startswith(CELL_POOL_PREFIX) for k in n["metadata"].get("labels") or {})
        )
        if not pooled and not load_helpers.count_pods(cluster, namespace):
            return
        time.sleep(2.0)
    raise RuntimeError(f"the cells of {namespace} did not go within 15 minutes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=1_000)
    parser.add_argument("--nodes", type=int, default=120)
    parser.add_argument("--cells-per-service", type=int, default=10)
    parser.add_argument("--status-interval", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--baseline",
        choices=("plain", "children", "both", "none"),
        default="both",
        help="plain: bare Deployments (the issue's yardstick); children: each with the "
        "Service and PDB a cell gets (the same objects, without cellguard); both (default)",
    )
    parser.add_argument(
        "--compare-args",
        default="",
        help="operator flags (space-separated) to compare in the same run: the cells go "
        "three times, by the operator as it is, with these flags, and as it is again (each "
        "round on a fresh operator, after the last round's cells, pods and pool labels went)",
    )
    parser.add_argument("--profile", type=Path, help="cProfile the operator into this file")
    parser.add_argument(
        "--apiserver-profile",
        type=Path,
        help="a CPU profile of kube-apiserver (pprof, 30 s from the first cells' creation) "
        "into this file: `go tool pprof -top FILE`",
    )
    args = parser.parse_args()
    compare_args = tuple(args.compare_args.split())

    baseline: dict[str, Any] | None = None
    baseline_children: dict[str, Any] | None = None
    rounds: list[dict[str, Any]] = []
    profiling = ["--profiling=true"] if args.apiserver_profile else []
    with cellguard_cluster(extra_flags={"kube-apiserver": profiling}) as (cluster, kubeconfig):

        def operator_with(extra_args: tuple[str, ...]) -> OperatorProcess:
            return start_operator(
                cluster,
                kubeconfig,
                status_interval=args.status_interval,
                profile=args.profile,
                extra_args=extra_args,
                log_name=f"operator-{len(rounds)}.log",
            )

        operator = operator_with(())
        try:
            pool = add_pool(cluster, "rdy", args.nodes)
            time.sleep(2)  # the operator folds budget reports in at most once a second
            if args.baseline != "none":
                probe = probe_template(cluster, pool, base=50, per_peer=0)
                if args.baseline in ("plain", "both"):
                    baseline = run_baseline(cluster, probe, args)
                if args.baseline in ("children", "both"):
                    baseline_children = run_baseline(cluster, probe, args, with_children=True)
            plan = [(), compare_args, ()] if compare_args else [()]
            namespace = NS
            for number, extra_args in enumerate(plan):
                if number:
                    clear_cells(cluster, namespace)
                    operator.stop()
                    operator = operator_with(extra_args)
                    time.sleep(2)
                    namespace = f"{NS}-{number}"
                if args.apiserver_profile and not number:
                    profile_apiserver(cluster, args.apiserver_profile, seconds=30)
                measured = run_cells(cluster, operator, pool, args, namespace)
                rounds.append({"operator_args": list(extra_args), **measured})
        finally:
            operator.stop()

    first = rounds[0]
    all_ready = first["cells_all_ready_s"]
    per_cell = first["create_to_ready"]
    cpu, memory, end_load = (
        first["control_plane_cpu_s"],
        first["operator_rss_kib"],
        first["load_average"],
    )

    def over(yardstick: dict[str, Any] | None) -> float | None:
        base_s = yardstick["all_available_s"] if yardstick else None
        return all_ready / base_s if all_ready is not None and base_s else None

    ratio, ratio_children = over(baseline), over(baseline_children)
    # At the CPU the same objects cost by hand in this run, the shortest time they could be
    # Available in on this machine (every core busy), over plain's time.
    floor_children = (
        baseline_children["cpu_floor_s"] / baseline["all_available_s"]
        if baseline and baseline_children and baseline["all_available_s"]
        else None
    )
    result = {
        "cells": args.cells,
        "nodes": args.nodes,
        "status_interval_s": args.status_interval,
        **{key: value for key, value in first.items() if key != "operator_args"},
        "baseline": baseline,
        "baseline_with_service_and_pdb": baseline_children,
        "ready_over_baseline_available": round(ratio, 2) if ratio is not None else None,
        "ready_over_children_baseline_available": (
            round(ratio_children, 2) if ratio_children is not None else None
        ),
        "children_cpu_floor_over_baseline_available": (
            round(floor_children, 2) if floor_children is not None else None
        ),
        "compared_rounds": rounds if compare_args else None,
    }
    out = write_result(f"cells_ready_{args.cells}", result)
    print(
        f"\n{args.cells} cells x 1 replica on {args.nodes} nodes, status interval "
        f"{args.status_interval:g} s (load average 1/5/15 min at end: {end_load})"
    )
    print(f"{'':<38} {'cells':>8} {'plain':>9} {'+svc+pdb':>9}")
    base, kids = baseline or {}, baseline_children or {}

    def row(label: str, mine: Any, key: str, unit: str = " s") -> None:
        theirs = f"{base.get(key) or '-':>9} {kids.get(key) or '-':>9}"
        print(f"{label:<38} {mine or 'never':>8} {theirs}{unit}")

    row("all created", result["submit_all_s"], "submit_all_s")
    row("all pods Running", result["pods_all_running_s"], "pods_all_running_s")
    row("all Ready=True / all Available", result["cells_all_ready_s"], "all_available_s")
    for name in ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok"):
        print(
            f"{'CPU s, ' + name:<38} {cpu.get(name, '-'):>8} "
            f"{(base.get('control_plane_cpu_s') or {}).get(name, '-'):>9} "
            f"{(kids.get('control_plane_cpu_s') or {}).get(name, '-'):>9}"
        )
    print(f"{'CPU s, operator':<38} {cpu.get('operator', '-'):>8}")
    row(f"CPU s / {os.cpu_count()} cores (no sooner)", result["cpu_floor_s"], "cpu_floor_s")
    theirs = (base.get("api_requests") or {}, kids.get("api_requests") or {})
    for kind in list(first["api_requests"])[:14]:
        print(
            f"{'requests, ' + kind:<38} {first['api_requests'][kind]:>8} "
            f"{theirs[0].get(kind, '-'):>9} {theirs[1].get(kind, '-'):>9}"
        )
    if ratio is not None:
        print(f"{'cells Ready / plain Available':<38} {ratio:>8.2f}x   (target <= 1.5x)")
    if ratio_children is not None:
        print(f"{'cells Ready / with Service+PDB':<38} {ratio_children:>8.2f}x")
    if floor_children is not None:
        print(
            f"{'Service+PDB CPU floor / plain Available':<38} {floor_children:>8.2f}x"
            "   (their CPU here over the cores)"
        )
    print(
        f"{'per cell, create -> Ready':<38} p50 {per_cell['p50_ms'] / 1000:.1f} s, "
        f"p99 {per_cell['p99_ms'] / 1000:.1f} s, max {per_cell['max_ms'] / 1000:.1f} s"
    )
    if baseline:
        per_base = baseline["create_to_available"]
        print(
            f"{'per Deployment, create -> Available':<38} p50 {per_base['p50_ms'] / 1000:.1f} s,"
            f" p99 {per_base['p99_ms'] / 1000:.1f} s, max {per_base['max_ms'] / 1000:.1f} s"
        )
    print(
        f"{'operator RSS / peak':<38} {memory.get('VmRSS', 0) / 1024:.0f} MiB / "
        f"{memory.get('VmHWM', 0) / 1024:.0f} MiB"
    )
    print(f"{'cells never admitted (refused 2 min)':<38} {len(first['refused_after_retries']):>8}")
    if compare_args:
        print(f"\nthe same cells three times, each on a fresh operator: {' '.join(compare_args)}")
        print(f"{'round':<34} {'created':>8} {'Running':>8} {'Ready':>8} {'p50':>7} {'CPU op':>7}")
        for number, measured in enumerate(rounds):
            label = " ".join(measured["operator_args"]) or "as it is"
            p50 = measured["create_to_ready"].get("p50_ms")
            print(
                f"{number + 1}. {label:<31} {measured['submit_all_s']:>8} "
                f"{measured['pods_all_running_s'] or 'never':>8} "
                f"{measured['cells_all_ready_s'] or 'never':>8} "
                f"{p50 / 1000 if p50 else 0:>7.1f} "
                f"{measured['control_plane_cpu_s'].get('operator', '-'):>7}"
            )
        plain = [r["cells_all_ready_s"] for r in (rounds[0], rounds[2])]
        if all(plain) and rounds[1]["cells_all_ready_s"]:
            print(
                f"{'Ready, with the flags / as it is (mean of 1 and 3)':<52} "
                f"{rounds[1]['cells_all_ready_s'] / (sum(plain) / 2):.2f}x"
            )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
