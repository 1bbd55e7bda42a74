"""A witness's progress is durable: after a restart it resumes each audit where it
stopped (not from seq 0), still holds what buyers pushed, keeps its challenges, and
still catches a host contradicting an entry audited before the restart. Entries
dated in the future are a challenge, not evidence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from audit_world import S, WitnessNode, World, cert, open_two, rewritten

from p2pmarket.audit.evidence import verify_proof
from p2pmarket.audit.evidencestore import EvidenceStore
from p2pmarket.audit.watched import EXPOSED, SUSPECTED, TRUSTED
from p2pmarket.audit.witnessstore import WitnessStore
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import pack

ALICE, BOB = Identity.generate(), Identity.generate()


class Recorder:
    """The witness's client, recording the ``since`` of every log fetch."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.since: list[int] = []

    async def call(self, url: str, key: bytes, name: str, args: dict[str, Any]
                   ) -> dict[str, Any]:
        if name == "host.audit_log":
            self.since.append(args["since"])
        result: dict[str, Any] = await self.inner.call(url, key, name, args)
        return result


def durable_witness(world: World, ident: Identity, tmp: Path,
                    clock: Any = None) -> tuple[WitnessNode, Recorder]:
    """A witness whose store and evidence live in ``tmp`` (start it again with the same
    arguments to restart it); it replaces any earlier one with this identity."""
    rec = Recorder(world.net.client(ident))
    node = world.witness(ident, rec, EvidenceStore(tmp / f"ev-{ident.node_id.hex()}"),
                         WitnessStore(tmp / f"wit-{ident.node_id.hex()}"), clock)
    return node, rec


def stop(node: WitnessNode) -> None:
    node.service.store.close()
    node.service.evidence.close()


async def open_accounts(world: World) -> tuple[Any, str]:
    h, alice = await open_two(world, ALICE, BOB)
    await world.tick(h)
    return h, alice


async def test_restarted_witness_resumes_where_it_stopped(world: World, tmp_path: Path
                                                          ) -> None:
    ident = Identity.generate()
    w, _ = durable_witness(world, ident, tmp_path)
    h, alice = await open_accounts(world)
    await world.audit_round()
    before = w.service.status(h.key)["hosts"][0]
    assert before["state"] == TRUSTED and before["audited_seq"] == h.auct.audit.head[0]
    stop(w)

    w, rec = durable_witness(world, ident, tmp_path)     # restart
    after = w.service.status(h.key)["hosts"][0]
    assert (after["audited_seq"], after["head"], after["state"]) == \
        (before["audited_seq"], before["head"], TRUSTED)
    await world.call(ALICE, h, "bid", {"account_id": alice, "bids": {"cpu": "3"}})
    await world.call(ALICE, h, "fund", {"account_id": alice, "payment": cert(10**6)})
    await world.tick(h)
    await world.audit_round()
    # one fetch, from the last entry audited before the restart (not from 0)
    assert rec.since == [before["audited_seq"]]
    st = w.service.status(h.key)["hosts"][0]
    assert st["state"] == TRUSTED and st["audited_seq"] == h.auct.audit.head[0]
    assert w.service.store.audited_count(h.key) == h.auct.audit.head[0] + 1
    # the anchor's payment records are kept one row each: the three payments, once
    rows = w.service.store.conn.execute(
        "SELECT COUNT(*) FROM anchor_records WHERE kind = 'payments'").fetchone()[0]
    assert rows == 3
    stop(w)
    w, _ = durable_witness(world, ident, tmp_path)       # and they restore the state
    assert w.service.status(h.key)["hosts"][0]["audited_seq"] == h.auct.audit.head[0]
    assert len(w.service.hosts[h.key].replayer.anchor_state.payments or {}) == 3  # type: ignore[union-attr]


