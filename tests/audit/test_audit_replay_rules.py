"""The replay's rules about time and repetition: entry timestamps never decrease, an
in.tick's ``now`` is its entry's time, and a buyer's signed request is taken at most
once (also by a restarted host, whose RPC replay guard starts empty)."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import pytest
from audit_world import BIDS, GIB, FakeBank, S, World, cert, open_two, signed_ctx

from p2pmarket.auction import HostError
from p2pmarket.auction.seen import MEMORY, WINDOW_US, pruned, recorded, refusal
from p2pmarket.auction.snapshot import from_snapshot, snapshot, state_digest
from p2pmarket.audit.entry import AuditEntry
from p2pmarket.audit.log import AuditLog
from p2pmarket.audit.replay import replay
from p2pmarket.core.config import Settings
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import unpack
from p2pmarket.host.accountstore import AccountStore
from p2pmarket.host.auctioneer import Auctioneer
from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM
from p2pmarket.ledger.chain import ZERO_HASH

ALICE, BOB = Identity.generate(), Identity.generate()


async def honest_log(world: World) -> tuple[Any, list[dict[str, Any]]]:
    h, alice = await open_two(world, ALICE, BOB)
    await world.call(ALICE, h, "lease", {"account_id": alice})
    await world.tick(h)
    return h, [unpack(r[1]) for r in h.auct.audit.raw(0, 10**6)]


def relinked(docs: list[dict[str, Any]]) -> list[bytes]:
    """The entries re-chained after hand edits (seqs renumbered, each ``prev`` the hash
    of the entry before): a host rewriting its log before anyone saw it."""
    out: list[bytes] = []
    prev = ZERO_HASH
    for seq, doc in enumerate(docs):
        entry = AuditEntry(seq, prev, doc["kind"], doc["body"], doc["ts"])
        out.append(entry.encode())
        prev = entry.hash()
    return out


def first(docs: list[dict[str, Any]], kind: str, after: int = 1) -> int:
    return next(k for k, d in enumerate(docs) if k >= after and d["kind"] == kind)


async def test_honest_log_replays_clean(world: World) -> None:
    h, docs = await honest_log(world)
    assert all(a["ts"] <= b["ts"] for a, b in pairwise(docs))
    assert all(d["body"]["now"] == d["ts"] for d in docs if d["kind"] == "in.tick")
    r = replay(relinked(docs), host=h.key)
    assert r.fault is None and not r.pending
    # the record of taken requests is in the state, its snapshot and its digest
    assert len(r.state.requests[ALICE.public_key][1]) == 3
    assert from_snapshot(snapshot(r.state)) == r.state
    assert state_digest(from_snapshot(snapshot(r.state))) == state_digest(r.state)


async def test_decreasing_timestamp_is_a_fault(world: World) -> None:
    h, docs = await honest_log(world)
    k = first(docs, "in.lease")
    docs[k]["ts"] = docs[k - 1]["ts"] - 1
    fault = replay(relinked(docs), host=h.key).fault
    assert fault is not None and fault.seq == k
    assert fault.rule.startswith("entry timestamps must not decrease")


async def test_tick_at_another_time_than_its_entry_is_a_fault(world: World) -> None:
    h, docs = await honest_log(world)
    k = first(docs, "in.tick", after=first(docs, "in.bid"))
    docs[k]["body"] = {"now": docs[k]["ts"] + S}
    fault = replay(relinked(docs), host=h.key).fault
    assert fault is not None and fault.seq == k
    assert fault.rule == "an in.tick's now must be its entry's timestamp"


async def test_signed_request_logged_twice_is_a_fault(world: World) -> None:
    h, docs = await honest_log(world)
    k = first(docs, "in.bid")
    n = 1
    while docs[k + n]["kind"] != "out.bid":
        n += 1
    again = [dict(d, ts=docs[-1]["ts"]) for d in docs[k:k + n + 1]]
    fault = replay(relinked(docs + again), host=h.key).fault
    assert fault is not None and fault.seq == len(docs)
    assert fault.rule.startswith("duplicate request")


async def test_auctioneer_refuses_a_request_it_took_even_after_a_restart(
        world: World) -> None:
    ident = Identity.generate()
    settings = Settings(cpu_mhz=4000, memory_kib=4 * GIB, min_price=1)
    vmm = LibvirtVMM("test:///default", prefix="p2pm-again-")
    path, audit = world.tmp / "again.sqlite", AuditLog(world.tmp / "again-audit.sqlite", ident)
    try:
        auct = Auctioneer(ident, settings, AccountStore(path), vmm, FakeBank().accept,
                          world.clock, audit=audit)
        args = {"payment": cert(10**8), "bids": BIDS, "interval_s": 600}
        ctx = signed_ctx(ALICE, ident, "create_account", args, world.clock.now)
        res = await auct.create_account(ctx, args)
        bid_args = {"account_id": res["account_id"], "bids": {"cpu": "3"}}
        bid = signed_ctx(ALICE, ident, "bid", bid_args, world.clock.now + 1)
        await auct.bid(bid, bid_args)
        head, state = audit.head, auct.state
        with pytest.raises(HostError, match="duplicate request"):
            await auct.bid(bid, bid_args)
        assert audit.head == head and auct.state is state     # nothing logged or changed
        world.clock.now += S
        again = Auctioneer(ident, settings, AccountStore(path), vmm, FakeBank().accept,
                           world.clock, audit=audit)
        assert again.state == auct.state
        for c, a, name in ((ctx, args, "create_account"), (bid, bid_args, "bid")):
            with pytest.raises(HostError, match="duplicate request"):
                await getattr(again, name)(c, a)
        assert audit.head == head
        world.clock.now += WINDOW_US   # long after: refused as too old to tell
        with pytest.raises(HostError, match="stale request"):
            await again.bid(bid, bid_args)
        await again.tick(world.clock.now)
        assert ALICE.public_key not in again.state.requests    # forgotten: bounded
        assert replay([r[1] for r in audit.raw(0, 10**6)], host=ident.public_key
                      ).fault is None
    finally:
        for info in vmm.list():
            vmm.undefine(info.account_id)
        vmm.close()


def test_request_record_is_bounded_per_caller() -> None:
    key, now = b"k" * 32, 10 * WINDOW_US
    record: Any = {}
    for ts in range(now, now + MEMORY + 5):
        assert refusal(record, key, ts, now) is None
        record = recorded(record, key, ts)
    low, seen = record[key]
    assert len(seen) == MEMORY and low == now + 4 and seen[0] == now + 5
    assert refusal(record, key, now + 4, now).startswith("stale request")
    assert refusal(record, key, now + 10, now).startswith("duplicate request")
    assert refusal(record, key, now - WINDOW_US, now).startswith("stale request")
    assert recorded(record, key, now + 10) is record
    assert pruned(record, now + WINDOW_US + 20)[key] == (-1, seen[16:])
    assert pruned(record, now + 2 * WINDOW_US) == {}
