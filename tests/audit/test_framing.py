"""No sequence of messages a buyer or a stranger can send gets an honest host exposed
(issue 10). Hypothesis drives buyers' calls, strangers' junk, replays and log fetches
at an honest host; the adversary keeps every signature of the host it sees (the
audit authenticators in replies, the log entries anyone may fetch, the host's
payment-chain authenticators that a refund hands a buyer) and then tries to frame
the host with them: every inconsistency and fork proof it can assemble from any two
of them, and every one of them pushed to the witnesses as if it were a log
authenticator. None may verify, and the witnesses must keep the host trusted."""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from pathlib import Path
from typing import Any

from audit_world import S, World, cert
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pmarket.api.rpc import make_request
from p2pmarket.audit.entry import AuditAuthenticator, AuditEntry
from p2pmarket.audit.evidence import EvidenceError, fork_proof, inconsistency_proof, verify_proof
from p2pmarket.audit.watched import TRUSTED
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import unpack
from tests.support.chains import Chain

BUYERS = [Identity(bytes([i + 1]) * 32) for i in range(2)]
STRANGER = Identity(b"\x66" * 32)
RPCS = ["create_account", "bid", "fund", "refund", "lease", "audit_log"]

JUNK = st.dictionaries(
    st.sampled_from(["account_id", "bids", "amount", "payment", "since", "limit", "close",
                     "interval_s", "replace", "x"]),
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.text(max_size=20),
              st.binary(max_size=40), st.dictionaries(st.text(max_size=6),
                                                      st.text(max_size=12), max_size=3)),
    max_size=4)

OPS = st.lists(st.one_of(
    st.tuples(st.just("create"), st.integers(0, 1), st.integers(10**6, 10**9)),
    st.tuples(st.just("bid"), st.integers(0, 1), st.sampled_from(["1", "3,0.2", ",,0.5"])),
    st.tuples(st.just("refund"), st.integers(0, 1), st.integers(1, 10**7), st.booleans()),
    st.tuples(st.just("junk"), st.sampled_from(RPCS), JUNK, st.booleans()),
    st.tuples(st.just("replay"), st.integers(0, 50)),
    st.tuples(st.just("fetch"), st.integers(-3, 60)),
    st.tuples(st.just("tick"), st.integers(1, 30)),
    st.tuples(st.just("audit")),
), min_size=1, max_size=20)


class Adversary:
    """What buyers and strangers have seen of the host, and what they sent."""

    def __init__(self, host_key: bytes) -> None:
        self.host_key = host_key
        self.triples: set[tuple[int, bytes, bytes]] = set()   # (seq, hash, sig)
        self.entries: dict[int, tuple[bytes, bytes]] = {}     # seq -> (entry bytes, sig)
        self.sent: list[tuple[str, bytes]] = []                # (url, raw request)

    def saw_reply(self, result: Any) -> None:
        audit = result.get("audit") if isinstance(result, dict) else None
        if isinstance(audit, dict) and audit.get("owner") == self.host_key:
            self.triples.add((audit["seq"], audit["hash"], audit["sig"]))

    def saw_log(self, segment: dict[str, Any]) -> None:
        for raw, sig in zip(segment["entries"], segment["sigs"], strict=True):
            entry = AuditEntry.from_wire(unpack(raw))
            self.entries[entry.seq] = (raw, sig)
            self.triples.add((entry.seq, entry.hash(), sig))

    def saw_ledger(self, chain: Chain) -> None:
        for a in chain.auths:
            self.triples.add((a.seq, a.hash, a.sig))

    def proofs(self) -> list[bytes]:
        # the adversary relabels whatever it holds as log authenticators of the host
        auth = [AuditAuthenticator(self.host_key, *t) for t in sorted(self.triples)]
        out = [inconsistency_proof(a, b) for a, b in itertools.permutations(auth, 2)
               if a.seq == b.seq and a.hash != b.hash]
        for a in auth:
            nxt = self.entries.get(a.seq + 1)
            if nxt is not None:
                out.append(fork_proof(a, *nxt))
        return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
async def test_no_buyer_or_stranger_gets_an_honest_host_exposed(ops: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp))
        ws = [world.witness() for _ in range(3)]
        h = world.host()
        adv = Adversary(h.key)
        # the host's payment chain, as refunds show it to buyers: one entry per seq
        ledger = Chain(h.identity)
        ledger.open()
        for i in range(6):
            ledger.send(BUYERS[i % 2].public_key, 1000 + i, f"refund {i}")
        adv.saw_ledger(ledger)
        accounts: dict[int, str] = {}
        try:
            for op in ops:
                with contextlib.suppress(P2PMarketError):
                    await _run(world, h, adv, accounts, op)
            await world.audit_round()
            adv.saw_log(await world.net.client(STRANGER).call(
                h.url, h.key, "host.audit_log", {"since": 0}))
            for proof in adv.proofs():
                with contextlib.suppress(EvidenceError):
                    verify_proof(proof)
                    raise AssertionError("a proof against an honest host verified")
            for w in ws:
                for seq, hsh, sig in sorted(adv.triples):
                    with contextlib.suppress(P2PMarketError):
                        await world.net.client(STRANGER).call(w.url, w.identity.public_key,
                                                              "witness.push", {
                            "host": h.key, "auths": [[seq, hsh, sig]], "url": h.url})
            await world.audit_round()
            await world.audit_round()
            for w in ws:
                assert [i["state"] for i in w.service.status()["hosts"]] in ([], [TRUSTED])
                assert not w.service.is_exposed(h.key)
                assert w.service.evidence.proofs() == []
        finally:
            world.close()


async def _run(world: World, h: Any, adv: Adversary, accounts: dict[int, str],
               op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "create":
        res = await world.call(BUYERS[op[1]], h, "create_account", {
            "payment": cert(op[2]), "bids": {"cpu": "1,0,1", "memory": "1,64MiB,1GiB"},
            "interval_s": 120})
        adv.saw_reply(res)
        accounts[op[1]] = res["account_id"]
    elif kind == "bid" and op[1] in accounts:
        adv.saw_reply(await world.call(BUYERS[op[1]], h, "bid", {
            "account_id": accounts[op[1]], "bids": {"cpu": op[2]}}))
    elif kind == "refund" and op[1] in accounts:
        args: dict[str, Any] = {"account_id": accounts[op[1]]}
        args.update({"close": True} if op[3] else {"amount": op[2]})
        adv.saw_reply(await world.call(BUYERS[op[1]], h, "refund", args))
    elif kind == "junk":
        _, rpc, args, as_buyer = op
        if as_buyer and accounts:
            args = {**args, "account_id": next(iter(accounts.values()))}
        who = BUYERS[0] if as_buyer else STRANGER
        world.net.tick += 1
        req = make_request(who, h.identity.node_id, f"host.{rpc}", args,
                           ts=world.clock.now + world.net.tick)
        adv.sent.append((h.url, req))
        await h.disp.dispatch(req)
    elif kind == "replay" and adv.sent:
        url, req = adv.sent[op[1] % len(adv.sent)]
        await world.net.nodes[url].dispatch(req)
    elif kind == "fetch":
        adv.saw_log(await world.net.client(STRANGER).call(
            h.url, h.key, "host.audit_log", {"since": max(0, op[1])}))
    elif kind == "tick":
        world.clock.now += op[1] * S
        await h.auct.tick(world.clock.now)
    elif kind == "audit":
        await world.audit_round()
