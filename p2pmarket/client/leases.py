"""After the purchase: a buyer's leases refreshed from their hosts, and the money in
their accounts moved by the buyer (docs/design.md section 8).

- :func:`refresh_leases`: each stored lease with its current signed version and its
  state (:func:`lease_status`: ``active``, ``outbid``, ``ended``, ``cancelled``,
  ``unreachable``, ``unknown``).
- :func:`refund` (``host.refund``): money back out of an account (``close``: all of it,
  and the account is gone); the host's certified SEND is received into the wallet and
  handed, with any SEND of the host naming the refund found in the notaries' inboxes,
  to the host's witnesses (``witness.refund``): a host that pays less than the refund
  its log recorded, or pays someone else, is exposed. :func:`cancel` is the close, and
  marks the stored lease ``closed``.
- :func:`topup` (``host.fund``): more money into an account. The host must answer
  ``host.lease`` for the account first (a live host holding it: no money goes to a
  dead one); the top-up is recorded as pending (``rpc: "fund"``) before the payment
  and again after it, so :func:`p2pmarket.client.buyer.resume_pending` finishes it.
- :func:`rebid` (``host.bid`` with ``replace``): new bids for an account, optionally a
  new interval.

A stored lease record (``leases.json``) is ``{host_key, url, account_id, lease, paid,
refunded?, closed?}``: ``paid`` and ``refunded`` are decimal strings of µcredits.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from dataclasses import dataclass
from typing import Any

from p2pmarket.api.client import PeerClient, PeerUnreachable
from p2pmarket.auction.accounts import memo_refund_id
from p2pmarket.auction.lease import Lease, verify_lease
from p2pmarket.auction.resources import parse_bids
from p2pmarket.audit.witness import push_refund_to_witnesses
from p2pmarket.client.accessrec import access_fields
from p2pmarket.client.buyer import (
    PUSH_TIMEOUT_S,
    BuyError,
    client_net,
    fund_account,
    open_wallet,
    push_audit,
)
from p2pmarket.client.discovery import MarketView
from p2pmarket.client.netopts import ClientNet
from p2pmarket.client.quoting import Progress
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import node_id_of
from p2pmarket.core.money import format_credits
from p2pmarket.core.wire import Envelope, pack
from p2pmarket.ledger.certificate import Certificate, verify_certificate
from p2pmarket.ledger.chain import SEND
from p2pmarket.ledger.collect import collect_inboxes

GONE = "no such account"   # how a host says it holds no such account (any more)


def lease_status(lease: Lease | None, fetched: bool, gone: bool, closed: bool,
                 now: int) -> str:
    """A lease's state for people (pure): ``cancelled`` (we closed it), ``unknown`` (no
    verifiable copy), ``ended`` (its interval is over, or its host holds it no more),
    ``unreachable`` (the host did not answer: the stored copy is shown), ``outbid``
    (current, but nothing allocated), ``active``."""
    if closed:
        return "cancelled"
    if lease is None:
        return "unknown"
    if gone or lease.end <= now:
        return "ended"
    if not fetched:
        return "unreachable"
    if all(t.alloc == 0 for t in lease.resources.values()):
        return "outbid"
    return "active"


@dataclass(frozen=True)
class LeaseView:
    """A stored lease as refreshed: its record, the newest verified lease (None if none
    verifies), whether that came from the host now, its :func:`lease_status` and why
    (the host's error, if any)."""

    lease_id: str
    record: dict[str, str]
    lease: Lease | None
    fetched: bool
    status: str
    detail: str

    @property
    def paid(self) -> int:
        """µcredits paid into the account (purchase and top-ups)."""
        return int(self.record.get("paid", "0"))

    @property
    def refunded(self) -> int:
        return int(self.record.get("refunded", "0"))

    @property
    def spent(self) -> int | None:
        """µcredits the host has charged so far; None when not known."""
        if self.lease is None or not self.paid:
            return None
        left = 0 if self.status == "cancelled" else self.lease.balance
        return max(0, self.paid - self.refunded - left)


async def refresh_leases(wdir: WalletDir, now: int, net: ClientNet | None = None
                         ) -> list[LeaseView]:
    """Each stored lease with its current verified version (or the error that stopped
    it). A host no longer at the stored URL (its relay changed) is looked up in the DHT,
    and the lease's URL updated. Cancelled leases are not asked for."""
    identity = wdir.identity()
    net = client_net(net)
    out: list[LeaseView] = []
    audits: list[tuple[bytes, Any, str]] = []
    async with PeerClient(identity, timeout_s=5, proxy=net.proxy) as client:
        for lease_id, record in wdir.leases().items():
            host_key = bytes.fromhex(record["host_key"])
            closed = bool(record.get("closed"))
            try:
                stored: Lease | None = verify_lease(bytes.fromhex(record["lease"]), host_key)
            except (P2PMarketError, ValueError):
                stored = None
            if closed:
                out.append(LeaseView(lease_id, record, stored, False,
                                     lease_status(stored, False, False, True, now), ""))
                continue
            try:
                reply, record = await call_host(client, wdir, net, record, "host.lease",
                                                {"account_id": record["account_id"]})
                env = Envelope.from_wire(reply.get("lease"))
                lease = verify_lease(env, host_key)
                record = {**record, "lease": pack(env.to_wire()).hex(),
                          **access_fields(reply)}
                wdir.save_lease(lease.lease_id, record)
                audits.append((host_key, reply.get("audit"), record["url"]))
                out.append(LeaseView(lease_id, record, lease, True,
                                     lease_status(lease, True, False, False, now), ""))
            except P2PMarketError as exc:
                gone = not isinstance(exc, PeerUnreachable) and GONE in exc.message
                out.append(LeaseView(lease_id, record, stored, False,
                                     lease_status(stored, False, gone, False, now),
                                     exc.message))
        if audits:
            with contextlib.suppress(P2PMarketError, TimeoutError):
                async with MarketView(wdir.genesis(), net) as market:
                    for host_key, audit, url in audits:
                        await push_audit(client, market, host_key, audit, url)
    return out


@dataclass(frozen=True)
class RefundOutcome:
    """What became of a refund: its id and amount as the host recorded them, whether it
    is paid (``done``) or not yet (``pending``), the certified SENDs of the host naming
    it that the buyer received, and the witnesses' answers about them (``result``:
    ``exact``, ``exposed``, ``unknown refund``)."""

    refund_id: str | None
    amount: int
    status: str
    payments: list[Certificate]
    witnesses: list[dict[str, Any]]


async def refund(wdir: WalletDir, lease_id: str, amount: int | None = None,
                 close: bool = False, progress: Progress = lambda _: None,
                 net: ClientNet | None = None) -> RefundOutcome:
    """Take ``amount`` (or, with ``close``, everything) back from the account of the lease
    ``lease_id``; receive the payment and push it to the host's witnesses."""
    record = wdir.leases().get(lease_id)
    if record is None:
        raise BuyError("no such lease in this wallet", lease_id)
    host_key, url = bytes.fromhex(record["host_key"]), record["url"]
    args: dict[str, Any] = {"account_id": record["account_id"]}
    args.update({"close": True} if close else {"amount": amount})
    genesis = wdir.genesis()
    net = client_net(net)
    async with open_wallet(wdir, net) as (wallet, client):
        progress(f"asking host {node_id_of(host_key).hex()[:12]} for the refund")
        reply = await client.call(url, host_key, "host.refund", args)
        made = reply.get("refund") if isinstance(reply.get("refund"), dict) else None
        rid = None if made is None else str(made.get("refund_id"))
        certs: dict[bytes, Certificate] = {}
        if made is not None and made.get("payment") is not None:
            cert = Certificate.from_wire(made["payment"])
            certs[cert.entry.hash()] = cert
        if rid is not None:   # a host may pay without saying so: look in the inboxes
            inbox, _ = await collect_inboxes(wallet.transport, genesis, wallet.key,
                                             wallet.cache)
            certs.update((c.entry.hash(), c) for c in inbox
                         if c.entry.owner == host_key and
                         memo_refund_id(c.entry.body.get("memo")) == rid)
        paid = [c for c in certs.values() if _pays_us(c, host_key, wallet.key, genesis)]
        answers: list[dict[str, Any]] = []
        with contextlib.suppress(TimeoutError, P2PMarketError):
            async with MarketView(genesis, net) as market:
                await push_audit(client, market, host_key, reply.get("audit"), url)
                for cert in paid:
                    progress("handing the refund payment to the host's witnesses")
                    answers.extend(await asyncio.wait_for(push_refund_to_witnesses(
                        client, market.directory(), host_key, cert.to_wire()),
                        PUSH_TIMEOUT_S))
        fresh = [c for c in paid if not wallet.has_received(c)]
        if fresh:
            progress("receiving the refund")
            await wallet.receive_many(fresh)
    if made is not None and made.get("status") == "done":
        _count_refund(wdir, lease_id, str(rid), int(made.get("amount", 0)), close)
    return RefundOutcome(rid, 0 if made is None else int(made.get("amount", 0)),
                         "none" if made is None else str(made.get("status")), paid, answers)




async def call_host(client: PeerClient, wdir: WalletDir, net: ClientNet,
                    record: dict[str, str], name: str, args: dict[str, Any]
                    ) -> tuple[dict[str, Any], dict[str, str]]:
    """Call ``name`` on the host of a stored lease ``record``; if the host is not at the
    stored URL any more (a relayed host whose relay changed), find its current URL in
    its signed DHT record and call it there. Returns the result and the record with
    the URL that answered (the caller stores it)."""
    host_key = bytes.fromhex(record["host_key"])
    try:
        return await client.call(record["url"], host_key, name, args), record
    except PeerUnreachable:
        moved = await moved_record(wdir, net, record)
        if moved is None:
            raise
        return await client.call(moved["url"], host_key, name, args), moved


async def moved_record(wdir: WalletDir, net: ClientNet, record: dict[str, str]
                       ) -> dict[str, str] | None:
    """``record`` with the URL its host's signed DHT record names now, None if that is
    no other URL (or no record of that key is found)."""
    host_key = bytes.fromhex(record["host_key"])
    async with MarketView(wdir.genesis(), net) as market:
        found = await market.reader.get_host(node_id_of(host_key))
    if found is None or found.envelope.sender != host_key or found.url == record["url"]:
        return None
    return {**record, "url": found.url}


def _count_refund(wdir: WalletDir, lease_id: str, rid: str, amount: int, close: bool) -> None:
    """Add a paid refund to the stored lease's ``refunded`` (once per refund id)."""
    record = wdir.leases()[lease_id]
    seen = [r for r in record.get("refund_ids", "").split(",") if r]
    if rid not in seen:
        record = {**record, "refunded": str(int(record.get("refunded", "0")) + amount),
                  "refund_ids": ",".join([*seen, rid])}
    if close:
        record = {**record, "closed": "yes"}
    wdir.save_lease(lease_id, record)


async def cancel(wdir: WalletDir, lease_id: str, progress: Progress = lambda _: None,
                 net: ClientNet | None = None) -> RefundOutcome:
    """Close the lease's account: all the money left comes back (certified, received
    into the wallet) and the stored lease is marked ``closed`` once the refund is paid."""
    return await refund(wdir, lease_id, close=True, progress=progress, net=net)


@dataclass(frozen=True)
class Changed:
    """A lease after a top-up or a rebid: the new signed lease, and what was paid."""

    lease: Lease
    paid: int


def _open_record(wdir: WalletDir, lease_id: str) -> dict[str, str]:
    record = wdir.leases().get(lease_id)
    if record is None:
        raise BuyError("no such lease in this wallet", lease_id)
    if record.get("closed"):
        raise BuyError("this lease was cancelled", lease_id)
    return record


async def topup(wdir: WalletDir, lease_id: str, amount: int,
                progress: Progress = lambda _: None, net: ClientNet | None = None
                ) -> Changed:
    """Pay ``amount`` µcredits more into the lease's account (``host.fund``). The host
    must first show it holds the account (``host.lease``); the top-up is pending from
    before the payment until the host took it."""
    record = _open_record(wdir, lease_id)
    host_key = bytes.fromhex(record["host_key"])
    short = node_id_of(host_key).hex()[:12]
    net = client_net(net)
    async with open_wallet(wdir, net) as (wallet, client):
        await wallet.sync()
        if wallet.balance() < amount:
            raise BuyError(f"balance {format_credits(wallet.balance())} credits is below "
                           f"the top-up {format_credits(amount)} credits",
                           {"balance": wallet.balance(), "amount": amount})
        progress(f"checking that host {short} holds the account")
        _, record = await call_host(client, wdir, net, record, "host.lease",
                                    {"account_id": record["account_id"]})
        wdir.save_lease(lease_id, record)
        key = f"fund-{lease_id}-{secrets.token_hex(8)}"
        memo = f"top up account {record['account_id']} at {node_id_of(host_key).hex()} {key}"
        pending: dict[str, Any] = {"rpc": "fund", "lease_id": lease_id,
                                   "host_key": record["host_key"], "url": record["url"],
                                   "memo": memo, "amount": amount, "payment": None}
        wdir.set_pending(key, pending)   # durable before the money moves
        progress(f"paying {format_credits(amount)} credits to host {short}")
        cert = await wallet.send(host_key, amount, memo=memo)
        pending["payment"] = pack(cert.to_wire()).hex()
        wdir.set_pending(key, pending)
        progress(f"handing the payment to host {short}")
        lease, audit = await fund_account(client, wdir, key, pending)
        with contextlib.suppress(TimeoutError, P2PMarketError):
            async with MarketView(wdir.genesis(), net) as market:
                await push_audit(client, market, host_key, audit, record["url"])
    return Changed(lease, amount)


async def rebid(wdir: WalletDir, lease_id: str, bid_texts: list[str],
                interval_s: int | None = None, progress: Progress = lambda _: None,
                net: ClientNet | None = None) -> Changed:
    """Replace the lease's bids by ``bid_texts`` (``host.bid`` with ``replace``), and
    restart its interval if ``interval_s`` is given. Nothing is paid."""
    record = _open_record(wdir, lease_id)
    host_key = bytes.fromhex(record["host_key"])
    wire_bids = {k: spec.to_wire() for k, spec in parse_bids(bid_texts).items()}
    args: dict[str, Any] = {"account_id": record["account_id"], "bids": wire_bids,
                            "replace": True}
    if interval_s is not None:
        args["interval_s"] = interval_s
    net = client_net(net)
    async with PeerClient(wdir.identity(), timeout_s=10, proxy=net.proxy) as client:
        progress(f"bidding at host {node_id_of(host_key).hex()[:12]}")
        reply, record = await call_host(client, wdir, net, record, "host.bid", args)
        env = Envelope.from_wire(reply.get("lease"))
        lease = verify_lease(env, host_key)
        if lease.lease_id != record["account_id"]:
            raise BuyError("the host answered with another account than the lease's",
                           lease.lease_id)
        wdir.save_lease(lease_id, {**record, "lease": pack(env.to_wire()).hex(),
                                   **access_fields(reply)})
        with contextlib.suppress(TimeoutError, P2PMarketError):
            async with MarketView(wdir.genesis(), net) as market:
                await push_audit(client, market, host_key, reply.get("audit"), record["url"])
    return Changed(lease, 0)


def _pays_us(cert: Certificate, host_key: bytes, us: bytes, genesis: Genesis) -> bool:
    """Whether ``cert`` is a certified SEND of the host to us."""
    if cert.entry.kind != SEND or cert.entry.owner != host_key or \
            cert.entry.body.get("to") != us:
        return False
    try:
        verify_certificate(cert, genesis)
    except P2PMarketError:
        return False
    return True
