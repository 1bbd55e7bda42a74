"""The ``p2pmarket`` command. Exit code = number of errors (Tycoon note 9/20).

Each subcommand is a small function that parses nothing itself: argparse checks
the shape of the arguments, the library checks their meaning and raises a
:class:`P2PMarketError`, which is printed as one readable line. The command
groups (:mod:`.node`, :mod:`.wallet`, :mod:`.audit`, :mod:`.buy`, :mod:`.leases`,
:mod:`.ssh`, :mod:`.image`, :mod:`.host`,
:mod:`.network`, :mod:`.testnet`) each add their part of the parser, naming the function that
runs each subcommand.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import sys

from p2pmarket.cli import audit, buy, host, image, leases, network, node, ssh, testnet, wallet
from p2pmarket.cli.options import FORMATTER, Command, Subcommands
from p2pmarket.core.errors import P2PMarketError

# in the order --help lists them
COMMAND_GROUPS = (node.add_node, wallet.add_wallet, wallet.add_bank, wallet.add_ledger,
                  audit.add_audit, buy.add_buy, buy.add_hosts, leases.add_leases,
                  leases.add_lease_money, ssh.add_ssh, image.add_upload, host.add_host,
                  node.add_status, network.add_network, testnet.add_testnet)


def version() -> str:
    """The installed p2pmarket's version (``p2pmarket --version``)."""
    try:
        return importlib.metadata.version("p2pmarket")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="p2pmarket", formatter_class=FORMATTER,
        description="A peer-to-peer market for compute resources.",
        epilog="Run `p2pmarket COMMAND --help` for each command's options and examples.\n"
               "The exit code is the number of errors.")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more logging (-vv: debug; also after the command)")
    p.add_argument("--version", action="version", version=f"p2pmarket {version()}")
    commands = Subcommands(p, "command", "COMMAND", describe=True)
    for add in COMMAND_GROUPS:
        add(commands)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help is 0, a usage error is one error
        return 0 if exc.code == 0 else 1
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.verbose == 0:
        # the kademlia/rpcudp packages log every unanswered datagram as an error
        for noisy in ("kademlia", "rpcudp"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
    run: Command = args.run
    try:
        return asyncio.run(run(args))
    except P2PMarketError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
