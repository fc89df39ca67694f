"""A tiny external-metrics adapter for end-to-end tests: each metric is what the test sets.

It serves `external.metrics.k8s.io/v1beta1` over HTTPS from a thread of the test process
and registers itself with an APIService, so that kube-controller-manager's real
HorizontalPodAutoscaler reads the metric through the real aggregation layer
(HPA -> kube-apiserver, authorised by RBAC -> aggregator proxy -> this server).

How kube-apiserver reaches a server on the test machine's loopback:

* An APIService names a Service. LocalCluster runs kube-apiserver without
  `--enable-aggregator-routing`, so the aggregator resolves that Service to its clusterIP -
  which nothing routes here (no kube-proxy, no network behind the simulated nodes) - except
  for a Service of type ExternalName, which it resolves to
  `https://<spec.externalName>:<APIService spec.service.port>` (k8s.io/apiserver
  pkg/util/proxy ResolveCluster; the APIService availability check does the same). So:
  an ExternalName Service `localhost` and the adapter's port in the APIService.
* Endpoint routing (`--enable-aggregator-routing=true` and a selector-less Service with a
  hand-made EndpointSlice) cannot point at the loopback: EndpointSlice and Endpoints
  validation refuses 127.0.0.0/8 ("may not be in the loopback range"). It would need the
  machine's external address and a flag changing every test's API server.
* TLS both ways: kube-apiserver checks this server's certificate against the APIService's
  caBundle for the name `<service>.<namespace>.svc`; this server requires the aggregator's
  client certificate (`--proxy-client-cert-file`, from LocalCluster's front-proxy CA) and
  only then trusts X-Remote-User, which it records so a test can see who asked.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import re
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cellguard import pki
from cellguard.devcluster.cluster import LocalCluster
from cellguard.devcluster.waiting import wait_for

GROUP = "external.metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
APISERVICE = f"{VERSION}.{GROUP}"
_METRIC_PATH = re.compile(rf"^/apis/{GROUP_VERSION}/namespaces/([^/]+)/([^/]+)$")


@dataclass(frozen=True)
class MetricRequest:
    """One metric read that reached the adapter: the namespace, metric and who asked."""

    namespace: str
    metric: str
    user: str


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    adapter: ExternalMetricsAdapter

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A connection the API server dropped or a refused handshake: not the test's concern.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the API server's proxy expects
    timeout = 30  # idle keep-alive connections end, so their threads do too
    server: _Server

    def setup(self) -> None:
        super().setup()
        # The TLS handshake (client certificate check) in this connection's own thread,
        # never in the accepting one (see ExternalMetricsAdapter.start).
        assert isinstance(self.connection, ssl.SSLSocket)
        self.connection.do_handshake()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        adapter = self.server.adapter
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == f"/apis/{GROUP_VERSION}":
            self._send(200, adapter.discovery())
            return
        if path == "/openapi/v2":
            # The aggregator merges every APIService's spec into /openapi/v2 and logs an
            # error for each one it cannot download: an empty spec keeps its log clean.
            self._send(200, _OPENAPI_V2)
            return
        match = _METRIC_PATH.match(path)
        if match is None:
            # Includes /apis (aggregated discovery), where a 404 makes the aggregator fall
            # back to the group-version's document above, and /openapi/v3 (none: fine).
            self._send(404, _status(404, "NotFound", f"{path} is not served here"))
            return
        namespace, metric = match.groups()
        adapter.record(MetricRequest(namespace, metric, self.headers.get("X-Remote-User", "")))
        value = adapter.value(namespace, metric)
        if value is None:
            self._send(404, _status(404, "NotFound", f"no metric {metric} in {namespace}"))
            return
        self._send(200, adapter.value_list(metric, value))


_OPENAPI_V2: dict[str, Any] = {
    "swagger": "2.0",
    "info": {"title": "cellguard test metrics adapter", "version": VERSION},
    "paths": {},
}


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class ExternalMetricsAdapter:
    """Serves external metrics whose values the test sets; `register` makes them visible."""

    def __init__(self, cluster: LocalCluster, namespace: str, service: str = "metrics-adapter"):
        self.cluster = cluster
        self.namespace = namespace
        self.service = service
        self._values: dict[tuple[str, str], str] = {}
        self._requests: list[MetricRequest] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="metrics-adapter-", dir=cluster.workdir))
        self.ca = pki.make_ca(self._dir, "metrics-adapter-ca")
        self.serving = pki.issue(
            self.ca,
            self._dir,
            "metrics-adapter",
            "metrics-adapter",
            dns_names=(f"{service}.{namespace}.svc",),
            server=True,
        )

    # ------------------------------------------------------------------ values

    def set(self, namespace: str, metric: str, value: int | str) -> None:
        """The metric's value from now on (a quantity: 8, "8", "1500m")."""
        with self._lock:
            self._values[(namespace, metric)] = str(value)

    def value(self, namespace: str, metric: str) -> str | None:
        with self._lock:
            return self._values.get((namespace, metric))

    def record(self, request: MetricRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def requests(self) -> list[MetricRequest]:
        with self._lock:
            return list(self._requests)

    def discovery(self) -> dict[str, Any]:
        with self._lock:
            names = sorted({metric for _ns, metric in self._values})
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": GROUP_VERSION,
            # "get" only: the namespace controller and the garbage collector look for
            # resources they can list and delete, and must leave these alone.
            "resources": [
                {
                    "name": name,
                    "singularName": "",
                    "namespaced": True,
                    "kind": "ExternalMetricValueList",
                    "verbs": ["get"],
                }
                for name in names
            ],
        }

    @staticmethod
    def value_list(metric: str, value: str) -> dict[str, Any]:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "kind": "ExternalMetricValueList",
            "apiVersion": GROUP_VERSION,
            "metadata": {},
            "items": [{"metricName": metric, "metricLabels": {}, "timestamp": now, "value": value}],
        }

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.serving.cert_path), str(self.serving.key_path))
        # Only the aggregator (its front-proxy client certificate) may talk to us.
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(self.cluster.front_proxy_ca.cert_path))
        server = _Server(("127.0.0.1", 0), _Handler, bind_and_activate=True)
        # Handshake in the handler thread: one stalled client must not block accept().
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        server.adapter = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True
        )
        self._thread.start()

    def register(self, timeout: float = 30.0) -> None:
        """The Service and APIService; returns once the APIService is Available."""
        ca_bundle = base64.b64encode(self.ca.cert_path.read_bytes()).decode()
        self.cluster.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": self.service, "namespace": self.namespace},
                    # See the module docstring: the only kind of Service kube-apiserver
                    # resolves to an address of this machine without a cluster network.
                    "spec": {"type": "ExternalName", "externalName": "localhost"},
                },
                {
                    "apiVersion": "apiregistration.k8s.io/v1",
                    "kind": "APIService",
                    "metadata": {"name": APISERVICE},
                    "spec": {
                        "group": GROUP,
                        "version": VERSION,
                        "service": {
                            "name": self.service,
                            "namespace": self.namespace,
                            "port": self.port,
                        },
                        "caBundle": ca_bundle,
                        "groupPriorityMinimum": 100,
                        "versionPriority": 100,
                    },
                },
            ]
        )

        def available() -> bool:
            status, body = self.cluster.api_get(
                f"/apis/apiregistration.k8s.io/v1/apiservices/{APISERVICE}"
            )
            if status != 200:
                return False
            conditions = json.loads(body).get("status", {}).get("conditions", [])
            return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)

        wait_for(available, what=f"APIService {APISERVICE} to be Available", timeout=timeout)

    def unregister(self) -> None:
        # The APIService first: an unavailable aggregated API breaks discovery for every
        # client (and namespace deletion) until it is gone.
        self.cluster.kubectl("delete", "apiservice", APISERVICE, "--ignore-not-found", check=False)
        self.cluster.kubectl(
            "delete",
            "service",
            self.service,
            "-n",
            self.namespace,
            "--ignore-not-found",
            check=False,
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


@contextlib.contextmanager
def external_metrics_adapter(
    cluster: LocalCluster, namespace: str
) -> Iterator[ExternalMetricsAdapter]:
    """A started and registered adapter; unregistered and stopped on leaving."""
    adapter = ExternalMetricsAdapter(cluster, namespace)
    adapter.start()
    try:
        adapter.register()
        yield adapter
    finally:
        adapter.unregister()
        adapter.stop()


__all__ = ["ExternalMetricsAdapter", "MetricRequest", "external_metrics_adapter"]
