"""Liveness, readiness and metrics over HTTP (aiohttp, already a kopf dependency).

Ready means "this replica is the leader and its caches are complete": the webhook Service
must never route admission to a replica that would decide on stale or missing data.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest


class ProbeServer:
    def __init__(
        self,
        *,
        host: str,
        health_port: int,
        metrics_port: int | None,
        is_ready: Callable[[], tuple[bool, str]],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self.host = host
        self.health_port = health_port
        self.metrics_port = metrics_port
        self.is_ready = is_ready
        self.registry = registry
        self._runners: list[web.AppRunner] = []

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        ready, why = self.is_ready()
        return web.Response(status=200 if ready else 503, text=f"{why}\n")

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        health = web.Application()
        health.add_routes([web.get("/healthz", self._healthz), web.get("/readyz", self._readyz)])
        apps = [(health, self.health_port)]
        if self.metrics_port is not None:
            metrics = web.Application()
            metrics.add_routes([web.get("/metrics", self._metrics)])
            if self.metrics_port == self.health_port:
                health.add_routes([web.get("/metrics", self._metrics)])
            else:
                apps.append((metrics, self.metrics_port))
        for app, port in apps:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, self.host, port).start()
            self._runners.append(runner)

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
