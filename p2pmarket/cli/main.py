"""The ``p2pmarket`` command. Exit code = number of errors (Tycoon note 9/20).

Each subcommand is a small function that parses nothing itself: argparse checks
the shape of the arguments, the library checks their meaning and raises a
:class:`P2PMarketError`, which is printed as one readable line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from p2pmarket.cli import commands
from p2pmarket.core.errors import P2PMarketError

EXAMPLES = {
    "node": """examples:
  p2pmarket node --data-dir ~/.p2pmarket/node --genesis genesis.json
  p2pmarket node --data-dir run/testnet/node0          # settings from its config.toml""",
    "wallet": """examples:
  p2pmarket wallet new --genesis run/testnet/genesis.json
  p2pmarket wallet show
  p2pmarket wallet balance --wallet /tmp/w
  p2pmarket wallet history --json""",
    "bank": """examples:
  p2pmarket bank mint --mint-wallet run/testnet/mint --to 3f9a…(64 hex) --amount 100""",
    "audit": """examples:
  p2pmarket audit status --data-dir run/testnet/node2
  p2pmarket audit status 3f9a…(host key or node id) --wallet run/demo/wallet
  p2pmarket audit verify proof.bin --host 3f9a…""",
    "ledger": """examples:
  p2pmarket ledger supply --genesis run/testnet/genesis.json
  p2pmarket ledger supply --json""",
    "buy": """examples:
  p2pmarket buy --budget 10 --duration 1h cpu:1,0.1,1 memory:1,256MiB,1GiB
  p2pmarket buy --budget 5 --hosts 3 cpu:1,500MHz,2GHz memory:1,128MiB,512MiB""",
    "hosts": """examples:
  p2pmarket hosts
  p2pmarket hosts --type memory --max-price 5 --json""",
    "leases": """examples:
  p2pmarket leases
  p2pmarket leases --json""",
    "testnet": """examples:
  p2pmarket testnet up --nodes 5 --dir run/testnet
  p2pmarket testnet status --dir run/testnet
  p2pmarket testnet down --dir run/testnet""",
    "host": """examples:
  p2pmarket host status --data-dir run/testnet/node1
  p2pmarket host set-capacity --data-dir run/testnet/node1 memory 8GiB
  p2pmarket host set-capacity --data-dir run/testnet/node1 tcp_port 30000-30099
  p2pmarket host set-min-price --data-dir run/testnet/node1 cpu 5""",
    "status": """examples:
  p2pmarket status --data-dir run/testnet/node1
  p2pmarket status --data-dir run/testnet/node1 --what vms""",
}


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="p2pmarket", formatter_class=fmt,
        description="A peer-to-peer market for compute resources.",
        epilog="Run `p2pmarket COMMAND --help` for each command's options and examples.\n"
               "The exit code is the number of errors.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text,
                              epilog=EXAMPLES.get(name), formatter_class=fmt)

    def wallet_opt(q: argparse.ArgumentParser) -> None:
        q.add_argument("--wallet", type=Path, default=None,
                       help="wallet dir (default $P2PMARKET_WALLET or ~/.p2pmarket/wallet)")

    def json_opt(q: argparse.ArgumentParser) -> None:
        q.add_argument("--json", action="store_true", help="print JSON instead of a table")

    n = cmd("node", "Run a node: host, DHT peer, and notary if the genesis names its key.")
    n.add_argument("--data-dir", type=Path, required=True, help="the node's data dir")
    n.add_argument("--genesis", type=Path, help="genesis file to copy into a new data dir")
    n.add_argument("--listen-host", help="address to listen on (default 127.0.0.1)")
    n.add_argument("--advertise-host", help="address peers should use, if not the listen one")
    n.add_argument("--http-port", type=int, help="peer RPC port (TCP)")
    n.add_argument("--dht-port", type=int, help="Kademlia port (UDP)")
    n.add_argument("--control-port", type=int, help="control API port on 127.0.0.1")
    n.add_argument("--vmm-uri", help="libvirt URI (default test:///default)")
    n.add_argument("--cpu-mhz", type=int, help="CPU capacity offered, MHz")
    n.add_argument("--memory-kib", type=int, help="memory capacity offered, KiB")

    w = cmd("wallet", "Create and inspect a wallet.")
    wsub = w.add_subparsers(dest="action", required=True, metavar="ACTION")
    wn = wsub.add_parser("new", help="create a wallet", epilog=EXAMPLES["wallet"],
                         formatter_class=fmt)
    wn.add_argument("--genesis", type=Path, required=True, help="the network's genesis file")
    wallet_opt(wn)
    for action, text in (("show", "print the wallet's public key"),
                         ("balance", "fetch incoming payments and print the balance"),
                         ("history", "list the wallet's chain: every entry, its amount, "
                                     "counterparty and balance after")):
        q = wsub.add_parser(action, help=text, epilog=EXAMPLES["wallet"], formatter_class=fmt)
        wallet_opt(q)
        json_opt(q)

    b = cmd("bank", "The mint: create credits and pay them to a wallet.")
    bsub = b.add_subparsers(dest="action", required=True, metavar="ACTION")
    bm = bsub.add_parser("mint", help="mint credits and send them to a key",
                         epilog=EXAMPLES["bank"], formatter_class=fmt)
    bm.add_argument("--mint-wallet", type=Path, required=True,
                    help="wallet dir holding the mint key")
    bm.add_argument("--to", required=True, help="payee public key (64 hex digits)")
    bm.add_argument("--amount", required=True, help="credits, up to 6 decimals")

    lg = cmd("ledger", "Network-wide ledger checks.")
    lsub = lg.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = lsub.add_parser("supply", help="ask every notary for the total supply and check it "
                         "against all mints", epilog=EXAMPLES["ledger"], formatter_class=fmt)
    wallet_opt(ls)
    ls.add_argument("--genesis", type=Path, help="genesis file (default: the wallet's)")
    json_opt(ls)

    au = cmd("audit", "PeerReview: what witnesses know about hosts; check a proof offline.")
    asub = au.add_subparsers(dest="action", required=True, metavar="ACTION")
    ast = asub.add_parser("status", help="witness states (trusted, suspected, exposed): from "
                          "your own node (--data-dir), or from HOST's witnesses in the DHT",
                          epilog=EXAMPLES["audit"], formatter_class=fmt)
    ast.add_argument("host", nargs="?", help="host public key or node id (hex)")
    ast.add_argument("--data-dir", type=Path, help="ask this running node (a witness)")
    wallet_opt(ast)
    ast.add_argument("--genesis", type=Path, help="genesis file (default: the wallet's)")
    json_opt(ast)
    av = asub.add_parser("verify", help="check a proof of misbehaviour offline",
                         epilog=EXAMPLES["audit"], formatter_class=fmt)
    av.add_argument("proof_file", type=Path, help="the proof: raw bytes or hex")
    av.add_argument("--host", help="the host it must be against (hex key or node id)")
    json_opt(av)

    buy = cmd("buy", "Buy resources: find hosts, fund them, bid, verify the leases.")
    wallet_opt(buy)
    buy.add_argument("bids", nargs="+", metavar="BID",
                     help="RESOURCE:WEIGHT,MIN,MAX (Tycoon syntax), e.g. memory:1,256MiB,1GiB")
    buy.add_argument("--budget", required=True, help="credits to spend in all")
    buy.add_argument("--duration", default="1h", help="how long to spend it (30m, 2h, 1d)")
    buy.add_argument("--hosts", type=int, default=1, help="spread over up to N hosts")
    json_opt(buy)

    h = cmd("hosts", "Show the live market from the DHT.")
    wallet_opt(h)
    h.add_argument("--genesis", type=Path, help="genesis file (default: the wallet's)")
    h.add_argument("--type", action="append", dest="types", metavar="RESOURCE",
                   help="resource type to list (repeatable; default cpu and memory)")
    h.add_argument("--max-price",
                   help="highest price, credits per second for the whole resource")
    h.add_argument("--min-capacity", type=int, default=0,
                   help="lowest capacity in base units (MHz, KiB, bit/s)")
    h.add_argument("--limit", type=int, default=20, help="top N by cost efficiency")
    json_opt(h)

    le = cmd("leases", "Show this wallet's leases, refreshed from their hosts.")
    wallet_opt(le)
    json_opt(le)

    ho = cmd("host", "For host owners: the auction, accounts and VMs of a running node.")
    hsub = ho.add_subparsers(dest="action", required=True, metavar="ACTION")
    hs = hsub.add_parser("status", help="accounts, bids, allocations, prices, VM state",
                         epilog=EXAMPLES["host"], formatter_class=fmt)
    hs.add_argument("--data-dir", type=Path, required=True, help="the node's data dir")
    json_opt(hs)
    hc = hsub.add_parser("set-capacity", help="how much of a resource this host offers",
                         epilog=EXAMPLES["host"], formatter_class=fmt)
    hc.add_argument("--data-dir", type=Path, required=True, help="the node's data dir")
    hc.add_argument("resource", help="cpu, memory, disk, net_in, net_out, tcp_port, ...")
    hc.add_argument("amount", help="with units (8GHz, 16GiB, 1Gbit/s) or an id range")
    hp = hsub.add_parser("set-min-price", help="the host's own bid: the lowest price",
                         epilog=EXAMPLES["host"], formatter_class=fmt)
    hp.add_argument("--data-dir", type=Path, required=True, help="the node's data dir")
    hp.add_argument("resource", help="resource type")
    hp.add_argument("price", type=int, help="micro-credits per second for the whole resource")

    st = cmd("status", "Ask a running node about itself through its control API.")
    st.add_argument("--data-dir", type=Path, required=True)
    st.add_argument("--what", default="node",
                    choices=["node", "vms", "accounts", "supply", "history"])

    t = cmd("testnet", "Run a local market of node processes on loopback.")
    tsub = t.add_subparsers(dest="action", required=True, metavar="ACTION")
    tu = tsub.add_parser("up", help="create and start a testnet", epilog=EXAMPLES["testnet"],
                         formatter_class=fmt)
    tu.add_argument("--nodes", type=int, default=5, help="number of node processes")
    tu.add_argument("--base-port", type=int, default=0,
                    help="first port (default: any free)")
    tu.add_argument("--tick-seconds", type=float, default=1.0, help="auction tick")
    for action, text in (("down", "stop the testnet's nodes"), ("status", "show its nodes")):
        q = tsub.add_parser(action, help=text, epilog=EXAMPLES["testnet"], formatter_class=fmt)
        q.add_argument("--dir", type=Path, default=Path("run/testnet"), help="testnet dir")
        json_opt(q)
    tu.add_argument("--dir", type=Path, default=Path("run/testnet"), help="testnet dir")
    return p


Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

