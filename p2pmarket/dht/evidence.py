"""Fetching and checking hash-only evidence entries (``evidence/<node id>``, docs/design.md
sections 3 and 5).

A proof too large for a DHT value travels as ``{sha256, size, url}``; its body is
served at ``<url>/dht/evidence/<sha256 hex>`` (:func:`p2pmarket.dht.gateway.gateway_routes`).
:func:`fetch_proof` gets one and checks it (size, hash, then the
:data:`~p2pmarket.dht.evidence_records.ProofVerifier` it is given, against the
key's node id); it is what readers use. :class:`EvidenceFetcher` is the storer's side: a store that
brings an entry it has not checked yet schedules a fetch, bounded in number
(concurrency, queue), rate (overall and per serving host), size and time, and
the entry is stored only once its body checks out; failures are counted and
remembered for a while so the same (hash, url) is not fetched again at once
(time read from the :data:`~p2pmarket.core.clock.Monotonic` it is given).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

import aiohttp

from p2pmarket.core.clock import Monotonic
from p2pmarket.core.streams import read_at_most
from p2pmarket.dht.checks import DhtError
from p2pmarket.dht.evidence_records import (
    MAX_EVIDENCE_PROOF_BYTES,
    EvidenceEntry,
    ProofVerifier,
    check_proof,
)
from p2pmarket.dht.ratelimit import RateLimiter
from p2pmarket.dht.records import url_host
from p2pmarket.dht.rpc import Spawn

FETCH_TIMEOUT_S = 10.0
MAX_CONCURRENT = 4
MAX_PENDING = 64
FETCH_RATE = 5.0
"""Fetches a second a storer starts at most (burst :data:`FETCH_BURST`)."""
FETCH_BURST = 20.0
HOST_RATE = 1.0
"""Fetches a second from one serving host (burst :data:`HOST_BURST`)."""
HOST_BURST = 4.0
FAILED_S = 600.0
"""A (hash, url) whose fetch failed is not fetched again by a storer for this long."""
FAILED_CACHE = 4096


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The response body, :class:`DhtError` ``too_large`` past ``cap`` bytes."""
    data = await read_at_most(resp.content, cap, resp.content_length)
    if data is None:
        raise DhtError("answer larger than allowed", "too_large")
    return data


async def fetch_proof(session: aiohttp.ClientSession, entry: EvidenceEntry, node_id: bytes,
                      proof_verifier: ProofVerifier, *, proxy: str | None = None,
                      timeout: float = FETCH_TIMEOUT_S) -> bytes:
    """The body of hash-only ``entry``, fetched from its url and checked: its size and
    sha256 (``evidence_mismatch``) and that ``proof_verifier`` finds it a valid proof
    against ``node_id`` (``bad_proof``/``wrong_host``). ``unavailable`` if it cannot be
    fetched."""
    if entry.proof is not None:
        return check_proof(entry.check(entry.proof), node_id, proof_verifier)
    url = entry.fetch_url
    if url is None:
        raise DhtError("evidence entry names no url", "malformed")
    try:
        async with session.get(url, proxy=proxy, allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                raise DhtError(f"proof fetch failed: HTTP {resp.status}", "unavailable")
            data = await read_capped(resp, min(entry.size, MAX_EVIDENCE_PROOF_BYTES))
    except DhtError as exc:
        if exc.value == "too_large":
            raise DhtError("proof larger than its entry says", "evidence_mismatch") from None
        raise
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise DhtError(f"proof fetch failed: {exc}", "unavailable") from None
    return check_proof(entry.check(data), node_id, proof_verifier)


Checked = Callable[[bytes, str, bytes, EvidenceEntry, bytes], None]
"""``(digest key, key name, node id, entry, body)``: an entry checked out."""


class EvidenceFetcher:
    """A storer's bounded queue of hash-only entries to fetch and check."""

    def __init__(self, spawn: Spawn, session: Callable[[], aiohttp.ClientSession],
                 on_checked: Checked, count: Callable[[str], None],
                 reject: Callable[[str], None], *, proof_verifier: ProofVerifier,
                 monotonic: Monotonic, timeout: float = FETCH_TIMEOUT_S,
                 max_concurrent: int = MAX_CONCURRENT, max_pending: int = MAX_PENDING,
                 rate: float = FETCH_RATE, burst: float = FETCH_BURST,
                 host_rate: float = HOST_RATE, host_burst: float = HOST_BURST) -> None:
        self._spawn = spawn
        self._session = session
        self._on_checked = on_checked
        self._count = count
        self._reject = reject
        self._proof_verifier = proof_verifier
        self._monotonic = monotonic
        self.timeout = timeout
        self.max_pending = max_pending
        self._sem = asyncio.Semaphore(max_concurrent)
        self._limit = RateLimiter(rate, burst, capacity=1)
        self._host_limit = RateLimiter(host_rate, host_burst)
        self._pending: set[tuple[bytes, str]] = set()
        self._failed: OrderedDict[tuple[bytes, str], float] = OrderedDict()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def schedule(self, dkey: bytes, key: str, node_id: bytes,
                 entries: list[EvidenceEntry]) -> int:
        """Queue the entries for checking; return how many are queued (now or before)."""
        queued = 0
        now = self._monotonic()
        for entry in entries:
            ident = entry.ident
            if ident in self._pending:
                queued += 1
                continue
            until = self._failed.get(ident)
            if until is not None:
                if until > now:
                    self._reject("evidence_failed_recently")
                    continue
                del self._failed[ident]
            if len(self._pending) >= self.max_pending:
                self._reject("evidence_busy")
                continue
            if not self._limit.allow("all", now) or \
                    not self._host_limit.allow(url_host(entry.url or ""), now):
                self._reject("evidence_rate_limited")
                continue
            self._pending.add(ident)
            self._spawn(self._fetch(dkey, key, node_id, entry))
            queued += 1
        return queued

    async def _fetch(self, dkey: bytes, key: str, node_id: bytes, entry: EvidenceEntry) -> None:
        try:
            async with self._sem:
                body = await fetch_proof(self._session(), entry, node_id, self._proof_verifier,
                                         timeout=self.timeout)
        except DhtError as exc:
            reason = str(exc.value)
            self._reject(reason if reason.startswith("evidence_") else f"evidence_{reason}")
            self._failed[entry.ident] = self._monotonic() + FAILED_S
            while len(self._failed) > FAILED_CACHE:
                self._failed.popitem(last=False)
            return
        finally:
            self._pending.discard(entry.ident)
        self._count("evidence_fetched")
        self._on_checked(dkey, key, node_id, entry, body)
