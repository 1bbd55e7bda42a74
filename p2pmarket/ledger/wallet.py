"""A wallet: one owner's chain, certified by the notary committee.

Operations (mint, send, receive, checkpoint) queue up and run in groups under
one asyncio lock (group commit): whoever takes the lock first re-submits any
pending entries a crash left (:meth:`Wallet.resume`, idempotent at the
notaries), opens the chain if it is empty, builds and checks the next entry for
every queued operation, signs them with one signature over their Merkle root
(per :data:`~p2pmarket.ledger.merkle.MAX_LEAVES` entries; a lone entry is
signed itself), appends them all durably in one transaction with the
owner's proofs, then has them certified in one batch per notary
(:class:`committee.Lane`) and returns as soon as a quorum of valid signatures
covers each (:class:`collect.Tally`). Concurrent callers therefore pipeline
naturally, and a caller with many payments to make can use :meth:`Wallet.send_many`.

After a SEND is certified the wallet delivers its certificate to the notaries
whose signature it lacks (they may have missed the SEND), in the background,
so the payee's :meth:`sync` finds a whole certificate at any notary (it merges
every notary's inbox: :func:`collect.collect_inboxes`).

A RECV names the SEND it receives (``{from, seq, hash, amount, memo}``); the
SEND's certificate is stored beside the pending RECV (the store's receipts) and
sent beside it to the notaries, then dropped once the RECV is certified. The
store keeps notary signatures only where still needed (see
:mod:`p2pmarket.ledger.store`); :meth:`Wallet.certificate` gives any certified
entry's certificate, recovering a pruned one from the notaries
(:func:`collect.recollect`: they keep every authenticator, and Ed25519
signatures are deterministic, so resubmitting the entry returns the very
signatures given before).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from p2pmarket.core.clock import now_us
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import Identity
from p2pmarket.ledger.certificate import (
    Certificate,
    check_receipt,
    committee_quorum,
    received_key,
    verify_certificate,
    verify_segment,
)
from p2pmarket.ledger.chain import (
    CHECKPOINT,
    MINT,
    OPEN,
    RECV,
    SEND,
    Authenticator,
    Entry,
    apply,
    next_entry,
    recv_body,
    verify_chain,
)
from p2pmarket.ledger.collect import Tally, collect_inboxes, recollect
from p2pmarket.ledger.committee import (
    MAX_BATCH,
    Lane,
    LaneResult,
    NotaryTransport,
    Segment,
)
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.merkle import MAX_LEAVES
from p2pmarket.ledger.sigcache import SigCache
from p2pmarket.ledger.store import ChainStore

RECENT = 4096  # entries kept in memory for the lanes


@dataclass
class _Op:
    kind: str
    body: dict[str, Any]
    future: asyncio.Future[Certificate | None] = field(repr=False)
    cert: Certificate | None = None  # RECV: the SEND certificate


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class Wallet:
    def __init__(self, identity: Identity, store: ChainStore, genesis: Genesis,
                 transport: NotaryTransport, clock: Callable[[], int] = now_us,
                 straggler_timeout: float = 2.0, max_batch: int = MAX_BATCH,
                 deliver: bool = True) -> None:
        self.identity = identity
        self.store = store
        self.genesis = genesis
        self.transport = transport
        self.clock = clock
        self.straggler_timeout = straggler_timeout  # kept for callers; lanes never block
        self.deliver_certs = deliver
        self.quorum = committee_quorum(genesis)
        self.root_size = max(1, min(MAX_LEAVES, max_batch))  # entries under one signed root
        self.cache = SigCache(1 << 14)
        self.lanes = {n.key: Lane(identity.public_key, n, store, transport, max_batch,
                                  self._recent_segment)
                      for n in genesis.notaries}
        self._recent: dict[int, tuple[Entry, bytes]] = {}
        self._lock = asyncio.Lock()
        self._queue: list[_Op] = []
        # set by accept: pending RECVs wait for a certifier (cleared by whoever waits)
        self.uncertified = asyncio.Event()
        self.on_certify: Callable[[float, bool], None] | None = None
        """Monitoring: told ``(seconds, ok)`` after each certification round (a batch
        sent to the notaries until a quorum covered it; ok: every entry certified)."""

    @property
    def key(self) -> bytes:
        return self.identity.public_key

    # -- operations --------------------------------------------------------------

    async def resume(self) -> Certificate | None:
        """Certify the pending entries a crash left behind; the last one's certificate."""
        async with self._lock:
            return await self._resume()

    async def ensure_open(self) -> None:
        async with self._lock:
            await self._resume()
            if self.store.head(self.key) is None:
                await self._run([])

    async def mint(self, amount: int) -> Certificate:
        """Create ``amount`` on the mint key's own chain."""
        self._check_mint()
        return await self._one(MINT, {"amount": amount})

    async def mint_to(self, to: bytes, amount: int, memo: str = "mint") -> Certificate:
        """MINT ``amount`` and SEND it to ``to`` in one batch; the SEND's certificate."""
        self._check_mint()
        _, cert = await self._many([(MINT, {"amount": amount}, None),
                                    (SEND, {"to": to, "amount": amount, "memo": memo}, None)])
        assert cert is not None
        return cert

    async def send(self, to: bytes, amount: int, memo: str = "") -> Certificate:
        """Pay ``amount`` to ``to``; the certificate is the payee's receipt."""
        return await self._one(SEND, {"to": to, "amount": amount, "memo": memo})

    async def send_many(self, payments: Sequence[tuple[bytes, int, str]]) -> list[Certificate]:
        """Several payments ``(to, amount, memo)`` in one batch, in order."""
        certs = await self._many([(SEND, {"to": t, "amount": a, "memo": m}, None)
                                  for t, a, m in payments])
        return [c for c in certs if c is not None]

    async def checkpoint(self) -> Certificate:
        """Append a CHECKPOINT of the current balance (see :meth:`verify`)."""
        return await self._one(CHECKPOINT, {})

    async def receive(self, cert: Certificate) -> int:
        """Verify ``cert`` offline and record it with a certified RECV; returns the amount.

        Receiving the same certificate again returns the amount and appends nothing.
        """
        return await self.receive_many([cert])

    async def receive_many(self, certs: Sequence[Certificate]) -> int:
        """:meth:`receive` for several certificates in one batch; the total amount."""
        ops = []
        for cert in certs:
            verify_certificate(cert, self.genesis, self.cache)
            entry = cert.entry
            if entry.kind != SEND or entry.body["to"] != self.key:
                raise LedgerError("certificate is not a SEND to this wallet", entry.kind)
            ops.append((RECV, recv_body(entry), cert.trimmed(self.genesis, self.cache)))
        await self._many(ops)
        return sum(c.entry.amount for c in certs)

    def accept(self, cert: Certificate) -> int:
        """Receive ``cert`` offline: verify it against the committee, append the RECV
        durably (pending, with the certificate as its receipt) and return the amount,
        all without a network call or an await, so an auction never waits on a
        notary. The RECV is certified later, by whoever certifies the chain next
        (:meth:`resume`, or any operation: they certify the pending entries first);
        :attr:`uncertified` is set meanwhile. A certificate already received (pending
        or certified) returns its amount and appends nothing."""
        verify_certificate(cert, self.genesis, self.cache)
        entry = cert.entry
        if entry.kind != SEND or entry.body["to"] != self.key:
            raise LedgerError("certificate is not a SEND to this wallet", entry.kind)
        if self.has_received(cert):
            return entry.amount
        head = self.store.head(self.key)
        if head is None:
            raise LedgerError("the chain is not open yet", "not_open")
        recv = next_entry(self.key, head, RECV, recv_body(entry), self.clock())
        check_receipt(recv, cert, self.genesis, self.cache)
        apply(self.store.balance(self.key, include_pending=True), recv, self.genesis)
        built = [(recv, self._sign(recv))]
        trimmed = cert.trimmed(self.genesis, self.cache)
        self.store.append_many(built, check_sig=False, receipts={recv.seq: trimmed.encode()})
        self._remember(built)
        self.uncertified.set()
        return entry.amount

    def has_received(self, cert: Certificate) -> bool:
        return self.store.has_received(self.key, cert.entry.owner, cert.entry.seq)

    async def sync(self) -> int:
        """Receive every certified SEND to us that the notaries know; returns the amount."""
        total = 0
        for _ in range(64):  # each round takes up to an inbox page from every notary
            certs, more = await collect_inboxes(self.transport, self.genesis, self.key,
                                                self.cache)
            fresh = [c for c in certs if not self.has_received(c)]
            if fresh:
                total += await self.receive_many(fresh)
            if not (more and fresh):
                break
        return total

    async def certificate(self, seq: int) -> Certificate | None:
        """The certificate of our entry at ``seq``: from the store, or recovered from a
        notary quorum if its signatures were pruned. None if the entry is absent or
        not certified; :class:`LedgerError` if no quorum can be had now."""
        cert = self.store.certificate(self.key, seq)
        if cert is not None or not self.store.certified(self.key, seq):
            return cert
        [(entry, owner_sig, _)] = self.store.segment(self.key, seq, seq)
        sigs = await recollect(self.transport, self.genesis, entry, owner_sig)
        if len(sigs) < self.quorum:  # lagging notaries: catch them up to our head
            head = self.store.head_seq(self.key)
            while head > seq and not self.store.certified(self.key, head):
                head -= 1
            lanes = [lane for lane in self.lanes.values() if lane.key not in sigs]
            await asyncio.gather(*(lane.request(head, head) for lane in lanes),
                                 return_exceptions=True)
            sigs.update(await recollect(self.transport, self.genesis, entry, owner_sig))
        if len(sigs) < self.quorum:
            raise LedgerError("cannot recover the certificate: no notary quorum answers",
                              {"seq": seq, "signatures": len(sigs), "quorum": self.quorum})
        return Certificate(entry, owner_sig, tuple(sorted(sigs.items())[:self.quorum]))

    def balance(self) -> int:
        """The certified balance."""
        return self.store.balance(self.key)

    def history(self) -> list[dict[str, Any]]:
        return self.store.history(self.key)

    def verify(self, from_checkpoint: bool = False) -> int:
        """Check the local chain (:func:`verify_chain`), or only the part after its last
        certified CHECKPOINT (:func:`verify_segment`); returns its balance."""
        start = self.store.last_checkpoint(self.key) if from_checkpoint else None
        if start is None:
            return verify_chain(self.store.entries(self.key),
                                self.store.authenticators(self.key), self.genesis)
        seg = self.store.segment(self.key, start.entry.seq + 1, self.store.head_seq(self.key))
        return verify_segment(start, [e for e, _, _ in seg],
                              [Authenticator.of(e, s) for e, s, _ in seg], self.genesis)

    async def flush(self) -> None:
        """Wait until every lane is idle (late notaries answered, certificates delivered
        or put aside for a retry)."""
        await asyncio.sleep(0)  # let answers already in schedule their deliveries
        while any(lane.busy for lane in self.lanes.values()):
            for lane in self.lanes.values():
                await lane.idle()
            await asyncio.sleep(0)

    async def redeliver(self) -> None:
        """Push undelivered SEND certificates now (lanes also retry on their own)."""
        for lane in self.lanes.values():
            lane.redeliver()
        await self.flush()

    async def close(self) -> None:
        """Stop talking to notaries (late answers and deliveries are dropped)."""
        for lane in self.lanes.values():
            await lane.close()

    # -- grouping ----------------------------------------------------------------

    def _check_mint(self) -> None:
        if self.key != self.genesis.mint_key:
            raise LedgerError("only the mint key may MINT", "mint_key")

    async def _one(self, kind: str, body: dict[str, Any]) -> Certificate:
        [cert] = await self._many([(kind, body, None)])
        assert cert is not None
        return cert

    async def _many(self, specs: Sequence[tuple[str, dict[str, Any], Certificate | None]]
                    ) -> list[Certificate | None]:
        loop = asyncio.get_running_loop()
        ops = []
        for kind, body, cert in specs:
            fut: asyncio.Future[Certificate | None] = loop.create_future()
            fut.add_done_callback(_consume)
            ops.append(_Op(kind, body, fut, cert))
        self._queue.extend(ops)
        async with self._lock:
            if self._queue and not all(op.future.done() for op in ops):
                batch, self._queue = self._queue, []
                try:
                    await self._run(batch)
                except Exception as exc:
                    for op in batch:
                        if not op.future.done():
                            op.future.set_exception(exc)
                except BaseException:
                    for op in batch:
                        if not op.future.done():
                            op.future.set_exception(
                                LedgerError("wallet operation interrupted", "cancelled"))
                    raise
        for op in ops:  # the first failure, in order, is the caller's error
            failure = op.future.exception()
            if failure is not None:
                raise failure
        return [op.future.result() for op in ops]

    async def _run(self, ops: Sequence[_Op]) -> None:
        await self._resume()
        # receipts accepted offline while we resumed: certified first, in this batch
        carried = self.store.pending_entries(self.key)
        head = self.store.head(self.key)
        balance = self.store.balance(self.key, include_pending=True)
        entries: list[Entry] = []
        owners: list[_Op | None] = []
        if head is None:
            head = next_entry(self.key, None, OPEN, {}, self.clock())
            entries.append(head)
            owners.append(None)
        receiving: set[tuple[bytes, int]] = set()
        receipts: dict[int, bytes] = {}
        for op in ops:
            try:
                body = op.body
                if op.kind == RECV:
                    assert op.cert is not None
                    key = received_key(op.cert)
                    if key in receiving or self.store.has_received(self.key, *key):
                        op.future.set_result(None)
                        continue
                elif op.kind == CHECKPOINT:
                    body = {"balance": balance}
                entry = next_entry(self.key, head, op.kind, body, self.clock())
                if op.cert is not None:  # a RECV: the SEND certificate it receives
                    check_receipt(entry, op.cert, self.genesis, self.cache)
                balance = apply(balance, entry, self.genesis)
            except LedgerError as exc:
                op.future.set_exception(exc)
                continue
            if op.kind == RECV:
                assert op.cert is not None
                receiving.add(received_key(op.cert))
                receipts[entry.seq] = op.cert.encode()
            entries.append(entry)
            owners.append(op)
            head = entry
        if not entries:
            return
        built = self._sign_batches(entries)
        # durable, with the receipts, before any notary sees them
        self.store.append_many(built, check_sig=False, receipts=receipts)
        self._remember(built)
        results = (await self._certify(carried + built))[len(carried):]
        for owner, result in zip(owners, results, strict=True):
            if owner is None:
                if isinstance(result, LedgerError):
                    raise result
            elif isinstance(result, LedgerError):
                owner.future.set_exception(result)
            else:
                owner.future.set_result(result)

    def _remember(self, built: Sequence[tuple[Entry, bytes]]) -> None:
        for entry, sig in built:
            self._recent[entry.seq] = (entry, sig)
        if len(self._recent) > RECENT:
            floor = built[-1][0].seq - RECENT // 2
            self._recent = {k: v for k, v in self._recent.items() if k > floor}

    def _recent_segment(self, first: int, last: int) -> Segment | None:
        """Entries ``first..last`` if all are still in memory (saves rebuilding them)."""
        out: Segment = []
        for seq in range(first, last + 1):
            got = self._recent.get(seq)
            if got is None:
                return None
            out.append((got[0], got[1], None))
        return out

    def _sign(self, entry: Entry) -> bytes:
        return Authenticator.sign(self.identity, entry).sig

    def _sign_batches(self, entries: Sequence[Entry]) -> list[tuple[Entry, bytes]]:
        """One signature per :attr:`root_size` entries: over their Merkle root."""
        out: list[tuple[Entry, bytes]] = []
        for i in range(0, len(entries), self.root_size):
            chunk = entries[i:i + self.root_size]
            out += [(e, a.sig) for e, a in
                    zip(chunk, Authenticator.sign_batch(self.identity, chunk), strict=True)]
        return out

    async def _resume(self) -> Certificate | None:
        pending = self.store.pending_entries(self.key)
        if not pending:
            return None
        results = await self._certify(pending)
        for result in results:
            if isinstance(result, LedgerError):
                raise result
        last = results[-1]
        assert isinstance(last, Certificate)
        return last

    # -- certification -------------------------------------------------------------

    async def _certify(self, built: Sequence[tuple[Entry, bytes]]
                       ) -> list[Certificate | LedgerError]:
        """Certify stored consecutive entries; a certificate (stored) or an error each."""
        started = time.perf_counter()
        first, last = built[0][0].seq, built[-1][0].seq
        futs = {lane.request(first, last): lane for lane in self.lanes.values()}
        tally = Tally(built, self.quorum)
        waiting: set[asyncio.Future[LaneResult]] = set(futs)
        while waiting and not tally.complete:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                lane = futs[fut]
                exc = fut.exception()
                if exc is not None:
                    if not isinstance(exc, P2PMarketError):
                        raise exc
                    tally.refused(lane.key, exc)
                    continue
                sigs, error = fut.result()
                if error is not None:
                    tally.refused(lane.key, error)
                tally.add(lane.key, sigs)  # a quorum of valid signatures each, no more
        certs = tally.results()
        done_certs = [c for c in certs if isinstance(c, Certificate)]
        if done_certs:
            self.store.attach_many(done_certs)
            sends = [c for c in done_certs if c.entry.kind == SEND]
            if sends and self.deliver_certs:
                for fut, lane in futs.items():
                    fut.add_done_callback(partial(self._deliver_missed, lane, sends))
        if self.on_certify is not None:
            self.on_certify(time.perf_counter() - started, len(done_certs) == len(certs))
        return certs

    def _deliver_missed(self, lane: Lane, certs: Sequence[Certificate],
                        fut: asyncio.Future[LaneResult]) -> None:
        """Once ``lane`` answered: deliver the SEND certificates it did not certify."""
        sigs: dict[int, bytes] = {}
        if not fut.cancelled() and fut.exception() is None:
            sigs = fut.result()[0]
        missed = [c for c in certs if c.entry.seq not in sigs]
        if missed:
            lane.deliver(missed)