COMMANDS: dict[tuple[str, str | None], Command] = {
    ("node", None): commands.node,
    ("wallet", "new"): commands.wallet_new,
    ("wallet", "show"): commands.wallet_show,
    ("wallet", "balance"): commands.wallet_balance,
    ("wallet", "history"): commands.wallet_history,
    ("ledger", "supply"): commands.ledger_supply,
    ("audit", "status"): commands.audit_status,
    ("audit", "verify"): commands.audit_verify,
    ("bank", "mint"): commands.bank_mint,
    ("buy", None): commands.buy,
    ("hosts", None): commands.hosts,
    ("leases", None): commands.leases,
    ("status", None): commands.status,
    ("host", "status"): commands.host_status,
    ("host", "set-capacity"): commands.host_set_capacity,
    ("host", "set-min-price"): commands.host_set_min_price,
    ("testnet", "up"): commands.testnet_up,
    ("testnet", "down"): commands.testnet_down,
    ("testnet", "status"): commands.testnet_status,
}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help is 0, a usage error is one error
        return 0 if exc.code == 0 else 1
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose == 0:
        # the kademlia/rpcudp packages log every unanswered datagram as an error
        for noisy in ("kademlia", "rpcudp"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
    command = COMMANDS[(args.command, getattr(args, "action", None))]
    try:
        return asyncio.run(command(args))
    except P2PMarketError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 1


def print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True))


if __name__ == "__main__":
    raise SystemExit(main())
