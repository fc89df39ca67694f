"""The Kinesis front-end outage of November 2020, replayed against the planner.

Every front-end server kept one OS thread per other server of the fleet, so threads per
host grew with the square of the fleet. A routine capacity add pushed every host past its
thread limit at once. Here: 8 nodes with kernel.pid_max 32,768 (26,214 after the 20%
margin), a fleet of 400 servers (50 a node), each holding 50 threads of its own plus one
per peer. Hosts hold 1,000 threads besides (fe-5 a little more: 1,200).
"""

from __future__ import annotations

from cellguard.api.v1alpha1 import RefusalReason
from cellguard.budget import (
    AllowedReason,
    ClusterSnapshot,
    NodeView,
    decide,
    max_safe_replicas,
    with_reservation,
)
from cellguard.budget.threads import threads_per_pod

from .helpers import ALLOWED_AT_20, NOW, cell, node, policy, snapshot

BASE, PER_PEER = 50, 1  # one thread per peer, as on the Kinesis front-end
NODES = [f"fe-{index}" for index in range(8)]
HOST_THREADS = {name: 1_200 if name == "fe-5" else 1_000 for name in NODES}
BIG_CAP = policy(defaultMaxReplicas=100_000)  # the cap is not what this test is about


def _host(name: str, pods: int, replicas: int) -> NodeView:
    """A host as its agent reports it: its own threads and its servers', each read."""
    servers = pods * threads_per_pod(BASE, PER_PEER, replicas)
    return node(name, in_use=HOST_THREADS[name] + servers, pods_read=servers)


def _one_fleet() -> tuple[ClusterSnapshot, tuple[str, str]]:
    fleet = cell("frontend", replicas=400, base=BASE, per_peer=PER_PEER, service="frontend")
    nodes = [_host(name, 50, 400) for name in NODES]
    pods = {fleet.key: dict.fromkeys(NODES, 50)}
    return snapshot(nodes, [fleet], pods, policies={"default": BIG_CAP}), fleet.key


def test_a_ten_percent_capacity_add_to_one_big_fleet_is_refused() -> None:
    snap, fleet = _one_fleet()
    decision = decide(snap, fleet, 440)

    assert not decision.allowed
    assert decision.reason is RefusalReason.NODE_THREAD_LIMIT
    # 40 new servers on 8 hosts: any host may end with 55 (ties against us), each holding
    # 50 + 439 threads: 1,200 + 55 * 489 = 28,095 on the busiest host.
    assert decision.limiting_node == "fe-5"
    assert decision.projected == 1_200 + 55 * 489 == 28_095
    assert decision.allowed_threads == ALLOWED_AT_20
    assert decision.message == (
        "scaling prod/frontend from 400 to 440 replicas would put node fe-5 at 28,095 threads "
        "(limit 32,768 less 20% margin = 26,214) and no free node is left to join its pool of 8; "
        "at most 422 replicas fit; add a cell"
    )


def test_the_largest_safe_fleet_is_the_last_size_that_fits_on_the_busiest_host() -> None:
    snap, fleet = _one_fleet()

    def busiest_host(replicas: int) -> int:  # fe-5 with ceil(replicas / 8) servers
        return 1_200 + -(-replicas // 8) * threads_per_pod(BASE, PER_PEER, replicas)

    expected = max(m for m in range(400, 500) if busiest_host(m) <= ALLOWED_AT_20)
    assert expected == 422
    assert max_safe_replicas(snap, fleet) == expected
    assert decide(snap, fleet, expected).allowed
    assert not decide(snap, fleet, expected + 1).allowed


def test_the_same_capacity_as_two_isolated_cells_is_admitted() -> None:
    # The remediation: cells. Two cells of the same service, NodeExclusive, four hosts
    # each, 200 servers a cell; each grows to 220, 440 servers in all.
    a = cell("frontend-a", replicas=200, base=BASE, per_peer=PER_PEER, service="frontend")
    b = cell("frontend-b", replicas=200, base=BASE, per_peer=PER_PEER, service="frontend")
    hosts_a, hosts_b = NODES[:4], NODES[4:]
    nodes = [_host(name, 50, 200) for name in NODES]
    pods = {a.key: dict.fromkeys(hosts_a, 50), b.key: dict.fromkeys(hosts_b, 50)}
    snap = snapshot(nodes, [a, b], pods, policies={"default": BIG_CAP})

    grow_a = decide(snap, a.key, 220)
    assert grow_a.allowed and grow_a.reason is AllowedReason.WITHIN_BUDGET
    # Isolation keeps a's pods on a's hosts; the busiest sits far below the limit:
    # 1,000 + 55 * (50 + 219) = 15,795 against 28,095 for the single fleet.
    assert set(grow_a.reservation) == set(hosts_a)
    assert (grow_a.limiting_node, grow_a.projected) == ("fe-0", 15_795)
    assert grow_a.headroom is not None and grow_a.headroom > 0.5

    # With a's admitted change held as a reservation, b's is still admitted: the
    # reservation lies on a's hosts, which b can never use.
    held = with_reservation(snap, grow_a.reservation_until(NOW.replace(hour=13)))
    grow_b = decide(held, b.key, 220)
    assert grow_b.allowed
    assert (grow_b.limiting_node, grow_b.projected) == ("fe-5", 15_995)
    assert set(grow_b.reservation) == set(hosts_b)
    # fe-5: 1,200 + ceil(m / 4) * (49 + m) <= 26,214 up to m = 292. Two cells could hold
    # 584 servers between them where the single fleet stops at 422.
    assert grow_b.max_safe_replicas == 292
