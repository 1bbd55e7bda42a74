"""Bad input: the honest network keeps working (docs/design.md section 3, issue 3)."""

from __future__ import annotations

import asyncio
import socket
import time

import umsgpack  # type: ignore[import-untyped]
from dht_helpers import Swarm, host, make_protocol, wait_for
from kademlia.node import Node
from kademlia.protocol import KademliaProtocol
from kademlia.storage import ForgetfulStorage

from p2pmarket.audit.evidence import proof_host_id
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import Identity
from p2pmarket.dht import DhtNode, ResourceAd
from p2pmarket.dht.records import host_key, key_digest, make_host_record
from p2pmarket.dht.routing import DhtRoutingTable, PrefixPolicy

CPU = {"cpu": ResourceAd(capacity=4000, price=10, hour_avg=9)}


def now_us() -> int:
    return time.time_ns() // 1000


async def test_contact_must_prove_its_id_stock_takes_any_claim(swarm: Swarm) -> None:
    # stock: any datagram naming an id puts that id into the table
    stock = KademliaProtocol(Node(b"\x01" * 20), ForgetfulStorage(), 20)
    claimed = b"\x00" * 20
    stock.rpc_ping(("127.0.0.1", 9), claimed)
    assert not stock.router.is_new_node(Node(claimed))

    # ours: an impostor that claims an honest node's id (it cannot sign for its key)
    honest, target = await swarm.grow(2)
    impostor = await swarm.add()
    impostor.protocol._identity = Identity.generate()  # answers ident with a wrong key
    fake = Node(honest.node_id, *impostor.address)
    target.protocol.welcome_if_new(fake)
    await target.protocol.verified(2.0)
    contact = target.protocol.router.find(honest.node_id)
    # (this used to allow contact None: the failed claim banned the honest node's id)
    assert contact is not None and contact.same_home_as(Node(honest.node_id, *honest.address))
    assert not target.protocol.is_banned(honest.node_id, honest.address)
    assert target.storage.counters.get("ident_refused", 0) >= 1
    # ... and a made-up id nobody holds a key for
    target.protocol.welcome_if_new(Node(b"\x00" * 19 + b"\x07", *impostor.address))
    await target.protocol.verified(2.0)
    assert target.protocol.router.find(b"\x00" * 19 + b"\x07") is None


async def test_wrong_contacts_in_lookup_answers_do_not_derail_lookups(swarm: Swarm) -> None:
    nodes = await swarm.grow(12)
    owner, liar, reader = nodes[1], nodes[2], nodes[9]
    rec = await owner.publish_host(CPU)
    dkey = key_digest(rec.key)
    honest_addrs = [n.address for n in nodes if n is not liar]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as dead:
        dead.bind(("127.0.0.1", 0))
        dead_addr = dead.getsockname()

        def lie(sender: tuple[str, int], nodeid: object, key: object) -> object:
            # ids right next to the key, at honest nodes' addresses or at a dead port
            fakes = []
            for i, addr in enumerate([*honest_addrs, dead_addr][:15]):
                fake_id = bytes(a ^ b for a, b in zip(dkey, i.to_bytes(20, "big"), strict=True))
                fakes.append([fake_id, addr[0], addr[1]])
            return {"id": liar.node_id, "nodes": fakes}
        liar.protocol.rpc_find_value = lie
        liar.protocol.rpc_find_node = lie
        for n in nodes:
            n.storage._data.pop(dkey, None)  # only the owner's copy... (re-stored below)
        await owner.publish_host(CPU)
        for reader_node in (reader, nodes[5], nodes[7]):
            reader_node.host_quorum = 99
            got = await reader_node.get_host(owner.node_id)
            assert got is not None and got.node_id == owner.node_id
    assert sum(n.storage.counters.get("wrong_contact", 0) for n in nodes) > 0
    for n in nodes:  # no fake id entered any routing table
        assert all(c.id in {m.node_id for m in nodes} for c in n.protocol.router.contacts())


