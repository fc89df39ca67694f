"""What an admitted change's reservation must still hold as its pods are bound.

A reservation holds, on every node a change's new pods may land on, the worst case of the
scheduler's water-filling (see `spread`), plus the growth of the cell's pods already there.
Once some new pods are bound, the scheduler's choice replaces the worst case for them: the
operator's cache counts them where they are (`usage.modelled_threads`, at the cell's spec
size), and the reservation needs to cover only the pods still to come. Held any longer, it
refuses other cells for threads nobody will use; released any sooner, another cell may be
admitted into threads these pods will take (an overcommit).

Let the cell be heading for F = min(the change's target, its spec now) pods, of which
`live` are bound and not terminating (the spread counts those). Then F - live pods are
still to come, and (maxSkew 1, DoNotSchedule) each lands on a node holding the fewest
pods of the cell among the spread's domains. For any set R of domains, no node of R ends
above the water line L of the F - live pods over R's counts: when the last pod a node n
receives lands (n going from c - 1 to c pods), no domain, so no node m of R, holds fewer
than c - 1; the pods still to come have then filled R up to c - 1 and one more, so
sum(max(0, c - 1 - live(m))) < F - live, that is c - 1 < L. So node n of R may receive at
most max(0, L - live(n)) more, each with the threads of a pod at size F. (As for the
admission's own worst case, this holds while the domains stay and no bound pod of the cell
goes: a replacement pod is churn, which no reservation covers.)

R here is the change's own receivers (`Reservation.new_pods`) that may still receive
now: dropping a node from R only raises L, and a node that cannot receive now keeps what
it held (it may again). Nodes where the change's pods cannot land (only its pods' growth
was held there) hold nothing once the cache counts the cell at its new size.

Nothing is ever raised above what was held: a reservation shrinks, never grows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType

from cellguard.budget.eligibility import is_pooled, selector_matches, tolerates_all
from cellguard.budget.pools import pool_label_key, pool_label_value
from cellguard.budget.snapshot import CellView, NodeView, Reservation
from cellguard.budget.spread import WaterFill


def admitted_spec_seen(held: Reservation, generation: int, spec_replicas: int) -> bool:
    """Whether the cache holds the cell's spec at (or after) the change `held` is for,
    given the cell's generation and spec.replicas in the cache.

    An admission does not know the generation its change will get, only that it comes
    after the one the cache had (`Reservation.generation`). At that very generation the
    spec must also ask for the reserved size: two changes admitted before the cache saw
    the first both expect it, and the first one's spec is not the second's.
    """
    basis = held.generation
    if basis is None:
        return True
    return generation > basis or (generation == basis and spec_replicas == held.target_replicas)


def still_needed(
    held: Reservation,
    *,
    generation: int,
    spec_replicas: int,
    live: Mapping[str, int],
    threads_per_pod: Callable[[int], int],
    may_receive: Callable[[str], bool],
) -> Reservation:
    """`held` shrunk to what the cell's pods still to come may need (`held` itself when
    nothing can go).

    generation, spec_replicas: the cell's in the cache. Until the cache holds the spec of
      the change (`admitted_spec_seen`) it counts the cell's pods at the old size, and all
      is held.
    live: node -> the cell's bound pods there that are not terminating.
    threads_per_pod: threads a pod of the cell holds at a size, as the planner counts them.
    may_receive: whether a node may receive the cell's pods now (exists, schedulable,
      matches its placement and pool).
    """
    receivers = held.new_pods
    if receivers is None or not admitted_spec_seen(held, generation, spec_replicas):
        return held
    size = min(held.target_replicas, spec_replicas)
    placed = sum(count for count in live.values() if count > 0)
    if placed > spec_replicas:
        # More pods than the cell asks for: some are to leave, and which (and what comes
        # after, e.g. 8 -> 2 -> 5) the cache does not tell until they are terminating.
        return held
    to_come = max(0, size - placed)  # pods beyond `size` are a later change's
    per_pod = threads_per_pod(size)
    counts = {node: max(0, live.get(node, 0)) for node in receivers if may_receive(node)}
    arrivals: dict[str, int] = {}
    if to_come and counts:
        level = WaterFill(Counter(counts.values())).level(to_come)
        arrivals = {node: level - count for node, count in counts.items() if count < level}
    threads = held.threads_by_node
    kept: dict[str, int] = {}
    kept_pods: dict[str, int] = {}
    for node, most in receivers.items():
        if node in counts:  # may receive now: at most the water line allows
            pods = min(most, arrivals.get(node, 0))
            held_there = min(threads.get(node, 0), per_pod * pods)
        else:  # cannot receive now, but may again: keep what it held
            pods, held_there = most, threads.get(node, 0)
        if pods > 0:
            kept_pods[node] = pods
        if held_there > 0:
            kept[node] = held_there
    if kept == threads and kept_pods == receivers:
        return held
    return replace(
        held, threads_by_node=MappingProxyType(kept), new_pods=MappingProxyType(kept_pods)
    )


def may_receive(cell: CellView) -> Callable[[NodeView | None], bool]:
    """Whether the cell's new pods may land on a node now, as far as the node tells: it
    exists, is not cordoned, matches the cell's nodeSelector, its blocking taints are
    tolerated, and it is in the cell's pool (NodeExclusive) or in no pool of the service
    (Shared). Other cells' pods (isolation) are not looked at: they only keep pods off.
    A test made once per cell, for many nodes."""
    selector = cell.node_selector
    tolerations = cell.tolerations
    key = pool_label_key(cell.service)
    own = pool_label_value(cell.namespace, cell.name) if is_pooled(cell) else None

    def test(node: NodeView | None) -> bool:
        if node is None or node.unschedulable:
            return False
        labels = node.labels
        if labels.get(key) != own:
            return False
        if selector and not selector_matches(selector, labels):
            return False
        return not node.taints or tolerates_all(tolerations, node.taints)

    return test
