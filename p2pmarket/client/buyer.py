"""The buyer's workflow: quote, plan, pay, bid, verify (docs/design.md section 8).

``buy`` finds hosts offering every wanted resource and asks the best ranked for a
signed quote (``host.quote``); a host that does not answer, or whose quote the
buyer refuses (:mod:`p2pmarket.client.quotecheck`), is skipped and the next one
asked. It spreads the budget over the quoted hosts with best response, and for
each: asks a fresh quote of the exact amount, records the purchase durably,
pays it with a notary-certified transfer whose memo names the quote, opens an
account with the bids, and verifies the signed lease it gets back against the
host's key from its DHT record. No money moves to a host that has not signed an
acceptable quote. Leases are kept in the wallet dir; ``refresh_leases`` fetches
their current versions.

The wallet dir's pending purchases (``pending.json``, :func:`resume_pending`)
keep the money safe between paying and the account opening: each is written
before the payment (with the memo) and again after it (with the certificate), so
a crash at any point leaves either no payment (the record is dropped) or a
payment the next run finds by its memo and turns into the account.

``refund`` takes money back out of an account (``close``: all of it) and hands the
certified SEND that paid it, and any SEND of the host naming that refund found in the
notaries' inboxes, to the host's witnesses (``witness.refund``): a host that pays less
than the refund its log recorded, or pays someone else, is exposed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from p2pmarket.api.client import PeerClient, PeerUnreachable
from p2pmarket.auction.accounts import memo_refund_id
from p2pmarket.auction.buyersteps import account_id_for
from p2pmarket.auction.lease import Lease, verify_lease
from p2pmarket.auction.quote import quote_id
from p2pmarket.auction.resources import BidSpec, parse_bids
from p2pmarket.audit.witness import push_refund_to_witnesses, push_to_witnesses
from p2pmarket.client.discovery import HostView, MarketView
from p2pmarket.client.netopts import ClientNet
from p2pmarket.client.planner import Candidate, PlanError, best_response
from p2pmarket.client.quotecheck import planning_view
from p2pmarket.client.quoting import Progress, Quoted, Skipped, ask_quote, gather_quotes
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import node_id_of
from p2pmarket.core.wire import Envelope, pack, unpack
from p2pmarket.ledger.certificate import Certificate, verify_certificate
from p2pmarket.ledger.chain import SEND
from p2pmarket.ledger.collect import collect_inboxes
from p2pmarket.ledger.committee import PeerTransport
from p2pmarket.ledger.store import ChainStore
from p2pmarket.ledger.wallet import Wallet

PUSH_TIMEOUT_S = 10.0


class BuyError(P2PMarketError):
    """A purchase could not be completed."""


@dataclass(frozen=True)
class Purchase:
    host: HostView
    amount: int
    account_id: str
    lease: Lease
    envelope: bytes


@contextlib.asynccontextmanager
async def open_wallet(wdir: WalletDir, net: ClientNet | None = None
                      ) -> AsyncIterator[tuple[Wallet, PeerClient]]:
    """The wallet in ``wdir`` with a client for the notaries (through ``net``'s proxy, if
    any); closed on exit."""
    identity = wdir.identity()
    genesis = wdir.genesis()
    client = PeerClient(identity, proxy=_net(net).proxy)
    store = ChainStore(wdir.ledger_db)
    wallet = Wallet(identity, store, genesis, PeerTransport(client))
    try:
        await wallet.resume()
        yield wallet, client
    finally:
        await wallet.close()
        store.close()
        await client.close()


@dataclass(frozen=True)
class Unfinished:
    """A host paid whose account is not open yet: the purchase stays pending (the next
    ``buy`` or ``leases`` finishes it)."""

    host: HostView
    amount: int
    reason: str


@dataclass(frozen=True)
class BuyReport:
    purchases: list[Purchase]
    skipped: list[Skipped]
    unfinished: list[Unfinished]

    @property
    def unspent(self) -> int:
        """The part of the budget that was planned for hosts skipped before paying."""
        return sum(s.amount for s in self.skipped)


def plan(quoted: list[Quoted], primary: str, budget: int, interval_s: int,
         max_hosts: int) -> dict[bytes, int]:
    """Best response over the top ``max_hosts``: weight = capacity of the primary resource,
    others' bids = the host's current price over the interval, both from its quote
    (:func:`p2pmarket.client.quotecheck.planning_view`)."""
    candidates = []
    for q in quoted[:max_hosts]:
        view = planning_view(q.quote, q.host.record, primary)
        candidates.append(Candidate(q.host.node_id, view.capacity,
                                    max(1, view.price * interval_s)))
    try:
        return best_response(candidates, budget)
    except PlanError as exc:
        raise BuyError(f"cannot plan the purchase: {exc.message}", exc.value) from None


async def buy(wdir: WalletDir, bid_texts: list[str], budget: int, interval_s: int,
              max_hosts: int, progress: Progress = lambda _: None,
              net: ClientNet | None = None, only: frozenset[bytes] = frozenset()
              ) -> BuyReport:
    """Find hosts (only those whose node ids are in ``only``, if given), get their
    quotes, plan, and for each planned host: a fresh quote of its exact amount, then the
    payment, then the account (docs/design.md section 8). No money moves to a host
    before it has signed an acceptable quote."""
    if interval_s <= 0:
        raise BuyError("duration must be positive", interval_s)
    if not 1 <= max_hosts <= 64:
        raise BuyError("--hosts must be between 1 and 64", max_hosts)
    specs: dict[str, BidSpec] = parse_bids(bid_texts)
    types = sorted({key.split(",")[0] for key in specs})
    primary = next(iter(specs)).split(",")[0]
    genesis = wdir.genesis()
    net = _net(net)
    await resume_pending(wdir, progress, net)
    async with open_wallet(wdir, net) as (wallet, client):
        progress("collecting incoming payments")
        await wallet.sync()
        if wallet.balance() < budget:
            raise BuyError(f"balance {wallet.balance()} µcredits is below the budget {budget}",
                           {"balance": wallet.balance(), "budget": budget})
        progress(f"looking up hosts offering {', '.join(types)} in the DHT")
        async with MarketView(genesis, net) as market:
            hosts = await market.hosts(types, limit=max(20, max_hosts, len(only)))
            if only:
                hosts = [h for h in hosts if h.node_id in only]
            if not hosts:
                raise BuyError(f"no {'chosen ' if only else ''}host offers "
                               f"{', '.join(types)}", types)
            wire_bids = {key: spec.to_wire() for key, spec in specs.items()}
            quoted, skipped = await gather_quotes(client, hosts, max_hosts, wallet.key,
                                                  wire_bids, types, interval_s, progress)
            if not quoted:
                reasons = "; ".join(f"{s.host.node_id.hex()[:12]}: {s.reason}"
                                    for s in skipped[:5])
                raise BuyError(f"no host gave an acceptable quote, nothing was paid ({reasons})",
                               [[s.host.node_id.hex(), s.reason] for s in skipped])
            bids = plan(quoted, primary, budget, interval_s, max_hosts)
            by_id = {q.host.node_id: q.host for q in quoted}
            report = BuyReport([], skipped, [])
            for node_id, amount in bids.items():
                if not await pay_one(client, market, wallet, wdir, by_id[node_id], amount,
                                     wire_bids, types, interval_s, report, progress):
                    break
        return report


async def pay_one(client: PeerClient, market: MarketView, wallet: Wallet, wdir: WalletDir,
                  host: HostView, amount: int, wire_bids: dict[str, Any], types: list[str],
                  interval_s: int, report: BuyReport, progress: Progress) -> bool:
    """One planned host: quote the exact amount, record the intent, pay, open the account,
    push the audit; the outcome goes into ``report``. False if paying itself failed (the
    notaries: the next payments would fail too)."""
    short = host.node_id.hex()[:12]
    progress(f"asking host {short} for a quote of {amount} µcredits")
    try:
        quoted = await ask_quote(client, host, wallet.key, wire_bids, types, interval_s,
                                 amount)
    except P2PMarketError as exc:
        report.skipped.append(Skipped(host, exc.message, amount))
        return True
    qid = quote_id(quoted.quote)
    memo = f"fund account at {host.node_id.hex()} quote {qid}"
    pending: dict[str, Any] = {
        "host_key": host.key.hex(), "url": host.record.url, "memo": memo, "amount": amount,
        "quote": pack(quoted.envelope).hex(), "payment": None, "bids": wire_bids,
        "interval_s": interval_s}
    wdir.set_pending(qid, pending)   # durable before the money moves: resume finds the SEND
    progress(f"paying {amount} µcredits to host {short}")
    try:
        cert = await wallet.send(host.key, amount, memo=memo)
    except P2PMarketError as exc:
        report.unfinished.append(Unfinished(host, amount, f"payment not certified: "
                                                          f"{exc.message}"))
        return False
    pending["payment"] = pack(cert.to_wire()).hex()
    wdir.set_pending(qid, pending)   # durable before the host
    progress(f"opening an account at {host.record.url}")
    try:
        account_id, lease, envelope, audit = await open_account(
            client, wdir, wallet.key, qid, pending)
    except P2PMarketError as exc:
        report.unfinished.append(Unfinished(host, amount, exc.message))
        return True
    progress("handing the host's signed log commitment to its witnesses")
    await push_audit(client, market, host.key, audit, host.record.url)
    report.purchases.append(Purchase(host, amount, account_id, lease, envelope))
    return True


async def push_audit(client: PeerClient, market: MarketView, host_key: bytes,
                     audit: Any, url: str) -> int:
    """Best effort: give the host's witnesses the authenticator of its reply, so they can
    hold the host to the log it committed to (docs/design.md section 5). Returns how many
    witnesses took it; a failure never fails the purchase."""
    if not isinstance(audit, dict):
        return 0
    try:
        return await asyncio.wait_for(
            push_to_witnesses(client, market.directory(), host_key, [audit], url),
            PUSH_TIMEOUT_S)
    except (TimeoutError, P2PMarketError):
        return 0


async def open_account(client: PeerClient, wdir: WalletDir, holder: bytes, pending_id: str,
                       pending: dict[str, Any]) -> tuple[str, Lease, bytes, Any]:
    """Ask the host to open the account a payment was made for; record the lease and
    forget the pending purchase ``pending_id``. Safe to repeat: hosts answer a repeated
    payment with the account it already funded. The account must be the one the
    payment names (:func:`account_id_for`) and the lease that account's, for us."""
    host_key = bytes.fromhex(pending["host_key"])
    payment = unpack(bytes.fromhex(pending["payment"]))
    reply = await client.call(pending["url"], host_key, "host.create_account", {
        "payment": payment, "bids": pending["bids"], "interval_s": pending["interval_s"]})
    env = Envelope.from_wire(reply.get("lease"))
    lease = verify_lease(env, host_key)
    if lease.host_id != node_id_of(host_key) or lease.holder != holder:
        raise BuyError("the host sent a lease for someone else", lease.lease_id)
    account_id = str(reply.get("account_id"))
    expected = account_id_for(Certificate.from_wire(payment).entry.hash())
    if account_id != expected or lease.lease_id != expected:
        raise BuyError("the host answered with another account than the payment's",
                       {"expected": expected, "got": account_id})
    envelope = pack(env.to_wire())
    wdir.save_lease(lease.lease_id, {"host_key": pending["host_key"], "url": pending["url"],
                                     "account_id": account_id, "lease": envelope.hex()})
    wdir.set_pending(pending_id, None)
    return account_id, lease, envelope, reply.get("audit")


