"""PeerReview witnesses against hosts: honest hosts stay trusted; an overcharge, a
rewritten log and two logs for two witnesses are exposed within two audit periods
with proofs that verify offline; unanswered audits are challenges."""

from __future__ import annotations

from typing import Any

import pytest
from audit_world import (
    ALICE_BIDS,
    BIDS,
    S,
    World,
    cert,
    overcharge_next_tick,
    rewritten,
    serve_two_logs,
)

from p2pmarket.audit.entry import AuditAuthenticator
from p2pmarket.audit.evidence import EvidenceError, inconsistency_proof, verify_proof
from p2pmarket.audit.evidencestore import EvidenceStore
from p2pmarket.audit.replay import replay
from p2pmarket.audit.watched import EXPOSED, SUSPECTED, TRUSTED
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.errors import RemoteError
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import pack, seal, unpack

ALICE, BOB = Identity.generate(), Identity.generate()


async def busy_host(world: World) -> tuple[Any, str, str]:
    h = world.host()
    a = await world.call(ALICE, h, "create_account", {"payment": cert(10**9),
                                                      "bids": ALICE_BIDS, "interval_s": 3600})
    b = await world.call(BOB, h, "create_account", {"payment": cert(10**8), "bids": BIDS,
                                                    "interval_s": 600, "contingency": "0.1"})
    for _ in range(3):
        await world.tick(h)
    await world.call(ALICE, h, "bid", {"account_id": a["account_id"], "bids": {"cpu": "2"}})
    await world.call(BOB, h, "lease", {"account_id": b["account_id"]})
    return h, a["account_id"], b["account_id"]


async def test_honest_host_is_trusted_and_its_log_replays(world: World) -> None:
    ws = [world.witness() for _ in range(3)]
    h, _, bob = await busy_host(world)
    await world.call(BOB, h, "refund", {"account_id": bob, "amount": 1000})
    with pytest.raises(RemoteError):
        await world.call(BOB, h, "bid", {"account_id": "nope", "bids": BIDS})
    await world.audit_round()
    await world.tick(h)
    await world.audit_round()
    for w in ws:
        st = w.service.status(h.key)["hosts"][0]
        assert st["state"] == TRUSTED, st
        assert st["audited_seq"] == h.auct.audit.head[0] and st["held"] == 0
        assert not w.service.is_exposed(h.identity.node_id)
    # the whole log replays from seq 0 without a fault, offline
    raws = [r[1] for r in h.auct.audit.raw(0, 10**6)]
    assert replay(raws).fault is None


async def test_overcharge_by_one_microcredit_is_exposed(world: World) -> None:
    ws = [world.witness() for _ in range(3)]
    h, alice, _ = await busy_host(world)
    await world.audit_round()
    overcharge_next_tick(h.auct, alice, extra=1)
    await world.tick(h)
    res = await world.call(ALICE, h, "lease", {"account_id": alice})   # pushes the auth
    assert res["audit"]
    await world.audit_round()          # first period after the cheat
    states = [w.service.status(h.key)["hosts"][0]["state"] for w in ws]
    assert states == [EXPOSED] * 3
    proof = ws[0].service.evidence.proofs(h.key)[0]
    # offline, with nothing but the proof
    checked = verify_proof(proof, h.identity.node_id)
    assert checked.type == "nonconformance" and "out.tick" in checked.rule
    assert checked.host == h.key
    assert ws[1].service.is_exposed(h.identity.node_id) and ws[1].service.is_exposed(h.key)
    # a tampered proof proves nothing
    doc = unpack(proof)
    doc["entries"][-1] = doc["entries"][-1].replace(b"prices", b"pricez")
    with pytest.raises(EvidenceError):
        verify_proof(pack(doc))
    with pytest.raises(EvidenceError):
        verify_proof(proof, Identity.generate().node_id)     # about another host
    store = EvidenceStore()
    store.add(proof)
    assert store.is_exposed(h.identity.node_id) and not store.is_exposed(ALICE.public_key)


async def test_rewritten_old_entry_is_exposed(world: World) -> None:
    ws = [world.witness() for _ in range(3)]
    h, _alice, _ = await busy_host(world)
    await world.audit_round()
    # the host rewrites an old entry (the bid) and re-signs the chain from there
    seq = next(e.seq for e, _ in h.auct.audit.entries(0, 1000) if e.kind == "in.bid")
    entry = h.auct.audit.entries(seq, 1)[0][0]
    body = {**entry.body, "args": {**entry.body["args"], "bids": {"cpu": "9"}}}
    h.auct.audit = rewritten(h.auct.audit, h.identity, seq, body)
    await world.tick(h)
    await world.audit_round()
    for w in ws:
        assert w.service.status(h.key)["hosts"][0]["state"] == EXPOSED
    proof = verify_proof(ws[0].service.evidence.proofs(h.key)[0], h.key)
    assert proof.type == "inconsistency"


