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

After the purchase (refresh, cancel, top up, rebid, refund): :mod:`p2pmarket.client.leases`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from p2pmarket.api.client import PeerClient
from p2pmarket.auction.buyersteps import account_id_for
from p2pmarket.auction.lease import Lease, verify_lease
from p2pmarket.auction.quote import quote_id
from p2pmarket.auction.resources import NEW_TERM, BidSpec, parse_bids
from p2pmarket.audit.witness import push_to_witnesses
from p2pmarket.client.accessrec import access_fields
from p2pmarket.client.discovery import HostView, MarketView
from p2pmarket.client.netopts import ClientNet
from p2pmarket.client.planner import HostTerms, PlanError, plan_bundle, want_from_bids
from p2pmarket.client.quotecheck import planning_view
from p2pmarket.client.quoting import Progress, Quoted, Skipped, ask_quote, gather_quotes
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.errors import P2PMarketError, RemoteError
from p2pmarket.core.genesis import NotaryInfo
from p2pmarket.core.identity import node_id_of
from p2pmarket.core.money import format_credits
from p2pmarket.core.wire import Envelope, pack, unpack
from p2pmarket.dht.records import HostRecord
from p2pmarket.ledger.certificate import Certificate
from p2pmarket.ledger.chain import SEND
from p2pmarket.ledger.collect import inbox_page
from p2pmarket.ledger.committee import PeerTransport
from p2pmarket.ledger.store import ChainStore
from p2pmarket.ledger.wallet import Wallet

PUSH_TIMEOUT_S = 10.0
SETTLE_S = 2.0
"""How long a closing wallet waits for its lanes to finish (a lagging notary's
catch-up, deliveries) before it drops what is left."""
SEARCH_TRIES = 3       # DHT reads of the market before "no host offers"
SEARCH_GAP_S = 1.0


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
    client = PeerClient(identity, proxy=client_net(net).proxy)
    store = ChainStore(wdir.ledger_db)
    wallet = Wallet(identity, store, genesis, PeerTransport(client))
    try:
        await wallet.resume()
        yield wallet, client
        # a notary that was cut off catches up on the lane's next request: let that
        # finish (bounded) instead of cutting it off again at every command
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wallet.flush(), SETTLE_S)
    finally:
        await wallet.close()
        store.close()
        await client.close()


async def unanswered_notaries(wallet: Wallet) -> list[NotaryInfo]:
    """The notaries that do not answer an inbox request now: a balance synced while
    some are silent may miss payments only they hold (``wallet balance`` says so)."""
    results = await asyncio.gather(*(inbox_page(wallet.transport, n, wallet.key)
                                     for n in wallet.genesis.notaries),
                                   return_exceptions=True)
    silent = []
    for notary, result in zip(wallet.genesis.notaries, results, strict=True):
        if isinstance(result, BaseException):
            if not isinstance(result, P2PMarketError):
                raise result
            silent.append(notary)
    return silent


@dataclass(frozen=True)
class Unfinished:
    """A host paid whose account is not open yet: the purchase stays pending (the next
    ``buy`` or ``leases`` finishes it)."""

    host: HostView
    amount: int
    reason: str


@dataclass(frozen=True)
class BuyReport:
    """What a ``buy`` did: the leases bought, the hosts skipped before paying, the
    payments made whose account is not open yet, failures that fit none of these
    (``errors``: a host or the wallet failing in a way nothing else caught), and the
    plan (host, amount), which is all a ``dry_run`` does."""

    purchases: list[Purchase]
    skipped: list[Skipped]
    unfinished: list[Unfinished]
    errors: list[str] = field(default_factory=list)
    planned: list[tuple[HostView, int]] = field(default_factory=list)
    # (host key, audit authenticator, url) of each purchase, for the host's witnesses
    audits: list[tuple[bytes, Any, str]] = field(default_factory=list)

    @property
    def unspent(self) -> int:
        """The part of the budget that was planned for hosts skipped before paying."""
        return sum(s.amount for s in self.skipped)


