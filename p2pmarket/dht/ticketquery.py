"""Publishing and reading brokers' ticket adverts (``tickets/<type>``,
:mod:`p2pmarket.dht.ticketads`) through a :class:`~p2pmarket.dht.node.DhtNode`.

A broker publishes its advert of each type with :func:`publish_ticket_ad` (stored at
the k closest nodes, validated there like any store) and refreshes it before it
expires; :func:`read_ticket_ads` merges the sets of every close node (one advert per
broker, the newest), verifying each, and repairs close nodes that lacked some.
"""

from __future__ import annotations

from collections.abc import Sequence

from kademlia.node import Node

from p2pmarket.dht.checks import DhtError
from p2pmarket.dht.node import DhtNode
from p2pmarket.dht.records import check_type_name, key_digest
from p2pmarket.dht.ticketads import (
    SiteAmount,
    TicketAd,
    fit_ticket_set,
    make_ticket_ad,
    newest_ads,
    parse_ticket_set,
    tickets_key,
)


async def publish_ticket_ad(dht: DhtNode, resource_type: str, sites: Sequence[SiteAmount],
                            price: int, ttl_us: int | None = None) -> TicketAd:
    """Sign and store our advert for ``resource_type``; returns it."""
    if not dht.url:
        raise DhtError("a ticket advert needs the node's RPC url", "no_url")
    ad = make_ticket_ad(dht.identity, resource_type=resource_type, url=dht.url,
                        sites=sites, price=price, now_us=dht.clock(),
                        ttl_us=ttl_us if ttl_us is not None else dht.ttl_us)
    await dht.store_value(ad.key, fit_ticket_set(ad.key, [ad])[0])
    return ad


async def read_ticket_ads(dht: DhtNode, resource_type: str) -> list[TicketAd]:
    """Every live advert of ``resource_type`` the closest nodes hold (and ours), one per
    broker, in the order the sets list them."""
    key = tickets_key(check_type_name(resource_type))
    dkey = key_digest(key)
    now = dht.clock()
    found_ads: list[TicketAd] = list(dht.storage.ticket_ads(dkey))
    held: dict[bytes, set[bytes]] = {}

    def accept(peer: Node, value: bytes) -> bool:
        try:
            got = parse_ticket_set(value, now)
        except DhtError:
            return False
        if got.key != key or got.forged:
            return False
        found_ads.extend(got.entries)
        held[peer.id] = {a.value for a in got.entries}
        return True

    found = await dht.lookup(dkey, find_value=True, accept=accept)
    merged = newest_ads(found_ads, now, dht.puzzle_bits)
    if merged:
        value, kept = fit_ticket_set(key, merged)
        values = {a.value for a in kept}
        lacking = [p for p in found.closest if not values <= held.get(p.id, set())]
        for peer in lacking[:4]:
            dht.spawn(dht.protocol.call_store(peer, dkey, value))
    return merged
