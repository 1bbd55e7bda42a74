"""Crashes between the steps of a transfer (in process), and a payer that forks its chain.

A crash is simulated the way a SIGKILL acts: the victim's objects are abandoned
where they stand (tasks cancelled, the sqlite connection closed with whatever
transaction was open rolled back) and a new wallet or notary is opened on the
same files. Kill points: before or after each durable write of a wallet, before
or after each of its notary calls (a lost reply), inside or right after each
notary commit.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from p2pmarket.core.genesis import NotaryInfo
from p2pmarket.core.identity import Identity
from p2pmarket.ledger.certificate import Certificate
from p2pmarket.ledger.chain import SEND, Authenticator, Entry
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.notary import NotaryService
from p2pmarket.ledger.store import ChainStore
from p2pmarket.ledger.supply import audit_chains
from p2pmarket.ledger.wallet import Wallet
from tests.support.local_committee import LocalCommittee, NotaryUnreachable

KILL_POINTS = 50


class Crash(Exception):
    """The victim dies here."""


class Faults:
    def __init__(self) -> None:
        self.victim = ""
        self.kill_at = 0
        self.steps = 0
        self.fired = False
        self.dead_notaries: set[bytes] = set()

    def arm(self, victim: str, kill_at: int) -> None:
        self.victim, self.kill_at, self.steps, self.fired = victim, kill_at, 0, False

    def point(self, who: str) -> None:
        if self.fired or who != self.victim:
            return
        self.steps += 1
        if self.steps == self.kill_at:
            self.fired = True
            raise Crash(who)


class FaultyStore(ChainStore):
    faults: Faults
    who: str

    def append_many(self, items: Sequence[tuple[Entry, bytes]], check_sig: bool = True,
                    receipts: Mapping[int, bytes] | None = None) -> int:
        self.faults.point(self.who)
        added = super().append_many(items, check_sig, receipts)
        self.faults.point(self.who)
        return added

    def attach_many(self, certs: Sequence[Certificate]) -> None:
        self.faults.point(self.who)
        super().attach_many(certs)
        self.faults.point(self.who)


class PartyTransport:
    """A wallet's way to the notaries, with kill points before and after each call."""

    def __init__(self, inner: Any, faults: Faults, who: str) -> None:
        self.inner, self.faults, self.who = inner, faults, who

    async def call(self, notary: NotaryInfo, name: str, args: dict[str, Any]) -> dict[str, Any]:
        self.faults.point(self.who)
        result: dict[str, Any] = await self.inner.call(notary, name, args)
        self.faults.point(self.who)
        return result


class NotaryHost:
    """The committee's side: a notary that dies mid-commit or before its reply is
    unreachable for that call and restarts (reopens its database) right away."""

    def __init__(self, committee: LocalCommittee, root: Path, faults: Faults) -> None:
        self.c, self.root, self.faults = committee, root, faults
        self.restarts = 0
        for service in committee.services.values():
            self._arm(service)

    def _arm(self, service: NotaryService) -> None:
        def hook() -> None:
            if service.key in self.faults.dead_notaries:
                raise Crash("notary")
            try:
                self.faults.point("notary")
            except Crash:
                self.faults.dead_notaries.add(service.key)
                raise
        service.before_commit = hook

    async def call(self, notary: NotaryInfo, name: str, args: dict[str, Any]) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await self.c.transport.call(notary, name, args)
            if name in ("certify_batch", "deliver"):
                try:
                    self.faults.point("notary")  # committed; the reply never leaves
                except Crash:
                    self.faults.dead_notaries.add(notary.key)
                    raise
            return result
        except Crash:
            self.restart(notary.key)
            raise NotaryUnreachable("notary crashed", notary.url) from None

    def restart(self, key: bytes) -> None:
        k = next(i for i, n in enumerate(self.c.notaries) if n.public_key == key)
        self.c.services[key].close()
        service = NotaryService(self.c.notaries[k], self.c.genesis,
                                self.root / f"notary{k}.sqlite")
        self.c.services[key] = service
        self.c.transport.add(service)
        self._arm(service)
        self.faults.dead_notaries.discard(key)
        self.restarts += 1


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.faults = Faults()
        self.c = LocalCommittee.create(root / "notaries", f=1)
        self.host = NotaryHost(self.c, root / "notaries", self.faults)
        self.idents = {"mint": self.c.mint, "payer": Identity.generate(),
                       "payee": Identity.generate()}
        self.wallets = {who: self.open(who) for who in self.idents}
        self.minted = 0

    def open(self, who: str) -> Wallet:
        store = FaultyStore(self.root / f"{who}.sqlite")
        store.faults, store.who = self.faults, who
        return Wallet(self.idents[who], store, self.c.genesis,
                      PartyTransport(self.host, self.faults, who))

    async def crash(self, who: str) -> None:
        old = self.wallets[who]
        await old.close()  # its tasks die with it
        old.store.close()  # an open transaction is rolled back, as after SIGKILL
        self.wallets[who] = self.open(who)

    async def recover(self) -> None:
        for w in self.wallets.values():
            await w.resume()
        await self.wallets["payer"].redeliver()
        await self.wallets["payee"].sync()
        for w in self.wallets.values():
            await w.flush()

    def check(self) -> None:
        chains = {}
        for w in self.wallets.values():
            assert w.store.pending(w.key) is None
            chains[w.key] = (w.store.entries(w.key), w.store.authenticators(w.key))
        audit = audit_chains(chains, self.c.genesis)
        assert audit == {"minted": self.minted, "balances": self.minted, "in_flight": 0,
                         "ok": True, "chains": 3}, audit  # every transfer on both chains
        payer, payee = self.wallets["payer"], self.wallets["payee"]
        sent = {(e.owner, e.seq) for e in payer.store.entries(payer.key)
                if e.kind == SEND}
        got = {e.receipt
               for e in payee.store.entries(payee.key) if e.receipt is not None}
        assert sent == got
        for service in self.c.services.values():
            supply = service.supply()
            assert supply["ok"] and supply["minted"] == self.minted, supply
            for w in self.wallets.values():  # never a second entry signed at one seq
                head = service.head(w.key)["seq"]
                for seq in range(head + 1):
                    auth = service.authenticator(w.key, seq)
                    assert auth == w.store.authenticator(w.key, seq)