async def test_store_flood_is_rate_limited_and_honest_traffic_goes_on(swarm: Swarm) -> None:
    nodes = await swarm.grow(6)
    target = nodes[3]
    records = [make_host_record(Identity.generate(), url="http://127.0.0.1:1",
                                dht=("127.0.0.1", 1), resources={}, availability_ppm=0, seq=1,
                                now_us=now_us(), ttl_us=60_000_000) for _ in range(600)]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        me = Identity.generate().node_id
        for k, rec in enumerate(records):
            payload = umsgpack.packb(["store", [me, key_digest(rec.key), rec.value]])
            sock.sendto(b"\x00" + k.to_bytes(20, "big") + payload, target.address)
            if k % 50 == 49:  # in bursts the receive buffer holds
                await asyncio.sleep(0.01)
        await wait_for(lambda: target.storage.counters.get("rejected.rate_limited", 0) >= 200)
    # the per-sender budget (burst 200, 50/s) let a bounded share through
    assert target.storage.counters["stored"] <= 300
    # the honest network still publishes and reads through the flooded node
    rec = await nodes[0].publish_host(CPU)
    target.host_quorum = 99
    assert await target.get_host(nodes[0].node_id) == rec


async def test_malformed_datagrams_and_unsigned_or_stale_values(swarm: Swarm) -> None:
    nodes = await swarm.grow(4)
    target = nodes[2]
    rec = await nodes[0].publish_host(CPU)
    dkey = key_digest(rec.key)
    garbage = [b"", b"\x00", b"\x00" + b"x" * 20 + b"\xc1", b"\x02" + b"y" * 30,
               b"\x00" + b"z" * 20 + umsgpack.packb({"a": 1}),
               b"\x00" + b"w" * 20 + umsgpack.packb(["find_node", "notalist"]),
               b"\x00" + b"v" * 20 + umsgpack.packb(["nosuchrpc", []]),
               b"\x01" + b"u" * 20 + umsgpack.packb("unsolicited reply"),
               b"\x00" + b"t" * 20 + b"\x91" * 9000]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for g in garbage:
            sock.sendto(g, target.address)
        await asyncio.sleep(0.05)
    counters = target.storage.counters
    assert counters.get("rejected.bad_datagram", 0) + counters.get("rejected.bad_request", 0) \
        + counters.get("late_replies", 0) >= len(garbage) - 1  # b"" may not even arrive
    # unsigned value, then a stale (older seq) one, from an honest-looking peer
    peer = nodes[1]
    unsigned = umsgpack.packb({"kind": "dht.host", "body": {}})
    ok, accepted = await peer.protocol.call(target.address, "store", peer.node_id, dkey,
                                            unsigned)
    assert ok and accepted is False
    newer = await nodes[0].publish_host({"cpu": ResourceAd(1, 1, 1)})
    other = nodes[3]
    ok, accepted = await other.protocol.call(target.address, "store", other.node_id, dkey,
                                             rec.value)
    assert ok and accepted is False  # older seq: refused, but not a ban (a race is honest)
    assert target.storage.counters["rejected.stale_seq"] >= 1
    assert not target.protocol.is_banned(other.node_id, other.address)
    assert target.storage.host_record(dkey) == newer
    got = await target.get_host(nodes[0].node_id)
    assert got is not None and got.seq == newer.seq


async def test_per_prefix_caps_in_bucket_and_table() -> None:
    proto = make_protocol(policy=PrefixPolicy(bucket_cap=2, table_cap=3))
    table: DhtRoutingTable = proto.router
    ids = [Identity(i.to_bytes(32, "big")).node_id for i in range(1, 200)]
    others = [Node(i, f"203.0.{n}.7", 4000) for n, i in enumerate(ids[:120])]
    for n in others:  # other networks fill and split the table
        table.add_contact(n)
    assert table.refused == 0
    same24 = [Node(i, f"198.51.100.{n + 1}", 4000) for n, i in enumerate(ids[120:180])]
    added = [n for n in same24 if table.add_contact(n)]
    assert len(added) == 3  # one /24 holds at most 3 places in the whole table
    assert all(sum(1 for c in b.nodes.values() if c.ip.startswith("198.51.100."))
               <= 2 for b in table.buckets)
    assert table.refused == 57
    for task in proto.test_tasks:  # bucket-head pings (no socket here)
        task.cancel()
    # loopback is exempt by default (a test network on one machine)
    assert table.add_contact(Node(ids[30], "127.0.0.1", 1))
    assert table.add_contact(Node(ids[31], "127.0.0.1", 2))
    # a known contact is always refreshed
    assert table.add_contact(added[0])


