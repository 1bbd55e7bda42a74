"""Routing-table fixes over the stock ``kademlia`` table, and the RTT estimator.

Stock faults fixed here (docs/design.md section 3), each with a test in
``tests/dht/test_dht_stock_faults.py``:

- ``find_neighbors`` walked buckets with ``TableTraverser``, which stops as soon
  as the right-hand side runs out while left buckets remain (upstream PR #52)
  and stops at the first ``k`` nodes *in bucket order*, not the ``k`` closest.
  :meth:`DhtRoutingTable.find_neighbors` ranks every contact by XOR distance.
- One missed reply evicted a contact (upstream #23). Here a contact is only
  removed after ``max_failures`` consecutive misses; a reply clears the count,
  and contacts with misses are offered after healthy ones.
- Hygiene: at most ``bucket_cap`` contacts per /24 (IPv6: /48) in a bucket and
  ``table_cap`` in the whole table, and at most ``address_cap`` ids per exact
  address, loopback included (:class:`~p2pmarket.dht.prefixes.PrefixPolicy`);
  loopback is exempt from the /24 caps by default so a single machine can run a
  test network (a loopback contact address can only be this machine's).
- Only a contact's own address speaks for it: a missed or wrong reply from another
  address that merely claims a contact's id counts nothing against the contact
  (:meth:`DhtRoutingTable.record_failure`), so nobody can evict a live contact by
  naming its id at a dead or lying address.

:class:`RttTable` keeps a smoothed round-trip time per peer (RFC 6298) and over
all peers, from which each call's timeout is derived instead of the fixed 5 s.
Everything here is pure apart from the bucket-head ping the stock table asks
its protocol for.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kademlia.node import Node
from kademlia.routing import KBucket, RoutingTable

from p2pmarket.dht.prefixes import LOOPBACK, UNCAPPED, PrefixPolicy

__all__ = ["LOOPBACK", "UNCAPPED", "DhtRoutingTable", "PrefixPolicy", "RttTable"]

RELAXED_SPLIT = False
HOMES_MAX = 16384
"""Addresses indexed (for ``address_cap``) before the index is rebuilt from the buckets."""


class DhtRoutingTable(RoutingTable):  # type: ignore[misc]
    """The stock table with the fixes above. ``protocol`` must offer ``ping_head(node)``."""

    def __init__(self, protocol: Any, ksize: int, node: Node, *,
                 policy: PrefixPolicy | None = None, max_failures: int = 3) -> None:
        self.policy = policy if policy is not None else PrefixPolicy()
        self.max_failures = max(1, max_failures)
        self.failures: dict[bytes, int] = {}
        self.refused = 0
        self._cache: list[Node] | None = None
        self._homes: dict[tuple[str, int], set[bytes]] = {}
        super().__init__(protocol, ksize, node)

    # -- contacts ------------------------------------------------------------------

    def flush(self) -> None:
        super().flush()
        self._cache = None

    def contacts(self) -> list[Node]:
        """Every contact (not the replacement caches); cached until the table changes."""
        if self._cache is None:
            self._cache = [n for b in self.buckets for n in b.nodes.values()]
        return self._cache

    def __len__(self) -> int:
        return len(self.contacts())

    def find(self, node_id: bytes) -> Node | None:
        bucket = self.buckets[self.get_bucket_for(Node(node_id))]
        found: Node | None = bucket.nodes.get(node_id)
        return found

    def _prefix_counts(self, prefix: str, bucket: KBucket) -> tuple[int, int]:
        in_bucket = in_table = 0
        for b in self.buckets:
            for n in (*b.nodes.values(), *b.replacement_nodes.values()):
                if self.policy.prefix(n.ip) == prefix:
                    in_table += 1
                    if b is bucket:
                        in_bucket += 1
        return in_bucket, in_table

    def _at_address(self, node: Node) -> int:
        """Other ids held (contacts or replacements) at ``node``'s exact address. The
        index is checked against the buckets, which drop replacements on their own."""
        home = (node.ip, node.port)
        ids = self._homes.get(home)
        if not ids:
            return 0
        for node_id in list(ids):
            if not self._holds(Node(node_id, node.ip, node.port)):
                ids.discard(node_id)
        if not ids:
            del self._homes[home]
        return len(ids - {node.id})

    def _index(self, node: Node) -> None:
        if len(self._homes) > HOMES_MAX:  # stale homes: rebuild from the buckets
            self._homes = {}
            for b in self.buckets:
                for n in (*b.nodes.values(), *b.replacement_nodes.values()):
                    self._homes.setdefault((n.ip, n.port), set()).add(n.id)
        self._homes.setdefault((node.ip, node.port), set()).add(node.id)

    def allows(self, node: Node) -> bool:
        """Whether ``node`` may enter: known ids at the same address always may (they
        are refreshed); a live contact keeps its address against a newcomer's id."""
        bucket = self.buckets[self.get_bucket_for(node)]
        known = bucket.nodes.get(node.id) or bucket.replacement_nodes.get(node.id)
        if known is not None and known.same_home_as(node):
            return True
        if self._at_address(node) >= self.policy.address_cap:
            return False
        prefix = self.policy.prefix(node.ip)
        if prefix is None or (known is not None and known.ip == node.ip):
            return True  # exempt, or a known id moving to another port of its ip
        in_bucket, in_table = self._prefix_counts(prefix, bucket)
        return in_bucket < self.policy.bucket_cap and in_table < self.policy.table_cap

    def has_room(self, node: Node) -> bool:
        """Whether ``node`` could enter the table now (its bucket has room or may split)
        rather than only its bucket's replacement cache."""
        bucket = self.buckets[self.get_bucket_for(node)]
        return len(bucket) < self.ksize or self._splittable(bucket)

    def _splittable(self, bucket: KBucket) -> bool:
        # the paper's rule (and the stock one): the bucket holding our own id, or one
        # whose contacts share a prefix whose length is not 0 mod 5 (section 4.2)
        return bool(bucket.has_in_range(self.node)) or (
            RELAXED_SPLIT and bucket.depth() % 5 != 0)

    def add_contact(self, node: Node) -> bool:
        """Add or refresh ``node``; False if a prefix cap refused it."""
        if node.id == self.node.id:
            return False
        if not self.allows(node):
            self.refused += 1
            return False
        self._add(node)
        return True

    def _add(self, node: Node) -> None:
        index = self.get_bucket_for(node)
        bucket = self.buckets[index]
        known = bucket.nodes.get(node.id)
        if known is None or not known.same_home_as(node):
            self._cache = None
            self._index(node)
        if bucket.add_node(node):
            return
        if self._splittable(bucket):
            self.split_bucket(index)
            self._add(node)
        else:
            # the stock table pings the least recently seen contact; it is evicted only
            # after max_failures missed replies, and its replacement then promoted
            self.protocol.ping_head(bucket.head())

    def remove_contact(self, node: Node) -> None:
        self.failures.pop(node.id, None)
        self._cache = None
        super().remove_contact(node)

    def _holds(self, node: Node) -> bool:
        """Whether ``node`` (id *and* address) is a contact or replacement here."""
        bucket = self.buckets[self.get_bucket_for(node)]
        known = bucket.nodes.get(node.id) or bucket.replacement_nodes.get(node.id)
        return known is not None and known.same_home_as(node)

    def record_failure(self, node: Node) -> bool:
        """Count a missed reply; True when that evicted the contact. A call to another
        address than the contact's counts nothing (it only claimed the id)."""
        if not self._holds(node):
            return False
        misses = self.failures.get(node.id, 0) + 1
        if misses >= self.max_failures:
            self.remove_contact(node)
            return True
        self.failures[node.id] = misses
        return False

    def record_success(self, node: Node) -> None:
        if self._holds(node):
            self.failures.pop(node.id, None)

    # -- neighbours ------------------------------------------------------------------

    def find_neighbors(self, node: Node, k: int | None = None,
                       exclude: Node | None = None) -> list[Node]:
        """The ``k`` closest contacts to ``node`` by XOR distance. Contacts that missed
        their last reply come after every healthy one."""
        k = k or self.ksize
        self.buckets[self.get_bucket_for(node)].touch_last_updated()
        target = node.long_id
        contacts = self.contacts()
        dists = [c.long_id ^ target for c in contacts]
        ranked = sorted(range(len(contacts)), key=dists.__getitem__)
        best: list[Node] = []
        shaky: list[Node] = []
        for i in ranked:
            contact = contacts[i]
            if contact.id == node.id or (exclude is not None and contact.same_home_as(exclude)):
                continue
            if contact.id in self.failures:
                shaky.append(contact)
                continue
            best.append(contact)
            if len(best) >= k:
                return best
        return best + shaky[: k - len(best)]


