"""What each ``p2pmarket`` subcommand does. Each returns its number of errors."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from p2pmarket.api.client import PeerClient
from p2pmarket.api.control import ControlClient, ControlError
from p2pmarket.auction.lease import Lease
from p2pmarket.audit.witness import witness_key
from p2pmarket.cli import testnet
from p2pmarket.cli.audit import proof_lines, status_lines, verify_file
from p2pmarket.client.buyer import buy as run_buy
from p2pmarket.client.buyer import open_wallet, refresh_leases, resume_pending
from p2pmarket.client.discovery import Market
from p2pmarket.client.walletdir import WalletDir, default_wallet_path
from p2pmarket.core.config import DataDir, load_genesis, save_genesis
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity, node_id_of, parse_public_key
from p2pmarket.core.money import format_credits, parse_credits
from p2pmarket.ledger.committee import PeerTransport
from p2pmarket.ledger.supply import network_supply

out = Console(highlight=False, soft_wrap=True,
              width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)

DURATION = re.compile(r"^(\d+)([smhd]?)$")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION_S = 10 * 365 * 86400


def parse_duration(text: str) -> int:
    m = DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise P2PMarketError(f"duration must look like 90s, 30m, 2h or 1d: {text!r}", text)
    seconds = int(m.group(1)) * UNIT_S[m.group(2)]
    if seconds > MAX_DURATION_S:
        raise P2PMarketError("duration is longer than ten years", text)
    return seconds


def dump(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True, default=str))


def wallet_dir(args: argparse.Namespace) -> WalletDir:
    return WalletDir(args.wallet or default_wallet_path())


# -- node ------------------------------------------------------------------------

async def node(args: argparse.Namespace) -> int:
    import logging

    from p2pmarket.node.service import run_node

    if args.verbose == 0:
        logging.getLogger("p2pmarket").setLevel(logging.INFO)
    data_dir = DataDir(args.data_dir)
    data_dir.create()
    if args.genesis is not None:
        save_genesis(load_genesis(args.genesis), data_dir.genesis)
    flags = {k: getattr(args, k) for k in (
        "listen_host", "advertise_host", "http_port", "dht_port", "control_port", "vmm_uri",
        "cpu_mhz", "memory_kib")}
    await run_node(data_dir, flags)
    return 0


async def status(args: argparse.Namespace) -> int:
    name = "status" if args.what == "node" else args.what
    doc = await ControlClient(DataDir(args.data_dir)).call(name)
    dump(doc)
    return 0


async def host_status(args: argparse.Namespace) -> int:
    doc = await ControlClient(DataDir(args.data_dir)).call("host_status")
    if args.json:
        dump(doc)
        return 0
    market = Table(title="market at this host")
    for col in ("resource", "capacity", "price µc/s", "free"):
        market.add_column(col)
    for res, m in sorted(doc.get("market", {}).items()):
        market.add_row(res, human(res, m.get("capacity", 0)), str(m.get("price", "")),
                       human(res, m.get("free", 0)) if "free" in m else "")
    out.print(market)
    accounts = Table(title=f"{len(doc.get('accounts', []))} account(s)")
    for col in ("account", "holder", "balance", "bids (weight, min, max)", "allocation",
                "VM"):
        accounts.add_column(col)
    vms = {v.get("account_id"): v for v in doc.get("vms", [])}
    for a in doc.get("accounts", []):
        vm = vms.get(a["account_id"], {})
        notes = "; ".join(vm.get("notes", []))
        accounts.add_row(
            a["account_id"], str(a.get("holder", ""))[:12],
            format_credits(int(a.get("balance", 0))),
            "\n".join(f"{r}: {bid_text(r, b)}" for r, b in sorted(a.get("bids", {}).items())),
            "\n".join(f"{r}: {human(r, v)}" for r, v in sorted(a.get("allocation", {}).items())),
            f"{vm.get('state', 'none')}" + (f"\n{notes}" if notes else ""))
    out.print(accounts)
    return 0


async def host_set_capacity(args: argparse.Namespace) -> int:
    doc = await ControlClient(DataDir(args.data_dir)).call(
        "host_set_capacity", {"resource": args.resource, "amount": args.amount})
    out.print(f"capacity set; host config now: {json.dumps(doc.get('config'))}")
    return 0


async def host_set_min_price(args: argparse.Namespace) -> int:
    doc = await ControlClient(DataDir(args.data_dir)).call(
        "host_set_min_price", {"resource": args.resource, "price": args.price})
    out.print(f"minimum price set; host config now: {json.dumps(doc.get('config'))}")
    return 0


# -- wallet and bank ---------------------------------------------------------------

async def wallet_new(args: argparse.Namespace) -> int:
    wdir = wallet_dir(args)
    ident = wdir.create(load_genesis(args.genesis))
    out.print(f"created wallet in {wdir.root}")
    out.print(f"public key: {ident.public_key.hex()}")
    return 0


async def wallet_show(args: argparse.Namespace) -> int:
    wdir = wallet_dir(args)
    ident = wdir.identity()
    doc = {"wallet": str(wdir.root), "key": ident.public_key.hex(),
           "node_id": ident.node_id.hex(), "network": wdir.genesis().network}
    if args.json:
        dump(doc)
    else:
        out.print(f"public key: {doc['key']}\nwallet: {doc['wallet']}\nnetwork: {doc['network']}")
    return 0


async def wallet_balance(args: argparse.Namespace) -> int:
    async with open_wallet(wallet_dir(args)) as (wallet, _):
        received = await wallet.sync()
        balance = wallet.balance()
    if args.json:
        dump({"balance": balance, "received": received})
    else:
        out.print(f"balance: {format_credits(balance)} credits"
                  + (f" ({format_credits(received)} just received)" if received else ""))
    return 0


async def wallet_history(args: argparse.Namespace) -> int:
    async with open_wallet(wallet_dir(args)) as (wallet, _):
        await wallet.sync()
        entries = wallet.history()
    if args.json:
        dump({"history": entries})
        return 0
    table = Table(title=f"{len(entries)} entries")
    for col in ("seq", "time", "kind", "amount", "balance", "counterparty", "memo", "certified"):
        table.add_column(col)
    for e in entries:
        party = e.get("counterparty")
        table.add_row(str(e["seq"]), time.strftime("%Y-%m-%d %H:%M:%S",
                                                   time.localtime(e["ts"] / 1e6)),
                      e["kind"], format_credits(e["delta"]) if e["delta"] else "",
                      format_credits(e["balance"]),
                      party[:16] if isinstance(party, str) else "",
                      str(e.get("memo", ""))[:40], "yes" if e.get("certified") else "no")
    out.print(table)
    return 0


async def ledger_supply(args: argparse.Namespace) -> int:
    """Every notary's view of the supply, judged together: the errors are the notaries
    that fail to answer or whose figures do not add up, plus one if no quorum agrees."""
    genesis = load_genesis(args.genesis) if args.genesis else wallet_dir(args).genesis()
    async with PeerClient(Identity.generate(), timeout_s=10) as client:
        summary = await network_supply(genesis, PeerTransport(client))
    errors = int(summary["errors"])
    if args.json:
        dump(summary)
        return errors
    total = summary["supply"]
    out.print(f"total supply: {format_credits(total) if isinstance(total, int) else 'unknown'}"
              f" credits ({summary['agree']} of {len(genesis.notaries)} notaries agree, "
              f"quorum {summary['quorum']})")
    table = Table(title="supply at each notary (credits)")
    for col in ("notary", "minted", "balances", "in flight", "status"):
        table.add_column(col)
    for r in summary["notaries"]:
        figures = [format_credits(r[k]) if isinstance(r.get(k), int) else ""
                   for k in ("minted", "balances", "pending")]
        status = r["status"] + (f": {r['error']}" if "error" in r else "")
        table.add_row(r["notary"][:16], *figures, status)
    out.print(table)
    return errors


async def audit_status(args: argparse.Namespace) -> int:
    """From our own node (a witness), or straight from the host's witnesses."""
    if args.data_dir is not None:
        doc = await ControlClient(DataDir(args.data_dir)).call(
            "audit_status", {"host": args.host} if args.host else {})
        docs = [("this node", doc)]
    else:
        if not args.host:
            raise P2PMarketError("name a HOST, or ask your own node with --data-dir")
        host = bytes.fromhex(args.host) if all(
            c in "0123456789abcdefABCDEF" for c in args.host) else b""
        if len(host) not in (20, 32):
            raise P2PMarketError("HOST must be a hex public key or node id", args.host)
        host_id = host if len(host) == 20 else node_id_of(host)
        genesis = load_genesis(args.genesis) if args.genesis else wallet_dir(args).genesis()
        docs = []
        async with Market(genesis) as market, PeerClient(Identity.generate(),
                                                           timeout_s=5) as client:
            for peer in await market.directory().closest(witness_key(host_id), 4):
                try:
                    docs.append((peer.url, await client.call(
                        peer.url, peer.key, "witness.status", {"host": host_id})))
                except P2PMarketError as exc:
                    docs.append((peer.url, {"hosts": [], "error": exc.message}))
    if args.json:
        dump({"witnesses": [{"witness": w, **d} for w, d in docs]})
        return 0
    for witness, doc in docs:
        out.print(f"[bold]{witness}[/bold]" + (f": {doc['error']}" if "error" in doc else ""))
        for line in status_lines(doc):
            out.print("  " + line)
    return 0


