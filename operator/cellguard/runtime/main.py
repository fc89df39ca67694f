"""`cellguard run`: the operator process.

Order of things: probes up (live, not ready) → win the Lease → learn our own identity →
list everything into the cache → serve the webhook and start kopf → ready. Losing the
Lease, a signal, or kopf stopping ends the process; the Lease is released on a clean stop
so a follower takes over at once.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import gc
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client

from cellguard import kubeclient, pki
from cellguard import settings as settings_module
from cellguard.admission import handlers as admission_handlers
from cellguard.api.v1alpha1 import RefusalReason
from cellguard.constants import (
    FIELD_MANAGER_OPERATOR,
    GROUP,
    KOPF_PREFIX,
    LABEL_LEADER,
    STREAMCELL_PLURAL,
    VERSION,
)
from cellguard.listing import sources
from cellguard.metrics import OperatorMetrics
from cellguard.reconcile.refresh import StatusLoop
from cellguard.resources import webhook as webhook_config
from cellguard.runtime.informer import start_informers
from cellguard.runtime.leader import LeaderElector, LeaseConfig
from cellguard.runtime.probes import ProbeServer
from cellguard.runtime.tls import ReloadingCertificate, ReloadingWebhookServer
from cellguard.settings import Settings, WebhookMode
from cellguard.state.feed import CacheFeed
from cellguard.state.store import CellRecord
from cellguard.wiring import EventSubject, Operator

log = logging.getLogger("cellguard")


def io_threads(settings: Settings) -> int:
    """Threads (and API connections) for blocking API calls: two for each cell being
    converged (its Deployment, and its Service and PDB alongside), and 16 more so that the
    leader's renewal, Events and node labels never queue behind a burst of new cells."""
    return 2 * settings.converge_workers + 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings_module.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    settings = settings_module.from_args(args)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # kopf logs every handler run at INFO: one line per pod event is noise at scale.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").addFilter(admission_handlers.QuietRefusals())
    return asyncio.run(run_operator(settings))


# ---------------------------------------------------------------------- identity


def own_username(api: client.ApiClient) -> str:
    review = kubeclient.request_json(
        api,
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
    )
    username: str = review["status"]["userInfo"]["username"]
    return username


# ---------------------------------------------------------------------- webhook


def webhook_server(settings: Settings, workdir: Path) -> tuple[ReloadingWebhookServer, bytes]:
    """The webhook server and the CA bundle the API server must trust."""
    if settings.webhook_cert and settings.webhook_key:
        certfile, keyfile = settings.webhook_cert, settings.webhook_key
        ca_path = settings.webhook_ca or settings.webhook_cert
        ca_bundle = ca_path.read_bytes()
    else:
        # Local runs: a throwaway CA and a serving certificate for loopback.
        ca = pki.make_ca(workdir, "cellguard-webhook-ca")
        serving = pki.issue(
            ca,
            workdir,
            "webhook",
            "cellguard-webhook",
            dns_names=("localhost",),
            ip_addresses=("127.0.0.1",),
            server=True,
        )
        certfile, keyfile = serving.cert_path, serving.key_path
        ca_bundle = ca.cert_path.read_bytes()
    # The served certificate follows the files (renewals, Secret updates) without a restart.
    server = ReloadingWebhookServer(
        ReloadingCertificate(certfile, keyfile),
        ca_bundle,
        addr=settings.webhook_listen_host,
        port=settings.webhook_port,
    )
    return server, ca_bundle


def register_url_webhook(api: client.ApiClient, settings: Settings, ca_bundle: bytes) -> None:
    base_url = settings.webhook_url or f"https://127.0.0.1:{settings.webhook_port}"
    manifest = webhook_config.validating_webhook_configuration(
        webhook_config.url_client_config(base_url, base64.b64encode(ca_bundle).decode()),
        exempt_namespaces=settings.all_exempt_namespaces,
        timeout_seconds=settings.webhook_timeout_seconds,
        watched_namespaces=list(settings.namespaces),
    )
    kubeclient.server_side_apply(api, manifest, FIELD_MANAGER_OPERATOR)


# ---------------------------------------------------------------------- kopf


def kopf_settings(settings: Settings, server: kopf.WebhookServer) -> kopf.OperatorSettings:
    # kopf names itself from POD_ID (its documented variable) when set, and otherwise from
    # getpass.getuser(), which raises in the image: its uid 10001 has no passwd entry (found
    # by the chart's install on a real node, tests/e2e/test_real_install.py). Ours: the
    # Lease holder's name.
    os.environ.setdefault("POD_ID", settings.identity)
    kopf_cfg = kopf.OperatorSettings()
    kopf_cfg.persistence.finalizer = f"{KOPF_PREFIX}/finalizer"
    kopf_cfg.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    kopf_cfg.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    # Leadership is ours (a Lease), so kopf's own peering is off.
    kopf_cfg.peering.standalone = True
    kopf_cfg.peering.name = "cellguard"
    kopf_cfg.admission.server = server
    kopf_cfg.admission.managed = None  # the chart or register_url_webhook owns the config
    # Events only for what we post on purpose (refusals), not for every handler log line.
    kopf_cfg.posting.level = logging.WARNING
    kopf_cfg.watching.server_timeout = 300
    kopf_cfg.networking.request_timeout = 60
    return kopf_cfg


