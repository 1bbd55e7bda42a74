"""Real processes killed with SIGKILL: notaries mid-certification, a payer mid-transfer.

Notaries are :mod:`tests.support.notary_server` processes on 127.0.0.1
(:class:`NotaryCluster`); every process started here is ended by its pid.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from p2pmarket.api.client import PeerClient
from p2pmarket.core.config import save_genesis
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import Identity
from p2pmarket.core.keyfile import save_key
from p2pmarket.ledger.certificate import notary_sig_valid
from p2pmarket.ledger.chain import SEND, Authenticator, Entry
from p2pmarket.ledger.committee import PeerTransport
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.store import ChainStore
from p2pmarket.ledger.supply import audit_chains, network_supply
from p2pmarket.ledger.wallet import Wallet
from tests.support.notary_cluster import NotaryCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NotaryCluster]:
    c = NotaryCluster(tmp_path / "notaries", f=1)
    try:
        yield c
    finally:
        c.stop_all()


class Wallets:
    def __init__(self, root: Path, genesis: Genesis) -> None:
        self.root, self.genesis = root, genesis
        self.clients: list[PeerClient] = []
        self.wallets: list[Wallet] = []

    def open(self, name: str, ident: Identity) -> Wallet:
        client = PeerClient(ident, timeout_s=5)
        self.clients.append(client)
        w = Wallet(ident, ChainStore(self.root / f"{name}.sqlite"), self.genesis,
                   PeerTransport(client))
        self.wallets.append(w)
        return w

    async def close(self) -> None:
        for w in self.wallets:
            await w.close()
            w.store.close()
        for c in self.clients:
            await c.close()


@pytest.fixture
async def wallets(tmp_path: Path) -> AsyncIterator[list[Wallets]]:
    holder: list[Wallets] = []
    yield holder
    for w in holder:
        await w.close()


async def settle(*ws: Wallet) -> None:
    for w in ws:
        await w.resume()
        await w.flush()


def check_notary_db(cluster: NotaryCluster, i: int, w: Wallet) -> None:
    """Notary ``i`` holds, at every seq it certified of ``w``'s chain, exactly the
    wallet's entry: it never signed a second one."""
    import sqlite3

    conn = sqlite3.connect(str(cluster.db(i)))
    try:
        rows = conn.execute("SELECT e.seq, e.hash FROM nt_entry e JOIN nt_chain c "
                            "ON c.id = e.cid WHERE c.key = ? ORDER BY e.seq",
                            (w.key,)).fetchall()
    finally:
        conn.close()
    for seq, entry_hash in rows:
        auth = w.store.authenticator(w.key, seq)
        assert auth is not None and auth.hash == bytes(entry_hash)


@pytest.mark.parametrize("flag", ["--crash-after", "--crash-before-commit"])
async def test_notary_sigkilled_mid_certification(tmp_path: Path, cluster: NotaryCluster,
                                                  wallets: list[Wallets], flag: str) -> None:
    """Notary 0 dies right after (or inside) its third commit; the transfer completes
    with the others, and after a restart on the same database notary 0 resumes with
    its lock: it answers the entry it signed with the same signature, refuses a
    conflicting one, and is caught up with what it missed."""
    cluster.start(0, flag, "3")
    for i in (1, 2, 3):
        cluster.start(i)
    ws = Wallets(tmp_path, cluster.genesis)
    wallets.append(ws)
    mint = ws.open("mint", cluster.mint)
    alice = ws.open("alice", Identity.generate())
    await mint.mint(1_000)  # commits 1 (OPEN+MINT may be one batch) ...
    await alice.ensure_open()
    for amount in (10, 20, 30):  # ... notary 0 dies during these
        cert = await mint.send(alice.key, amount)
        assert await alice.receive(cert) == amount
    await mint.flush()
    assert cluster.wait_exit(0, 10)  # it really was SIGKILLed
    assert cluster.procs[0].returncode == -signal.SIGKILL
    cluster.start(0)  # same port, same database
    # resubmitting an entry notary 0 had certified gives the very same signature
    n0 = cluster.genesis.notaries[0]
    head0 = await ws.clients[0].call(n0.url, n0.key, "notary.head", {"owner": mint.key})
    seq = head0["seq"]
    assert seq >= 0
    seg = mint.store.segment(mint.key, seq, seq)
    entry, owner_sig, _ = seg[0]
    args = {"entries": [entry.encode()], "sigs": [owner_sig], "certs": [[]]}
    first = await ws.clients[0].call(n0.url, n0.key, "notary.certify_batch", args)
    again = await ws.clients[0].call(n0.url, n0.key, "notary.certify_batch", args)
    assert first["sigs"] == again["sigs"] and notary_sig_valid(entry, n0.key, first["sigs"][0],
                                                              owner_sig=owner_sig)
    conflict = Entry(mint.key, seq, entry.prev, entry.kind, entry.body, entry.ts + 1) \
        if seq > 0 else None
    if conflict is not None:
        bad = {"entries": [conflict.encode()],
               "sigs": [Authenticator.sign(cluster.mint, conflict).sig], "certs": [[]]}
        refused = await ws.clients[0].call(n0.url, n0.key, "notary.certify_batch", bad)
        assert refused["sigs"] == [None] and "different entry" in refused["errors"][0][1]
    # the next transfers catch notary 0 up; with notary 3 down it is needed for a quorum
    assert await alice.receive(await mint.send(alice.key, 1)) == 1
    await mint.flush()
    cluster.kill(3)
    cert = await mint.send(alice.key, 2)
    assert n0.key in cert.keys
    assert await alice.receive(cert) == 2
    await settle(mint, alice)
    summary = await network_supply(cluster.genesis, PeerTransport(ws.clients[0]))
    assert summary["supply"] == 1_000
    assert [n["status"] for n in summary["notaries"]][:3] == ["ok"] * 3
    for i in range(3):
        for w in (mint, alice):
            check_notary_db(cluster, i, w)
    audit = audit_chains({w.key: (w.store.entries(w.key), w.store.authenticators(w.key))
                          for w in (mint, alice)}, cluster.genesis)
    assert audit["ok"] and audit["in_flight"] == 0 and audit["balances"] == 1_000


