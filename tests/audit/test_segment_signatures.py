"""A witness checks the hash chain of each fetched segment and the host's signature of
its last entry, not every entry's (docs/design.md section 5): the chain commits the
host to the whole segment. Proofs whose entry's own signature is not valid are built
from the chain linking it to the signed end, and verify offline; tampered, they do
not."""

from __future__ import annotations

from typing import Any

import pytest
from audit_world import ALICE_BIDS, BIDS, World, cert, overcharge_next_tick, rewritten
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmarket.audit.entry import AuditAuthenticator
from p2pmarket.audit.evidence import (
    EvidenceError,
    chain_doc,
    chain_fork_proof,
    conflict_proof,
    verify_proof,
)
from p2pmarket.audit.log import AuditLog
from p2pmarket.audit.replay import decode_entry, replay
from p2pmarket.audit.watched import Watched, WitnessError
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import WireError, pack, unpack

ALICE, BOB = Identity.generate(), Identity.generate()
BAD = bytes(64)   # 64 bytes, no one's signature
NOW = 2**62       # the witness's clock: no entry is in the future


def nothing(key: bytes, seq: int) -> AuditAuthenticator | None:
    return None


async def host_log(world: World, cheat: bool = False) -> tuple[Any, list[bytes], list[bytes]]:
    """A host with some history (``cheat``: its last tick overcharges Alice); its log's
    entries and signatures."""
    h = world.host()
    a = await world.call(ALICE, h, "create_account", {"payment": cert(10**9),
                                                      "bids": ALICE_BIDS, "interval_s": 3600})
    b = await world.call(BOB, h, "create_account", {"payment": cert(10**8), "bids": BIDS,
                                                    "interval_s": 600})
    for _ in range(3):
        await world.tick(h)
    await world.call(ALICE, h, "bid", {"account_id": a["account_id"], "bids": {"cpu": "2"}})
    await world.call(BOB, h, "lease", {"account_id": b["account_id"]})
    if cheat:
        overcharge_next_tick(h.auct, a["account_id"])
    await world.tick(h)
    await world.call(BOB, h, "lease", {"account_id": b["account_id"]})
    rows = h.auct.audit.raw(0, 10**6)
    return h, [r[1] for r in rows], [r[3] for r in rows]


def tampered(raw: bytes) -> bytes:
    doc = unpack(raw)
    doc["ts"] += 1
    return pack(doc)


async def test_a_bad_middle_signature_is_not_what_commits(world: World) -> None:
    h, raws, sigs = await host_log(world)
    mid = len(raws) // 2
    sigs = [*sigs[:mid], BAD, *sigs[mid + 1:]]
    w = Watched(h.key)
    assert w.check_segment(0, raws, sigs, NOW, nothing) is None
    assert w.replayer.seq == len(raws) - 1 and w.replayer.fault is None


async def test_a_tampered_middle_entry_is_caught_by_the_chain(world: World) -> None:
    h, raws, sigs = await host_log(world)
    mid = len(raws) // 2
    for bad in ([*raws[:mid], tampered(raws[mid]), *raws[mid + 1:]],   # the end unsigned
                [*raws[:mid], tampered(raws[mid])]):                  # the end's sig old
        w = Watched(h.key)
        with pytest.raises(WitnessError, match="not signed"):
            w.check_segment(0, bad, sigs[:len(bad)], NOW, nothing)
        assert w.replayer.seq == -1 and not w.unsaved   # nothing taken


async def test_a_bad_end_signature_is_refused(world: World) -> None:
    h, raws, sigs = await host_log(world)
    w = Watched(h.key)
    with pytest.raises(WitnessError, match="last entry is not signed"):
        w.check_segment(0, raws, [*sigs[:-1], BAD], NOW, nothing)
    assert w.replayer.seq == -1
    with pytest.raises(WitnessError, match="64 bytes"):
        w.check_segment(0, raws, [*sigs[:-1], b"short"], NOW, nothing)


def flip(proof: bytes, needle: bytes) -> bytes:
    """``proof`` with one byte of an embedded entry changed (still canonical msgpack)."""
    doc = unpack(proof)

    def walk(v: Any) -> Any:
        if isinstance(v, bytes) and v == needle:
            return tampered(v)
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        return v
    return pack(walk(doc))