# -- round-trip times --------------------------------------------------------------

@dataclass
class _Rtt:
    srtt: float
    rttvar: float


@dataclass
class RttTable:
    """Smoothed RTT per peer address and over all peers (RFC 6298 constants).

    :meth:`soft` is how long a lookup waits for a peer before it stops counting it
    and asks another (the call stays open); :meth:`hard` is when the call gives up.
    """

    initial: float = 1.0
    min_soft: float = 0.05
    max_hard: float = 5.0
    min_hard: float = 0.5
    capacity: int = 4096
    peers: OrderedDict[tuple[str, int], _Rtt] = field(default_factory=OrderedDict)
    overall: _Rtt | None = None
    samples: int = 0

    @staticmethod
    def _update(est: _Rtt | None, rtt: float) -> _Rtt:
        if est is None:
            return _Rtt(rtt, rtt / 2)
        est.rttvar = 0.75 * est.rttvar + 0.25 * abs(est.srtt - rtt)
        est.srtt = 0.875 * est.srtt + 0.125 * rtt
        return est

    def observe(self, addr: tuple[str, int], rtt: float) -> None:
        rtt = max(0.0, rtt)
        self.samples += 1
        self.overall = self._update(self.overall, rtt)
        self.peers[addr] = self._update(self.peers.pop(addr, None), rtt)
        while len(self.peers) > self.capacity:
            self.peers.popitem(last=False)

    def _estimate(self, addr: tuple[str, int]) -> float:
        est = self.peers.get(addr) or self.overall
        if est is None:
            return self.initial
        return est.srtt + 4 * est.rttvar

    def soft(self, addr: tuple[str, int]) -> float:
        return min(self.max_hard, max(self.min_soft, self._estimate(addr)))

    def hard(self, addr: tuple[str, int]) -> float:
        return min(self.max_hard, max(self.min_hard, 4 * self.soft(addr)))

    def known(self, addrs: Iterable[tuple[str, int]]) -> int:
        return sum(1 for a in addrs if a in self.peers)