def plan(quoted: list[Quoted], specs: Mapping[str, BidSpec], budget: int, interval_s: int,
         max_hosts: int) -> tuple[dict[bytes, int], dict[bytes, str]]:
    """Best response over the whole bundle (:func:`p2pmarket.client.planner.plan_bundle`):
    each quoted host's capacity and price per resource type of the bundle, from its
    quote (:func:`p2pmarket.client.quotecheck.planning_view`), the bids' weights and
    minimums. Returns the bids (host id -> µcredits, summing to ``budget``) and the
    hosts the plan dropped, with why."""
    types = sorted({key.split(",")[0] for key in specs})
    terms = []
    for q in quoted:
        views = {t: planning_view(q.quote, q.host.record, t) for t in types
                 if t in q.quote.resources and t in q.host.record.resources}
        terms.append(HostTerms(q.host.node_id, {t: v.capacity for t, v in views.items()},
                               {t: max(1, v.price) for t, v in views.items()}))
    try:
        made = plan_bundle(terms, want_from_bids(specs), budget, interval_s, max_hosts)
    except PlanError as exc:
        raise BuyError(f"cannot plan the purchase: {exc.message}", exc.value) from None
    return made.bids, made.dropped


async def find_hosts(market: MarketView, types: list[str], max_hosts: int,
                     progress: Progress, *, only: frozenset[bytes] = frozenset(),
                     base_image: str | None = None, image_kind: str = "", ssh: str = "",
                     port_bid: bool = False, min_availability_ppm: int = 0,
                     reach: frozenset[str] = frozenset(),
                     tries: int = SEARCH_TRIES, gap_s: float = SEARCH_GAP_S
                     ) -> tuple[list[HostView], bool]:
    """The hosts to ask for quotes (``only`` those chosen, offering ``base_image``,
    booting ``image_kind``; with ``port_bid`` those leasing SSH ports, unless none does
    and ``ssh`` is not ``require``: then port_bid is off), and whether to bid on a port.

    A DHT read can miss records (a peer that answered late, a record not copied yet to
    every replica), so a read that finds no such host is made again, up to ``tries``
    reads ``gap_s`` apart, before :class:`BuyError` says none offers them."""
    reads = max(1, tries)
    # the best 2k + 2 by cost efficiency are enough to get k quotes (a chosen set of
    # hosts may be anywhere in the ranking: then the top 64)
    narrow = bool(only) or base_image is not None or bool(image_kind)
    for attempt in range(reads):
        hosts = await market.hosts(types, limit=64 if narrow else 2 * max_hosts + 2,
                                   min_availability_ppm=min_availability_ppm, reach=reach)
        if only:
            hosts = [h for h in hosts if h.node_id in only]
        if base_image is not None:
            hosts = [h for h in hosts if h.record.image(base_image) is not None]
        if image_kind:
            hosts = [h for h in hosts if boots(h.record, image_kind)]
        bid = port_bid
        if bid:
            leasing = [h for h in hosts if leases_ssh_ports(h)]
            if leasing or ssh == "require":
                hosts = leasing
            else:
                bid = False
                progress("discovering: no host leases SSH ports; buying without")
        if hosts:
            return hosts, bid
        if attempt + 1 < reads:
            progress("discovering: no host found yet; reading the DHT again")
            await asyncio.sleep(gap_s)
    raise BuyError(f"no {'chosen ' if only else ''}host offers {', '.join(types)}"
                   + (f" with the base image {base_image}" if base_image else "")
                   + (f" booting a {image_kind} image" if image_kind else "")
                   + (" leasing SSH ports" if bid else ""), types)


def boots(record: HostRecord, image_kind: str) -> bool:
    """Whether the host's machines boot an image of ``image_kind``: a root file system
    (``rootfs``) on containers (``vm.driver`` lxc), a disk image (``disk``) on the
    others."""
    container = record.vm is not None and record.vm.driver == "lxc"
    return container == (image_kind == "rootfs")


