"""Leader election judges a lease's expiry by this replica's own clock (client-go's rule).

A stand-in for the Lease API (read, create, replace with resourceVersion conflicts) keeps
it a fast unit test; the e2e tests move leadership between real processes.
"""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cellguard.runtime.leader import LeaderElector, LeaseConfig


class FakeLeases:
    """One Lease, with the API's optimistic concurrency."""

    def __init__(self) -> None:
        self.lease: client.V1Lease | None = None
        self.version = 0

    def read_namespaced_lease(self, name: str, namespace: str) -> client.V1Lease:
        if self.lease is None:
            raise ApiException(status=404)
        return copy.deepcopy(self.lease)

    def create_namespaced_lease(self, namespace: str, body: client.V1Lease) -> client.V1Lease:
        if self.lease is not None:
            raise ApiException(status=409)
        self.version += 1
        assert body.metadata is not None
        body.metadata.resource_version = str(self.version)
        self.lease = copy.deepcopy(body)
        return body

    def replace_namespaced_lease(
        self, name: str, namespace: str, body: client.V1Lease
    ) -> client.V1Lease:
        assert self.lease is not None and self.lease.metadata is not None
        assert body.metadata is not None
        if body.metadata.resource_version != self.lease.metadata.resource_version:
            raise ApiException(status=409)
        self.version += 1
        body.metadata.resource_version = str(self.version)
        self.lease = copy.deepcopy(body)
        return body


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def elector(leases: FakeLeases, identity: str, clock: Clock) -> LeaderElector:
    made = LeaderElector(
        client.ApiClient(), LeaseConfig("ns", "cellguard", identity), monotonic=clock
    )
    fake: Any = leases
    made._api = fake
    return made


def test_a_follower_takes_over_after_the_lease_stood_still_for_its_duration_by_its_clock() -> None:
    leases, clock_a, clock_b = FakeLeases(), Clock(), Clock()
    a, b = elector(leases, "a", clock_a), elector(leases, "b", clock_b)
    assert a._try_acquire_or_renew()
    a.is_leader = True  # as acquire() sets it
    assert not b._try_acquire_or_renew()  # b starts watching the record
    # a dies. Its renewTime says nothing to b: only how long b has seen it unchanged.
    clock_b.now += 15
    assert not b._try_acquire_or_renew()  # 15 s is the duration: not more
    clock_b.now += 0.5
    assert b._try_acquire_or_renew()
    assert leases.lease is not None and leases.lease.spec is not None
    assert leases.lease.spec.holder_identity == "b"
    assert leases.lease.spec.lease_transitions == 1


@pytest.mark.parametrize("holder_clock_skew", [-3_600, 3_600])
def test_a_renewing_leader_keeps_the_lease_whatever_its_clock_says(
    holder_clock_skew: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The holder's renewTime an hour behind (or ahead of) the follower's clock: the old
    rule read "expired" (or "fresh for an hour"); the follower only counts changes."""
    leases, clock_a, clock_b = FakeLeases(), Clock(), Clock()
    a, b = elector(leases, "a", clock_a), elector(leases, "b", clock_b)
    skewed = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=holder_clock_skew)
    monkeypatch.setattr("cellguard.runtime.leader._now", lambda: skewed)
    assert a._try_acquire_or_renew()
    a.is_leader = True
    for _ in range(20):  # 40 s of renewals every 2 s, each seen by the follower
        clock_a.now += 2
        clock_b.now += 2
        skewed += datetime.timedelta(seconds=2)
        assert a._try_acquire_or_renew()
        assert not b._try_acquire_or_renew()
    # The leader stops renewing: an hour-ahead renewTime no longer keeps it for an hour.
    clock_b.now += 16
    assert b._try_acquire_or_renew()


def test_a_released_lease_is_taken_at_once() -> None:
    leases, clock_a, clock_b = FakeLeases(), Clock(), Clock()
    a, b = elector(leases, "a", clock_a), elector(leases, "b", clock_b)
    assert a._try_acquire_or_renew()
    a.is_leader = True
    assert not b._try_acquire_or_renew()
    a.release()
    assert b._try_acquire_or_renew()


def test_a_leader_that_restarts_in_its_pod_waits_and_the_standby_takes_over() -> None:
    """Same identity (the pod's name) after a crash: it does not simply resume the lease."""
    leases, clock_a, clock_b = FakeLeases(), Clock(), Clock()
    a, b = elector(leases, "a", clock_a), elector(leases, "b", clock_b)
    assert a._try_acquire_or_renew()
    a.is_leader = True
    assert not b._try_acquire_or_renew()
    # a's process is killed; a new one starts in the same pod, under the same name, and
    # starts watching the lease only now - while the standby has watched it all along.
    restarted = elector(leases, "a", clock_a)
    assert not restarted._try_acquire_or_renew()  # not its lease any more: it waits
    clock_a.now += 16
    assert not restarted._try_acquire_or_renew()  # the lease time and a renew deadline
    clock_b.now += 16
    assert b._try_acquire_or_renew()  # so the standby takes over first, by a margin
    b.is_leader = True
    clock_a.now += 10
    assert not restarted._try_acquire_or_renew()  # b renewed: a changed record again


def test_a_lone_replica_that_restarts_takes_its_lease_back_after_the_grace() -> None:
    leases, clock = FakeLeases(), Clock()
    assert elector(leases, "a", clock)._try_acquire_or_renew()
    restarted = elector(leases, "a", clock)
    assert not restarted._try_acquire_or_renew()
    clock.now += 15 + 10 + 0.5  # the lease time and the renew deadline
    assert restarted._try_acquire_or_renew()
