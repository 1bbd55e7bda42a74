"""Property: money is conserved through random mints, transfers, faults and crashes."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ledger_helpers import core

from p2pmarket.core.identity import Identity
from p2pmarket.ledger.certificate import Certificate
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.store import ChainStore
from p2pmarket.ledger.wallet import Wallet
from tests.support.local_committee import LocalCommittee

WALLETS = 4  # wallet 0 holds the mint key

amounts = st.integers(min_value=1, max_value=500)
who = st.integers(min_value=0, max_value=WALLETS - 1)
ops = st.lists(st.one_of(
    st.tuples(st.just("mint"), amounts),
    st.tuples(st.just("send"), who, who, amounts),
    st.tuples(st.just("sync"), who),
    st.tuples(st.just("receive"), st.integers(min_value=0, max_value=50)),
    st.tuples(st.just("crash_send"), who, who, amounts),
    st.just(("toggle",)),
), min_size=1, max_size=30)


async def run(root: Path, script: list[tuple[Any, ...]]) -> None:
    c = LocalCommittee.create(root / "notaries", f=1)
    idents = [c.mint] + [Identity.generate() for _ in range(WALLETS - 1)]
    paths = [root / f"w{i}.db" for i in range(WALLETS)]
    wallets = [Wallet(i, ChainStore(p), c.genesis, c.transport)
               for i, p in zip(idents, paths, strict=True)]
    model = [0] * WALLETS
    minted = 0
    certs: list[Certificate] = []  # every certified SEND, received or not
    received: set[tuple[bytes, int]] = set()
    flaky = c.notaries[3].public_key  # only this one ever goes down: quorum stays possible
    try:
        for op in script:
            if op[0] == "mint":
                await wallets[0].mint(op[1])
                model[0] += op[1]
                minted += op[1]
            elif op[0] in ("send", "crash_send"):
                _, i, j, amount = op
                ok = i != j and amount <= model[i]
                if op[0] == "crash_send" and ok:
                    await wallets[i].ensure_open()
                    for n in c.notaries[:2]:
                        c.transport.down.add(n.public_key)
                try:
                    cert = await wallets[i].send(idents[j].public_key, amount, "p")
                except LedgerError:
                    assert op[0] == "crash_send" or not ok
                    if ok:  # crashed with the SEND pending: restart the wallet
                        for n in c.notaries[:2]:
                            c.transport.down.discard(n.public_key)
                        wallets[i].store.close()
                        wallets[i] = Wallet(idents[i], ChainStore(paths[i]), c.genesis,
                                            c.transport)
                        cert_or_none = await wallets[i].resume()
                        assert cert_or_none is not None
                        cert = cert_or_none
                    else:
                        assert wallets[i].store.pending(idents[i].public_key) is None
                        continue
                assert ok
                model[i] -= amount
                certs.append(cert)
            elif op[0] == "sync":
                i = op[1]
                got = await wallets[i].sync()
                expected = [ct for ct in certs if ct.entry.body["to"] == idents[i].public_key
                            and (ct.entry.owner, ct.entry.seq) not in received]
                assert got == sum(ct.entry.amount for ct in expected)
                model[i] += got
                received.update((ct.entry.owner, ct.entry.seq) for ct in expected)
            elif op[0] == "receive" and certs:
                cert = certs[op[1] % len(certs)]
                j = next(k for k in range(WALLETS)
                         if idents[k].public_key == cert.entry.body["to"])
                assert await wallets[j].receive(cert) == cert.entry.amount
                key = (cert.entry.owner, cert.entry.seq)
                if key not in received:
                    model[j] += cert.entry.amount
                    received.add(key)
            elif op[0] == "toggle":
                c.transport.down ^= {flaky}

            assert [w.balance() for w in wallets] == model
        unreceived = sum(ct.entry.amount for ct in certs
                         if (ct.entry.owner, ct.entry.seq) not in received)
        assert sum(model) + unreceived == minted
        for w, expected_balance in zip(wallets, model, strict=True):
            assert w.verify() == expected_balance
        for n in c.notaries:
            supply = c.services[n.public_key].supply()
            assert supply["ok"], supply
        for n in c.notaries[:3]:  # never down: they saw everything
            assert core(c.services[n.public_key].supply()) == {
                "minted": minted, "balances": sum(model), "pending": unreceived,
                "early": 0, "ok": True}
    finally:
        for w in wallets:
            w.store.close()
        c.close()


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(script=ops)
@example(script=[("mint", 100), ("send", 0, 1, 10), ("sync", 1), ("toggle",),
                 ("send", 0, 1, 5), ("toggle",), ("sync", 1), ("crash_send", 1, 2, 3),
                 ("receive", 2), ("sync", 2)])  # notary 3 certifies a RECV before its SEND
def test_random_transfers_conserve_money(script: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp), script))