async def test_two_logs_for_two_witnesses_are_exposed(world: World) -> None:
    _w1, w2, _w3 = (world.witness() for _ in range(3))
    h, _alice, _ = await busy_host(world)
    seq = next(e.seq for e, _ in h.auct.audit.entries(0, 1000) if e.kind == "in.bid")
    entry = h.auct.audit.entries(seq, 1)[0][0]
    # a conformant second log: Alice's bid as if she had sent it a microsecond later
    req = entry.body["request"]
    resigned = seal(ALICE, ENVELOPE, req["kind"], req["body"], ts=req["ts"] + 1, to=req["to"])
    forked = rewritten(h.auct.audit, h.identity, seq,
                       {**entry.body, "ts": entry.body["ts"] + 1,
                        "request": resigned.to_wire()})
    serve_two_logs(h, forked, w2.identity.public_key)
    # buyers' pushes went to every witness: w2 sees authenticators of the real log
    await world.audit_round()
    await world.audit_round()
    assert w2.service.status(h.key)["hosts"][0]["state"] == EXPOSED
    assert verify_proof(w2.service.evidence.proofs(h.key)[0]).type == "inconsistency"


async def test_two_logs_without_buyer_pushes_caught_by_gossip(world: World) -> None:
    w1, w2 = world.witness(), world.witness()
    h = world.host()
    acc = await world.call(ALICE, h, "create_account", {
        "payment": cert(10**8), "bids": BIDS, "interval_s": 60}, push=False)
    forked = rewritten(h.auct.audit, h.identity, 1, {"from": b"x", "ts": 1, "args": {}})
    serve_two_logs(h, forked, w2.identity.public_key)
    for w in (w1, w2):   # the host is known to both (say from one early push)
        w.service.watch(h.key, h.url)
    await world.audit_round()          # each audits its own view, then they gossip heads
    await world.audit_round()
    assert acc["account_id"]
    assert EXPOSED in {w1.service.status(h.key)["hosts"][0]["state"],
                       w2.service.status(h.key)["hosts"][0]["state"]}


async def test_unanswered_audit_is_a_challenge_then_answered(world: World) -> None:
    w = world.witness()
    h, _alice, _ = await busy_host(world)
    world.net.down.add(h.url)
    await world.audit_round()
    st = w.service.status(h.key)["hosts"][0]
    assert st["state"] == SUSPECTED and st["challenge"]["target"] >= 0
    assert not w.service.is_exposed(h.key)            # suspected is not exposed
    world.net.down.discard(h.url)
    await world.audit_round()
    assert w.service.status(h.key)["hosts"][0]["state"] == TRUSTED


