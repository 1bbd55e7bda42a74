"""The node's reach keeper (p2pmarket/node/reach.py) with a real relay on 127.0.0.1: a
publish that fails right after a relay move (the proxied host's DHT gateway was the
relay that was cut) must not cost the host its new relay, and the advert is handed
over again until it goes out."""

from __future__ import annotations

import asyncio

from relay_helpers import WAIT_S, start_host, start_relay

from p2pmarket.api.client import PeerClient
from p2pmarket.audit.witness import Peer
from p2pmarket.core.identity import Identity
from p2pmarket.dht.checks import DhtError
from p2pmarket.nat.reachability import Verdict
from p2pmarket.nat.table import ReachClass
from p2pmarket.node.reach import Advert, ReachKeeper

NAT = Verdict(ReachClass.NAT, "127.0.0.1", 1, agreeing=3, answers=3, verified=False)


async def test_a_failed_publish_keeps_the_new_relay_and_is_retried() -> None:
    host = await start_host(Identity.generate())
    relay = await start_relay()
    peer = Peer(relay.identity.node_id, relay.identity.public_key, relay.url)
    adverts: list[Advert] = []
    handed = [asyncio.Event(), asyncio.Event()]

    async def candidates() -> list[Peer]:
        return [peer]

    async def on_advert(advert: Advert) -> None:
        adverts.append(advert)
        handed[min(len(adverts), 2) - 1].set()
        if len(adverts) == 1:
            raise DhtError("gateway unreachable: cut off", "gateway")

    keeper = ReachKeeper(host.identity, self_known=lambda: ("127.0.0.1", 1),
                         local_url=lambda: host.url, candidates=candidates,
                         on_advert=on_advert)
    try:
        await keeper._act(NAT)
        await asyncio.wait_for(handed[0].wait(), WAIT_S)
        # the next round hands the same advert over again, and the relay still serves
        await keeper._act(NAT)
        await asyncio.wait_for(handed[1].wait(), WAIT_S)
        assert adverts[0] == adverts[1]
        assert "advertise: gateway unreachable: cut off" in keeper.state.errors
        assert adverts[1].relayed_by == relay.url and adverts[1].client_mode
        assert keeper._relay_task is not None and not keeper._relay_task.done()
        assert keeper.status()["relay"] == relay.url
        assert keeper.status()["url"] == adverts[1].url
        async with PeerClient(Identity.generate()) as peers:
            got = await peers.call(adverts[1].url, host.identity.public_key, "test.echo",
                                   {"x": 1})
        assert got["echo"] == {"x": 1}
        # handed over once it went out: the same advert again is no news
        await keeper._act(NAT)
        assert len(adverts) == 2
    finally:
        await keeper._stop_relay()
        await relay.service.close()
        await relay.site.stop()
        await host.site.stop()
