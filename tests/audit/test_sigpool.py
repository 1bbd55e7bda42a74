"""Buyers' signed requests checked ahead of the replay, across cores
(:mod:`p2pmarket.audit.sigpool`): the replay given those answers finds the same faults
for the same log as the replay that checks each request as it comes."""

from __future__ import annotations

import pytest
from audit_world import ALICE_BIDS, World, cert, open_two
from test_audit_signed import ALICE, BOB, fabricated

from p2pmarket.audit.evidence import verify_proof
from p2pmarket.audit.replay import Replayer, Verdicts, replay, verdicts_of
from p2pmarket.audit.sigpool import SignaturePool
from p2pmarket.audit.watched import EXPOSED, TRUSTED
from p2pmarket.core.identity import Identity, node_id_of

CASES = ["unsigned", "bad_signature", "other_key", "other_args", "other_host", "other_rpc"]


def replay_ahead(raws: list[bytes], host: bytes, verdicts: Verdicts) -> Replayer:
    r = Replayer(host=host)
    r.verdicts = verdicts
    for raw in raws:
        if r.take(raw) is not None:
            break
    return r


async def log_of(world: World, case: str | None) -> tuple[bytes, list[bytes]]:
    h, alice = await open_two(world, ALICE, BOB)
    await world.call(ALICE, h, "fund", {"account_id": alice, "payment": cert(10**6)})
    if case is not None:
        ctx, args = fabricated(case, h, alice, world.clock.now)
        await h.auct.bid(ctx, args)   # the host logs a bid Alice never sent so
    await world.call(ALICE, h, "lease", {"account_id": alice})
    await world.tick(h)
    return h.key, [r[1] for r in h.auct.audit.raw(0, 10**6)]


@pytest.mark.parametrize("case", [None, *CASES])
async def test_checked_ahead_the_replay_finds_the_same_fault(world: World,
                                                             case: str | None) -> None:
    host, raws = await log_of(world, case)
    plain = replay(raws, host=host)
    assert (plain.fault is None) == (case is None)
    answers = verdicts_of(raws, node_id_of(host))
    assert len(answers) == 5 + (case is not None)   # 2 accounts, fund, lease, bid
    ahead = replay_ahead(raws, host, Verdicts(node_id_of(host), dict(answers)))
    assert ahead.fault == plain.fault and ahead.seq == plain.seq
    assert ahead.state == plain.state


async def test_verdicts_for_another_host_are_not_used(world: World) -> None:
    host, raws = await log_of(world, "other_args")
    fault = replay(raws, host=host).fault
    assert fault is not None
    # answers that say every request holds, but made for another host: ignored
    lies = {h: None for h, _ in verdicts_of(raws, node_id_of(host))}
    ahead = replay_ahead(raws, host, Verdicts(Identity.generate().node_id, lies))
    assert ahead.fault == fault


@pytest.mark.parametrize("threads", [False, True])
async def test_the_pool_gives_the_answers_of_the_replay(world: World, threads: bool) -> None:
    host, raws = await log_of(world, "bad_signature")
    pool = SignaturePool(2, min_batch=0, chunk=3, threads=threads)
    try:
        want = dict(verdicts_of(raws, node_id_of(host)))
        assert any(v is not None for v in want.values())
        assert pool.verdicts(raws, node_id_of(host)).by_hash == want
        assert (await pool.averdicts(raws, node_id_of(host))).by_hash == want
    finally:
        pool.close()
    small = SignaturePool(2, min_batch=len(raws) + 1)
    assert small.verdicts(raws, node_id_of(host)).by_hash == {}   # left to the replay
    assert small._pool is None   # no worker started for it
    small.close()


async def test_a_witness_with_a_pool_exposes_a_fabricated_bid(world: World) -> None:
    ws = [world.witness() for _ in range(2)]
    for w in ws:
        w.service.sigpool = SignaturePool(2, min_batch=0, threads=True)
    try:
        h, alice = await open_two(world, ALICE, BOB)
        await world.audit_round()
        assert [w.service.status(h.key)["hosts"][0]["state"] for w in ws] == [TRUSTED] * 2
        await world.call(ALICE, h, "bid", {"account_id": alice, "bids": ALICE_BIDS})
        ctx, args = fabricated("other_args", h, alice, world.clock.now)
        await h.auct.bid(ctx, args)
        await world.tick(h)
        await world.audit_round()
        assert [w.service.status(h.key)["hosts"][0]["state"] for w in ws] == [EXPOSED] * 2
        proof = verify_proof(ws[0].service.evidence.proofs(h.key)[0], h.key)
        assert proof.rule.startswith("unsigned input")
    finally:
        for w in ws:
            assert w.service.sigpool is not None
            w.service.sigpool.close()