async def buy(wdir: WalletDir, bid_texts: list[str], budget: int, interval_s: int,
              max_hosts: int, progress: Progress = lambda _: None,
              net: ClientNet | None = None, only: frozenset[bytes] = frozenset(),
              dry_run: bool = False, reach: frozenset[str] = frozenset(),
              min_availability_ppm: int = 0, base_image: str | None = None,
              ssh: str = "", image_kind: str = "") -> BuyReport:
    """Find hosts (only those whose node ids are in ``only``, if given, only those
    offering the base image ``base_image``, if given, and only those whose machines
    boot an image of ``image_kind`` (``disk`` or ``rootfs``, :func:`boots`), if
    given), get their
    quotes, plan, and for each planned host: a fresh quote of its exact amount, then the
    payment, then the account (docs/design.md section 8). No money moves to a host
    before it has signed an acceptable quote; with ``dry_run`` none moves at all (the
    report holds the plan). A host failing after others were bought ends nothing: the
    report holds the leases bought whatever happens, and the failure in ``errors``.

    With ``ssh`` ``require`` (the buyer will log in) only hosts leasing SSH ports are
    asked, and unless the bids name a ``tcp_port`` each host's gets a bid on its range
    (:func:`ssh_port_bid`); ``prefer`` does so unless no host leases SSH ports.

    Progress messages start with their phase: ``discovering``, ``planning``,
    ``paying``, ``bidding``, ``ready``."""
    if interval_s <= 0:
        raise BuyError("duration must be positive", interval_s)
    if not 1 <= max_hosts <= 64:
        raise BuyError("--hosts must be between 1 and 64", max_hosts)
    specs: dict[str, BidSpec] = parse_bids(bid_texts)
    types = sorted({key.split(",")[0] for key in specs})
    genesis = wdir.genesis()
    net = client_net(net)
    await resume_pending(wdir, progress, net)
    async with open_wallet(wdir, net) as (wallet, client):
        progress("discovering: collecting incoming payments")
        await wallet.sync()
        if wallet.balance() < budget:
            raise BuyError(f"balance {format_credits(wallet.balance())} credits is below "
                           f"the budget {format_credits(budget)} credits",
                           {"balance": wallet.balance(), "budget": budget})
        progress(f"discovering: looking up hosts offering {', '.join(types)} in the DHT")
        async with MarketView(genesis, net) as market:
            port_bid = bool(ssh) and not any(k.startswith("tcp_port") for k in specs)
            hosts, port_bid = await find_hosts(
                market, types, max_hosts, progress, only=only, base_image=base_image,
                image_kind=image_kind, ssh=ssh, port_bid=port_bid,
                min_availability_ppm=min_availability_ppm, reach=reach)
            wire_bids = {key: spec.to_wire() for key, spec in specs.items()}
            quoted, skipped = await gather_quotes(client, hosts, max_hosts, wallet.key,
                                                  wire_bids, types, interval_s, progress)
            weight = sum(NEW_TERM.weight_ppm if sp.weight_ppm is None else sp.weight_ppm
                         for sp in specs.values())
            # one free port per host, from its first quote; the fresh quote names it
            port_bids = {q.host.node_id: ssh_port_bid(q.free_ports, weight)
                         for q in quoted} if port_bid else {}

            def extra(h: HostView) -> dict[str, str]:
                return port_bids.get(h.node_id, {})
            if not quoted:
                reasons = "; ".join(f"{s.host.node_id.hex()[:12]}: {s.reason}"
                                    for s in skipped[:5])
                raise BuyError(f"no host gave an acceptable quote, nothing was paid ({reasons})",
                               [[s.host.node_id.hex(), s.reason] for s in skipped])
            progress(f"planning: spreading {format_credits(budget)} credits over "
                     f"{len(quoted)} quoted host(s)")
            some_port = next((b for b in port_bids.values() if b), {})
            planned_specs = {**specs, **parse_bids([f"{k}:{v}" for k, v in some_port.items()])}
            bids, dropped = plan(quoted, planned_specs, budget, interval_s, max_hosts)
            by_id = {q.host.node_id: q.host for q in quoted}
            skipped += [Skipped(by_id[n], f"left out by the plan: {why}")
                        for n, why in dropped.items() if n in by_id]
            report = BuyReport([], skipped, [], [],
                               [(by_id[n], a) for n, a in bids.items() if a > 0])
            if dry_run:
                return report
            todo = list(report.planned)
            while todo:
                host, amount = todo.pop(0)
                try:
                    paying = await pay_one(client, market, wallet, wdir, host, amount,
                                           {**wire_bids, **extra(host)},
                                           types, interval_s, report, progress)
                except Exception as exc:   # whatever it is, the leases bought are reported
                    message = exc.message if isinstance(exc, P2PMarketError) else repr(exc)
                    if not _paid_pending(wdir, host, amount, message, report):
                        report.errors.append(f"host {host.node_id.hex()[:12]}: {message}")
                    paying = True
                if not paying:   # the notaries refuse payments: so they would the rest
                    report.skipped.extend(Skipped(h, "not tried: the payment before failed",
                                                  a) for h, a in todo)
                    break
            if report.audits:   # best effort, all hosts at once, after the leases
                await asyncio.gather(*(push_audit(client, market, key, audit, url)
                                       for key, audit, url in report.audits))
        return report


