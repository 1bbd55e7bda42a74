"""The ``p2pmarket`` command. Exit code = number of errors (Tycoon note 9/20).

Each subcommand is a small function that parses nothing itself: argparse checks
the shape of the arguments, the library checks their meaning and raises a
:class:`P2PMarketError`, which is printed as one readable line. The command
groups (:mod:`.node`, :mod:`.wallet`, :mod:`.audit`, :mod:`.buy`, :mod:`.leases`,
:mod:`.ssh`, :mod:`.image`, :mod:`.host`, :mod:`.broker`, :mod:`.reserve`,
:mod:`.network`, :mod:`.testnet`) each add their part of the parser, naming the function that
runs each subcommand.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from collections.abc import Callable

from p2pmarket.cli.options import FORMATTER, Command, Subcommands
from p2pmarket.core.errors import P2PMarketError

# in the order --help lists them: (module in p2pmarket.cli, its function adding the
# parsers, the commands it adds). A command's module is imported only when needed: a
# node process (``p2pmarket node``) then never loads the buyer's modules or rich.
COMMAND_GROUPS = (
    ("node", "add_node", ("node",)), ("wallet", "add_wallet", ("wallet",)),
    ("wallet", "add_bank", ("bank",)), ("wallet", "add_ledger", ("ledger",)),
    ("audit", "add_audit", ("audit",)), ("buy", "add_buy", ("buy",)),
    ("buy", "add_hosts", ("hosts",)), ("leases", "add_leases", ("leases",)),
    ("leases", "add_lease_money", ("cancel", "topup", "rebid")),
    ("ssh", "add_ssh", ("ssh", "tunnel")), ("image", "add_upload", ("upload",)),
    ("host", "add_host", ("host",)), ("broker", "add_broker", ("broker",)),
    ("reserve", "add_reserve", ("reserve", "tickets")), ("top", "add_top", ("top",)),
    ("node", "add_status", ("status",)),
    ("network", "add_network", ("network",)), ("testnet", "add_testnet", ("testnet",)))


def _adder(module: str, name: str) -> Callable[[Subcommands], None]:
    add: Callable[[Subcommands], None] = getattr(
        importlib.import_module(f"p2pmarket.cli.{module}"), name)
    return add


def _command_of(argv: list[str]) -> str | None:
    """The command argv names (its first word that is not an option), if any."""
    return next((a for a in argv if not a.startswith("-")), None)


def version() -> str:
    """The installed p2pmarket's version (``p2pmarket --version``)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("p2pmarket")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


class _Version(argparse.Action):
    """``--version``, read from the installed metadata only when asked (importing
    importlib.metadata costs a node process half a megabyte)."""

    def __call__(self, p: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        print(f"p2pmarket {version()}")
        p.exit()


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or (``only``: a known command) just that command's group."""
    p = argparse.ArgumentParser(
        prog="p2pmarket", formatter_class=FORMATTER,
        description="A peer-to-peer market for compute resources.",
        epilog="Run `p2pmarket COMMAND --help` for each command's options and examples.\n"
               "The exit code is the number of errors.")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more logging (-vv: debug; also after the command)")
    p.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    commands = Subcommands(p, "command", "COMMAND", describe=True)
    groups = [g for g in COMMAND_GROUPS if only in g[2]] or COMMAND_GROUPS
    for module, name, _ in groups:
        _adder(module, name)(commands)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        words = sys.argv[1:] if argv is None else argv
        args = parser(_command_of(words)).parse_args(words)
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