def connection_info(api: client.ApiClient) -> kopf.ConnectionInfo:
    config = api.configuration
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix(
        "authorization"
    )
    parts = header.split(" ", 1) if header else []
    scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0] if parts else None)
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        scheme=scheme,
        token=token,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )


def build_registry(op: Operator, api: client.ApiClient) -> kopf.OperatorRegistry:
    """kopf serves the admission webhook; the cells are reconciled from the operator's own
    watch (reconcile.refresh)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return connection_info(api)

    admission_handlers.register(registry, op)
    return registry


# ---------------------------------------------------------------------- main


async def run_operator(settings: Settings) -> int:
    # Blocking API calls run in threads (applies, status patches, Events): asyncio's default
    # pool has min(32, cores + 4) threads - 6 on a small node - and a burst of new cells
    # would queue behind it; the connection pool matches.
    threads = io_threads(settings)
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="cellguard-io")
    )
    api = kubeclient.load_api_client(settings.kubeconfig, pool_size=threads)
    metrics = OperatorMetrics()
    metrics.precreate_decisions([str(reason) for reason in RefusalReason])

    def apply(manifest: dict[str, Any]) -> dict[str, Any]:
        return kubeclient.server_side_apply(api, manifest, FIELD_MANAGER_OPERATOR)

    def label_node(name: str, labels: dict[str, str | None]) -> dict[str, Any]:
        return kubeclient.label_node(api, name, labels)

    def cell_path(record: CellRecord) -> str:
        plural = f"/apis/{GROUP}/{VERSION}/namespaces/{record.namespace}/{STREAMCELL_PLURAL}"
        return f"{plural}/{record.name}"

    def patch_status(record: CellRecord, status: dict[str, Any]) -> None:
        kubeclient.merge_patch_status(api, cell_path(record), status)

    def post_event(
        record: CellRecord | EventSubject, type_: str, reason: str, message: str
    ) -> None:
        involved = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "StreamCell",
            "namespace": record.namespace,
            "name": record.name,
            "uid": record.uid,
        }
        kubeclient.post_event(
            api,
            involved,
            type_=type_,
            reason=reason,
            message=message,
            component="cellguard",
            instance=settings.identity,
        )

    op = Operator.create(
        settings,
        metrics,
        apply,
        label_node=label_node,
        patch_status=patch_status,
        post_event=post_event,
    )
    metrics.attach_fleet(op.fleet)
    stop = asyncio.Event()
    kopf_ready = asyncio.Event()
    served: list[ReloadingWebhookServer] = []  # the webhook server, once made
    kopf_stop = asyncio.Event()
    elector = LeaderElector(
        api,
        LeaseConfig(
            namespace=settings.operator_namespace,
            name=settings.lease_name,
            identity=settings.identity,
        ),
    )

    def leading() -> tuple[bool, str]:
        """Whether this replica decides: it leads, its caches are complete, kopf runs."""
        if not elector.is_leader:
            return False, "not the leader"
        if not op.state.synced:
            return False, "caches filling"
        if not kopf_ready.is_set() or not (served and served[0].listening.is_set()):
            return False, "handlers starting"
        return True, "leading"

    def readiness() -> tuple[bool, str]:
        # Every replica that is alive and, if it leads, synced is Ready: Deployment health
        # (kstatus, Argo CD, rollout status) sees the release healthy, and a drain may move
        # the leader. Admission reaches the leader only, through its pod's label - or, with
        # no pod to label (a local process), only the leader is Ready, as before.
        decides, why = leading()
        if decides or (settings.leader_pod is not None and not elector.is_leader):
            return True, why if decides else "standby, ready to take over"
        return False, why

    def readiness_gauge() -> None:
        metrics.ready.set(1.0 if leading()[0] else 0.0)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    probes = ProbeServer(
        host=settings.probe_host,
        health_port=settings.health_port,
        metrics_port=settings.metrics_port,
        is_ready=readiness,
    )
    await probes.start()
    log.info(
        "probes on %s:%d, metrics on :%d",
        settings.probe_host,
        settings.health_port,
        settings.metrics_port,
    )
    # The webhook's own certificate and key when none are mounted: removed on the way out.
    workdir = Path(tempfile.mkdtemp(prefix="cellguard-operator-"))
    log.info("webhook files in %s", workdir)
    informers_stop = threading.Event()
    exit_code = 0
    try:
        await _mark_leader(api, settings, leads=False)  # a previous life's label goes first
        if not await elector.acquire(stop):
            return 0
        await _mark_leader(api, settings, leads=True)
        hold = asyncio.create_task(elector.hold(stop), name="lease")
        op.own_username = await asyncio.to_thread(own_username, api)
        log.info("acting as %s", op.own_username)
        status_loop = StatusLoop(op)
        listed_at = time.monotonic()
        # The start-up listing only adds long-lived objects (no cycles): collections while it
        # runs would walk the growing heap again and again for nothing.
        gc.disable()
        start_informers(
            api,
            sources(settings.namespaces),
            CacheFeed(
                op.state,
                op.ledger,
                op.gate,
                on_cell_changed=status_loop.poke,
                on_cell_spec=status_loop.spec_changed,
            ),
            resync_seconds=settings.resync_seconds,
            stop=informers_stop,
            on_relist=lambda source, why: metrics.relists.labels(source.kind.value, why).inc(),
        )
        synced = await _cache_synced(op, stop)
        gc.enable()
        if not synced:
            return 0
        log.info(
            "cache synced in %.1f s: %d nodes, %d budgets, %d cells, %d cell pods",
            time.monotonic() - listed_at,
            len(op.state.nodes),
            len(op.state.budgets),
            len(op.state.cells),
            len(op.state.pods),
        )
        gc.collect()
        gc.freeze()  # what the listing left is long-lived: later collections skip it
        server, ca_bundle = webhook_server(settings, workdir)
        served.append(server)
        if settings.webhook_mode is WebhookMode.URL:
            await asyncio.to_thread(register_url_webhook, api, settings, ca_bundle)
        registry = build_registry(op, api)
        operator_task = asyncio.create_task(
            kopf.operator(
                registry=registry,
                settings=kopf_settings(settings, server),
                clusterwide=not settings.namespaces,
                namespaces=list(settings.namespaces),
                stop_flag=kopf_stop,
                ready_flag=kopf_ready,
            ),
            name="kopf",
        )
        housekeeping = asyncio.create_task(_housekeeping(op, stop, readiness_gauge))
        pools = asyncio.create_task(_tend_pools(op, stop))
        statuses = asyncio.create_task(status_loop.run(stop), name="status")
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait(
            {hold, operator_task, stopper}, return_when=asyncio.FIRST_COMPLETED
        )
        if hold in done and not stop.is_set():
            log.error("leadership lost: exiting so that a follower takes over")
            exit_code = 1
        if operator_task in done and not stop.is_set():
            # kopf takes SIGINT/SIGTERM over from us and stops cleanly on them; anything
            # else that ends it is a failure.
            failure = operator_task.exception()
            if failure is not None:
                log.error("kopf stopped unexpectedly: %s", failure)
                exit_code = 1
            else:
                log.info("stopping on signal")
        stop.set()
        kopf_stop.set()
        housekeeping.cancel()
        pools.cancel()
        statuses.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(operator_task, timeout=30)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await hold
        stopper.cancel()
    finally:
        informers_stop.set()
        await _mark_leader(api, settings, leads=False)
        await probes.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return exit_code


async def _cache_synced(op: Operator, stop: asyncio.Event) -> bool:
    """Wait until every kind has been listed into the cache (False: stopped first)."""
    while not op.state.synced:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.1)
        if stop.is_set():
            return False
    return True


async def _mark_leader(api: client.ApiClient, settings: Settings, *, leads: bool) -> None:
    """Label this replica's pod as the leader (or not): the webhook Service selects it.

    A label left on a pod that no longer leads matters little: its process exited or
    restarts, so the pod is not Ready and not an endpoint; the new process removes it first.
    """
    if settings.leader_pod is None:
        return
    labels: dict[str, str | None] = {LABEL_LEADER: "true" if leads else None}
    try:
        await asyncio.to_thread(
            kubeclient.label_pod, api, settings.operator_namespace, settings.leader_pod, labels
        )
    except Exception as exc:  # without the label admission cannot reach this replica
        level = logging.ERROR if leads else logging.WARNING
        log.log(level, "could not %s the leader label of pod %s: %s",
                "set" if leads else "remove", settings.leader_pod, exc)  # fmt: skip


POOL_TENDING_SECONDS = 5.0


async def _housekeeping(op: Operator, stop: asyncio.Event, readiness_gauge: Any) -> None:
    """Expire reservations and keep the gauges that are not per node/cell current."""
    while not stop.is_set():
        for expired in op.ledger.expire(op.now()):
            log.info("reservation of %s/%s expired", *expired.cell)
        op.metrics.reservations.set(len(op.ledger))
        readiness_gauge()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)


async def _tend_pools(op: Operator, stop: asyncio.Event) -> None:
    """Every few seconds, take nodes out of pools their cells no longer need."""
    while not stop.is_set():
        try:
            await op.pools.tend()
        except Exception as exc:  # a failed patch is retried on the next round
            log.warning("tending node pools failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=POOL_TENDING_SECONDS)
