"""What the node keeps for its dashboard: the price history's samples, its last read of
the market, what its witnesses say about it, and the wallet dir's leases (docs/design.md,
price history and the dashboard). Decides nothing: the values come from
:mod:`p2pmarket.history.samples`, the buckets from :mod:`p2pmarket.history.buckets`.

:meth:`Sampler.run` samples the host's own prices and the accounts' allocation shares
once per auction tick (``settings.tick_seconds``; one transaction per batch), and reads
the market from the node's own DHT peer (or gateway) every ``history_market_seconds``
(default :data:`MARKET_EVERY_S`; 0: only when asked; the first time one period after
the start): the
types the host offers plus cpu and memory, the best :data:`MARKET_HOSTS` hosts of each.

Control API handlers (``POST /v1/<name>``, JSON in and out):

- ``price_history {scope, name, step?: minute|hour, since?: µs}`` -> ``{scope, name,
  step, points: [{t, n, mean, min, max, last, last_ts}]}`` (oldest first; without
  ``since`` the whole retention of the step).
- ``history_series {prefix?, since?}`` -> ``{series: [[scope, name]]}``
- ``market {}`` -> ``{at, hosts: [{node_id, url, reach, reachable, availability_ppm,
  resources: {type: {capacity, price, hour_avg}}, own}], prices: {type: {hosts, capacity,
  low, median, high}}}``: the last read (``at`` None before the first)
- ``audit_witnesses {}`` -> ``{at, witnesses: [{witness, url, state?, audited_seq?,
  head?, last_audit?, proofs?, error?}]}``: this host's witnesses, asked at most every
  :data:`WITNESS_EVERY_S`
- ``wallet_leases {}`` -> ``{wallet, leases: [{lease_id, host_key, url, account_id,
  resources, start, end, balance, error?}]}``: the leases of the wallet dir named by the
  setting ``dashboard_wallet`` (none when it is empty)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from p2pmarket.api.server import ControlHandler
from p2pmarket.auction.lease import verify_lease
from p2pmarket.auction.resources import DIVISIBLE
from p2pmarket.audit.witness import WITNESSES_PER_HOST, PeerCaller, WitnessDirectory, witnesses_of
from p2pmarket.client.reachview import reach_of
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.clock import now_us
from p2pmarket.core.config import Settings
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity
from p2pmarket.dht.offerquery import MarketHost
from p2pmarket.dht.records import HostRecord
from p2pmarket.history.buckets import (
    MINUTE,
    check_step,
    default_since,
    series_key,
)
from p2pmarket.history.samples import (
    alloc_samples,
    market_prices,
    market_samples,
    own_samples,
)
from p2pmarket.history.store import HistoryStore

log = logging.getLogger(__name__)

MARKET_EVERY_S = 60.0
MARKET_HOSTS = 32
MARKET_TIMEOUT_S = 20.0
WITNESS_EVERY_S = 30.0
WITNESS_TIMEOUT_S = 3.0   # the directory's lookup, then the asks at once: at most twice this
ALWAYS_READ = ("cpu", "memory")


class MarketReader(Protocol):
    async def market(self, types: list[str], n: int = 10, min_capacity: int = 0,
                     max_price: int | None = None, min_availability_ppm: int = 0
                     ) -> list[MarketHost]: ...


def host_entry(record: HostRecord, now: int, own: bytes) -> dict[str, Any]:
    reach = reach_of(record, now)
    return {"node_id": record.node_id.hex(), "url": record.url,
            "reach": reach.reach_class.value if reach.reach_class else "unattested",
            "relayed_by": reach.relayed_by, "reachable": reach.reachable,
            "availability_ppm": record.availability_ppm,
            "resources": {t: ad.to_doc() for t, ad in sorted(record.resources.items())},
            "own": record.node_id == own}


class Sampler:
    def __init__(self, store: HistoryStore, summary: Callable[[], dict[str, dict[str, int]]],
                 allocations: Callable[[], dict[str, dict[str, int]]], records: MarketReader,
                 identity: Identity, peers: PeerCaller, directory: WitnessDirectory,
                 settings: Settings, clock: Callable[[], int] = now_us) -> None:
        self.store = store
        self.summary = summary
        """The host's ``market_summary()``: ``{type: {capacity, price, free}}``."""
        self.allocations = allocations
        """Account id -> its allocation ``{type: amount}`` now."""
        self.records = records
        self.identity = identity
        self.peers = peers
        self.directory = directory
        self.settings = settings
        self.clock = clock
        self.every_s = settings.tick_seconds
        self.market_every_s = settings.history_market_seconds
        self.last_market: dict[str, Any] = {"at": None, "hosts": [], "prices": {}}
        self._witnesses: dict[str, Any] = {"at": None, "witnesses": []}
        self.market_read = asyncio.Event()   # set after each market read (tests wait on it)
        self.read_now = asyncio.Event()      # set: read the market now

    # -- sampling ------------------------------------------------------------------

    def sample_host(self, now: int) -> None:
        """One batch: the own prices and the allocation shares, now."""
        summary = self.summary()
        divisible = {r: info["capacity"] for r, info in summary.items() if r in DIVISIBLE}
        self.store.record(own_samples(summary, now)
                          + alloc_samples(self.allocations(), divisible, now), now)

    async def sample_market(self, now: int) -> None:
        """Read the market (a type at a time) and record its prices."""
        offered = [t for t, info in self.summary().items() if info["capacity"]]
        types = sorted({*ALWAYS_READ, *offered})
        found: dict[bytes, HostRecord] = {}
        for t in types:
            try:
                hosts = await asyncio.wait_for(self.records.market([t], n=MARKET_HOSTS),
                                               MARKET_TIMEOUT_S)
            except (P2PMarketError, TimeoutError, OSError) as exc:
                log.debug("market read of %s failed: %s", t, exc)
                continue
            for h in hosts:
                held = found.get(h.node_id)
                if held is None or h.record.seq > held.seq:
                    found[h.node_id] = h.record
        entries = [host_entry(r, now, self.identity.node_id)
                   for _, r in sorted(found.items()) if r.expires > now]
        prices = market_prices(entries)
        self.store.record(market_samples(prices, now), now)
        self.last_market = {"at": now, "hosts": entries, "prices": prices}
        self.market_read.set()

    async def run(self) -> None:
        """Sample every tick and read the market every :attr:`market_every_s` (a read
        of its own, so a slow DHT does not hold up the tick samples), until cancelled."""
        reads = asyncio.create_task(self._read_markets(), name="history-market")
        try:
            while True:
                try:
                    self.sample_host(self.clock())
                except Exception:   # the history is a convenience: the node goes on
                    log.exception("sampling the price history failed",
                                  extra={"event": "history.sample_failed"})
                await asyncio.sleep(self.every_s)
        finally:
            reads.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reads

    async def _read_markets(self) -> None:
        """The first read one period after the start (a node starting has no market to
        read yet), then one every period, or at once when :attr:`read_now` is set."""
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            # waits a second at a time: a shorter period set meanwhile counts; 0 waits
            # for read_now (asyncio.timeout, not wait_for, which can lose the cancel)
            while not self.read_now.is_set():
                periodic = self.market_every_s > 0
                left = self.market_every_s - (loop.time() - began)
                if periodic and left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(1.0, left) if periodic else 1.0):
                        await self.read_now.wait()
            self.read_now.clear()
            try:
                await self.sample_market(self.clock())
            except Exception:
                log.exception("reading the market for the price history failed",
                              extra={"event": "history.sample_failed"})

    # -- control calls ---------------------------------------------------------------

    def history(self, args: Mapping[str, Any]) -> dict[str, Any]:
        key = series_key(args.get("scope"), args.get("name"))
        step = check_step(args.get("step", MINUTE))
        since = args.get("since")
        if since is None:
            since = default_since(self.clock(), step)
        if isinstance(since, bool) or not isinstance(since, int):
            raise P2PMarketError("history since must be an integer (µs)", repr(since)[:40])
        return {"scope": key.scope, "name": key.name, "step": step,
                "points": [b.to_doc() for b in self.store.series(key, step, since)]}

    async def witnesses(self) -> dict[str, Any]:
        now = self.clock()
        at = self._witnesses["at"]
        if at is not None and now - at < WITNESS_EVERY_S * 1e6:
            return self._witnesses
        own = self.identity.node_id
        out: list[dict[str, Any]] = []
        try:
            peers = await asyncio.wait_for(
                witnesses_of(self.directory, own, WITNESSES_PER_HOST), WITNESS_TIMEOUT_S)
        except (P2PMarketError, TimeoutError, OSError) as exc:
            return {"at": now, "witnesses": [], "error": str(exc)[:200]}

        async def ask(url: str, key: bytes) -> dict[str, Any]:
            try:
                doc = await asyncio.wait_for(
                    self.peers.call(url, key, "witness.status", {"host": own}),
                    WITNESS_TIMEOUT_S)
            except (P2PMarketError, TimeoutError, OSError) as exc:
                return {"error": getattr(exc, "message", str(exc))[:200]}
            hosts = doc.get("hosts") if isinstance(doc, dict) else None
            mine = hosts[0] if isinstance(hosts, list) and hosts else None
            if not isinstance(mine, dict):
                return {"state": "not watching"}
            return {k: mine.get(k) for k in ("state", "audited_seq", "head", "last_audit",
                                             "error")} | {"proofs": len(mine.get("proofs")
                                                                        or [])}
        answers = await asyncio.gather(*(ask(p.url, p.key) for p in peers))
        for p, answer in zip(peers, answers, strict=True):
            out.append({"witness": p.node_id.hex(), "url": p.url, **answer})
        self._witnesses = {"at": now, "witnesses": out}
        return self._witnesses

    def wallet_leases(self) -> dict[str, Any]:
        name = self.settings.dashboard_wallet
        if not name:
            return {"wallet": None, "leases": []}
        wdir = WalletDir(Path(name))
        out = []
        for lease_id, record in sorted(wdir.leases().items()):
            entry: dict[str, Any] = {"lease_id": lease_id, "host_key": record.get("host_key"),
                                     "url": record.get("url"),
                                     "account_id": record.get("account_id")}
            try:
                lease = verify_lease(bytes.fromhex(record["lease"]),
                                     bytes.fromhex(record["host_key"]))
                entry |= {"resources": {r: t.alloc for r, t in lease.resources.items()},
                          "start": lease.start, "end": lease.end, "balance": lease.balance}
            except (P2PMarketError, KeyError, ValueError) as exc:
                entry["error"] = getattr(exc, "message", str(exc))[:200]
            out.append(entry)
        return {"wallet": str(wdir.root), "leases": out}

    def control_handlers(self) -> dict[str, ControlHandler]:
        async def series(args: dict[str, Any]) -> dict[str, Any]:
            since = args.get("since", 0)
            prefix = args.get("prefix", "")
            if not isinstance(since, int) or not isinstance(prefix, str):
                raise P2PMarketError("history_series takes {prefix?: str, since?: µs}")
            return {"series": [[k.scope, k.name] for k in self.store.keys(prefix, since)]}

        async def market(args: dict[str, Any]) -> dict[str, Any]:
            return self.last_market

        async def audit_witnesses(args: dict[str, Any]) -> dict[str, Any]:
            return await self.witnesses()

        async def wallet_leases(args: dict[str, Any]) -> dict[str, Any]:
            return self.wallet_leases()

        return {"history_series": series, "market": market,
                "audit_witnesses": audit_witnesses, "wallet_leases": wallet_leases}

__all__ = ["MARKET_EVERY_S", "Sampler", "host_entry"]