async def test_a_held_push_against_an_unsigned_entry_is_proved_by_the_chain(
        world: World) -> None:
    h, raws, sigs = await host_log(world)
    mid = len(raws) // 2
    other = rewritten(h.auct.audit, h.identity, mid, {"another": "entry"})
    pushed = other.entries(mid, 1)[0][1]
    w = Watched(h.key)
    assert w.hold(pushed, nothing) is None
    proof = w.check_segment(0, raws, [*sigs[:mid], BAD, *sigs[mid + 1:]], NOW, nothing)
    assert proof is not None
    checked = verify_proof(proof, h.identity.node_id)
    assert checked.type == "inconsistency" and checked.seq == mid
    assert isinstance(unpack(proof)["b"], dict)   # the chain form: mid's sig is bad
    with pytest.raises(EvidenceError):
        verify_proof(flip(proof, raws[-1]))
    with pytest.raises(EvidenceError):
        verify_proof(flip(proof, raws[mid]))
    # with a valid signature at mid it is the old, short form
    w = Watched(h.key)
    w.hold(pushed, nothing)
    proof = w.check_segment(0, raws, sigs, NOW, nothing)
    assert proof is not None and isinstance(unpack(proof)["b"], list)
    assert verify_proof(proof).seq == mid


async def test_a_late_push_against_an_unsigned_entry_rechecks_the_log(world: World) -> None:
    h, raws, sigs = await host_log(world)
    mid = len(raws) // 2
    sigs = [*sigs[:mid], BAD, *sigs[mid + 1:]]
    w = Watched(h.key)
    assert w.check_segment(0, raws, sigs, NOW, nothing) is None
    other = rewritten(h.auct.audit, h.identity, mid, {"another": "entry"})
    pushed = other.entries(mid, 1)[0][1]
    # audited, but the signature kept for mid is not valid: no proof yet
    assert w.hold(pushed, nothing) is None and mid in w.recheck
    proof = w.check_segment(mid, raws[mid:], sigs[mid:], NOW, nothing)
    assert proof is not None and verify_proof(proof, h.key).seq == mid
    # a log that differs from the audited one only at unverifiable entries: refused
    w2 = Watched(h.key)
    w2.check_segment(0, raws, sigs, NOW, nothing)
    o_raws = [r[1] for r in other.raw(0, 10**6)]
    with pytest.raises(WitnessError, match="differs"):
        w2.check_segment(mid, o_raws[mid:mid + 1], [BAD], NOW, nothing)


async def test_a_fault_at_an_unsigned_entry_is_proved_with_the_tail(world: World) -> None:
    h, raws, sigs = await host_log(world, cheat=True)
    fault = replay(raws).fault
    assert fault is not None and "out.tick" in fault.rule and fault.seq < len(raws) - 1
    sigs = [*sigs[:fault.seq], BAD, *sigs[fault.seq + 1:]]
    w = Watched(h.key)
    proof = w.check_segment(0, raws, sigs, NOW, nothing)
    assert proof is not None
    checked = verify_proof(proof, h.key)
    assert checked.type == "nonconformance" and checked.seq == fault.seq
    assert unpack(proof)["tail"] == raws[fault.seq + 1:]
    with pytest.raises(EvidenceError):
        verify_proof(flip(proof, raws[-1]))
    doc = unpack(proof)
    with pytest.raises(EvidenceError):   # the tail must follow the entries
        verify_proof(pack({**doc, "tail": doc["tail"][1:]}))