async def find_payment(wallet: Wallet, record: dict[str, Any]) -> Certificate | None:
    """The certified SEND a pending purchase recorded before paying (found by its host
    and memo, which names the quote), None if it was never made; :class:`BuyError` if
    it is on our chain but not certified yet."""
    host_key = bytes.fromhex(record["host_key"])
    for entry in wallet.store.entries(wallet.key):
        if (entry.kind == SEND and entry.body["to"] == host_key
                and entry.body["memo"] == record["memo"]):
            cert = await wallet.certificate(entry.seq)
            if cert is None:
                raise BuyError("the payment is not certified yet", entry.seq)
            return cert
    return None


async def settle_intent(wallet: Wallet, wdir: WalletDir, key: str,
                        record: dict[str, Any]) -> str:
    """A purchase recorded before its payment: dropped if the payment was never made,
    completed with its certificate if it was."""
    try:
        cert = await find_payment(wallet, record)
    except P2PMarketError as exc:
        return f"still pending: {exc.message}"
    if cert is None:
        wdir.set_pending(key, None)
        return "never paid: nothing to finish"
    wdir.set_pending(key, {**record, "payment": pack(cert.to_wire()).hex()})
    return "paid: opening the account"


async def resume_pending(wdir: WalletDir, progress: Progress = lambda _: None,
                         net: ClientNet | None = None) -> list[tuple[str, str]]:
    """Finish every purchase a crash or an unreachable host interrupted. A purchase
    recorded before its payment is looked up on our chain first (the wallet finishes a
    transfer the crash cut short): never paid, it is dropped; paid, its account is
    opened. Returns (pending id, outcome) pairs; unfinished ones stay pending."""
    pending = wdir.pending()
    if not pending:
        return []
    outcomes = []
    unpaid = {k: r for k, r in pending.items() if not r.get("payment")}
    if unpaid:
        try:
            async with open_wallet(wdir, net) as (wallet, _):   # finishes cut-short transfers
                for key, record in unpaid.items():
                    outcomes.append((key, await settle_intent(wallet, wdir, key, record)))
        except P2PMarketError as exc:   # the wallet could not finish them now
            done = {k for k, _ in outcomes}
            outcomes.extend((k, f"still pending: {exc.message}") for k in unpaid
                            if k not in done)
    async with PeerClient(wdir.identity(), timeout_s=10, proxy=_net(net).proxy) as client:
        for key, record in wdir.pending().items():
            if not record.get("payment"):
                continue
            progress(f"finishing an earlier purchase at {record['url']}")
            try:
                account_id, _, _, _ = await open_account(
                    client, wdir, wdir.identity().public_key, key, record)
                outcomes.append((key, f"account {account_id} opened"))
            except P2PMarketError as exc:
                outcomes.append((key, f"still pending: {exc.message}"))
    return outcomes