async def audit_verify(args: argparse.Namespace) -> int:
    """Exit 0 for a valid proof, 1 (one error) for an invalid one."""
    try:
        summary = verify_file(args.proof_file, args.host)
    except FileNotFoundError:
        raise P2PMarketError(f"no proof file at {args.proof_file}") from None
    if args.json:
        dump(summary)
    else:
        for line in proof_lines(summary):
            out.print(line)
    return 0


async def bank_mint(args: argparse.Namespace) -> int:
    to = parse_public_key(args.to)
    amount = parse_credits(args.amount)
    wdir = WalletDir(args.mint_wallet)
    async with open_wallet(wdir) as (wallet, _):
        cert = await wallet.mint_to(to, amount)
    out.print(f"minted {format_credits(amount)} credits to {to.hex()} "
              f"(certified transfer {cert.entry.owner.hex()[:12]}#{cert.entry.seq})")
    return 0


# -- buying and looking ------------------------------------------------------------

async def buy(args: argparse.Namespace) -> int:
    budget = parse_credits(args.budget)
    duration = parse_duration(args.duration)
    with out.status("buying…") as spinner:
        purchases = await run_buy(wallet_dir(args), args.bids, budget, duration, args.hosts,
                                  progress=lambda msg: spinner.update(msg))
    docs: list[dict[str, Any]] = [
        {"host": p.host.node_id.hex(), "url": p.host.record.url, "paid": p.amount,
         "account_id": p.account_id, "lease": lease_doc(p.lease),
         "signed_lease": p.envelope.hex()} for p in purchases]
    if args.json:
        dump({"purchases": docs})
        return 0
    for p, doc in zip(purchases, docs, strict=True):
        out.print(f"[bold]lease {p.lease.lease_id}[/bold] from host {doc['host'][:16]}… "
                  f"at {doc['url']} (paid {format_credits(p.amount)} credits)")
        out.print_json(json.dumps(doc["lease"]))
        out.print(f"signed lease (msgpack, hex): {doc['signed_lease'][:96]}…")
    return 0


