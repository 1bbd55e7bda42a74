"""A wallet: one owner's chain, certified by the notary committee.

Every operation runs under one asyncio lock and follows the same steps:
re-submit a pending entry left by a crash (:meth:`Wallet.resume`, idempotent at
the notaries), open the chain if it is empty, build and check the next entry,
append it durably with the owner's signature, then ask all notaries in
parallel and return as soon as ``genesis.quorum`` valid signatures are in.
Late notaries get a short grace period before the next entry is submitted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from p2pmarket.api.rpc import now_us
from p2pmarket.config import Genesis, NotaryInfo
from p2pmarket.errors import P2PMarketError
from p2pmarket.identity import Identity
from p2pmarket.ledger.certificate import (
    Certificate,
    is_valid,
    notary_sig_valid,
    verify_certificate,
)
from p2pmarket.ledger.chain import (
    MINT,
    OPEN,
    RECV,
    SEND,
    Authenticator,
    Entry,
    apply,
    next_entry,
    verify_chain,
)
from p2pmarket.ledger.errors import LedgerError, check_bytes, check_map
from p2pmarket.ledger.store import ChainStore

if TYPE_CHECKING:
    from p2pmarket.api.client import PeerClient

NOTARY_RPC_PREFIX = "notary"


class NotaryTransport(Protocol):
    """How a wallet reaches a notary's RPC ``name`` (``certify``, ``inbox``, ...).

    Raises a :class:`P2PMarketError` subclass when the notary refuses or is unreachable.
    """

    async def call(self, notary: NotaryInfo, name: str,
                   args: dict[str, Any]) -> dict[str, Any]: ...


class PeerTransport:
    """A :class:`NotaryTransport` over :class:`p2pmarket.api.client.PeerClient`.

    Calls ``<prefix>.<name>`` at the notary's URL; the node registers the
    handlers with ``dispatcher.register_all(prefix, service.handlers())``.
    """

    def __init__(self, client: PeerClient, prefix: str = NOTARY_RPC_PREFIX) -> None:
        self.client = client
        self.prefix = prefix

    async def call(self, notary: NotaryInfo, name: str,
                   args: dict[str, Any]) -> dict[str, Any]:
        return await self.client.call(notary.url, notary.key, f"{self.prefix}.{name}", args)


class Wallet:
    def __init__(self, identity: Identity, store: ChainStore, genesis: Genesis,
                 transport: NotaryTransport, clock: Callable[[], int] = now_us,
                 straggler_timeout: float = 2.0) -> None:
        self.identity = identity
        self.store = store
        self.genesis = genesis
        self.transport = transport
        self.clock = clock
        self.straggler_timeout = straggler_timeout
        self._lock = asyncio.Lock()
        self._stragglers: set[asyncio.Task[bytes]] = set()

    @property
    def key(self) -> bytes:
        return self.identity.public_key

    # -- operations --------------------------------------------------------------

    async def resume(self) -> Certificate | None:
        """Certify the pending entry a crash left behind, if any."""
        async with self._lock:
            return await self._resume()

    async def ensure_open(self) -> None:
        async with self._lock:
            await self._prepare()

    async def mint(self, amount: int) -> Certificate:
        """Create ``amount`` on the mint key's own chain."""
        if self.key != self.genesis.mint_key:
            raise LedgerError("only the mint key may MINT", "mint_key")
        async with self._lock:
            await self._prepare()
            return await self._append(MINT, {"amount": amount})

    async def send(self, to: bytes, amount: int, memo: str = "") -> Certificate:
        """Pay ``amount`` to ``to``; the certificate is the payee's receipt."""
        async with self._lock:
            await self._prepare()
            return await self._append(SEND, {"to": to, "amount": amount, "memo": memo})

    async def receive(self, cert: Certificate) -> int:
        """Verify ``cert`` offline and record it with a certified RECV; returns the amount.

        Receiving the same certificate again returns the amount and appends nothing.
        """
        verify_certificate(cert, self.genesis)
        entry = cert.entry
        if entry.kind != SEND or entry.body["to"] != self.key:
            raise LedgerError("certificate is not a SEND to this wallet", entry.kind)
        signers = cert.valid_signers(self.genesis)
        cert = Certificate(entry, cert.owner_sig,
                           tuple(sorted(p for p in cert.notary_sigs if p[0] in signers)))
        async with self._lock:
            await self._prepare()
            if not self.has_received(cert):
                await self._append(RECV, {"from": entry.owner, "cert": cert.to_wire()})
            return entry.amount

    def has_received(self, cert: Certificate) -> bool:
        return self.store.has_received(self.key, cert.entry.owner, cert.entry.seq)

    async def sync(self) -> int:
        """Receive every certified SEND to us that the notaries know; returns the amount."""
        results = await asyncio.gather(*(self._inbox(n) for n in self.genesis.notaries),
                                       return_exceptions=True)
        merged: dict[tuple[bytes, bytes], Certificate] = {}
        for result in results:
            if isinstance(result, BaseException):
                if not isinstance(result, P2PMarketError):
                    raise result
                continue
            for cert in result:
                key = (cert.entry.hash(), cert.owner_sig)
                known = merged.get(key)
                merged[key] = cert if known is None else known.merged(cert.notary_sigs)
        total = 0
        for cert in sorted(merged.values(), key=lambda c: (c.entry.owner, c.entry.seq)):
            if is_valid(cert, self.genesis) and not self.has_received(cert):
                total += await self.receive(cert)
        return total

    def balance(self) -> int:
        """The certified balance."""
        return self.store.balance(self.key)

    def history(self) -> list[dict[str, Any]]:
        return self.store.history(self.key)

    def verify(self) -> int:
        """Check the whole local chain (:func:`verify_chain`); returns its balance."""
        return verify_chain(self.store.entries(self.key), self.store.authenticators(self.key),
                            self.genesis)

    async def close(self) -> None:
        """Stop waiting for late notaries."""
        for task in self._stragglers:
            task.cancel()
        if self._stragglers:
            await asyncio.wait(self._stragglers)
        self._stragglers.clear()

    # -- internals ---------------------------------------------------------------

    async def _prepare(self) -> None:
        await self._resume()
        if self.store.head(self.key) is None:
            await self._append(OPEN, {})

    async def _resume(self) -> Certificate | None:
        pending = self.store.pending(self.key)
        if pending is None:
            return None
        return await self._certify(*pending)

    async def _append(self, kind: str, body: dict[str, Any]) -> Certificate:
        entry = next_entry(self.key, self.store.head(self.key), kind, body, self.clock())
        apply(self.store.balance(self.key), entry, self.genesis)  # refuse before writing
        auth = Authenticator.sign(self.identity, entry)
        self.store.append(entry, auth.sig)  # durable before any notary sees it
        return await self._certify(entry, auth.sig)

    async def _certify(self, entry: Entry, owner_sig: bytes) -> Certificate:
        await self._drain()
        args = {"entry": entry.to_wire(), "sig": owner_sig}
        tasks = {asyncio.create_task(self._ask(n, args, entry)): n
                 for n in self.genesis.notaries}
        waiting: set[asyncio.Task[bytes]] = set(tasks)
        sigs: list[tuple[bytes, bytes]] = []
        errors: dict[str, Any] = {}
        while waiting and len(sigs) < self.genesis.quorum:
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                notary = tasks[task]
                exc = task.exception()
                if exc is None:
                    sigs.append((notary.key, task.result()))
                elif isinstance(exc, P2PMarketError):
                    errors[notary.key.hex()] = exc.to_dict()
                else:
                    raise exc
        self._stragglers |= waiting
        if len(sigs) < self.genesis.quorum:
            raise LedgerError("no notary quorum; the entry stays pending",
                              {"seq": entry.seq, "signatures": len(sigs),
                               "quorum": self.genesis.quorum, "errors": errors})
        cert = Certificate(entry, owner_sig, tuple(sorted(sigs)))
        verify_certificate(cert, self.genesis)
        self.store.attach(cert)
        return cert

    async def _ask(self, notary: NotaryInfo, args: dict[str, Any], entry: Entry) -> bytes:
        result = check_map(await self.transport.call(notary, "certify", args),
                           "certify result", {"notary", "sig"})
        sig = check_bytes(result["sig"], "sig", 64)
        if result["notary"] != notary.key or not notary_sig_valid(entry, notary.key, sig):
            raise LedgerError("notary returned a bad signature", notary.key)
        return sig

    async def _inbox(self, notary: NotaryInfo) -> list[Certificate]:
        result = await self.transport.call(notary, "inbox", {"owner": self.key})
        certs = result.get("certs") if isinstance(result, dict) else None
        if not isinstance(certs, list):
            raise LedgerError("notary returned a malformed inbox", notary.key)
        out: list[Certificate] = []
        for doc in certs:
            try:
                cert = Certificate.from_wire(doc)
            except LedgerError:
                continue
            entry = cert.entry
            if entry.kind != SEND or entry.body["to"] != self.key:
                continue
            good = tuple(p for p in cert.notary_sigs if notary_sig_valid(entry, *p))
            out.append(Certificate(entry, cert.owner_sig, good))
        return out

    async def _drain(self) -> None:
        """Give notaries still working on the previous entry a moment, then stop waiting."""
        if not self._stragglers:
            return
        done, late = await asyncio.wait(self._stragglers, timeout=self.straggler_timeout)
        for task in late:
            task.cancel()
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved: a late notary's failure is not an error here
        self._stragglers.clear()
