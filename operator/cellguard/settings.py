"""Settings of `cellguard run`, from flags (and their environment defaults)."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class WebhookMode(StrEnum):
    # The operator applies a ValidatingWebhookConfiguration that reaches it by URL
    # (running outside the cluster: tests, the demo, a laptop).
    URL = "url"
    # The Helm chart owns the configuration and a Service routes to the operator's pods.
    SERVICE = "service"


@dataclass(frozen=True)
class Settings:
    kubeconfig: Path | None = None
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    operator_namespace: str = "cellguard-system"
    identity: str = field(default_factory=socket.gethostname)
    lease_name: str = "cellguard-operator"
    # The pod this replica runs in, labelled cellguard.io/leader while it leads (in-cluster
    # service mode: the webhook Service selects that label); None: no pod to label.
    leader_pod: str | None = None
    webhook_mode: WebhookMode = WebhookMode.SERVICE
    webhook_listen_host: str = "0.0.0.0"
    webhook_port: int = 9443
    webhook_url: str | None = None  # URL mode: the base URL the API server calls
    webhook_cert: Path | None = None  # tls.crt; URL mode generates one when absent
    webhook_key: Path | None = None
    webhook_ca: Path | None = None  # the CA bundle registered in URL mode
    webhook_timeout_seconds: int = 10
    exempt_namespaces: tuple[str, ...] = ("kube-system", "kube-public", "kube-node-lease")
    probe_host: str = "0.0.0.0"
    health_port: int = 8081
    metrics_port: int = 8080
    status_interval_seconds: float = 10.0
    # Cells converged at once by the status loop: their API calls overlap (each waits on
    # the API server in a thread), one cell is never converged twice at once.
    converge_workers: int = 16
    resync_seconds: float = 300.0
    log_level: str = "INFO"

    @property
    def all_exempt_namespaces(self) -> list[str]:
        # cellguard's own namespace is always exempt: the webhook must never block itself.
        return sorted({*self.exempt_namespaces, self.operator_namespace})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument("--kubeconfig", type=Path, default=env("KUBECONFIG") or None)
    parser.add_argument(
        "--namespace",
        dest="namespaces",
        action="append",
        default=[],
        help="serve StreamCells only in this namespace (repeatable; default: all namespaces)",
    )
    parser.add_argument(
        "--operator-namespace",
        default=env("POD_NAMESPACE", "cellguard-system"),
        help="namespace of the leader-election Lease (default $POD_NAMESPACE or cellguard-system)",
    )
    parser.add_argument("--identity", default=env("POD_NAME") or socket.gethostname())
    parser.add_argument("--lease-name", default="cellguard-operator")
    parser.add_argument(
        "--leader-pod",
        default=None,
        help="this replica's pod, labelled cellguard.io/leader=true while it leads",
    )
    parser.add_argument(
        "--webhook-mode",
        choices=[m.value for m in WebhookMode],
        default=env("CELLGUARD_WEBHOOK_MODE", WebhookMode.SERVICE.value),
        help="url: register the webhook by URL (operator outside the cluster); "
        "service: the chart's configuration routes through a Service",
    )
    parser.add_argument("--webhook-host", dest="webhook_listen_host", default="0.0.0.0")
    parser.add_argument("--webhook-port", type=int, default=9443)
    parser.add_argument(
        "--webhook-url", default=None, help="URL mode: base URL (default https://127.0.0.1:PORT)"
    )
    parser.add_argument("--webhook-cert", type=Path, default=None, help="serving certificate")
    parser.add_argument("--webhook-key", type=Path, default=None, help="serving key")
    parser.add_argument("--webhook-ca", type=Path, default=None, help="URL mode: CA bundle")
    parser.add_argument("--webhook-timeout", dest="webhook_timeout_seconds", type=int, default=10)
    parser.add_argument(
        "--exempt-namespace",
        dest="exempt_namespaces",
        action="append",
        default=None,
        help="namespace the webhook never sees (repeatable; default kube-system, "
        "kube-public, kube-node-lease; the operator's namespace always)",
    )
    parser.add_argument("--probe-host", default="0.0.0.0")
    parser.add_argument("--health-port", type=int, default=8081)
    parser.add_argument("--metrics-port", type=int, default=8080)
    parser.add_argument(
        "--status-interval", dest="status_interval_seconds", type=float, default=10.0
    )
    parser.add_argument(
        "--converge-workers",
        type=_at_least_one,
        # A string: argparse checks it as it checks the flag (a bad value says so).
        default=env("CELLGUARD_CONVERGE_WORKERS", "16"),
        help="cells converged at once (children applied, status written); more speeds a "
        "burst of new cells on a fast API server, and costs an API connection and an I/O "
        "thread or two each",
    )
    parser.add_argument(
        "--resync",
        dest="resync_seconds",
        type=float,
        default=300.0,
        help="seconds between full relistings of each kind (a watch that cannot resume "
        "relists at once)",
    )
    parser.add_argument("--log-level", default=env("CELLGUARD_LOG_LEVEL", "INFO"))


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def from_args(args: argparse.Namespace) -> Settings:
    exempt = tuple(args.exempt_namespaces) if args.exempt_namespaces else Settings.exempt_namespaces
    return Settings(
        kubeconfig=args.kubeconfig,
        namespaces=tuple(args.namespaces),
        operator_namespace=args.operator_namespace,
        identity=args.identity,
        lease_name=args.lease_name,
        leader_pod=args.leader_pod,
        webhook_mode=WebhookMode(args.webhook_mode),
        webhook_listen_host=args.webhook_listen_host,
        webhook_port=args.webhook_port,
        webhook_url=args.webhook_url,
        webhook_cert=args.webhook_cert,
        webhook_key=args.webhook_key,
        webhook_ca=args.webhook_ca,
        webhook_timeout_seconds=args.webhook_timeout_seconds,
        exempt_namespaces=exempt,
        probe_host=args.probe_host,
        health_port=args.health_port,
        metrics_port=args.metrics_port,
        status_interval_seconds=args.status_interval_seconds,
        converge_workers=args.converge_workers,
        resync_seconds=args.resync_seconds,
        log_level=args.log_level,
    )