def lease_doc(lease: Lease) -> dict[str, Any]:
    return {"lease_id": lease.lease_id, "host_id": lease.host_id.hex(),
            "holder": lease.holder.hex(), "start": lease.start, "end": lease.end,
            "balance": lease.balance,
            "resources": {r: {"min": t.min, "max": t.max, "alloc": t.alloc}
                          for r, t in lease.resources.items()}}


async def hosts(args: argparse.Namespace) -> int:
    genesis = load_genesis(args.genesis) if args.genesis else wallet_dir(args).genesis()
    types = args.types or ["cpu", "memory"]
    max_price = parse_credits(args.max_price) if args.max_price else None
    async with Market(genesis) as market:
        views = await market.hosts(types, limit=args.limit, min_capacity=args.min_capacity,
                                   max_price=max_price)
        exposed = [i.hex() for i in market.exposed]
    rows: list[dict[str, Any]] = [{"node_id": v.node_id.hex(), "url": v.record.url,
             "dht": f"{v.record.dht[0]}:{v.record.dht[1]}",
             # no registrar attests addresses yet (the NAT issue adds attestations)
             "reachability": "attested" if v.record.reach else "unattested",
             "availability_ppm": v.record.availability_ppm,
             "resources": {t: {"capacity": ad.capacity, "price": ad.price,
                               "hour_avg": ad.hour_avg}
                           for t, ad in v.record.resources.items()}} for v in views]
    if args.json:
        dump({"hosts": rows, "exposed": exposed})
        return 0
    table = Table(title=f"market: {len(rows)} host(s) offering {', '.join(types)}"
                  + (f"; {len(exposed)} exposed host(s) left out" if exposed else ""))
    for col in ("host", "address", "reach", "resources (capacity @ price µc/s, hour avg)",
                "avail"):
        table.add_column(col)
    for r in rows:
        res = "\n".join(f"{t}: {human(t, a['capacity'])} @ {a['price']} ({a['hour_avg']})"
                        for t, a in sorted(r["resources"].items()))
        table.add_row(r["node_id"][:16], r["url"], r["reachability"], res,
                      f"{r['availability_ppm'] / 10_000:.1f}%")
    out.print(table)
    return 0