async def test_fifty_random_kill_points(tmp_path: Path) -> None:
    rng = random.Random(5)
    world = World(tmp_path)
    mint, payer = world.wallets["mint"], world.wallets["payer"]
    await payer.receive(await mint.mint_to(payer.key, 10_000))
    world.minted = 10_000
    crashed: dict[str, int] = {}
    for n in range(KILL_POINTS):
        victim = rng.choice(["payer", "payee", "notary"])
        world.faults.arm(victim, rng.randint(1, 14))
        amount = rng.randint(1, 50)
        try:
            cert = await world.wallets["payer"].send(world.wallets["payee"].key, amount,
                                                     f"t{n}")
            if rng.random() < 0.7:  # the payee is given the receipt, or syncs later
                await world.wallets["payee"].receive(cert)
            else:
                await world.wallets["payee"].sync()
            await world.wallets["payer"].flush()
        except (Crash, LedgerError):
            pass
        fired, world.faults.fired = world.faults.fired, True  # no more faults now
        if fired:
            crashed[victim] = crashed.get(victim, 0) + 1
            if victim != "notary":
                await world.crash(victim)
        await world.recover()
        world.check()
    assert sum(crashed.values()) >= KILL_POINTS * 0.6, crashed
    assert set(crashed) == {"payer", "payee", "notary"}
    assert world.host.restarts == crashed["notary"]
    for w in world.wallets.values():
        await w.close()
    world.c.close()


async def test_forked_payer_gets_no_second_certificate(tmp_path: Path,
                                                        committee4: LocalCommittee,
                                                        chain_of: Any) -> None:
    """The payer signs two SENDs at one seq to pay two hosts: the first is certified,
    the second never is, and every notary keeps the proof of the fork."""
    c = committee4
    store = ChainStore(tmp_path / "payer.sqlite")
    payer = Wallet(c.mint, store, c.genesis, c.transport)
    await payer.mint(100)
    host1, host2 = Identity.generate().public_key, Identity.generate().public_key
    head = store.head(payer.key)
    assert head is not None
    x = Entry(payer.key, head.seq + 1, head.hash(), SEND,
              {"to": host1, "amount": 100, "memo": "host 1"}, 10)
    y = Entry(payer.key, head.seq + 1, head.hash(), SEND,
              {"to": host2, "amount": 100, "memo": "host 2"}, 11)
    sx, sy = (Authenticator.sign(c.mint, e).sig for e in (x, y))
    services = [c.services[n.public_key] for n in c.notaries]
    xsigs = [s.certify(x, sx) for s in services]
    assert len(xsigs) == 4  # the first payment is certified
    for s in services:
        with pytest.raises(LedgerError, match="different entry") as err:
            s.certify(y, sy)
        assert Authenticator.from_wire(err.value.value["authenticator"]).hash == x.hash()
        [(certified, other)] = s.evidence(payer.key)
        assert (certified.hash, other.hash) == (x.hash(), y.hash())
        assert certified.verify() and other.verify()
    await payer.close()
    store.close()


def test_racing_fork_forms_no_certificate(committee4: LocalCommittee, chain_of: Any) -> None:
    """Each of two entries at one seq reaches two notaries first: neither gets a quorum,
    and each notary, shown the other entry, refuses it and keeps the evidence."""
    services = [committee4.services[n.public_key] for n in committee4.notaries]
    forker = chain_of(committee4.mint)
    forker.open()
    forker.mint(50)
    for s in services:
        s.certify(forker.entries[0], forker.auths[0].sig)
        s.certify(forker.entries[1], forker.auths[1].sig)
    host1, host2 = Identity.generate().public_key, Identity.generate().public_key
    x = forker.make(SEND, {"to": host1, "amount": 50, "memo": ""}, ts=1)
    y = forker.make(SEND, {"to": host2, "amount": 50, "memo": ""}, ts=2)
    sx, sy = (Authenticator.sign(forker.ident, e).sig for e in (x, y))
    for s in services[:2]:
        s.certify(x, sx)
    for s in services[2:]:
        s.certify(y, sy)  # two signatures each: quorum is 3, no certificate
    for s, entry, sig in ((services[2], x, sx), (services[3], x, sx),
                          (services[0], y, sy), (services[1], y, sy)):
        with pytest.raises(LedgerError, match="different entry"):
            s.certify(entry, sig)
        [(certified, other)] = s.evidence(forker.key)
        assert {certified.hash, other.hash} == {x.hash(), y.hash()}
    # neither host can be paid: a RECV needs a certificate with a quorum
    for entry, sig, signers in ((x, sx, services[:2]), (y, sy, services[2:])):
        weak = Certificate(entry, sig, tuple(sorted((s.key, s.certify(entry, sig))
                                                    for s in signers)))
        with pytest.raises(LedgerError, match="quorum"):
            services[0]._check_cert(weak)
