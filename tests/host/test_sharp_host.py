"""SHARP at a real host over loopback (docs/design.md section 10): the owner's anchors,
anchors bought with a certified payment, redemptions over HTTP with signed leases, and
a conflict's proof published in the DHT."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pmarket.api.client import PeerClient
from p2pmarket.auction.lease import verify_lease
from p2pmarket.audit.evidence import verify_proof
from p2pmarket.cli.main import main
from p2pmarket.client.buyer import open_wallet
from p2pmarket.core.clock import now_us
from p2pmarket.core.errors import RemoteError
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import unpack
from p2pmarket.host.control import control_handlers
from p2pmarket.node.service import Node
from p2pmarket.sharp.claims import Rset, Term, Ticket, check_ticket
from p2pmarket.sharp.ticketfile import decode_tickets
from tests.client.test_quote_before_pay import FUNDS, funded
from tests.market_helpers import LocalMarket, local_market

HOUR = 3_600_000_000


async def reservable(site: Node) -> None:
    control = control_handlers(site.auctioneer)
    await control["host_set_reservable"]({"resource": "cpu", "amount": "10%"})      # 400 MHz
    await control["host_set_reservable"]({"resource": "memory", "amount": "1GiB"})
    await control["host_set_anchor_price"]({"resource": "cpu", "price": 100})


async def delegate(site: Node, to: Identity, resources: dict[str, str], term: Term
                   ) -> list[Ticket]:
    got = await control_handlers(site.auctioneer)["host_delegate"](
        {"to": to.public_key.hex(), "resources": resources, "start": term.start,
         "end": term.end})
    return [Ticket.from_wire(unpack(bytes.fromhex(t))) for t in got["tickets"]]


async def ready(m: LocalMarket) -> None:
    for node in m.nodes:
        await node.announced.wait()


async def test_owner_anchors_redeemed_over_http_with_a_signed_lease(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=2) as m:
        site = m.nodes[1]
        await reservable(site)
        agent, buyer = Identity.generate(), Identity.generate()
        now = now_us()
        term = Term(now, now + HOUR)
        cpu, mem = await delegate(site, agent, {"cpu": "300MHz", "memory": "512MiB"}, term)
        for t in (cpu, mem):
            check_ticket(t, site.identity.public_key)
        sub = [t.delegate(agent, buyer.public_key, Rset(t.rset.rtype, n), term, b"b")
               for t, n in ((cpu, 200), (mem, 256 * 1024))]
        async with PeerClient(buyer) as peers:
            got = await peers.call(site.url, site.identity.public_key, "host.redeem",
                                   {"tickets": [t.to_wire() for t in sub]})
        assert got["reservation"]["resources"] == {"cpu": 200, "memory": 256 * 1024}
        lease = verify_lease(got["lease"], site.identity.public_key)
        assert lease.holder == buyer.public_key and (lease.start, lease.end) == (
            term.start, term.end)
        assert lease.resources["cpu"].min == 200 and lease.resources["cpu"].alloc == 200
        auct = site.auctioneer
        assert auct.state.capacities["cpu"] == 4000 - 200
        [res] = auct.reservations_doc()
        assert res["active"] and res["holder"] == buyer.public_key
        # the VM is defined with at least what was reserved (libvirt's test driver)
        info = auct.sync.info[got["account_id"]]
        assert info.memory_kib >= 256 * 1024
        # the owner cannot delegate more than reservations may hold
        with pytest.raises(Exception, match="lets reservations hold 400"):
            await delegate(site, agent, {"cpu": "101MHz"}, term)


async def test_a_conflict_is_refused_and_its_proof_published(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=2) as m:
        await ready(m)
        site, other = m.nodes[1], m.nodes[0]
        await reservable(site)
        agent, b1, b2 = Identity.generate(), Identity.generate(), Identity.generate()
        now = now_us()
        term = Term(now, now + HOUR)
        [cpu] = await delegate(site, agent, {"cpu": "300MHz"}, term)
        first = cpu.delegate(agent, b1.public_key, Rset("cpu", 200), term, b"1")
        late = cpu.delegate(agent, b2.public_key, Rset("cpu", 200), term, b"2")
        async with PeerClient(b1) as peers:
            await peers.call(site.url, site.identity.public_key, "host.redeem",
                             {"tickets": [first.to_wire()]})
        async with PeerClient(b2) as peers:
            with pytest.raises(RemoteError) as info:
                await peers.call(site.url, site.identity.public_key, "host.redeem",
                                 {"tickets": [late.to_wire()]})
        value = info.value.value
        assert value["rule"] == "conflict" and value["agent"] == agent.public_key
        proof = verify_proof(value["proof"], agent.public_key)
        assert proof.type == "ticket_conflict"
        # published: kept by the site and found by the other node at evidence/<agent id>
        await site.auctioneer.published()
        assert site.evidence.is_exposed(agent.node_id)
        assert value["proof"] in await other.records.get_evidence(agent.node_id)


async def test_an_anchor_is_bought_with_a_certified_payment(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=2) as m:
        await ready(m)
        site = m.nodes[1]
        await reservable(site)
        wallet = await funded(m, "agent")
        agent = wallet.identity()
        now = now_us()
        term = Term(now, now + HOUR)
        price = -(-100 * 100 * HOUR // HOUR)   # 100 MHz for an hour at 100 µc/MHz-h
        args = {"rset": {"type": "cpu", "count": 100, "ident": None},
                "term": [term.start, term.end]}
        async with open_wallet(wallet) as (w, _), PeerClient(agent) as peers:
            cert = await w.send(site.identity.public_key, price, "anchor")
            got = await peers.call(site.url, site.identity.public_key, "host.buy_anchor",
                                   {**args, "payment": cert.to_wire()})
            assert got["price"] == price
            ticket = Ticket.from_wire(got["ticket"])
            check_ticket(ticket, site.identity.public_key)
            assert ticket.holder == agent.public_key and ticket.rset == Rset("cpu", 100)
            again = await peers.call(site.url, site.identity.public_key, "host.buy_anchor",
                                     {**args, "payment": cert.to_wire()})
            assert again["ticket"] == got["ticket"]     # the same payment: the same anchor
            short = await w.send(site.identity.public_key, price - 1, "anchor")
            with pytest.raises(RemoteError, match="refunded"):
                await peers.call(site.url, site.identity.public_key, "host.buy_anchor",
                                 {**args, "payment": short.to_wire()})
            await w.sync()   # the short payment came back in full
            assert w.balance() == FUNDS - price


def test_host_delegate_writes_a_ticket_file(tmp_path: Path) -> None:
    assert main(["host", "delegate", "--data-dir", str(tmp_path / "none"), "--to", "00",
                 "--duration", "1h"]) == 1    # no resource given: one error, nothing done
    from p2pmarket.cli.host import parse_start
    assert parse_start("now", 5) == 5 and parse_start("+10s", 5) == 5 + 10_000_000
    assert parse_start("2026-01-01T00:00:00", 0) == 1_767_225_600_000_000
    with pytest.raises(Exception, match="ISO 8601"):
        parse_start("tomorrow", 0)
    site = Identity.generate()
    from p2pmarket.sharp.claims import anchor
    from p2pmarket.sharp.ticketfile import encode_tickets
    t = anchor(site, Identity.generate().public_key, Rset("cpu", 5), Term(1, 2), b"s")
    assert decode_tickets(encode_tickets([t])) == [t]
