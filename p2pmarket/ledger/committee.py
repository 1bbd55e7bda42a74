"""The wallet's side of the notary committee: transports and one lane per notary.

A :class:`Lane` sends one owner's entries to one notary, strictly in order and
one request at a time, so a notary never sees seq n+1 before seq n from us:

- a request names the seqs a wallet wants certified; requests that pile up
  while one is in flight are merged into the next ``certify_batch`` (chunks
  of at most ``max_batch`` entries);
- a batch root's entries go in one request (a chunk is cut back to end on a
  root's last entry), so the notary can sign the root; an entry it certified
  whose root it cannot sign yet (a catch-up that ends mid-root) counts as acked;
- a fresh RECV goes with the SEND certificate it receives (``sends``, from the
  store's receipts);
- a notary that lags (it was down, or lost a reply) answers "not the next
  entry, expected k": the lane re-sends from k, certified entries with the
  quorum certificates the store kept (catch-up), each batch ending on an entry
  with its certificate, which covers the entries before it;
- ``deliver`` pushes SEND certificates to the notary, after any certification
  in flight, batched; best effort (a notary that certified the SEND holds it
  in its inbox anyway). Undelivered ones are retried when their
  :class:`Backoff` (pure: it takes ``now`` and says when the next try is due)
  allows, or as soon as the notary answers a certification.

Lanes never verify notary signatures: the wallet checks those it needs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.genesis import NotaryInfo
from p2pmarket.core.identity import SIGNATURE_SIZE
from p2pmarket.ledger.certificate import Certificate
from p2pmarket.ledger.chain import RECV, Entry
from p2pmarket.ledger.errors import LedgerError, check_map
from p2pmarket.ledger.merkle import OwnerProof
from p2pmarket.ledger.store import KEEP_EVERY, ChainStore

if TYPE_CHECKING:
    from p2pmarket.api.client import PeerClient

log = logging.getLogger(__name__)

NOTARY_RPC_PREFIX = "notary"
MAX_BATCH = 512
MAX_UNDELIVERED = 100_000
MIN_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
LaneResult = tuple[dict[int, bytes], LedgerError | None]
Segment = list[tuple[Entry, bytes, tuple[tuple[bytes, bytes], ...] | None]]


class NotaryTransport(Protocol):
    """How a wallet reaches a notary's RPC ``name`` (``certify_batch``, ``inbox``, ...).

    Raises a :class:`P2PMarketError` subclass when the notary refuses or is unreachable.
    """

    async def call(self, notary: NotaryInfo, name: str,
                   args: dict[str, Any]) -> dict[str, Any]: ...


class PeerTransport:
    """A :class:`NotaryTransport` over :class:`p2pmarket.api.client.PeerClient`.

    Calls ``<prefix>.<name>`` at the notary's URL; the node registers the
    handlers with ``dispatcher.register_all(prefix, notaryrpc.handlers(service))``.
    """

    def __init__(self, client: PeerClient, prefix: str = NOTARY_RPC_PREFIX) -> None:
        self.client = client
        self.prefix = prefix

    async def call(self, notary: NotaryInfo, name: str,
                   args: dict[str, Any]) -> dict[str, Any]:
        return await self.client.call(notary.url, notary.key, f"{self.prefix}.{name}", args)


@dataclass(frozen=True)
class Backoff:
    """When undelivered certificates may be tried again: ``due`` (loop time, s) and
    the ``delay`` that led there, doubling from :data:`MIN_BACKOFF_S` up to
    :data:`MAX_BACKOFF_S` with each failure in a row."""

    delay: float = 0.0
    due: float = 0.0

    def failed(self, now: float) -> Backoff:
        delay = min(MAX_BACKOFF_S, max(MIN_BACKOFF_S, self.delay * 2))
        return Backoff(delay, now + delay)

    def succeeded(self) -> Backoff:
        """A delivery went through: the next failure starts from the shortest delay."""
        return replace(self, delay=0.0)

    def due_now(self) -> Backoff:
        """Try at once (asked to, or the notary just answered), keeping the delay."""
        return replace(self, due=0.0)

    def wait(self, now: float) -> float | None:
        """Seconds until the next try is due; None when it is due."""
        return self.due - now if now < self.due else None


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()  # a result nobody waits for any more is not an error


class Lane:
    """One owner's ordered stream of requests to one notary."""

    def __init__(self, owner: bytes, notary: NotaryInfo, store: ChainStore,
                 transport: NotaryTransport, max_batch: int = MAX_BATCH,
                 recent: Callable[[int, int], Segment | None] | None = None) -> None:
        self.owner = owner
        self.recent = recent  # entries the wallet still holds in memory (no certificates)
        self.notary = notary
        self.store = store
        self.transport = transport
        self.max_batch = max_batch
        self.acked: int | None = None  # highest seq the notary is known to have certified
        self._want = -1
        self._start: int | None = None
        self._waiters: list[asyncio.Future[LaneResult]] = []
        self._deliveries: list[Certificate] = []
        self.backoff = Backoff()
        self._retry: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self.catch_ups = 0

    @property
    def key(self) -> bytes:
        return self.notary.key

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def request(self, first: int, last: int) -> asyncio.Future[LaneResult]:
        """Have entries ``first..last`` (stored) certified; the future gets the
        signatures this notary returned by seq and the refusal that stopped it, if any."""
        fut: asyncio.Future[LaneResult] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(_consume)
        self._waiters.append(fut)
        self._want = max(self._want, last)
        self._start = first if self._start is None else min(self._start, first)
        self._kick()
        return fut

    def deliver(self, certs: Sequence[Certificate]) -> None:
        """Queue SEND certificates for this notary; sent after any certification in
        flight. Kept and retried with backoff while the notary cannot be reached."""
        self._deliveries.extend(certs)
        del self._deliveries[:-MAX_UNDELIVERED]
        self._kick()

    def redeliver(self) -> None:
        """Try the undelivered certificates now."""
        self.backoff = self.backoff.due_now()
        self._kick()

    @property
    def undelivered(self) -> int:
        return len(self._deliveries)

    async def idle(self) -> None:
        while self._task is not None and not self._task.done():
            await asyncio.wait([self._task])

    async def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])
        for fut in self._waiters:
            fut.cancel()
        self._waiters.clear()

    def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"lane-{self.key.hex()[:8]}")

    async def _run(self) -> None:
        try:
            await self._work()
        except asyncio.CancelledError:
            raise
        except Exception:  # waiters have it already; a worker must not die noisily
            log.exception("notary lane %s stopped", self.key.hex()[:8])

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._waiters:
                await self._serve_waiters()
                continue
            if not self._deliveries:
                return
            wait = self.backoff.wait(loop.time())
            if wait is not None:
                if self._retry is None or self._retry.cancelled():
                    self._retry = loop.call_later(wait, self._rekick)
                return
            certs, self._deliveries = self._deliveries, []
            for i in range(0, len(certs), self.max_batch):
                chunk = certs[i:i + self.max_batch]
                try:
                    await self.transport.call(self.notary, "deliver",
                                              {"certs": [c.encode() for c in chunk]})
                except P2PMarketError as exc:
                    log.debug("deliver to %s failed: %s", self.key.hex()[:8], exc.message)
                    self._deliveries[:0] = certs[i:]
                    self.backoff = self.backoff.failed(loop.time())
                    break
            else:
                self.backoff = self.backoff.succeeded()

    def _rekick(self) -> None:
        self._retry = None
        self._kick()

    async def _serve_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        start = self._start if self.acked is None else \
            min(self.acked + 1, self._start if self._start is not None else self._want)
        fresh = self._start if self._start is not None else self._want
        target, self._start = self._want, None
        try:
            result = await self._certify(start if start is not None else target, target,
                                         fresh)
        except P2PMarketError as exc:
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(exc)
        except BaseException as exc:
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception)
                                      else LedgerError("lane stopped", "cancelled"))
            raise
        else:
            self.backoff = self.backoff.due_now()  # the notary answers: deliveries may go now
            for fut in waiters:
                if not fut.done():
                    fut.set_result(result)

    async def _certify(self, start: int, target: int, fresh: int) -> LaneResult:
        """Send ``start..target``; entries before ``fresh`` were not asked for: the
        notary lags behind them (catch-up, with certificates from the store)."""
        sigs: dict[int, bytes] = {}
        caught_up = False
        catching = start < fresh
        pos = start
        while pos <= target:
            last = min(target, pos + self.max_batch - 1)
            if pos < fresh:
                last = min(last, fresh - 1)
            seg: Segment | None = None
            if pos < fresh:  # catching up: certificates from the store
                seg = self._catch_up_segment(pos, last)
            elif self.recent is not None:
                seg = self.recent(pos, last)
            if seg is None:  # not in memory
                seg = self.store.segment(self.owner, pos, last)
            if not seg:
                break
            if pos >= fresh:
                seg = _whole_roots(seg)
            args = self._batch_args(seg)
            if pos >= fresh and any(e.kind == RECV for e, _, _ in seg):
                receipts = self.store.receipts(self.owner, pos, seg[-1][0].seq)
                if any(e.kind == RECV and e.seq not in receipts for e, _, _ in seg):
                    # certified meanwhile (by a quorum without us): the receipt is gone,
                    # but a later entry's certificate covers it
                    seg = self._catch_up_segment(pos, last)
                    args = self._batch_args(seg)
                    receipts = self.store.receipts(self.owner, pos, seg[-1][0].seq)
                args["sends"] = [receipts.get(e.seq) if e.kind == RECV else None
                                 for e, _, _ in seg]
            result = check_map(await self.transport.call(self.notary, "certify_batch", args),
                               "certify_batch result", {"notary", "sigs", "errors"})
            got = result["sigs"]
            if not isinstance(got, list) or len(got) != len(seg):
                raise LedgerError("notary returned a malformed batch result", self.key)
            failed: int | None = None
            for i, ((entry, _, _), sig) in enumerate(zip(seg, got, strict=True)):
                if isinstance(sig, bytes) and len(sig) == SIGNATURE_SIZE:
                    sigs[entry.seq] = sig
                elif not _incomplete(result["errors"], i):  # else: certified, root unsigned
                    failed = i
                    break
                self.acked = max(self.acked if self.acked is not None else -1, entry.seq)
            if failed is None:
                pos = seg[-1][0].seq + 1
                continue
            error = _item_error(result["errors"], failed)
            expected = error.value.get("expected") if isinstance(error.value, dict) else None
            if (isinstance(expected, int) and not isinstance(expected, bool)
                    and 0 <= expected < seg[failed][0].seq and not caught_up):
                caught_up = catching = True  # the notary lags: re-send from where it is
                self.acked = expected - 1
                fresh = max(fresh, seg[failed][0].seq)
                pos = expected
                continue
            return sigs, error
        self.catch_ups += catching
        return sigs, None

    @staticmethod
    def _batch_args(seg: Segment) -> dict[str, Any]:
        return {"entries": [e.encode() for e, _, _ in seg], "sigs": [s for _, s, _ in seg],
                "certs": [[[k, s] for k, s in ns] if ns else [] for _, _, ns in seg]}

    def _catch_up_segment(self, pos: int, last: int) -> Segment:
        """Certified entries from ``pos``, ending on one whose certificate the store
        kept (it covers those before it): cut back within ``pos..last``, or extended
        forward (at most :data:`KEEP_EVERY` more) when none there has one."""
        seg = self.store.segment(self.owner, pos, last)
        for i in range(len(seg) - 1, -1, -1):
            if seg[i][2]:
                return seg[:i + 1]
        more = self.store.segment(self.owner, last + 1, last + KEEP_EVERY)
        for i, item in enumerate(more):
            if item[2]:
                return seg + more[:i + 1]
        return seg + more  # nothing certified within reach: the notary will say why


def _whole_roots(seg: Segment) -> Segment:
    """``seg`` cut back to end on the last entry of a batch root, when one in it does
    (so a notary gets every entry under a root in one request and can sign it)."""
    for i in range(len(seg) - 1, -1, -1):
        proof = OwnerProof.decode(seg[i][1])
        if proof.index == proof.size - 1:
            return seg[:i + 1]
    return seg


def _incomplete(errors: Any, index: int) -> bool:
    """Whether the notary certified item ``index`` but cannot sign its root yet."""
    value = _item_error(errors, index).value
    return isinstance(value, dict) and value.get("root_incomplete") is True


def _item_error(errors: Any, index: int) -> LedgerError:
    if isinstance(errors, list):
        for item in errors:
            if isinstance(item, list) and len(item) == 3 and item[0] == index:
                return LedgerError(str(item[1]), item[2])
    return LedgerError("notary refused the entry", index)
