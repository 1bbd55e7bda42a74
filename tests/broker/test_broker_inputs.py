"""Bad input to a broker's peer RPCs over loopback: each gets a clear error and changes
nothing (no sale, no payment taken, the same adverts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from p2pmarket.api.client import PeerClient
from p2pmarket.core.errors import RemoteError
from p2pmarket.core.identity import Identity
from tests.broker.helpers import PRICE, funded_broker, hour_term, key, site_anchor
from tests.market_helpers import local_market


def item(site: bytes, count: int = 5, rtype: str = "cpu") -> dict[str, Any]:
    return {"site": site, "type": rtype, "count": count}


async def test_bad_calls_are_refused_and_change_nothing(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=3) as m:
        for node in m.nodes:
            await node.announced.wait()
        site, a, other = m.nodes[1], m.nodes[2], m.nodes[0]
        await funded_broker(m, a)
        term = hour_term()
        a.broker.add_ticket(site_anchor(site, a, 40, term).to_wire())
        s = key(site)
        ok = {"items": [item(s)], "start": term.start, "end": term.end}
        bad: list[tuple[str, dict[str, Any], str]] = [
            ("broker.quote", {**ok, "items": []}, "items must be a list"),
            ("broker.quote", {**ok, "items": [item(b"x")]}, "32-byte key"),
            ("broker.quote", {**ok, "items": [item(s, 0)]}, "positive integer"),
            ("broker.quote", {**ok, "items": [item(s, True)]}, "positive integer"),
            ("broker.quote", {**ok, "items": [{**item(s), "x": 1}]}, "an item is"),
            ("broker.quote", {**ok, "end": term.start}, "start < end"),
            ("broker.quote", {**ok, "items": [item(s, rtype="disk")]}, "does not sell disk"),
            ("broker.quote", {**ok, "items": [item(s, 41)]}, "no ticket held"),
            ("broker.buy", ok, "payment must be a certificate"),
            ("broker.buy", {**ok, "payment": {"entry": 1}}, "wrong fields"),
            ("broker.replace", {"ticket": [], "proof": 5}, "proof must be"),
            ("broker.replace", {"ticket": [], "proof": b"\x93junk"}, "invalid proof"),
        ]
        before = (a.broker.store.counts(), a.wallet.balance(), a.broker.status()["offers"])
        async with PeerClient(Identity.generate()) as client:
            for method, args, message in bad:
                with pytest.raises(RemoteError, match=message):
                    await client.call(a.url, key(a), method, args)
            with pytest.raises(RemoteError, match="not a broker"):
                await client.call(other.url, key(other), "broker.offers", {})
            got = await client.call(a.url, key(a), "broker.quote", ok)
            assert got["price"] == 5 * PRICE and got["memo"].startswith("ticket:")
        assert (a.broker.store.counts(), a.wallet.balance(),
                a.broker.status()["offers"]) == before
