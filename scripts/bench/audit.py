#!/usr/bin/env python3
"""Audit benchmark: how fast a witness replays a host's audit log.

Builds a realistic log with the real auctioneer (``--accounts`` buyers opening
accounts, then ``--ticks`` one-second ticks with ``--rpcs`` random bids, funds,
lease fetches and small refunds per tick), then measures on its entries:

- ``audit_replay_per_s``: entries/s through :class:`Replayer` (hash chain, decode,
  replay of every input through the pure auctioneer, byte comparison of every
  output), the witness's work apart from signatures;
- ``audit_check_per_s``: the same plus checking every entry's Ed25519 signature,
  as :class:`WitnessService` does on what it fetches;
- ``replay_s``: seconds to replay the whole log (best of 3), and ``realtime_x``: the
  seconds of host time the log covers (``--ticks`` one-second ticks) per second of
  replay, i.e. how many such hosts one witness core can audit in real time;
- ``bytes_per_entry``: mean canonical entry size; ``stored_bytes_per_entry``: the
  host's sqlite audit log on disk (entry, hash, signature) per entry.

Usage: scripts/bench/audit.py [--accounts 200] [--ticks 300] [--rpcs 3] [--json]
The last line with --json is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from p2pmarket.api.rpc import CallContext
from p2pmarket.auction.accounts import Payment
from p2pmarket.audit.entry import AuditAuthenticator
from p2pmarket.audit.log import AuditLog
from p2pmarket.audit.replay import Replayer
from p2pmarket.core.config import Settings
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import seal
from p2pmarket.host.accountstore import AccountStore
from p2pmarket.host.auctioneer import Auctioneer, domain_prefix
from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM

S = 1_000_000
NOW = 1_700_000_000 * S


async def build_log(tmp: Path, n_accounts: int, ticks: int, rpcs: int, seed: int
                    ) -> tuple[Identity, list[tuple[int, bytes, bytes, bytes]], int]:
    rnd = random.Random(seed)
    ident = Identity(bytes([7]) * 32)
    clock = [NOW]

    async def accept(payer: bytes, cert: dict[str, Any]) -> Payment:
        return Payment(str(cert["id"]).encode(), int(cert["amount"]))

    vmm = LibvirtVMM("test:///default", prefix=domain_prefix(ident))
    store = AccountStore(":memory:")
    audit = AuditLog(":memory:", ident)
    auct = Auctioneer(ident, Settings(cpu_mhz=64_000, memory_kib=256 << 20, min_price=1),
                      store, vmm, accept, lambda: clock[0], audit=audit)
    auct.sync_vmm = _no_vmm   # type: ignore[method-assign]  # measure the log, not libvirt
    buyers = [Identity(rnd.randbytes(32)) for _ in range(n_accounts)]
    ids: list[str] = []
    ts = [NOW]

    async def call(who: Identity, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """The handler called as the RPC layer calls it: with the buyer's signed request."""
        ts[0] += 1
        env = seal(who, ENVELOPE, f"rpc.host.{name}", args, ts=ts[0], to=ident.node_id)
        result: dict[str, Any] = await getattr(auct, name)(
            CallContext(who.public_key, ts[0], request=env), env.body)
        return result

    for k, who in enumerate(buyers):
        try:
            res = await call(who, "create_account", {
                "payment": {"id": f"p{k}", "amount": rnd.randint(10**8, 10**10)},
                "interval_s": rnd.randint(600, 86400), "contingency": rnd.choice([0, "0.1"]),
                "bids": {"cpu": f"{rnd.randint(1, 5)},0,1",
                         "memory": f"{rnd.randint(1, 5)},{rnd.choice([0, 64])}MiB,2GiB"}})
        except P2PMarketError as exc:   # a min not met: the money is kept, without bids
            res = exc.value if isinstance(exc.value, dict) else {}
        ids.append(res["account_id"])
    for t in range(ticks):
        clock[0] += S
        await auct.tick(clock[0])
        for _ in range(rpcs):
            i = rnd.randrange(n_accounts)
            who, aid = buyers[i], ids[i]
            op = rnd.random()
            try:
                if op < 0.4:
                    await call(who, "bid", {"account_id": aid,
                                            "bids": {"cpu": f"{rnd.randint(1, 9)}"}})
                elif op < 0.6:
                    await call(who, "fund", {"account_id": aid, "payment": {
                        "id": f"f{t}-{i}-{rnd.random()}", "amount": rnd.randint(10**6, 10**8)}})
                elif op < 0.9:
                    await call(who, "lease", {"account_id": aid})
                else:
                    await call(who, "refund", {"account_id": aid, "amount": 1000})
            except P2PMarketError:
                pass
    rows = audit.raw(0, 1 << 30)
    # what the same log takes on disk, as the host stores it
    disk = AuditLog(tmp / "audit.sqlite", ident)
    disk.append_many([(e.kind, e.body, e.ts) for e, _ in audit.entries(0, 1 << 30)])
    disk.close()
    size = sum(p.stat().st_size for p in tmp.glob("audit.sqlite*"))
    vmm.close()
    return ident, rows, size


async def _no_vmm() -> None:
    return None


def replay_rate(rows: list[tuple[int, bytes, bytes, bytes]], host: bytes,
                check_sigs: bool) -> float:
    start = time.perf_counter()
    r = Replayer()
    for seq, raw, h, sig in rows:
        if check_sigs and not AuditAuthenticator(host, seq, h, sig).verify():
            raise SystemExit(f"bad signature at {seq}")
        fault = r.take(raw)
        if fault is not None:
            raise SystemExit(f"honest log replayed with a fault: {fault}")
    return len(rows) / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--accounts", type=int, default=200)
    ap.add_argument("--ticks", type=int, default=300)
    ap.add_argument("--rpcs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        ident, rows, size = asyncio.run(build_log(Path(tmp), args.accounts, args.ticks,
                                                  args.rpcs, args.seed))
        built = time.perf_counter() - t
    n = len(rows)
    kinds: dict[str, int] = {}
    for _, raw, _, _ in rows:
        from p2pmarket.core.wire import unpack
        kind = unpack(raw)["kind"]
        kinds[kind] = kinds.get(kind, 0) + 1
    replay = max(replay_rate(rows, ident.public_key, False) for _ in range(3))
    replay_s = n / replay
    check = replay_rate(rows, ident.public_key, True)
    report = {
        "entries": n, "accounts": args.accounts, "ticks": args.ticks,
        "audit_replay_per_s": round(replay), "audit_check_per_s": round(check),
        "replay_s": round(replay_s, 3), "realtime_x": round(args.ticks / replay_s, 1),
        "bytes_per_entry": round(sum(len(r[1]) for r in rows) / n, 1),
        "stored_bytes_per_entry": round(size / n, 1),
        "goal_replay_per_s": 50_000, "goal_met": replay >= 50_000,
        "log_build_s": round(built, 2), "kinds": kinds,
    }
    if not args.json:
        print(f"{n} entries ({args.accounts} accounts, {args.ticks} ticks): replay "
              f"{replay:,.0f} entries/s, with signatures {check:,.0f} entries/s; "
              f"{report['bytes_per_entry']} bytes/entry, "
              f"{report['stored_bytes_per_entry']} stored")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
