#!/usr/bin/env python3
"""Audit benchmark: how fast a witness replays a host's audit log, at several sizes.

For each ``--accounts`` N (default 100 1000 10000) it builds a realistic log with the
real auctioneer: N accounts open (written to the host's account store before it
starts, so the log's ``in.genesis`` holds them: opening 10,000 accounts one request
at a time would take the auctioneer an hour today), a first tick, then ``--seconds``
of host time, one buyer request per account per 100 s (N/100 a second: bids 40 %,
funds 20 %, lease fetches 30 %, small refunds 10 %) and a tick a second, at most
``--max-requests`` requests (fewer seconds at large N, the same request rate: the
auctioneer reallocates everyone on each request, so a 10,000-account log is slow
to build). The witness is measured from the first tick's ``out.tick`` on (an
anchor, as a witness resuming its audit starts), so the entries measured are those
``--seconds`` of host time. (An ``in.genesis`` of more than about 7,000 accounts is
over the 1 MiB entry bound; a real host's log starts small and grows, so the bench
writes and replays that one entry with the bound lifted.) Then, on its entries:

- ``replay_per_s_N``: entries/s through the witness's check of each
  2000-entry segment (:meth:`Watched.check_segment`: hash chain, the signature of
  the segment's last entry, the replay of every input through the pure auctioneer,
  byte comparison of every output), the buyers' request signatures checked ahead
  by a :class:`SignaturePool` of ``--workers`` processes;
- ``realtime_x_N``: seconds of host time the log covers per second of that check
  (how many such hosts one witness keeps up with);
- ``replay_growth``: ``replay_per_s_100 / replay_per_s_10000`` (1: the replay's cost
  per entry does not grow with the host);
- ``profile_N``: seconds of the sequential replay spent decoding and hashing
  entries, checking buyers' request signatures, in the pure step
  (:func:`p2pmarket.auction.steps.step`), and the rest;
- ``replay_seq_per_s_N``: the plain :class:`Replayer`, request signatures checked as
  it goes (no pool, no entry signatures); ``check_all_per_s_N``: that plus every
  entry's signature, what the witness did before it checked only segment ends;
- ``sigpool_procs_per_s`` / ``sigpool_threads_per_s`` / ``sigpool_seq_per_s``: buyer
  inputs' signed requests checked per second by processes, threads, or in line.

The old fields (``audit_replay_per_s``, ``audit_check_per_s``, ``replay_s``,
``realtime_x``, ``entries``, ``bytes_per_entry``, ``stored_bytes_per_entry``, ...) are
those of the largest N.

Usage: scripts/bench/audit.py [--accounts 100 1000 10000] [--seconds 300]
       [--max-requests 500] [--workers 2] [--json]
The last line with --json is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import p2pmarket.audit.log as log_module
import p2pmarket.audit.replay as replay_module
from p2pmarket.api.rpc import CallContext
from p2pmarket.auction.accounts import Account, Payment
from p2pmarket.auction.allocation import empty_book, resolved, terms, with_record
from p2pmarket.auction.buyersteps import account_id_for
from p2pmarket.auction.machine import HostState
from p2pmarket.auction.rpcargs import CreateAccountArgs, parse_args
from p2pmarket.auction.snapshot import from_snapshot, snapshot
from p2pmarket.audit.entry import AuditAuthenticator
from p2pmarket.audit.log import AuditLog
from p2pmarket.audit.replay import Replayer, Verdicts, decode_entry, verdicts_of
from p2pmarket.audit.sigpool import SignaturePool
from p2pmarket.audit.watched import Watched
from p2pmarket.core.config import Settings
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity, node_id_of
from p2pmarket.core.wire import seal
from p2pmarket.host.accountstore import AccountStore
from p2pmarket.host.auctioneer import Auctioneer, domain_prefix
from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM

S = 1_000_000
NOW = 1_700_000_000 * S
SEGMENT = 2000
Row = tuple[int, bytes, bytes, bytes]


def _settings() -> Settings:
    return Settings(cpu_mhz=64_000, memory_kib=256 << 20, min_price=1)


def _accounts(ident: Identity, buyers: list[Identity], rnd: random.Random,
              store: AccountStore) -> list[str]:
    """Open an account for each buyer in ``store`` (as the auctioneer would have, but
    without a reallocation per account)."""
    with tempfile.TemporaryDirectory() as tmp:   # a scratch host for its state's config
        scratch = Auctioneer(ident, _settings(), AccountStore(":memory:"),
                             LibvirtVMM("test:///default", prefix=domain_prefix(ident)),
                             _accept, lambda: NOW, audit=AuditLog(Path(tmp) / "a", ident))
        state = scratch.state
    accounts, payments, ids = [], [], []
    for k, who in enumerate(buyers):
        args = parse_args("create_account", {
            "payment": {"id": f"p{k}", "amount": 1},
            "interval_s": rnd.randint(600, 86400), "contingency": rnd.choice([0, "0.1"]),
            "bids": {"cpu": f"{rnd.randint(1, 5)},0,1",
                     "memory": f"{rnd.randint(1, 5)},{rnd.choice([0, 64])}MiB,2GiB"}})
        assert isinstance(args, CreateAccountArgs)
        pid, amount = f"p{k}".encode(), rnd.randint(10**8, 10**10)
        aid = account_id_for(pid)
        cont = amount * args.contingency_ppm // 1_000_000
        accounts.append(Account(aid, who.public_key, amount - cont, NOW + args.interval_us, NOW,
                                terms(state, args.bids, {}), contingency=cont,
                                contingency_ppm=args.contingency_ppm))
        payments.append((pid, aid, amount))
        ids.append(aid)
    # their records as the event-driven allocator keeps them (frozen spends, claims that
    # cannot meet their min dropped), put in the order the requests would have come
    book = empty_book(state)
    for acc in accounts:
        book.put(acc.account_id, acc.fund, acc.contingency, acc.interval_end_us,
                 resolved(state, acc), NOW, refusable=False)
    accounts = [with_record(acc, book.record(acc.account_id),
                            [k for k in acc.bids if k not in book.accounts[acc.account_id].bids])
                for acc in accounts]
    store.commit(accounts, payments, [], {})
    return ids


async def _accept(payer: bytes, cert: dict[str, Any]) -> Payment:
    return Payment(str(cert["id"]).encode(), int(cert["amount"]))


async def _no_vmm() -> None:
    return None


async def build_log(tmp: Path, n_accounts: int, seconds: int, seed: int
                    ) -> tuple[Identity, list[Row], int]:
    rnd = random.Random(seed)
    ident = Identity(bytes([7]) * 32)
    clock = [NOW]
    buyers = [Identity(rnd.randbytes(32)) for _ in range(n_accounts)]
    store = AccountStore(":memory:")
    ids = _accounts(ident, buyers, rnd, store)
    vmm = LibvirtVMM("test:///default", prefix=domain_prefix(ident))
    audit = AuditLog(":memory:", ident)
    auct = Auctioneer(ident, _settings(), store, vmm, _accept, lambda: clock[0], audit=audit)
    auct.sync_vmm = _no_vmm   # type: ignore[method-assign]  # measure the log, not libvirt
    ts = [NOW]

    async def call(who: Identity, name: str, args: dict[str, Any]) -> None:
        """The handler called as the RPC layer calls it: with the buyer's signed request."""
        ts[0] += 1
        env = seal(who, ENVELOPE, f"rpc.host.{name}", args, ts=ts[0], to=ident.node_id)
        with contextlib.suppress(P2PMarketError):   # refusals are logged too
            await getattr(auct, name)(CallContext(who.public_key, ts[0], request=env),
                                      env.body)

    due = 0.0
    clock[0] += S
    await auct.tick(clock[0])   # its out.tick is where the witness is measured from
    for t in range(seconds):
        due += n_accounts / 100
        while due >= 1:
            due -= 1
            i = rnd.randrange(n_accounts)
            who, aid = buyers[i], ids[i]
            op = rnd.random()
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
        clock[0] += S
        ts[0] = max(ts[0], clock[0])
        await auct.tick(clock[0])
    rows = audit.raw(0, 1 << 30)
    # what the same log takes on disk, as the host stores it
    disk = AuditLog(tmp / "audit.sqlite", ident)
    disk.append_many([(e.kind, e.body, e.ts) for e, _ in audit.entries(0, 1 << 30)])
    disk.close()
    size = sum(p.stat().st_size for p in tmp.glob("audit.sqlite*"))
    vmm.close()
    return ident, rows, size


