"""The buyer's workflow: plan, pay, bid, verify (docs/design.md section 8).

``buy`` finds hosts offering every wanted resource, spreads the budget over
the best ``n`` with best response, and for each chosen host: pays it with a
notary-certified transfer, opens an account with the bids, and verifies the
signed lease it gets back against the host's key from its DHT record. Leases
are kept in the wallet dir; ``refresh_leases`` fetches their current versions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from p2pmarket.api.client import PeerClient
from p2pmarket.auction.lease import Lease, verify_lease
from p2pmarket.auction.resources import BidSpec, parse_bids
from p2pmarket.audit.witness import push_to_witnesses
from p2pmarket.client.discovery import HostView, MarketView
from p2pmarket.client.planner import Candidate, PlanError, best_response
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import node_id_of
from p2pmarket.core.wire import Envelope, pack, unpack
from p2pmarket.ledger.committee import PeerTransport
from p2pmarket.ledger.store import ChainStore
from p2pmarket.ledger.wallet import Wallet

Progress = Callable[[str], None]
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
async def open_wallet(wdir: WalletDir) -> AsyncIterator[tuple[Wallet, PeerClient]]:
    """The wallet in ``wdir`` with a client for the notaries; closed on exit."""
    identity = wdir.identity()
    genesis = wdir.genesis()
    client = PeerClient(identity)
    store = ChainStore(wdir.ledger_db)
    wallet = Wallet(identity, store, genesis, PeerTransport(client))
    try:
        await wallet.resume()
        yield wallet, client
    finally:
        await wallet.close()
        store.close()
        await client.close()


def plan(hosts: list[HostView], primary: str, budget: int, interval_s: int,
         max_hosts: int) -> dict[bytes, int]:
    """Best response over the top ``max_hosts``: weight = capacity of the primary resource,
    others' bids = the host's current price over the interval."""
    top = hosts[:max_hosts]
    candidates = [Candidate(h.node_id, h.capacity(primary),
                            max(1, h.price(primary) * interval_s)) for h in top]
    try:
        return best_response(candidates, budget)
    except PlanError as exc:
        raise BuyError(f"cannot plan the purchase: {exc.message}", exc.value) from None


async def buy(wdir: WalletDir, bid_texts: list[str], budget: int, interval_s: int,
              max_hosts: int, progress: Progress = lambda _: None) -> list[Purchase]:
    if interval_s <= 0:
        raise BuyError("duration must be positive", interval_s)
    if not 1 <= max_hosts <= 64:
        raise BuyError("--hosts must be between 1 and 64", max_hosts)
    specs: dict[str, BidSpec] = parse_bids(bid_texts)
    types = sorted({key.split(",")[0] for key in specs})
    primary = next(iter(specs)).split(",")[0]
    genesis = wdir.genesis()
    await resume_pending(wdir, progress)
    async with open_wallet(wdir) as (wallet, client):
        progress("collecting incoming payments")
        await wallet.sync()
        if wallet.balance() < budget:
            raise BuyError(f"balance {wallet.balance()} µcredits is below the budget {budget}",
                           {"balance": wallet.balance(), "budget": budget})
        progress(f"looking up hosts offering {', '.join(types)} in the DHT")
        async with MarketView(genesis) as market:
            hosts = await market.hosts(types, limit=max(20, max_hosts))
            if not hosts:
                raise BuyError(f"no host offers {', '.join(types)}", types)
            bids = plan(hosts, primary, budget, interval_s, max_hosts)
            by_id = {h.node_id: h for h in hosts}
            wire_bids = {key: spec.to_wire() for key, spec in specs.items()}
            purchases = []
            for node_id, amount in bids.items():
                host = by_id[node_id]
                progress(f"paying {amount} µcredits to host {node_id.hex()[:12]}")
                cert = await wallet.send(host.key, amount,
                                         memo=f"fund account at {node_id.hex()}")
                pending = {"host_key": host.key.hex(), "url": host.record.url,
                           "payment": pack(cert.to_wire()).hex(), "bids": wire_bids,
                           "interval_s": interval_s}
                wdir.set_pending(cert.entry.hash().hex(), pending)  # durable before the host
                progress(f"opening an account at {host.record.url}")
                account_id, lease, envelope, audit = await open_account(
                    client, wdir, wallet.key, cert.entry.hash().hex(), pending)
                progress("handing the host's signed log commitment to its witnesses")
                await push_audit(client, market, host.key, audit, host.record.url)
                purchases.append(Purchase(host, amount, account_id, lease, envelope))
        return purchases


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


async def open_account(client: PeerClient, wdir: WalletDir, holder: bytes, payment_id: str,
                       pending: dict[str, Any]) -> tuple[str, Lease, bytes, Any]:
    """Ask the host to open the account a payment was made for; record the lease and
    forget the pending purchase. Safe to repeat: hosts answer a repeated payment with
    the account it already funded."""
    host_key = bytes.fromhex(pending["host_key"])
    reply = await client.call(pending["url"], host_key, "host.create_account", {
        "payment": unpack(bytes.fromhex(pending["payment"])), "bids": pending["bids"],
        "interval_s": pending["interval_s"]})
    env = Envelope.from_wire(reply.get("lease"))
    lease = verify_lease(env, host_key)
    if lease.host_id != node_id_of(host_key) or lease.holder != holder:
        raise BuyError("the host sent a lease for someone else", lease.lease_id)
    envelope = pack(env.to_wire())
    account_id = str(reply.get("account_id"))
    wdir.save_lease(lease.lease_id, {"host_key": pending["host_key"], "url": pending["url"],
                                     "account_id": account_id, "lease": envelope.hex()})
    wdir.set_pending(payment_id, None)
    return account_id, lease, envelope, reply.get("audit")


async def resume_pending(wdir: WalletDir,
                         progress: Progress = lambda _: None) -> list[tuple[str, str]]:
    """Retry every purchase that was paid for but not acknowledged (a crash, a host that
    was down). Returns (payment id, outcome) pairs; unfinished ones stay pending."""
    pending = wdir.pending()
    if not pending:
        return []
    outcomes = []
    async with PeerClient(wdir.identity(), timeout_s=10) as client:
        for payment_id, record in pending.items():
            progress(f"finishing an earlier purchase at {record['url']}")
            try:
                account_id, _, _, _ = await open_account(
                    client, wdir, wdir.identity().public_key, payment_id, record)
                outcomes.append((payment_id, f"account {account_id} opened"))
            except P2PMarketError as exc:
                outcomes.append((payment_id, f"still pending: {exc.message}"))
    return outcomes


async def refresh_leases(wdir: WalletDir) -> list[tuple[dict[str, str], Lease | None, str]]:
    """Each stored lease with its current verified version (or the error that stopped it)."""
    identity = wdir.identity()
    out: list[tuple[dict[str, str], Lease | None, str]] = []
    audits: list[tuple[bytes, Any, str]] = []
    async with PeerClient(identity, timeout_s=5) as client:
        for record in wdir.leases().values():
            host_key = bytes.fromhex(record["host_key"])
            try:
                reply = await client.call(record["url"], host_key, "host.lease",
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
                async with MarketView(wdir.genesis()) as market:
                    for host_key, audit, url in audits:
                        await push_audit(client, market, host_key, audit, url)
    return out