async def test_a_fork_onto_an_unsigned_entry_is_proved_by_the_chain(world: World) -> None:
    h, raws, sigs = await host_log(world)
    k = len(raws) // 2
    w = Watched(h.key)
    assert w.check_segment(0, raws[:k + 1], sigs[:k + 1], NOW, nothing) is None
    other = rewritten(h.auct.audit, h.identity, k, {"another": "entry"})
    rows = other.raw(k + 1, 10**6)
    o_raws, o_sigs = [r[1] for r in rows], [r[3] for r in rows]
    assert decode_entry(o_raws[0])["prev"] != w.replayer.head
    proof = w.check_segment(k + 1, o_raws, [BAD, *o_sigs[1:]], NOW, nothing)
    assert proof is not None
    assert "chain" in unpack(proof)
    checked = verify_proof(proof, h.key)
    assert checked.type == "inconsistency" and checked.seq == k
    with pytest.raises(EvidenceError):
        verify_proof(flip(proof, o_raws[-1]))
    # a fork whose chain is unsigned at its end proves nothing, and takes nothing
    w2 = Watched(h.key)
    w2.check_segment(0, raws[:k + 1], sigs[:k + 1], NOW, nothing)
    with pytest.raises((WireError, WitnessError)):
        w2.check_segment(k + 1, o_raws, [BAD] * len(o_raws), NOW, nothing)
    assert w2.replayer.seq == k


def serve_bad_middle_sigs(h: Any) -> None:
    """The host answers ``host.audit_log`` with every signature but the last one's
    spoiled (the witness checks only the last)."""
    real = h.disp.handlers["host.audit_log"]

    async def audit_log(ctx: Any, args: dict[str, Any]) -> dict[str, Any]:
        resp = dict(await real(ctx, args))
        sigs = resp["sigs"]
        resp["sigs"] = [BAD] * (len(sigs) - 1) + sigs[-1:]
        return resp

    h.disp.handlers["host.audit_log"] = audit_log


async def test_a_late_push_against_an_unsigned_entry_exposes_the_host(world: World) -> None:
    ws = [world.witness() for _ in range(2)]
    h, raws, _ = await host_log(world)
    serve_bad_middle_sigs(h)
    await world.audit_round()
    assert [w.service.status(h.key)["hosts"][0]["state"] for w in ws] == ["trusted"] * 2
    mid = len(raws) // 2
    other = rewritten(h.auct.audit, h.identity, mid, {"another": "entry"})
    pushed = other.entries(mid, 1)[0][1]
    for w in ws:   # a buyer pushes what the host told it about seq mid
        await w.service.rpc_push(None, {"host": h.key,   # type: ignore[arg-type]
                                        "auths": [[pushed.seq, pushed.hash, pushed.sig]]})
        assert w.service.hosts[h.key].recheck == {mid: pushed}
    # a restarted witness still rechecks it
    again = world.witness(ws[1].identity, store=ws[1].service.store)
    assert again.service.hosts[h.key].recheck == {mid: pushed}
    await world.audit_round()
    for w in (ws[0], again):
        assert w.service.status(h.key)["hosts"][0]["state"] == "exposed"
        proof = verify_proof(w.service.evidence.proofs(h.key)[0], h.key)
        assert proof.type == "inconsistency" and proof.seq == mid


def _chain_proofs() -> tuple[bytes, bytes]:
    """A conflict and a fork proof in chain form, from a small signed log."""
    ident = Identity(bytes([3]) * 32)
    log = AuditLog(":memory:", ident)
    log.append_many([("x", {"n": i}, i) for i in range(6)])
    rows = log.raw(0, 100)
    other = AuditLog(":memory:", ident)
    other.append_many([("x", {"n": i if i != 2 else -1}, i) for i in range(6)])
    pushed = other.entries(2, 1)[0][1]
    conflict = conflict_proof(ident.public_key, pushed,
                              chain_doc([r[1] for r in rows[2:]], rows[-1][3]))
    fork = chain_fork_proof(log.entries(2, 1)[0][1], [r[1] for r in other.raw(3, 100)],
                            other.raw(5, 1)[0][3])
    return conflict, fork


CONFLICT, FORK = _chain_proofs()


def test_chain_proofs_verify() -> None:
    assert verify_proof(CONFLICT).rule == "two different entries signed for seq 2"
    assert verify_proof(FORK).seq == 2 and "chain" in unpack(FORK)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([CONFLICT, FORK]), st.data())
def test_a_chain_proof_changed_anywhere_does_not_verify(proof: bytes, data: Any) -> None:
    k = data.draw(st.integers(0, len(proof) - 1))
    bit = data.draw(st.integers(0, 7))
    changed = proof[:k] + bytes([proof[k] ^ (1 << bit)]) + proof[k + 1:]
    with pytest.raises(EvidenceError):
        verify_proof(changed)