async def test_restarted_witness_keeps_pushes_and_challenges(world: World, tmp_path: Path
                                                             ) -> None:
    ident = Identity.generate()
    w, _ = durable_witness(world, ident, tmp_path)
    h, alice = await open_accounts(world)
    await world.call(ALICE, h, "bid", {"account_id": alice, "bids": {"cpu": "2"}})
    world.net.down.add(h.url)
    await world.audit_round()
    st = w.service.status(h.key)["hosts"][0]
    assert st["state"] == SUSPECTED and st["held"] >= 1
    stop(w)

    w, _ = durable_witness(world, ident, tmp_path)
    st2 = w.service.status(h.key)["hosts"][0]
    assert st2["state"] == SUSPECTED and st2["held"] == st["held"]
    assert st2["challenge"] == st["challenge"]
    world.net.down.discard(h.url)
    await world.audit_round()
    st3 = w.service.status(h.key)["hosts"][0]
    assert st3["state"] == TRUSTED and st3["held"] == 0
    assert st3["confirmed"] == st["held"]   # each held one was matched by the audit
    stop(w)
    w, _ = durable_witness(world, ident, tmp_path)       # the answered challenge stays closed
    assert w.service.status(h.key)["hosts"][0]["held"] == 0
    assert w.service.status(h.key)["hosts"][0]["state"] == TRUSTED


async def test_contradicting_an_entry_audited_before_the_restart_is_exposed(
        world: World, tmp_path: Path) -> None:
    ident = Identity.generate()
    w, _ = durable_witness(world, ident, tmp_path)
    h, alice = await open_accounts(world)
    await world.audit_round()
    stop(w)
    w, _ = durable_witness(world, ident, tmp_path)
    # the host rewrites its first account's opening and re-signs the chain from there;
    # a buyer pushes an authenticator of the rewritten log
    entry = h.auct.audit.entries(1, 1)[0][0]
    other = rewritten(h.auct.audit, h.identity, 1, {**entry.body, "ts": entry.body["ts"] + 1})
    _, a = other.entries(1, 1)[0]
    out = await w.service.rpc_push(None, {"host": h.key, "auths": [[a.seq, a.hash, a.sig]]})  # type: ignore[arg-type]
    assert out["state"] == EXPOSED
    proof = verify_proof(w.service.evidence.proofs(h.key)[0], h.key)
    assert proof.type == "inconsistency" and proof.seq == 1
    stop(w)
    w, _ = durable_witness(world, ident, tmp_path)       # and it stays exposed
    assert w.service.status(h.key)["hosts"][0]["state"] == EXPOSED
    assert alice


async def test_entries_dated_in_the_future_are_a_challenge(world: World, tmp_path: Path
                                                          ) -> None:
    ident = Identity.generate()
    lag = [120 * S]   # the witness's clock is two minutes behind the host's entries

    def clock() -> int:
        return world.clock.now - lag[0]

    w, _ = durable_witness(world, ident, tmp_path, clock)
    h, _alice = await open_accounts(world)
    w.service.watch(h.key, h.url)
    await w.service.audit_all()
    st = w.service.status(h.key)["hosts"][0]
    assert st["state"] == SUSPECTED and "future" in st["error"] and st["audited_seq"] < 0
    assert not w.service.is_exposed(h.key)
    lag[0] = 0
    await w.service.audit_all()
    st = w.service.status(h.key)["hosts"][0]
    assert st["state"] == TRUSTED and st["audited_seq"] == h.auct.audit.head[0]


def test_an_unreadable_saved_replay_is_audited_again_from_zero(tmp_path: Path) -> None:
    host = Identity.generate().public_key
    store = WitnessStore(tmp_path / "w.sqlite")
    with store.conn:
        store.conn.execute("INSERT INTO hosts (key, url, seq) VALUES (?, 'http://h', 5)",
                           (host,))
        store.conn.execute("INSERT INTO replay_entries (key, seq, raw) VALUES (?, 0, ?)",
                           (host, pack({"not": "an entry"})))
    saved = store.hosts()
    assert len(saved) == 1 and saved[0].replayer.seq == -1
    assert "re-auditing" in saved[0].error
    store.close()