def bid_text(key: str, wire: Any) -> str:
    """A standing bid ``[weight ppm, min, max]`` (its wire form) for people, in the order
    of the bid syntax: ``1, 256 MiB, 50% of capacity``."""
    if not isinstance(wire, list) or len(wire) != 3 or not isinstance(wire[0], int):
        return str(wire)
    rtype = key.split(",", 1)[0]

    def quantity(q: Any) -> str:
        if q is None:
            return "-"
        if isinstance(q, str):   # a fraction of capacity, as a decimal string
            try:
                return f"{float(Decimal(q) * 100):g}% of capacity"
            except ArithmeticError:
                return q
        return human(rtype, int(q))

    return f"{Decimal(wire[0]) / 1_000_000:g}, {quantity(wire[1])}, {quantity(wire[2])}"


def human(rtype: str, amount: int) -> str:
    """A resource amount in its base unit (MHz, KiB, bit/s) for people."""
    if rtype == "cpu":
        return f"{amount / 1000:g} GHz" if amount >= 1000 else f"{amount} MHz"
    if rtype in ("memory", "disk"):
        for unit, size in (("TiB", 1 << 30), ("GiB", 1 << 20), ("MiB", 1 << 10)):
            if amount >= size:
                return f"{amount / size:.4g} {unit}"
        return f"{amount} KiB"
    if rtype.startswith("net"):
        return f"{amount / 1e6:g} Mbit/s"
    return str(amount)


