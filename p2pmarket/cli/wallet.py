"""The money commands: ``p2pmarket wallet``, ``p2pmarket bank mint`` and
``p2pmarket ledger supply``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.table import Table

from p2pmarket.api.client import PeerClient
from p2pmarket.cli.options import (
    Subcommands,
    genesis_of,
    genesis_opt,
    json_opt,
    net_of,
    wallet_dir,
    wallet_opt,
)
from p2pmarket.cli.terminal import dump, err, out
from p2pmarket.client.buyer import open_wallet, unanswered_notaries
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.config import load_genesis
from p2pmarket.core.identity import Identity, parse_public_key
from p2pmarket.core.money import format_credits, parse_credits
from p2pmarket.ledger.committee import PeerTransport
from p2pmarket.ledger.supply import network_supply

WALLET_EXAMPLES = """examples:
  p2pmarket wallet new --genesis run/testnet/genesis.json
  p2pmarket wallet show
  p2pmarket wallet balance --wallet /tmp/w
  p2pmarket wallet history --json"""
BANK_EXAMPLES = """examples:
  p2pmarket bank mint --mint-wallet run/testnet/mint --to 3f9a…(64 hex) --amount 100"""
LEDGER_EXAMPLES = """examples:
  p2pmarket ledger supply --genesis run/testnet/genesis.json
  p2pmarket ledger supply --json"""


def add_wallet(sub: Subcommands) -> None:
    w = sub.add("wallet", "Create and inspect a wallet.", WALLET_EXAMPLES)
    actions = Subcommands(w, "action", "ACTION")
    wn = actions.add("new", "create a wallet", WALLET_EXAMPLES, wallet_new)
    wn.add_argument("--genesis", type=Path, required=True, help="the network's genesis file")
    wallet_opt(wn)
    for action, text, run in (
            ("show", "print the wallet's public key", wallet_show),
            ("balance", "fetch incoming payments and print the balance", wallet_balance),
            ("history", "list the wallet's chain: every entry, its amount, counterparty and "
                        "balance after", wallet_history)):
        q = actions.add(action, text, WALLET_EXAMPLES, run)
        wallet_opt(q)
        json_opt(q)


def add_bank(sub: Subcommands) -> None:
    b = sub.add("bank", "The mint: create credits and pay them to a wallet.", BANK_EXAMPLES)
    bm = Subcommands(b, "action", "ACTION").add(
        "mint", "mint credits and send them to a key", BANK_EXAMPLES, bank_mint)
    bm.add_argument("--mint-wallet", type=Path, required=True,
                    help="wallet dir holding the mint key")
    bm.add_argument("--to", required=True, help="payee public key (64 hex digits)")
    bm.add_argument("--amount", required=True, help="credits, up to 6 decimals")


def add_ledger(sub: Subcommands) -> None:
    lg = sub.add("ledger", "Network-wide ledger checks.", LEDGER_EXAMPLES)
    ls = Subcommands(lg, "action", "ACTION").add(
        "supply", "ask every notary for the total supply and check it against all mints",
        LEDGER_EXAMPLES, ledger_supply)
    wallet_opt(ls)
    genesis_opt(ls)
    json_opt(ls)


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
    """One error when some notary does not answer (the balance may then miss payments
    only it holds): an ``error:`` line naming them, and the balance marked so."""
    async with open_wallet(wallet_dir(args), net_of(args)) as (wallet, _):
        received = await wallet.sync()
        silent = await unanswered_notaries(wallet)
        balance = wallet.balance()
    errors = 1 if silent else 0
    if args.json:
        dump({"balance": balance, "balance_credits": format_credits(balance),
              "received": received, "unanswered_notaries": [n.url for n in silent]})
        return errors
    out.print(f"balance: {format_credits(balance)} credits"
              + (f" ({format_credits(received)} just received)" if received else "")
              + (" (may be stale)" if silent else ""))
    if silent:
        err.print(f"error: {len(silent)} of {len(wallet.genesis.notaries)} notaries did not "
                  f"answer: {', '.join(n.url for n in silent)}")
    return errors


async def wallet_history(args: argparse.Namespace) -> int:
    async with open_wallet(wallet_dir(args), net_of(args)) as (wallet, _):
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


async def bank_mint(args: argparse.Namespace) -> int:
    to = parse_public_key(args.to)
    amount = parse_credits(args.amount)
    async with open_wallet(WalletDir(args.mint_wallet), net_of(args)) as (wallet, _):
        cert = await wallet.mint_to(to, amount)
    out.print(f"minted {format_credits(amount)} credits to {to.hex()} "
              f"(certified transfer {cert.entry.owner.hex()[:12]}#{cert.entry.seq})")
    return 0


async def ledger_supply(args: argparse.Namespace) -> int:
    """Every notary's view of the supply, judged together: the errors are the notaries
    that fail to answer or whose figures do not add up, plus one if no quorum agrees."""
    genesis = genesis_of(args)
    async with PeerClient(Identity.generate(), timeout_s=10,
                          proxy=net_of(args).proxy) as client:
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