async def test_withheld_entries_are_a_challenge(world: World) -> None:
    w = world.witness()
    h, _alice, _ = await busy_host(world)
    real = h.auct.audit_log
    head = h.auct.audit.head[0]

    async def short(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
        res = await real(ctx, {**args, "limit": max(0, head - 3 - args.get("since", 0))})
        res["head"] = [head - 4, res["head"][1]]
        return res

    h.disp.handlers["host.audit_log"] = short
    await world.audit_round()
    assert w.service.status(h.key)["hosts"][0]["state"] == SUSPECTED
    h.disp.handlers["host.audit_log"] = real
    await world.audit_round()
    assert w.service.status(h.key)["hosts"][0]["state"] == TRUSTED


async def test_bad_pushes_are_refused_and_change_nothing(world: World) -> None:
    from p2pmarket.api.rpc import make_request, open_reply

    w = world.witness()
    h, alice, _ = await busy_host(world)
    res = await world.call(ALICE, h, "lease", {"account_id": alice}, push=False)
    auth = res["audit"]
    good = {"host": h.key, "auths": [[auth["seq"], auth["hash"], auth["sig"]]]}
    before = w.service.status()

    async def send(data: bytes, who: Identity = ALICE) -> dict[str, Any]:
        return open_reply(data, await w.disp.dispatch(data), who, w.identity.public_key)

    ts = world.clock.now + 999
    req = make_request(ALICE, w.identity.node_id, "witness.push", good, ts=ts)
    tampered = req.replace(auth["sig"][:8], bytes(8))            # the push, tampered
    with pytest.raises(Exception):  # noqa: B017 - bad signature: a WireError reply
        await send(tampered)
    with pytest.raises(Exception):  # noqa: B017 - truncated
        await send(req[:-5])
    forged = dict(good, auths=[[auth["seq"], bytes(32), auth["sig"]]])
    with pytest.raises(RemoteError, match="not signed"):
        await send(make_request(ALICE, w.identity.node_id, "witness.push", forged, ts=ts + 1))
    other = Identity.generate()                                    # to another witness
    with pytest.raises(RemoteError, match="another node"):
        await send(make_request(ALICE, other.node_id, "witness.push", good, ts=ts + 2))
    assert w.service.status() == before and w.disp.rejected == 4
    held = before["hosts"][0]["held"]
    assert (await send(req))["held"] == held + 1                   # the real one
    with pytest.raises(RemoteError, match="replayed"):
        await send(req)                                            # replayed
    after = w.service.status()
    assert after["hosts"][0]["held"] == held + 1
    with pytest.raises(RemoteError):
        await send(make_request(ALICE, w.identity.node_id, "witness.status", {"x": 1},
                                ts=ts + 3))
    with pytest.raises(RemoteError, match="replayed"):       # replay guard on audit RPCs
        data = make_request(w.identity, h.identity.node_id, "host.audit_log", {}, ts=ts)
        await h.disp.dispatch(data)
        open_reply(data, await h.disp.dispatch(data), w.identity, h.key)


async def test_conflicting_pushes_are_a_proof(world: World) -> None:
    w = world.witness()
    h, alice, _ = await busy_host(world)
    res = await world.call(ALICE, h, "lease", {"account_id": alice}, push=False)
    a = res["audit"]
    other = rewritten(h.auct.audit, h.identity, a["seq"], {"account_id": "x"})
    b = other.authenticator(a["seq"])
    assert b is not None
    for auth in (a, b.to_wire()):
        await world.net.client(BOB).call(w.url, w.identity.public_key, "witness.push", {
            "host": h.key, "auths": [[auth["seq"], auth["hash"], auth["sig"]]]})
    assert w.service.is_exposed(h.identity.node_id)
    proof = w.service.evidence.proofs(h.key)[0]
    assert len(proof) < 400 and verify_proof(proof).seq == a["seq"]
    with pytest.raises(EvidenceError):
        same = AuditAuthenticator.from_wire(a)
        verify_proof(inconsistency_proof(same, same))


async def test_host_restart_replays_what_the_store_missed(world: World) -> None:
    """The log is the write-ahead log: a crash after the log append but before the
    store commit is repaired on restart by replaying the log."""
    from p2pmarket.audit.log import AuditLog
    from p2pmarket.host.accountstore import AccountStore
    from p2pmarket.host.auctioneer import Auctioneer

    ident = Identity.generate()
    path = world.tmp / "crash.sqlite"
    audit = AuditLog(world.tmp / "audit.sqlite", ident)
    from audit_world import GIB, FakeBank

    from p2pmarket.core.config import Settings
    from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM
    settings = Settings(cpu_mhz=4000, memory_kib=4 * GIB, min_price=1)
    vmm = LibvirtVMM("test:///default", prefix="p2pm-crash-")
    auct = Auctioneer(ident, settings, AccountStore(path), vmm, FakeBank().accept,
                      world.clock, audit=audit)
    from audit_world import signed_ctx
    args = {"payment": cert(10**8), "bids": BIDS, "interval_s": 60}
    res = await auct.create_account(
        signed_ctx(ALICE, ident, "create_account", args, world.clock.now), args)
    commit = auct.store.commit
    auct.store.commit = lambda *a: None   # type: ignore[method-assign]  # "crash"
    world.clock.now += S
    await auct.tick(world.clock.now)
    auct.store.commit = commit            # type: ignore[method-assign]
    fund = auct.state.accounts[res["account_id"]].fund
    again = Auctioneer(ident, settings, AccountStore(path), vmm, FakeBank().accept,
                       world.clock, audit=audit)
    assert again.state == auct.state and again.state.accounts[res["account_id"]].fund == fund
    assert replay([r[1] for r in audit.raw(0, 10**6)]).fault is None
    for info in vmm.list():
        vmm.undefine(info.account_id)
    vmm.close()