async def test_offer_sets_capped_per_prefix(genesis: Genesis) -> None:
    from dht_helpers import offer

    from p2pmarket.dht.offers import make_offer_entry, pack_offer_set
    from p2pmarket.dht.prefixes import LOOPBACK
    from p2pmarket.dht.storage import RecordStorage
    dkey = key_digest("offers/cpu/3")
    idents = [Identity.generate() for _ in range(5)]
    # the helper's offers all name http://127.0.0.1:8000: exempt on a loopback network
    st = RecordStorage(proof_host_id, max_offers=3,
                       policy=PrefixPolicy(offers_cap=2, claimed_exempt=LOOPBACK))
    for ident in idents[:3]:
        assert st.put(dkey, pack_offer_set("offers/cpu/3", [offer(ident, now=now_us())]))
    assert len(st.offer_entries(dkey)) == 3
    # elsewhere loopback URLs are one network's: past the cap its entries rank after
    # every other network's, so newcomers from elsewhere take their places first
    st2 = RecordStorage(proof_host_id, max_offers=3, policy=PrefixPolicy(offers_cap=2))
    for ident in idents[:3]:
        assert st2.put(dkey, pack_offer_set("offers/cpu/3", [offer(ident, now=now_us())]))
    assert len(st2.offer_entries(dkey)) == 3   # free places: one network may fill them
    elsewhere = make_offer_entry(idents[3], resource_type="cpu", url="http://198.51.100.1:1",
                                 capacity=10, price=1, now_us=now_us(), ttl_us=60_000_000)
    assert st2.put(dkey, pack_offer_set("offers/cpu/3", [elsewhere]))
    held = {e.node_id for e in st2.offer_entries(dkey)}
    assert held == {idents[0].node_id, idents[1].node_id, idents[3].node_id}
    assert st2.counters["capped_entries"] == 1
    # a fourth loopback entry finds no place: every place is within some network's cap
    reason = st2.put_reason(dkey, pack_offer_set("offers/cpu/3", [offer(idents[4],
                                                                      now=now_us())]))
    assert reason == "set_full"
    assert host_key(idents[0].node_id) and host()
    assert DhtNode  # imported for type context


async def test_bans_and_hand_off_pauses_run_on_the_protocol_clock() -> None:
    from p2pmarket.dht.contacts import BAN_S
    now = [1000.0]
    proto = make_protocol(monotonic=lambda: now[0], handoff_interval=60.0)
    liar, addr = Identity.generate().node_id, ("203.0.113.5", 4000)
    proto.ban(liar, addr, "forged")
    now[0] += BAN_S - 1
    assert proto.is_banned(liar, None) and proto.is_banned(None, addr)
    now[0] += 2   # the ban is over once the given clock says so
    assert not proto.is_banned(liar, addr)
    assert proto._counters["banned.forged"] == 1
    newcomer = Node(Identity.generate().node_id, "127.0.0.1", 4001)
    proto._admit(newcomer)
    assert newcomer.id in proto._newcomers
    proto._handoff()
    now[0] += 59   # admitted again within the hand-off interval: nothing to hand
    proto._admit(newcomer)
    assert newcomer.id not in proto._newcomers
    now[0] += 2
    proto._admit(newcomer)
    assert newcomer.id in proto._newcomers
    proto._handoff()
    for task in proto.test_tasks:
        task.cancel()
