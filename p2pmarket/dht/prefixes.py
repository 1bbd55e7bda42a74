"""Network prefixes for sybil hygiene (docs/design.md section 3). Pure: no I/O.

:class:`PrefixPolicy` says which network prefix an address or a URL host belongs to
and how many places one prefix may take:

- in a routing table (:class:`~p2pmarket.dht.routing.DhtRoutingTable`), per
  bucket and overall, for the /24 (IPv6: /48) of a contact's address; and at most
  ``address_cap`` ids per exact address (ip, port), loopback included, so one
  socket cannot fill a table with ids it holds keys for;
- in an ``offers/<type>`` set (and among the hash-only entries of an evidence set),
  for the URL host the entry *claims*: entries past ``offers_cap`` for their prefix
  rank after every entry within its prefix's cap (:func:`~p2pmarket.dht.offers.keep_offers`).

Contact addresses are observed (the source of a datagram, or proven by the ``ident``
round trip), so loopback ones can only come from this machine: ``exempt`` (loopback by
default) is safe there and lets one machine run a test network. URL hosts are claims
anyone can write, so ``claimed_exempt`` is empty by default and set to loopback only
for a network whose bootstrap peers are all on loopback (:meth:`PrefixPolicy.for_network`).
A DNS name is not resolved (the name's owner decides what it resolves to, and a storer
does no I/O); names count by their last two labels, so ``a.example.org`` and
``b.example.org`` share the prefix ``name:example.org``; ``localhost`` counts as
loopback.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

LOOPBACK: tuple[IpNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"),
                                   ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class PrefixPolicy:
    """Per-network-prefix caps (S/Kademlia-style sybil hygiene)."""

    bucket_cap: int = 2
    table_cap: int = 3
    offers_cap: int = 4
    """Entries of one ``offers/<type>`` set whose URL host shares a prefix before the
    rest rank last (see :func:`~p2pmarket.dht.offers.keep_offers`)."""
    address_cap: int = 1
    """Routing-table ids per exact (ip, port); never exempt."""
    exempt: tuple[IpNetwork, ...] = LOOPBACK
    """Contact addresses in these networks are free of the /24 caps."""
    claimed_exempt: tuple[IpNetwork, ...] = ()
    """URL hosts in these networks count as no prefix (free of ``offers_cap``)."""

    @classmethod
    def for_network(cls, bootstrap_hosts: Iterable[str],
                    shared: Iterable[str] = ()) -> PrefixPolicy:
        """The default policy for a network whose bootstrap peers are ``bootstrap_hosts``:
        claimed loopback URLs are exempt only when every one of them is on loopback (a
        test network on one machine, where every honest host has a loopback URL).
        ``shared`` (the genesis's ``shared_prefixes``, CIDR) are networks of a private
        deployment where many hosts share a prefix: both their contact addresses and
        their claimed URL hosts are exempt."""
        hosts = list(bootstrap_hosts)
        local = bool(hosts) and all(_is_loopback(h) for h in hosts)
        extra = tuple(ipaddress.ip_network(n) for n in shared)
        return cls(exempt=LOOPBACK + extra,
                   claimed_exempt=(LOOPBACK if local else ()) + extra)

    def __post_init__(self) -> None:
        # the cache's keys: network names hash fast, ipaddress objects do not
        object.__setattr__(self, "_exempt_names", tuple(map(str, self.exempt)))
        object.__setattr__(self, "_claimed_names", tuple(map(str, self.claimed_exempt)))

    def prefix(self, host: object) -> str | None:
        """The /24 (IPv6: /48) of a contact address, or None when it is exempt."""
        if not isinstance(host, str):
            return None
        return _prefix(host, self._exempt_names)   # type: ignore[attr-defined]

    def claimed_prefix(self, host: object) -> str | None:
        """The prefix of a URL host a record claims, or None when it is exempt."""
        if not isinstance(host, str):
            return None
        return _prefix(host, self._claimed_names)   # type: ignore[attr-defined]


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.lru_cache(maxsize=64)
def _networks(names: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    return tuple(ipaddress.ip_network(n) for n in names)


@functools.lru_cache(maxsize=16384)
def _prefix(host: str, exempt_names: tuple[str, ...]) -> str | None:
    exempt = _networks(exempt_names)
    name = host.lower().rstrip(".")
    if name == "localhost":
        name = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(name)
    except ValueError:
        labels = [label for label in name.split(".") if label]
        return "name:" + ".".join(labels[-2:])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if any(addr in net for net in exempt):
        return None
    bits = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


UNCAPPED = PrefixPolicy(bucket_cap=1 << 30, table_cap=1 << 30, offers_cap=1 << 30,
                        address_cap=1 << 30)