async def leases(args: argparse.Namespace) -> int:
    for _, outcome in await resume_pending(wallet_dir(args)):
        err.print(f"earlier purchase: {outcome}")
    results = await refresh_leases(wallet_dir(args))
    if args.json:
        dump({"leases": [{"source": src, "url": rec["url"],
                          "lease": lease_doc(lease) if lease else None}
                         for rec, lease, src in results]})
        return sum(lease is None for _, lease, _ in results)
    table = Table(title=f"{len(results)} lease(s)")
    for col in ("lease", "host", "resources (alloc / min..max)", "balance", "ends", "source"):
        table.add_column(col)
    for rec, lease, src in results:
        if lease is None:
            table.add_row("?", rec["url"], "", "", "", src)
            continue
        res = "\n".join(f"{r}: {human(r, t.alloc)} / {human(r, t.min)}..{human(r, t.max)}"
                        for r, t in sorted(lease.resources.items()))
        ends = time.strftime("%Y-%m-%d %H:%M", time.localtime(lease.end / 1e6))
        table.add_row(lease.lease_id, rec["url"], res, format_credits(lease.balance), ends, src)
    out.print(table)
    return sum(lease is None for _, lease, _ in results)


# -- testnet -----------------------------------------------------------------------

READY_TIMEOUT_S = 60.0


async def testnet_up(args: argparse.Namespace) -> int:
    root: Path = args.dir
    dirs = testnet.create(root, args.nodes, args.base_port, tick_seconds=args.tick_seconds)
    procs = testnet.start(root, dirs)
    with out.status(f"starting {len(procs)} nodes…"):
        errors = await wait_ready(root, READY_TIMEOUT_S)
    if errors:
        for e in errors:
            err.print(f"error: {e}")
        return len(errors)
    out.print(f"testnet of {len(procs)} nodes up in {root} "
              f"(genesis {root / 'genesis.json'}, mint wallet {root / 'mint'})")
    return 0


async def wait_ready(root: Path, timeout_s: float) -> list[str]:
    """Wait until every node answers its control API with ready=true."""
    procs = testnet.load(root)
    deadline = time.monotonic() + timeout_s
    pending = {p.name: p for p in procs}
    last: dict[str, str] = {}
    while pending and time.monotonic() < deadline:
        for name, p in list(pending.items()):
            if not testnet.is_our_node(p.pid, p.data_dir):
                return [f"{name} exited; see {Path(p.data_dir) / 'node.log'}"]
            try:
                st = await ControlClient(DataDir(Path(p.data_dir)), timeout_s=2).call("status")
                if st.get("ready"):
                    del pending[name]
            except (ControlError, P2PMarketError) as exc:
                last[name] = exc.message
        await asyncio.sleep(0.2)
    return [f"{n} not ready after {timeout_s:.0f}s ({last.get(n, 'starting')})" for n in pending]


async def testnet_down(args: argparse.Namespace) -> int:
    stopped = testnet.stop(args.dir)
    out.print(f"stopped {stopped} node(s) of the testnet in {args.dir}")
    return 0


async def testnet_status(args: argparse.Namespace) -> int:
    procs = testnet.load(args.dir)
    rows = []
    errors = 0
    for p in procs:
        row: dict[str, Any] = {"name": p.name, "pid": p.pid, "url": p.url, "notary": p.notary}
        try:
            st = await ControlClient(DataDir(Path(p.data_dir)), timeout_s=3).call("status")
            row.update(ready=st.get("ready"), balance=st.get("balance"),
                       accounts=st.get("accounts"), contacts=st.get("dht_contacts"))
        except P2PMarketError as exc:
            row.update(ready=False, error=exc.message)
            errors += 1
        rows.append(row)
    if args.json:
        dump({"nodes": rows})
        return errors
    table = Table(title=f"testnet {args.dir}")
    for col in ("node", "pid", "url", "notary", "ready", "balance", "accounts", "contacts"):
        table.add_column(col)
    for r in rows:
        bal = r.get("balance")
        table.add_row(r["name"], str(r["pid"]), r["url"], "yes" if r["notary"] else "",
                      "yes" if r.get("ready") else r.get("error", "no"),
                      format_credits(bal) if isinstance(bal, int) else "",
                      str(r.get("accounts", "")), str(r.get("contacts", "")))
    out.print(table)
    return errors