async def test_random_notary_sigkills_during_a_stream_of_transfers(
        tmp_path: Path, cluster: NotaryCluster, wallets: list[Wallets]) -> None:
    genesis = cluster.start_all()
    ws = Wallets(tmp_path, genesis)
    wallets.append(ws)
    mint = ws.open("mint", cluster.mint)
    payers = [ws.open(f"payer{i}", Identity.generate()) for i in range(2)]
    payee = ws.open("payee", Identity.generate())
    for p in payers:
        await p.receive(await mint.mint_to(p.key, 10_000))
    await payee.ensure_open()
    rng = random.Random(11)
    stop = asyncio.Event()
    kills = 0

    async def killer() -> None:
        nonlocal kills
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            victim = rng.randrange(4)
            cluster.kill(victim)  # SIGKILL by pid, wherever it is
            kills += 1
            await asyncio.sleep(rng.uniform(0.0, 0.2))
            cluster.start(victim)

    async def pay(p: Wallet) -> list[int]:
        done: list[int] = []
        n = 0
        while (n < 10 or kills < 6) and n < 400:
            n += 1
            try:
                certs = await p.send_many([(payee.key, 1 + n % 5, "s")] * 3)
                done += [c.entry.amount for c in certs]
            except LedgerError:
                pass  # no quorum this moment: pending, resumed by the next one
        return done

    task = asyncio.create_task(killer())
    await asyncio.gather(*(pay(p) for p in payers))
    stop.set()
    await task
    assert kills >= 6
    for i in range(4):
        if not cluster.alive(i):
            cluster.start(i)
    await settle(mint, *payers)
    await payee.sync()
    await settle(payee)
    for p in (*payers, payee):  # one more round brings every notary up to date
        await p.send(mint.key, 1)
    await mint.sync()
    await settle(mint, *payers, payee)
    chains = {w.key: (w.store.entries(w.key), w.store.authenticators(w.key))
              for w in (mint, *payers, payee)}
    audit = audit_chains(chains, genesis)
    assert audit == {"minted": 20_000, "balances": 20_000, "in_flight": 0, "ok": True,
                     "chains": 4}
    summary = await network_supply(genesis, PeerTransport(ws.clients[0]))
    assert summary["ok"] and summary["supply"] == 20_000 and summary["agree"] == 4
    for i in range(4):
        for w in (mint, *payers, payee):
            check_notary_db(cluster, i, w)


PAYER = """
import asyncio, sys
from pathlib import Path
from p2pmarket.api.client import PeerClient
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import Identity
from p2pmarket.ledger.store import ChainStore
from p2pmarket.ledger.committee import PeerTransport
from p2pmarket.ledger.wallet import Wallet
from p2pmarket.core.keyfile import load_key
from p2pmarket.core.config import load_genesis

async def main():
    root = Path(sys.argv[1])
    ident = load_key(root / "payer.key")
    genesis = load_genesis(root / "genesis.json")
    async with PeerClient(ident, timeout_s=5) as client:
        w = Wallet(ident, ChainStore(root / "payer.sqlite"), genesis, PeerTransport(client))
        await w.resume()
        print("ready", flush=True)
        n = 0
        while True:
            n += 1
            await w.send(bytes.fromhex(sys.argv[2]), n % 7 + 1, "loop")

asyncio.run(main())
"""


async def test_payer_process_sigkilled_between_steps(tmp_path: Path, cluster: NotaryCluster,
                                                     wallets: list[Wallets]) -> None:
    genesis = cluster.start_all()
    save_genesis(genesis, tmp_path / "genesis.json")
    ws = Wallets(tmp_path, genesis)
    wallets.append(ws)
    mint = ws.open("mint", cluster.mint)
    payer_ident = Identity.generate()
    save_key(payer_ident, tmp_path / "payer.key")
    payee = ws.open("payee", Identity.generate())
    first = ws.open("payer", payer_ident)
    await first.receive(await mint.mint_to(payer_ident.public_key, 100_000))
    await first.close()
    first.store.close()
    ws.wallets.remove(first)
    await payee.ensure_open()
    rng = random.Random(3)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    for _ in range(3):  # three real kill points at random moments
        proc = subprocess.Popen([sys.executable, "-c", PAYER, str(tmp_path),
                                 payee.key.hex()], stdout=subprocess.PIPE, env=env)
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
            await asyncio.sleep(rng.uniform(0.3, 1.0))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
    # the payer restarts (here, in process) and finishes what it left pending
    payer = ws.open("payer", payer_ident)
    await payer.resume()
    await payer.flush()
    await payee.sync()
    await settle(mint, payer, payee)
    sends = [e for e in payer.store.entries(payer.key) if e.kind == SEND]
    assert len(sends) >= 3
    received = {e.receipt
                for e in payee.store.entries(payee.key) if e.receipt is not None}
    assert received == {(e.owner, e.seq) for e in sends}  # on both chains, none half done
    audit = audit_chains({w.key: (w.store.entries(w.key), w.store.authenticators(w.key))
                          for w in (mint, payer, payee)}, genesis)
    assert audit == {"minted": 100_000, "balances": 100_000, "in_flight": 0, "ok": True,
                     "chains": 3}
    summary = await network_supply(genesis, PeerTransport(ws.clients[0]))
    assert summary["ok"] and summary["supply"] == 100_000
