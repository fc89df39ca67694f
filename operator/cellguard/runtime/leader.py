"""Leader election on a coordination.k8s.io Lease.

Only the leader runs kopf (handlers and the webhook) and reports ready, so the webhook
Service routes admission only to the replica whose caches are live. A leader that cannot
renew within the lease duration stops: the process exits and restarts as a follower.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclass
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    lease_seconds: int = 15
    # A leader that could not renew for renew_deadline_seconds steps down, well before a
    # follower may take the expired lease (lease_seconds): never two leaders at once.
    renew_deadline_seconds: float = 10.0
    renew_seconds: float = 2.0
    retry_seconds: float = 2.0


class LeaderElector:
    def __init__(
        self,
        api_client: client.ApiClient,
        config: LeaseConfig,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = client.CoordinationV1Api(api_client)
        self.config = config
        self.is_leader = False
        # client-go's rule: a lease has expired when its record has not changed for its
        # duration *by this replica's clock*, since it last saw it change. The holder's
        # renewTime is the holder's clock: compared with ours, a skew of a few seconds would
        # give two leaders (or none).
        self._monotonic = monotonic
        self._observed: tuple[object, ...] | None = None
        self._observed_at = 0.0

    def _expired(self, spec: client.V1LeaseSpec, duration: float) -> bool:
        record = (
            spec.holder_identity,
            spec.renew_time,
            spec.acquire_time,
            spec.lease_transitions,
            spec.lease_duration_seconds,
        )
        now = self._monotonic()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        return now - self._observed_at > duration

    def _try_acquire_or_renew(self) -> bool:
        cfg = self.config
        now = _now()
        try:
            lease = self._api.read_namespaced_lease(cfg.name, cfg.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=cfg.name, namespace=cfg.namespace),
                spec=client.V1LeaseSpec(
                    holder_identity=cfg.identity,
                    lease_duration_seconds=cfg.lease_seconds,
                    acquire_time=now,
                    renew_time=now,
                    lease_transitions=0,
                ),
            )
            try:
                self._api.create_namespaced_lease(cfg.namespace, body)
            except ApiException as create_exc:
                if create_exc.status == 409:  # someone else created it first
                    return False
                raise
            return True
        spec = lease.spec or client.V1LeaseSpec()
        lease.spec = spec
        holder = spec.holder_identity
        duration = spec.lease_duration_seconds or cfg.lease_seconds
        # Our own name on a live lease counts as ours only while we lead. A process that
        # restarted in the same pod (same identity) waits for expiry - and a renew deadline
        # longer than any other candidate, since it started watching only when it restarted,
        # just after the crash: the standby, polling every few seconds, takes over first
        # instead of a leader that just crashed coming back with its caches still empty.
        ours = holder == cfg.identity and self.is_leader
        restarted = holder == cfg.identity and not self.is_leader
        grace = cfg.renew_deadline_seconds if restarted else 0.0
        expired = self._expired(spec, duration + grace)
        if holder not in (None, "") and not ours and not expired:
            return False
        if holder != cfg.identity:
            spec.acquire_time = now
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity = cfg.identity
        spec.lease_duration_seconds = cfg.lease_seconds
        spec.renew_time = now
        try:
            # replace carries resourceVersion: a concurrent writer makes this fail with 409.
            self._api.replace_namespaced_lease(cfg.name, cfg.namespace, lease)
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this replica leads (True) or `stop` is set (False)."""
        announced = False
        while not stop.is_set():
            try:
                if await asyncio.to_thread(self._try_acquire_or_renew):
                    self.is_leader = True
                    log.info("acquired lease %s/%s", self.config.namespace, self.config.name)
                    return True
            except ApiException as exc:
                log.warning("lease %s: HTTP %s", self.config.name, exc.status)
            if not announced:
                log.info("another replica leads; waiting as a follower (not ready)")
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.config.retry_seconds)
        return False

    async def hold(self, stop: asyncio.Event) -> None:
        """Renew until `stop`; return (leadership lost) if renewal fails for a lease term."""
        last_renewed = asyncio.get_running_loop().time()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.config.renew_seconds)
                break
            except TimeoutError:
                pass
            try:
                renewed = await asyncio.to_thread(self._try_acquire_or_renew)
            except Exception as exc:  # network errors too: judged by the deadline below
                log.warning("lease renewal failed: %s", exc)
                renewed = False
            now = asyncio.get_running_loop().time()
            if renewed:
                last_renewed = now
            elif now - last_renewed > self.config.renew_deadline_seconds:
                log.error("lost the lease %s: stepping down", self.config.name)
                self.is_leader = False
                return
        await asyncio.to_thread(self.release)

    def release(self) -> None:
        """Give the lease up on a clean shutdown so a follower takes over at once."""
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            lease = self._api.read_namespaced_lease(self.config.name, self.config.namespace)
            if lease.spec is not None and lease.spec.holder_identity == self.config.identity:
                lease.spec.holder_identity = ""
                lease.spec.renew_time = None
                self._api.replace_namespaced_lease(self.config.name, self.config.namespace, lease)
        except ApiException as exc:
            log.warning("could not release lease %s: HTTP %s", self.config.name, exc.status)