def _fail(fault: Any) -> None:
    if fault is not None:
        raise SystemExit(f"honest log replayed with a fault: {fault}")


@contextlib.contextmanager
def lifted_entry_bound() -> Any:
    """The 1 MiB entry bound lifted (for a large host's ``in.genesis``: see above)."""
    saved = log_module.MAX_ENTRY_BYTES, replay_module.MAX_ENTRY_BYTES
    log_module.MAX_ENTRY_BYTES = replay_module.MAX_ENTRY_BYTES = 1 << 30
    try:
        yield
    finally:
        log_module.MAX_ENTRY_BYTES, replay_module.MAX_ENTRY_BYTES = saved


class Anchor:
    """Where the witness is measured from: the first ``out.tick`` and its state."""

    def __init__(self, rows: list[Row], host: bytes) -> None:
        with lifted_entry_bound():
            r = Replayer(host=host)
            for _, raw, _, _ in rows:
                _fail(r.take(raw))
                if decode_entry(raw)["kind"] == "out.tick":
                    break
        assert r.anchor_state is not None
        self.seq, self.raw = r.seq, rows[r.seq][1]
        self.snap = snapshot(r.anchor_state)

    def replayer(self, host: bytes) -> Replayer:
        """A fresh replayer at the anchor (a fresh state: no caches shared)."""
        state: HostState = from_snapshot(self.snap)
        return Replayer(state, self.raw, host)


