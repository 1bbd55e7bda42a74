"""The parser's shared parts: how a subcommand is added, and the options several
commands take (``--wallet``, ``--genesis``, ``--data-dir``, ``--json``) with what
they resolve to."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from p2pmarket.client.netopts import ClientNet
from p2pmarket.client.walletdir import WalletDir, default_wallet_path
from p2pmarket.core.config import load_genesis
from p2pmarket.core.genesis import Genesis

FORMATTER = argparse.RawDescriptionHelpFormatter
Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


class Subcommands:
    """The subcommands of one parser: ``p2pmarket COMMAND`` (``describe``: each
    command's help is also its description) or ``p2pmarket wallet ACTION``."""

    def __init__(self, parser: argparse.ArgumentParser, dest: str, metavar: str,
                 describe: bool = False) -> None:
        self._sub = parser.add_subparsers(dest=dest, required=True, metavar=metavar)
        self._describe = describe

    def add(self, name: str, help_text: str, examples: str | None = None,
            run: Command | None = None) -> argparse.ArgumentParser:
        """A subcommand; ``run`` is what it does (left out for one with actions)."""
        q = self._sub.add_parser(name, help=help_text, epilog=examples,
                                 description=help_text if self._describe else None,
                                 formatter_class=FORMATTER)
        # -v after the command too (``p2pmarket buy -v ...``); SUPPRESS keeps a -v given
        # before the command when none comes after it
        q.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="more logging (-vv: debug)")
        if run is not None:
            q.set_defaults(run=run)
        return q


def wallet_opt(q: argparse.ArgumentParser) -> None:
    """``--wallet``, and how the command reaches the network (:func:`net_of`)."""
    q.add_argument("--wallet", type=Path, default=None,
                   help="wallet dir (default $P2PMARKET_WALLET or ~/.p2pmarket/wallet)")
    q.add_argument("--http-proxy", default=None, metavar="URL",
                   help="send all HTTP through this proxy and read the DHT through a "
                        "gateway (default $P2PMARKET_HTTP_PROXY)")
    q.add_argument("--dht-gateway", default=None, metavar="URL",
                   help="the public peer whose HTTP DHT gateway to use (default: the first "
                        "bootstrap peer, when behind a proxy)")
    q.add_argument("--bind-host", default=None, metavar="ADDR",
                   help="address the DHT client binds (default: the wildcard)")


def net_of(args: argparse.Namespace) -> ClientNet:
    return ClientNet.load(flags={k: getattr(args, k, None)
                                 for k in ("http_proxy", "dht_gateway", "bind_host")})


def genesis_opt(q: argparse.ArgumentParser) -> None:
    """``--genesis``, for commands that take the network from the wallet otherwise."""
    q.add_argument("--genesis", type=Path, help="genesis file (default: the wallet's)")


def data_dir_opt(q: argparse.ArgumentParser) -> None:
    q.add_argument("--data-dir", type=Path, required=True, help="the node's data dir")


def json_opt(q: argparse.ArgumentParser) -> None:
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")


def wallet_dir(args: argparse.Namespace) -> WalletDir:
    return WalletDir(args.wallet or default_wallet_path())


def genesis_of(args: argparse.Namespace) -> Genesis:
    """The ``--genesis`` file if given, else the wallet's."""
    return load_genesis(args.genesis) if args.genesis else wallet_dir(args).genesis()
