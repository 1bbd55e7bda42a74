"""A hypothesis state machine: random mints, transfers, receipts, checkpoints, wallet
crashes (with entries left pending), notary restarts and outages across several chains.
After every step the money adds up: certified balances plus certified SENDs not yet
received equal all mints, on the chains and at every notary."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from p2pmarket.core.identity import Identity
from p2pmarket.ledger.certificate import Certificate
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.notary import NotaryService
from p2pmarket.ledger.store import ChainStore
from p2pmarket.ledger.supply import audit_chains
from p2pmarket.ledger.wallet import Wallet
from tests.support.local_committee import LocalCommittee

WALLETS = 4  # wallet 0 holds the mint key
who = st.integers(0, WALLETS - 1)
amounts = st.integers(1, 300)


class Ledger(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.root = Path(tempfile.mkdtemp(prefix="ledger-sm-"))
        self.c = LocalCommittee.create(self.root / "notaries", f=1)
        self.idents = [self.c.mint] + [Identity.generate() for _ in range(WALLETS - 1)]
        self.wallets = [self.open(i) for i in range(WALLETS)]
        self.minted = 0
        self.certs: list[Certificate] = []

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def open(self, i: int) -> Wallet:
        return Wallet(self.idents[i], ChainStore(self.root / f"w{i}.sqlite"), self.c.genesis,
                      self.c.transport)

    def teardown(self) -> None:
        for w in self.wallets:
            self.run(w.close())
            w.store.close()
        self.c.close()
        self.loop.close()
        shutil.rmtree(self.root, ignore_errors=True)

    @rule(amount=amounts)
    def mint(self, amount: int) -> None:
        try:
            self.run(self.wallets[0].mint(amount))
        except LedgerError as exc:
            assert "stays pending" in exc.message
        self.minted += amount  # certified now, or pending and certified on resume

    @rule(i=who, j=who, amount=amounts, many=st.integers(1, 3))
    def transfer(self, i: int, j: int, amount: int, many: int) -> None:
        if i == j:
            return
        try:
            certs = self.run(self.wallets[i].send_many(
                [(self.idents[j].public_key, amount, "sm")] * many))
        except LedgerError:
            return  # refused (overspend) or left pending: both fine
        self.certs += certs

    @rule(k=st.integers(0, 1000))
    def receive(self, k: int) -> None:
        if not self.certs:
            return
        cert = self.certs[k % len(self.certs)]
        payee = next(i for i in range(WALLETS)
                     if self.idents[i].public_key == cert.entry.body["to"])
        try:
            assert self.run(self.wallets[payee].receive(cert)) == cert.entry.amount
        except LedgerError as exc:
            assert "stays pending" in exc.message

    @rule(i=who)
    def sync(self, i: int) -> None:
        try:
            self.run(self.wallets[i].sync())
        except LedgerError as exc:
            assert "stays pending" in exc.message

    @rule(i=who)
    def checkpoint(self, i: int) -> None:
        try:
            self.run(self.wallets[i].checkpoint())
        except LedgerError as exc:
            assert "stays pending" in exc.message

    @rule(i=who, j=who, amount=amounts)
    def crash_mid_send(self, i: int, j: int, amount: int) -> None:
        """Two notaries unreachable: the SEND stays pending; the wallet crashes and
        reopens, and resumes it once they are back."""
        if i == j:
            return
        down = {n.public_key for n in self.c.notaries[:2]}
        self.c.transport.down |= down
        with contextlib.suppress(LedgerError):
            self.run(self.wallets[i].send(self.idents[j].public_key, amount, "crash"))
        self.crash_wallet(i)
        self.c.transport.down -= down
        try:
            cert = self.run(self.wallets[i].resume())
        except LedgerError as exc:  # the last notary is down too
            assert "stays pending" in exc.message
            return
        if cert is not None and cert.entry.kind == "SEND":
            self.certs.append(cert)

    @rule(i=who)
    def crash_wallet(self, i: int) -> None:
        old = self.wallets[i]
        self.run(old.close())
        old.store.close()
        self.wallets[i] = self.open(i)

    @rule(k=st.integers(0, 3))
    def restart_notary(self, k: int) -> None:
        ident = self.c.notaries[k]
        self.c.services[ident.public_key].close()
        service = NotaryService(ident, self.c.genesis, self.root / "notaries" / f"notary{k}.sqlite")
        self.c.services[ident.public_key] = service
        self.c.transport.add(service)

    @rule()
    def toggle_outage(self) -> None:
        self.c.transport.down ^= {self.c.notaries[3].public_key}  # at most f=1 down

    @rule()
    def settle(self) -> None:
        """Every notary back; every wallet resumes and collects its payments: every
        mint is certified and every transfer is on both chains."""
        self.c.transport.down.clear()
        for w in self.wallets:
            self.run(w.resume())
        for w in self.wallets:
            self.run(w.sync())
        for w in self.wallets:
            self.run(w.flush())
        chains = {w.key: (w.store.entries(w.key), w.store.authenticators(w.key))
                  for w in self.wallets}
        audit = audit_chains(chains, self.c.genesis)
        assert audit["minted"] == self.minted and audit["in_flight"] == 0, audit
        assert audit["balances"] == self.minted

    @invariant()
    def money_adds_up(self) -> None:
        chains = {}
        for w in self.wallets:
            entries = w.store.entries(w.key)
            auths = w.store.authenticators(w.key)
            pending = len(w.store.pending_entries(w.key))
            keep = len(entries) - pending  # pending entries are a suffix, not money yet
            chains[w.key] = (entries[:keep], auths[:keep])
        audit = audit_chains(chains, self.c.genesis)
        certified_mints = audit["minted"]
        assert audit["ok"], audit
        assert certified_mints <= self.minted
        assert sum(w.balance() for w in self.wallets) == audit["balances"]
        for service in self.c.services.values():
            supply = service.supply()
            assert supply["ok"], supply
            assert supply["minted"] <= self.minted


Ledger.TestCase.settings = settings(
    max_examples=30, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_ledger_state_machine = Ledger.TestCase