SSH_PORT_SHARE_PPM = 50_000
"""The weight of the port bid ``buy --ssh-key`` adds, as a part of the bundle's own
weight: 5 % (about 4.8 % of the money; a port's reserve is a few µcredits/s, and the
sealed bid is won at it without competition, so a budget of a few thousand µcredits
an hour is enough)."""


def leases_ssh_ports(host: HostView) -> bool:
    """Whether a host's record says it leases SSH ports (``vm.ssh_ports``)."""
    return host.record.vm is not None and host.record.vm.port_range() is not None


def ssh_port_bid(free: Sequence[int], bundle_weight_ppm: int,
                 rng: random.Random | None = None) -> dict[str, str]:
    """The bid on one SSH port: one of the ``free`` ports a host's quote listed (at
    random, so buyers at once rarely pick the same), weighted :data:`SSH_PORT_SHARE_PPM`
    of ``bundle_weight_ppm``; {} when none is free. (One port: a range bid would bid,
    and pay, for every port of the range.)"""
    if not free:
        return {}
    ppm = max(1, bundle_weight_ppm * SSH_PORT_SHARE_PPM // 1_000_000)
    port = (rng or random.SystemRandom()).choice(list(free))
    return {f"tcp_port,{port}": f"{ppm // 1_000_000}.{ppm % 1_000_000:06d}"}


def _paid_pending(wdir: WalletDir, host: HostView, amount: int, reason: str,
                  report: BuyReport) -> bool:
    """Whether a failure at ``host`` came after its payment (a pending purchase with its
    certificate): then it is listed as unfinished."""
    for record in wdir.pending().values():
        if record.get("host_key") == host.key.hex() and record.get("payment") and \
                record.get("amount") == amount:
            report.unfinished.append(Unfinished(host, amount, reason))
            return True
    return False


async def pay_one(client: PeerClient, market: MarketView, wallet: Wallet, wdir: WalletDir,
                  host: HostView, amount: int, wire_bids: dict[str, Any], types: list[str],
                  interval_s: int, report: BuyReport, progress: Progress) -> bool:
    """One planned host: quote the exact amount, record the intent, pay, open the account;
    the outcome goes into ``report`` (with the audit to push). False if paying itself failed (the
    notaries: the next payments would fail too)."""
    short = host.node_id.hex()[:12]
    progress(f"paying: asking host {short} for a quote of {format_credits(amount)} credits")
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
    progress(f"paying: {format_credits(amount)} credits to host {short}")
    try:
        cert = await wallet.send(host.key, amount, memo=memo)
    except P2PMarketError as exc:
        report.unfinished.append(Unfinished(host, amount, f"payment not certified: "
                                                          f"{exc.message}"))
        return False
    pending["payment"] = pack(cert.to_wire()).hex()
    wdir.set_pending(qid, pending)   # durable before the host
    progress(f"bidding: opening an account at {host.record.url}")
    try:
        account_id, lease, envelope, audit = await open_account(
            client, wdir, wallet.key, qid, pending)
    except P2PMarketError as exc:
        report.unfinished.append(Unfinished(host, amount, exc.message))
        return True
    progress(f"ready: lease {lease.lease_id} from host {short}")
    report.purchases.append(Purchase(host, amount, account_id, lease, envelope))
    report.audits.append((host.key, audit, host.record.url))
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
    paid = Certificate.from_wire(payment).entry.body["amount"]
    wdir.save_lease(lease.lease_id, {"host_key": pending["host_key"], "url": pending["url"],
                                     "account_id": account_id, "lease": envelope.hex(),
                                     "paid": str(paid), **access_fields(reply)})
    wdir.set_pending(pending_id, None)
    return account_id, lease, envelope, reply.get("audit")


async def fund_account(client: PeerClient, wdir: WalletDir, pending_id: str,
                       pending: dict[str, Any]) -> tuple[Lease, Any]:
    """Hand a top-up's payment to the host (``host.fund``) for the account of the
    stored lease ``pending["lease_id"]``; record the new lease and what was paid in
    all, and forget the pending top-up. Safe to repeat: a payment already in the
    account is answered as such."""
    host_key = bytes.fromhex(pending["host_key"])
    record = wdir.leases()[pending["lease_id"]]
    payment = unpack(bytes.fromhex(pending["payment"]))
    reply = await client.call(pending["url"], host_key, "host.fund", {
        "account_id": record["account_id"], "payment": payment})
    env = Envelope.from_wire(reply.get("lease"))
    lease = verify_lease(env, host_key)
    if lease.lease_id != record["account_id"]:
        raise BuyError("the host answered with another account than the lease's",
                       lease.lease_id)
    paid = int(record.get("paid", "0")) + int(pending["amount"])
    wdir.save_lease(lease.lease_id, {**record, "lease": pack(env.to_wire()).hex(),
                                     "paid": str(paid), **access_fields(reply)})
    wdir.set_pending(pending_id, None)
    return lease, reply.get("audit")


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
    async with PeerClient(wdir.identity(), timeout_s=10, proxy=client_net(net).proxy) as client:
        for key, record in wdir.pending().items():
            if not record.get("payment"):
                continue
            progress(f"finishing an earlier purchase at {record['url']}")
            try:
                if record.get("rpc") == "fund":
                    lease, _ = await fund_account(client, wdir, key, record)
                    outcomes.append((key, f"account {lease.lease_id} topped up"))
                    continue
                account_id, _, _, _ = await open_account(
                    client, wdir, wdir.identity().public_key, key, record)
                outcomes.append((key, f"account {account_id} opened"))
            except RemoteError as exc:
                refund = refunded_instead(exc)
                if refund is None:
                    outcomes.append((key, f"still pending: {exc.message}"))
                    continue
                # the host refused the account and paid the money back: nothing pending
                # (the refund reaches the wallet through the notaries' inboxes)
                wdir.set_pending(key, None)
                outcomes.append((key, f"refused by the host, payment refunded (refund "
                                      f"{refund}): {exc.message}"))
            except P2PMarketError as exc:
                outcomes.append((key, f"still pending: {exc.message}"))
    return outcomes


def refunded_instead(exc: RemoteError) -> str | None:
    """The refund id when a host's refusal of ``create_account`` says it refunded the
    payment (docs/design.md section 6), else None."""
    value = exc.value
    if isinstance(value, dict) and isinstance(value.get("refund_id"), str):
        return str(value["refund_id"])
    if exc.message == "payment already refunded" and isinstance(value, str):
        return value
    return None


def client_net(net: ClientNet | None) -> ClientNet:
    """``net``, or how this machine reaches the network (:meth:`ClientNet.load`)."""
    return net if net is not None else ClientNet.load()
