"""A node's own payments: its chain opened with the notaries, buyers' payments taken
offline and certified in the background, refunds paid once per memo.

:meth:`NodePayments.accept` runs under the auction lock, so it makes no network call:
the buyer's SEND certificate is checked against the genesis committee and the RECV
appended durably but uncertified (:meth:`Wallet.accept`); :meth:`NodePayments.collect`
has the notaries certify it (at once, then with backoff while they do not answer) and
now and then (:data:`COLLECT_S`) pulls certified payments from the notaries' inboxes,
so money whose payer crashed before handing over the certificate is still collected.
:meth:`NodePayments.refund` is idempotent per memo (design §6, "Refunds").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import Payment
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity
from p2pmarket.ledger.certificate import Certificate
from p2pmarket.ledger.store import ChainStore
from p2pmarket.ledger.wallet import Wallet

log = logging.getLogger(__name__)

RETRY_S = (0.2, 0.5, 1.0, 2.0, 5.0)
COLLECT_S = 30.0


class NodePayments:
    """The node's chain (``wallet`` over ``chain``) as a host uses it."""

    def __init__(self, identity: Identity, chain: ChainStore, wallet: Wallet) -> None:
        self.identity = identity
        self.chain = chain
        self.wallet = wallet
        self.ready = asyncio.Event()
        """Set once our chain is open with the notaries (payments are taken from then)."""
        self._lock = asyncio.Lock()

    async def open_chain(self) -> None:
        """Open our chain with the notaries (they may start after us), then finish any
        transfer a crash interrupted; sets :attr:`ready`."""
        attempt = 0
        while True:
            try:
                await self.wallet.resume()
                await self.wallet.ensure_open()
                break
            except P2PMarketError as exc:
                delay = RETRY_S[min(attempt, len(RETRY_S) - 1)]
                log.info("chain not open yet (%s); retrying in %.1fs", exc.message, delay)
                attempt += 1
                await asyncio.sleep(delay)
        self.ready.set()

    async def collect(self) -> None:
        """Certify the RECVs :meth:`accept` appended offline, as soon as there are any
        and again with backoff (``RETRY_S``) while the notaries do not answer, until
        done; and every :data:`COLLECT_S` pull certified payments to us from the
        notaries' inboxes. Runs for ever; never under the auction lock."""
        await self.ready.wait()
        loop = asyncio.get_running_loop()
        next_sync = loop.time() + COLLECT_S
        failures = 0
        while True:
            wait = next_sync - loop.time()
            if failures:
                wait = min(wait, RETRY_S[min(failures - 1, len(RETRY_S) - 1)])
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wait)):
                    await self.wallet.uncertified.wait()
            self.wallet.uncertified.clear()
            syncing = loop.time() >= next_sync
            try:
                async with self._lock:
                    await self.wallet.resume()   # the offline receipts first
                    if syncing:
                        await self.wallet.sync()
                failures = 0
            except P2PMarketError as exc:
                failures += 1
                log.info("certifying or collecting payments failed: %s", exc.message)
            if syncing:
                next_sync = loop.time() + COLLECT_S

    async def accept(self, payer: bytes, cert_doc: dict[str, Any]) -> Payment:
        """Verify a buyer's SEND certificate offline and record it on our chain.

        Idempotent: a certificate already received (certified or not) is not credited
        again, and gives the same Payment (its id is the SEND entry's hash). Which
        account a payment funded is the auctioneer's record, committed with the
        account, so a payment received just before a crash still funds the account
        the buyer's retry creates."""
        cert = Certificate.from_wire(cert_doc)
        body = cert.entry.body
        if cert.entry.kind != "SEND" or body.get("to") != self.identity.public_key:
            raise HostError("payment is not a transfer to this host", "not_to_host")
        if cert.entry.owner != payer:
            raise HostError("payment was made by another key than the caller", "payer")
        if not self.ready.is_set():
            raise HostError("host is still opening its ledger; retry shortly", "not_ready")
        amount = self.wallet.accept(cert)
        return Payment(cert.entry.hash(), amount)

    async def refund(self, holder: bytes, amount: int, memo: str) -> dict[str, Any]:
        """Pay ``amount`` back to ``holder`` with a certified transfer. Idempotent per
        memo (the auctioneer gives each refund a unique memo and retries until done):
        a refund already on our chain is answered with its certificate (recovered from
        the notaries if the wallet pruned its signatures)."""
        async with self._lock:
            await self.wallet.resume()
            for entry in self.chain.entries(self.identity.public_key):
                if (entry.kind == "SEND" and entry.body["memo"] == memo
                        and entry.body["to"] == holder):
                    # store or recover: a pruned certificate is not "unpaid" (never pay twice)
                    cert = await self.wallet.certificate(entry.seq)
                    if cert is not None:
                        return cert.to_wire()
            return (await self.wallet.send(holder, amount, memo=memo)).to_wire()


__all__ = ["COLLECT_S", "RETRY_S", "NodePayments"]
