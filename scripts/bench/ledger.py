#!/usr/bin/env python3
"""Ledger benchmark: append, verify, certified transfers over HTTP, bytes per entry.

- ``append_per_s``: build + sign (Ed25519) + durable sqlite append of chain
  entries, in transactions of ``--batch`` entries as a busy wallet does
  (``append_single_per_s``: one transaction, so one fsync, per entry).
- ``verify_per_s``: :func:`verify_chain` over a payer chain of SENDs and a payee
  chain of RECVs (half each; a RECV names its SEND, whose certificate the
  notaries checked, so it is not part of the chain), cold: no signature cache.
- ``certified_transfers_per_s``: SENDs certified end to end. ``--notaries 4``
  (f=1) notary processes (:mod:`tests.support.notary_server`) on 127.0.0.1, each with
  its own sqlite (WAL, synchronous=FULL), and one client process running
  ``--payers`` payer wallets over signed HTTP RPC (PeerClient). Each wallet
  appends its SENDs durably, signs one Merkle root over each ``--batch`` of them,
  sends them in ``certify_batch`` requests, verifies a quorum of notary root
  signatures, stores the
  certificates, and delivers each certificate to the notary whose signature
  it lacks. Timed from the first send to the last certificate stored and every
  delivery answered.
- ``settled_transfers_per_s``: the same transfers completed on both chains
  (SEND certified, then the payee's RECV certified), end to end.
- ``bytes_per_entry``: sqlite pages in use per certified entry at a notary (every
  notary stores every chain); ``wallet_bytes_per_entry`` the same at the wallets
  ((page_count - freelist_count) * page_size / chain_entry rows, summed over
  every wallet after close), which keep full entries and notary signatures
  only where still needed (certified head, CHECKPOINTs, every 64th entry).

- Both runs, in the same process: ``certified_transfers_per_s_batch1`` (each
  payer pays one at a time: every entry its own root, interactive payments) and
  ``certified_transfers_per_s_batch64`` (``--batch`` payments per ``send_many``:
  the owner signs one Merkle root over them, each notary checks one owner
  signature and signs one root); ``cpu_us_per_transfer_batch64`` client plus
  notaries CPU per SEND certified; ``cert_bytes`` the largest encoded SEND
  certificate of that run (entry, Merkle path, root signature, notary quorum).
  The other keys are those of the ``--batch`` run.

Usage: scripts/bench/ledger.py [--transfers 20000] [--payers 8] [--batch 64] [--json]
[--profile DIR]: cProfile the client's send phase (``DIR/client.send``) and every
notary process (``DIR/notary.<pid>``, via ``P2PMARKET_PROFILE``); read them with
``python -m pstats``.
The last line of ``--json`` output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo: p2pmarket, tests.support

from p2pmarket.api.client import PeerClient
from p2pmarket.core.genesis import Genesis, NotaryInfo
from p2pmarket.core.identity import Identity
from p2pmarket.ledger.certificate import Certificate
from p2pmarket.ledger.chain import (
    MINT,
    OPEN,
    RECV,
    SEND,
    Authenticator,
    Entry,
    next_entry,
    recv_body,
    verify_chain,
)
from p2pmarket.ledger.committee import PeerTransport
from p2pmarket.ledger.store import ChainStore
from p2pmarket.ledger.wallet import Wallet
from tests.support.notary_cluster import NotaryCluster


def bench_append(root: Path, count: int, batch: int) -> dict[str, float]:
    ident = Identity.generate()
    to = Identity.generate().public_key
    out: dict[str, float] = {}
    for name, size, n in (("append_per_s", batch, count), ("append_single_per_s", 1,
                                                             max(200, count // 20))):
        store = ChainStore(root / f"{name}.sqlite")
        head: Entry | None = None
        started = time.perf_counter()
        done = 0
        while done < n:
            group = []
            for _ in range(min(size, n - done)):
                kind, body = (OPEN, {}) if head is None else \
                    (SEND, {"to": to, "amount": 1000 + done, "memo": "bench"})
                head = next_entry(ident.public_key, head, kind, body, time.time_ns() // 1000)
                group.append((head, Authenticator.sign(ident, head).sig))
                done += 1
            store.append_many(group, check_sig=False)
        out[name] = round(n / (time.perf_counter() - started))
        store.close()
    return out


def bench_verify(count: int) -> dict[str, float]:
    mint = Identity.generate()
    payee = Identity.generate()
    notaries = [Identity.generate() for _ in range(4)]
    genesis = Genesis(network="bench", mint_key=mint.public_key, f=1,
                      notaries=tuple(NotaryInfo(n.public_key, f"n{i}")
                                     for i, n in enumerate(notaries)))
    payer_chain: list[Entry] = []
    payer_auths: list[Authenticator] = []
    recv_chain: list[Entry] = []
    recv_auths: list[Authenticator] = []

    def add(chain: list[Entry], auths: list[Authenticator], ident: Identity, kind: str,
            body: dict[str, Any]) -> Entry:
        entry = next_entry(ident.public_key, chain[-1] if chain else None, kind, body, 1)
        chain.append(entry)
        auths.append(Authenticator.sign(ident, entry))
        return entry

    add(payer_chain, payer_auths, mint, OPEN, {})
    add(payer_chain, payer_auths, mint, MINT, {"amount": 10**15})
    add(recv_chain, recv_auths, payee, OPEN, {})
    for i in range(count // 2):
        send = add(payer_chain, payer_auths, mint, SEND,
                   {"to": payee.public_key, "amount": 1 + i, "memo": "bench"})
        add(recv_chain, recv_auths, payee, RECV, recv_body(send))
    out: dict[str, float] = {}
    total_s = 0.0
    for name, chain, auths in (("verify_send_per_s", payer_chain, payer_auths),
                               ("verify_recv_per_s", recv_chain, recv_auths)):
        started = time.perf_counter()
        verify_chain(chain, auths, genesis)
        took = time.perf_counter() - started
        total_s += took
        out[name] = round(len(chain) / took)
    out["verify_per_s"] = round((len(payer_chain) + len(recv_chain)) / total_s)
    return out


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """CPU seconds used so far by this process and by ``pids`` together."""
    tick = os.sysconf("SC_CLK_TCK")
    others = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        others += (int(fields[11]) + int(fields[12])) / tick
    own = time.process_time()
    return own, others


def db_bytes(path: Path, table: str) -> tuple[int, int]:
    conn = sqlite3.connect(str(path))
    try:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
        entries = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()
    return (pages - free) * size, entries


async def bench_transfers(root: Path, transfers: int, payers: int, batch: int,
                          f: int, profile: Path | None = None) -> dict[str, Any]:
    mint_ident = Identity.generate()
    cluster = NotaryCluster(root / "notaries", f=f, mint=mint_ident, network="bench")
    wallets: list[Wallet] = []
    clients: list[PeerClient] = []
    try:
        genesis = cluster.start_all()

        def wallet(name: str, ident: Identity) -> Wallet:
            client = PeerClient(ident, timeout_s=60)
            clients.append(client)
            w = Wallet(ident, ChainStore(root / "wallets" / f"{name}.sqlite"), genesis,
                       PeerTransport(client), max_batch=batch)
            wallets.append(w)
            return w

        mint = wallet("mint", mint_ident)
        senders = [wallet(f"payer{i}", Identity.generate()) for i in range(payers)]
        payees = [wallet(f"payee{i}", Identity.generate()) for i in range(payers)]
        per = transfers // payers
        await mint.mint(10**12)
        funding = await mint.send_many([(s.key, 10**9, "fund") for s in senders])
        await asyncio.gather(*(s.receive(c) for s, c in zip(senders, funding, strict=True)),
                             *(p.ensure_open() for p in payees))
        for w in wallets:
            await w.flush()

        certs: list[list[Certificate]] = [[] for _ in senders]

        async def pay(i: int) -> None:
            to = payees[i].key
            for start in range(0, per, batch):
                n = min(batch, per - start)
                certs[i] += await senders[i].send_many(
                    [(to, 1 + (start + k) % 1000, "bench") for k in range(n)])

        pids = [cluster.pid(i) for i in range(len(cluster.notaries))]
        profiler = cProfile.Profile() if profile else None
        cpu0 = cpu_seconds(pids)
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        await asyncio.gather(*(pay(i) for i in range(payers)))
        for s in senders:
            await s.flush()
        send_s = time.perf_counter() - started
        cpu1 = cpu_seconds(pids)
        if profiler is not None and profile is not None:
            profiler.disable()
            profiler.dump_stats(profile / "client.send")

        async def settle(i: int) -> None:
            for start in range(0, per, batch):
                await payees[i].receive_many(certs[i][start:start + batch])

        started = time.perf_counter()
        await asyncio.gather(*(settle(i) for i in range(payers)))
        for p in payees:
            await p.flush()
        recv_s = time.perf_counter() - started
        cpu2 = cpu_seconds(pids)
        done = per * payers
        cert_bytes = max(len(c.encode()) for cs in certs for c in cs)
        assert all(p.balance() == sum(c.entry.amount for c in cs)
                   for p, cs in zip(payees, certs, strict=True))
        supplies = [await clients[0].call(n.url, n.key, "notary.supply", {})
                    for n in genesis.notaries]
        for w in wallets:
            await w.close()
            w.store.close()
        wallets.clear()
        wallet_bytes = wallet_entries = 0
        for path in (root / "wallets").glob("*.sqlite"):
            b, e = db_bytes(path, "chain_entry")
            wallet_bytes += b
            wallet_entries += e
        cluster.stop_all()
        notary_bytes = [db_bytes(cluster.db(i), "nt_entry") for i in range(len(cluster.notaries))]
        return {
            "certified_transfers_per_s": round(done / send_s),
            "settled_transfers_per_s": round(done / (send_s + recv_s)),
            "recv_certified_per_s": round(done / recv_s),
            "bytes_per_entry": round(sum(b for b, _ in notary_bytes)
                                     / sum(e for _, e in notary_bytes)),
            "wallet_bytes_per_entry": round(wallet_bytes / wallet_entries),
            "send_cpu_us": {"client": round((cpu1[0] - cpu0[0]) / done * 1e6),
                            "notaries": round((cpu1[1] - cpu0[1]) / done * 1e6)},
            "recv_cpu_us": {"client": round((cpu2[0] - cpu1[0]) / done * 1e6),
                            "notaries": round((cpu2[1] - cpu1[1]) / done * 1e6)},
            "cpu_us_per_transfer": round(((cpu1[0] - cpu0[0]) + (cpu1[1] - cpu0[1]))
                                         / done * 1e6),
            "cert_bytes": cert_bytes,
            "transfers": done, "payers": payers, "batch": batch,
            "notaries": len(cluster.notaries),
            "supply_ok": all(s["ok"] and s["minted"] == 10**12 for s in supplies),
        }
    finally:
        for w in wallets:
            await w.close()
            w.store.close()
        for c in clients:
            await c.close()
        cluster.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transfers", type=int, default=20000)
    parser.add_argument("--payers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64,
                        help="payments per send_many (one signed Merkle root each)")
    parser.add_argument("--transfers-batch1", type=int, default=1600,
                        help="transfers of the interactive run (one payment per root)")
    parser.add_argument("--f", type=int, default=1, help="faults tolerated: 3f+1 notaries")
    parser.add_argument("--entries", type=int, default=20000,
                        help="entries for the append and verify figures")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", type=Path, default=None,
                        help="write cProfile stats of the client and the notaries here")
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        os.environ["P2PMARKET_PROFILE"] = str(args.profile.resolve() / "notary")
    root = Path(tempfile.mkdtemp(prefix="p2pm-ledger-bench-"))
    try:
        result: dict[str, Any] = {"cpus": os.cpu_count()}
        result.update(bench_append(root, args.entries, args.batch))
        result.update(bench_verify(args.entries))
        one = asyncio.run(bench_transfers(root / "batch1", args.transfers_batch1,
                                          args.payers, 1, args.f))
        many = asyncio.run(bench_transfers(root / "batch", args.transfers, args.payers,
                                           args.batch, args.f, args.profile))
        b = args.batch
        result.update(many)
        result.update({
            "certified_transfers_per_s_batch1": one["certified_transfers_per_s"],
            f"certified_transfers_per_s_batch{b}": many["certified_transfers_per_s"],
            f"cpu_us_per_transfer_batch{b}": many["cpu_us_per_transfer"],
            "cpu_us_per_transfer_batch1": one["cpu_us_per_transfer"],
            "batch1": one,
        })
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