def witness_check(rows: list[Row], host: bytes, pool: SignaturePool | None,
                  anchor: Anchor) -> float:
    """Seconds for the witness's check, segment by segment, with the pool's verdicts."""
    w = Watched(host, replayer=anchor.replayer(host))
    start = time.perf_counter()
    host_id = node_id_of(host)
    for k in range(anchor.seq + 1, len(rows), SEGMENT):
        seg = rows[k:k + SEGMENT]
        raws = [r[1] for r in seg]
        w.replayer.verdicts = None if pool is None else pool.verdicts(raws, host_id)
        proof = w.check_segment(k, raws, [r[3] for r in seg], 2**62,
                                lambda key, seq: None)
        if proof is not None:
            raise SystemExit("honest log gave a proof")
        w.unsaved.clear()
    w.replayer.verdicts = None
    _fail(w.replayer.fault)
    return time.perf_counter() - start


def profile(rows: list[Row], host: bytes, anchor: Anchor) -> dict[str, float]:
    """Where the plain replay's time goes (request signatures checked in line, timed
    apart: the sum is the plain replay's time)."""
    raws = [r[1] for r in rows[anchor.seq + 1:]]
    t = time.perf_counter()
    for raw in raws:
        hashlib.sha256(raw).digest()
        decode_entry(raw)
    decode_s = time.perf_counter() - t
    t = time.perf_counter()
    verdicts = Verdicts(node_id_of(host), dict(verdicts_of(raws, node_id_of(host))))
    sigs_s = time.perf_counter() - t
    real_step = replay_module.step
    spent = [0.0]

    def timed(*a: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real_step(*a)
        finally:
            spent[0] += time.perf_counter() - t0

    replay_module.step = timed   # type: ignore[assignment]
    try:
        r = anchor.replayer(host)
        t = time.perf_counter()
        r.verdicts = verdicts
        for raw in raws:
            _fail(r.take(raw))
        total = time.perf_counter() - t + sigs_s
    finally:
        replay_module.step = real_step
    return {"total_s": round(total, 3), "decode_hash_s": round(decode_s, 3),
            "request_sigs_s": round(sigs_s, 3), "step_s": round(spent[0], 3),
            "other_s": round(total - decode_s - sigs_s - spent[0], 3)}


def entry_sigs_s(rows: list[Row], host: bytes) -> float:
    t = time.perf_counter()
    for seq, _, h, sig in rows:
        if not AuditAuthenticator(host, seq, h, sig).verify():
            raise SystemExit(f"bad signature at {seq}")
    return time.perf_counter() - t


def pool_rates(rows: list[Row], host: bytes, workers: int) -> dict[str, float]:
    raws = [r[1] for r in rows]
    host_id = node_id_of(host)
    n = len(verdicts_of(raws, host_id))
    t = time.perf_counter()
    verdicts_of(raws, host_id)
    out = {"sigpool_seq_per_s": n / (time.perf_counter() - t)}
    for name, threads in (("procs", False), ("threads", True)):
        pool = SignaturePool(workers, min_batch=0, threads=threads)
        pool.verdicts(raws[:64], host_id)   # start the workers
        t = time.perf_counter()
        got = pool.verdicts(raws, host_id)
        out[f"sigpool_{name}_per_s"] = n / (time.perf_counter() - t)
        assert len(got.by_hash) == n
        pool.close()
    return {k: round(v) for k, v in out.items()}


def run(n: int, seconds: int, seed: int, pool: SignaturePool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        with lifted_entry_bound():
            ident, rows, size = asyncio.run(build_log(Path(tmp), n, seconds, seed))
        built = time.perf_counter() - t
    host = ident.public_key
    stored = size / len(rows)
    anchor = Anchor(rows, host)
    kinds: dict[str, int] = {}
    for _, raw, _, _ in rows[anchor.seq + 1:]:
        kind = decode_entry(raw)["kind"]
        kinds[kind] = kinds.get(kind, 0) + 1
    # the witness's check (best of 2 at small sizes; one at large ones)
    tries = 2 if len(rows) * n < 5_000_000 else 1
    check_s = min(witness_check(rows, host, pool, anchor) for _ in range(tries))
    prof = profile(rows, host, anchor)
    seq_s = prof["total_s"]   # the plain replay's time, request signatures in line
    rows = rows[anchor.seq + 1:]
    sig_s = entry_sigs_s(rows, host)
    ne = len(rows)
    return {
        "accounts": n, "seconds": seconds, "entries": ne, "kinds": kinds,
        "requests": sum(v for k, v in kinds.items()
                        if k.startswith("in.") and k not in ("in.tick", "in.genesis")),
        "replay_per_s": round(ne / check_s), "realtime_x": round(seconds / check_s, 1),
        "replay_seq_per_s": round(ne / seq_s),
        "check_all_per_s": round(ne / (seq_s + sig_s)),
        "replay_s": round(check_s, 3), "profile": prof,
        "bytes_per_entry": round(sum(len(r[1]) for r in rows) / ne, 1),
        "stored_bytes_per_entry": round(stored, 1), "log_build_s": round(built, 2),
        "rows": rows, "host": host,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--accounts", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--seconds", "--ticks", type=int, default=300,
                    help="seconds of host time (one tick each)")
    ap.add_argument("--max-requests", type=int, default=500,
                    help="at most this many buyer requests (fewer seconds at large N)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    report: dict[str, Any] = {"workers": args.workers}
    pool = SignaturePool(args.workers)
    runs = {}
    try:
        for n in args.accounts:
            seconds = max(1, min(args.seconds, args.max_requests * 100 // n))
            res = runs[n] = run(n, seconds, args.seed, pool)
            for key in ("replay_per_s", "realtime_x", "replay_seq_per_s", "check_all_per_s",
                        "entries", "seconds", "requests", "log_build_s", "profile"):
                report[f"{key}_{n}"] = res[key]
            if not args.json:
                print(f"{n} accounts, {res['seconds']} s, {res['entries']} entries: "
                      f"witness {res['replay_per_s']:,}/s ({res['realtime_x']}x real time), "
                      f"plain replay {res['replay_seq_per_s']:,}/s, all sigs "
                      f"{res['check_all_per_s']:,}/s; {res['profile']}", flush=True)
    finally:
        pool.close()
    if 100 in runs and 10000 in runs:
        report["replay_growth"] = round(runs[100]["replay_per_s"]
                                        / runs[10000]["replay_per_s"], 2)
        report["goal_realtime_x_10000"] = 50
        report["goal_replay_growth"] = 2
        report["goals_met"] = (runs[10000]["realtime_x"] >= 50
                               and report["replay_growth"] <= 2)
    last = runs[max(runs)]
    report.update(pool_rates(last["rows"], last["host"], args.workers))
    report.update({
        "accounts": last["accounts"], "ticks": last["seconds"], "entries": last["entries"],
        "audit_replay_per_s": last["replay_seq_per_s"],
        "audit_check_per_s": last["check_all_per_s"], "replay_s": last["replay_s"],
        "realtime_x": last["realtime_x"], "bytes_per_entry": last["bytes_per_entry"],
        "stored_bytes_per_entry": last["stored_bytes_per_entry"],
        "log_build_s": last["log_build_s"], "kinds": last["kinds"],
    })
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
