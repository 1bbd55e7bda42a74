"""Buyers' inputs in the audit log carry the buyers' signed requests: an honest host's
log replays clean, and a host that logs a bid the buyer never signed (no request, a
bad signature, another key, other arguments, another host or RPC) is exposed by its
witnesses with a proof that verifies offline."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from audit_world import World, cert, open_two, signed_ctx

from p2pmarket.api.rpc import CallContext
from p2pmarket.auction.steps import RPCS
from p2pmarket.audit.evidence import EvidenceError, verify_proof
from p2pmarket.audit.replay import replay
from p2pmarket.audit.watched import EXPOSED, TRUSTED
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import Envelope, pack, unpack

ALICE, BOB, MALLORY = Identity.generate(), Identity.generate(), Identity.generate()


async def test_honest_log_carries_signed_requests_and_replays_clean(world: World) -> None:
    ws = [world.witness() for _ in range(3)]
    h, alice = await open_two(world, ALICE, BOB)
    await world.call(ALICE, h, "fund", {"account_id": alice, "payment": cert(10**6)})
    await world.call(ALICE, h, "refund", {"account_id": alice, "amount": 1000})
    await world.call(ALICE, h, "lease", {"account_id": alice})
    await world.audit_round()
    await world.tick(h)
    await world.audit_round()
    for w in ws:
        assert w.service.status(h.key)["hosts"][0]["state"] == TRUSTED
    raws = [r[1] for r in h.auct.audit.raw(0, 10**6)]
    assert replay(raws, host=h.key).fault is None
    kinds = set()
    for raw in raws:
        doc = unpack(raw)
        if doc["kind"][3:] in RPCS and doc["kind"].startswith("in."):
            kinds.add(doc["kind"])
            env = Envelope.from_wire(doc["body"]["request"])
            env.verify_signature(ENVELOPE)
            assert env.sender == doc["body"]["from"] and env.to == h.identity.node_id
            assert env.body == doc["body"]["args"] and env.ts == doc["body"]["ts"]
            # compact: the request is its envelope (~185 bytes) and the arguments
            assert len(pack(doc["body"]["request"])) < 200 + len(pack(env.body))
    # the SHARP RPCs' signed inputs replay in tests/auction/test_reserve_replay.py
    assert kinds == {f"in.{n}" for n in RPCS if n not in ("redeem", "buy_anchor")}


def fabricated(case: str, h: Any, alice: str, ts: int) -> tuple[CallContext, dict[str, Any]]:
    """The context and arguments a cheating host runs a bid for Alice with."""
    args: dict[str, Any] = {"account_id": alice, "bids": {"cpu": "9"}}
    if case == "unsigned":
        return CallContext(sender=ALICE.public_key, ts=ts), args
    if case == "bad_signature":
        ctx = signed_ctx(ALICE, h.identity, "bid", args, ts)
        assert ctx.request is not None
        sig = bytes([ctx.request.sig[0] ^ 1]) + ctx.request.sig[1:]
        return replace(ctx, request=replace(ctx.request, sig=sig)), args
    if case == "other_key":
        return signed_ctx(ALICE, h.identity, "bid", args, ts, signer=MALLORY), args
    if case == "other_args":   # Alice signed cpu 2; the host bids cpu 9 for her
        return signed_ctx(ALICE, h.identity, "bid", {**args, "bids": {"cpu": "2"}}, ts), args
    if case == "other_host":   # a bid Alice really sent, but to another host
        return signed_ctx(ALICE, h.identity, "bid", args, ts,
                          to=Identity.generate().node_id), args
    if case == "other_rpc":
        return signed_ctx(ALICE, h.identity, "lease", args, ts), args
    raise AssertionError(case)


@pytest.mark.parametrize(("case", "why"), [
    ("unsigned", "no signed request"),
    ("bad_signature", "not validly signed"),
    ("other_key", "signed by another key"),
    ("other_args", "arguments differ"),
    ("other_host", "addressed to another node"),
    ("other_rpc", "'rpc.host.lease'"),
])
async def test_fabricated_bid_is_exposed(world: World, case: str, why: str) -> None:
    ws = [world.witness() for _ in range(3)]
    h, alice = await open_two(world, ALICE, BOB)
    await world.audit_round()
    ctx, args = fabricated(case, h, alice, world.clock.now)
    await h.auct.bid(ctx, args)          # the host runs (and logs) a bid Alice never sent
    seq = max(e.seq for e, _ in h.auct.audit.entries(0, 10**6) if e.kind == "in.bid")
    await world.tick(h)
    await world.audit_round()
    for w in ws:
        assert w.service.status(h.key)["hosts"][0]["state"] == EXPOSED
    data = ws[0].service.evidence.proofs(h.key)[0]
    # offline, with nothing but the proof
    proof = verify_proof(data, h.identity.node_id)
    assert proof.type == "nonconformance" and proof.seq == seq
    assert proof.rule.startswith("unsigned input") and why in proof.rule
    assert len(data) < 4096
    with pytest.raises(EvidenceError):
        verify_proof(data, Identity.generate().public_key)
    # the offending entry cannot be swapped for an honest one under the host's signature
    doc = unpack(data)
    doc["entries"][-1] = doc["entries"][-1].replace(b"in.bid", b"in.bix")
    with pytest.raises(EvidenceError):
        verify_proof(pack(doc))
