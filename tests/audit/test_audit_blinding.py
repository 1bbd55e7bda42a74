"""A stranger cannot blind a host's witnesses (issue 10, item 5): requests are bounded
before anything is logged, what is logged stays small, ``host.audit_log`` answers are
bounded in bytes, the witness pages through the whole log, and a slow host does not
hold up the audit of the others."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from audit_world import ALICE_BIDS, BIDS, World, cert

from p2pmarket.audit.entry import MAX_ENTRY_BYTES
from p2pmarket.audit.log import SEGMENT_BYTES, AuditLog
from p2pmarket.audit.watched import SUSPECTED, TRUSTED
from p2pmarket.core.errors import RemoteError
from p2pmarket.core.identity import Identity

ALICE, STRANGER = Identity.generate(), Identity.generate()
MIB = 1024 * 1024
REQUEST_BOUND = 64 * 1024   # host.create_account / fund / bid (auction.rpcargs)


async def test_a_stranger_cannot_blind_the_witnesses(world: World) -> None:
    ws = [world.witness() for _ in range(3)]
    h = world.host()
    a = await world.call(ALICE, h, "create_account", {
        "payment": cert(10**9), "bids": ALICE_BIDS, "interval_s": 3600})
    await world.audit_round()
    head = h.auct.audit.head
    # three refused bids carrying 1 MB of junk each: refused before anything is logged
    for _ in range(3):
        with contextlib.suppress(RemoteError):
            await world.call(STRANGER, h, "bid", {"account_id": a["account_id"],
                                                  "bids": {"cpu": "1"}, "junk": b"\xee" * MIB})
    junk_logged = h.auct.audit.head != head
    # refused for the state (the payment is no certificate), just under the bound: these
    # are logged whole, with the signed request, and fill several pages of the log
    for _ in range(40):
        with contextlib.suppress(RemoteError):
            await world.call(STRANGER, h, "create_account", {
                "payment": {"id": "x", "pad": b"\xee" * (REQUEST_BOUND - 2048)},
                "bids": BIDS, "interval_s": 60})
    logged = [r[1] for r in h.auct.audit.raw(0, 10**6, max_bytes=1 << 40)]
    assert sum(map(len, logged)) > 4 * MIB   # more than one reply could ever carry
    # Alice commits the host to an entry after all that, and pushes it to the witnesses
    res = await world.call(ALICE, h, "bid", {"account_id": a["account_id"],
                                             "bids": {"cpu": "2"}})
    commitment = res["audit"]["seq"]
    await world.audit_round()
    for w in ws:
        st = w.service.status(h.key)["hosts"][0]
        assert st["state"] == TRUSTED, st
        assert st["audited_seq"] >= commitment
    assert not junk_logged
    assert max(map(len, logged)) <= 2 * REQUEST_BOUND + 4096


async def test_audit_log_answers_are_bounded_in_bytes_and_page_through(world: World) -> None:
    h = world.host()
    for _ in range(30):
        with contextlib.suppress(RemoteError):
            await world.call(STRANGER, h, "create_account", {
                "payment": {"id": "x", "pad": b"\xee" * 60_000}, "bids": BIDS,
                "interval_s": 60})
    client = world.net.client(ALICE)
    seen: list[int] = []
    since = 0
    while True:
        seg = await client.call(h.url, h.key, "host.audit_log", {"since": since,
                                                                 "limit": 2**64 - 1})
        sizes = [len(e) + len(s) for e, s in zip(seg["entries"], seg["sigs"], strict=True)]
        assert sizes and (sum(sizes) <= SEGMENT_BYTES or len(sizes) == 1)
        seen += range(since, since + len(sizes))
        if seen[-1] >= seg["head"][0]:
            break
        since = seen[-1] + 1
    assert seen == list(range(h.auct.audit.head[0] + 1)) and len(seen) > 40


@pytest.mark.parametrize(("args", "message"), [
    ({"since": 2**63}, "since must be"), ({"since": 2**64 - 1}, "since must be"),
    ({"since": -1}, "since must be"), ({"since": True}, "since must be"),
    ({"since": "0"}, "since must be"), ({"limit": -1}, "limit must be"),
    ({"limit": None}, "limit must be"), ({"since": 0, "junk": 1}, "unknown argument")])
async def test_audit_log_arguments_are_checked(world: World, args: dict[str, Any],
                                               message: str) -> None:
    h = world.host()
    with pytest.raises(RemoteError, match=message):
        await world.net.client(ALICE).call(h.url, h.key, "host.audit_log", args)


async def test_audit_log_past_the_head_and_huge_counts(world: World) -> None:
    h = world.host()
    client = world.net.client(ALICE)
    res = await client.call(h.url, h.key, "host.audit_log", {"since": 2**62})
    assert res["entries"] == [] and res["head"][0] == h.auct.audit.head[0]
    res = await client.call(h.url, h.key, "host.audit_log", {"since": 0, "limit": 2**64 - 1})
    assert len(res["entries"]) == h.auct.audit.head[0] + 1


def test_the_log_serves_one_entry_past_the_byte_bound_and_refuses_oversize_ones() -> None:
    ident = Identity.generate()
    log = AuditLog(":memory:", ident)
    log.append_many([("out.status", {"pad": b"\x01" * 5000}, 1) for _ in range(5)])
    assert len(log.raw(0, 10, max_bytes=100)) == 1        # progress, always
    assert len(log.raw(0, 10, max_bytes=12_000)) == 2
    assert len(log.raw(1, 10, max_bytes=10**9)) == 4
    assert log.raw(2**63, 10) == [] and log.entries(2**70, 2**70) == []
    from p2pmarket.audit.errors import AuditError
    with pytest.raises(AuditError, match="too large"):
        log.append("out.status", {"pad": b"\x01" * MAX_ENTRY_BYTES}, 2)
    assert log.head[0] == 4


async def test_a_slow_host_does_not_hold_up_the_audit_of_the_others(world: World) -> None:
    w = world.witness()
    w.service.fetch_s = 0.2
    fast, slow = world.host(), world.host()
    for h in (fast, slow):
        await world.call(ALICE, h, "create_account", {
            "payment": cert(10**8), "bids": BIDS, "interval_s": 600})
    never = asyncio.Event()
    asked = asyncio.Event()

    async def stall(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
        asked.set()
        await never.wait()
        return {}

    slow.disp.handlers["host.audit_log"] = stall
    try:
        await asyncio.wait_for(world.audit_round(), 10)
    finally:
        never.set()
    assert asked.is_set()
    assert w.service.status(fast.key)["hosts"][0]["state"] == TRUSTED
    st = w.service.status(slow.key)["hosts"][0]
    assert st["state"] == SUSPECTED and "did not come" in st["error"]


async def test_a_stranger_asking_for_its_status_grows_no_log(world: World) -> None:
    h = world.host()
    head = h.auct.audit.head
    for _ in range(5):
        res = await world.net.client(Identity.generate()).call(h.url, h.key, "host.status", {})
        assert res["accounts"] == [] and res["audit"]["seq"] == head[0]
        assert res["audit"]["hash"] == head[1]
    assert h.auct.audit.head == head
    await world.call(ALICE, h, "create_account", {"payment": cert(10**8), "bids": BIDS,
                                                  "interval_s": 600})
    before = h.auct.audit.head[0]
    res = await world.net.client(ALICE).call(h.url, h.key, "host.status", {})
    assert len(res["accounts"]) == 1 and res["audit"]["seq"] == before + 1   # recorded