async def refresh_leases(wdir: WalletDir, net: ClientNet | None = None
                         ) -> list[tuple[dict[str, str], Lease | None, str]]:
    """Each stored lease with its current verified version (or the error that stopped it).
    A host no longer at the stored URL (its relay changed) is looked up in the DHT, and
    the lease's URL updated."""
    identity = wdir.identity()
    net = _net(net)
    out: list[tuple[dict[str, str], Lease | None, str]] = []
    audits: list[tuple[bytes, Any, str]] = []
    async with PeerClient(identity, timeout_s=5, proxy=net.proxy) as client:
        for record in wdir.leases().values():
            host_key = bytes.fromhex(record["host_key"])
            try:
                reply, record = await call_host(client, wdir, net, record, "host.lease",
                                                {"account_id": record["account_id"]})
                env = Envelope.from_wire(reply.get("lease"))
                lease = verify_lease(env, host_key)
                wdir.save_lease(lease.lease_id, {**record, "lease": pack(env.to_wire()).hex()})
                audits.append((host_key, reply.get("audit"), record["url"]))
                out.append((record, lease, "current"))
            except P2PMarketError as exc:
                try:
                    lease = verify_lease(bytes.fromhex(record["lease"]), host_key)
                except (P2PMarketError, ValueError):
                    lease = None
                out.append((record, lease, f"stored copy ({exc.message})"))
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
    net = _net(net)
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
    return RefundOutcome(rid, 0 if made is None else int(made.get("amount", 0)),
                         "none" if made is None else str(made.get("status")), paid, answers)


def _net(net: ClientNet | None) -> ClientNet:
    return net if net is not None else ClientNet.load()


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
        async with MarketView(wdir.genesis(), net) as market:
            found = await market.reader.get_host(node_id_of(host_key))
        if found is None or found.envelope.sender != host_key or found.url == record["url"]:
            raise
        record = {**record, "url": found.url}
        return await client.call(record["url"], host_key, name, args), record


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
