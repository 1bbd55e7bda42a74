"""``p2pmarket network init``: create a network that runs on real machines.

A network is its genesis file, and the genesis names the notaries' keys, so the
notaries' keys exist before any of them starts. ``network init`` makes, in ``--dir``:

    genesis.json          the network: the committee, the mint key, bootstrap peers
    notary-<i>/           a data dir per notary: its node.key (mode 0600), genesis.json
                          and network.id; copy it to that machine and start the node on it
    mint/                 the mint's wallet (its key is the genesis mint key)

and prints what to copy where. Every other machine needs only genesis.json.
"""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

from p2pmarket.cli.options import Subcommands
from p2pmarket.cli.terminal import out
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.config import DataDir, save_genesis
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.genesis import BootstrapPeer, Genesis, NotaryInfo
from p2pmarket.core.identity import Identity
from p2pmarket.core.keyfile import save_key

EXAMPLES = """examples:
  p2pmarket network init --dir mynet --name mynet \\
      --notary http://198.18.0.11:7400 --notary http://198.18.0.12:7400 \\
      --notary http://198.18.0.13:7400 --notary http://198.18.0.14:7400 --f 1
  p2pmarket network init --dir lab --name lab --notary http://198.18.0.11:7400 \\
      --shared-prefix 198.18.0.0/15      # a private deployment: many hosts per /24"""
DEFAULT_DHT_PORT = 7401


class NetworkError(P2PMarketError):
    """A network could not be created as asked."""


def add_network(sub: Subcommands) -> None:
    n = sub.add("network", "Create a network: notary keys, the mint key and the genesis.",
                EXAMPLES)
    ni = Subcommands(n, "action", "ACTION").add(
        "init", "create the genesis, the notaries' data dirs and the mint wallet",
        EXAMPLES, network_init)
    ni.add_argument("--dir", type=Path, required=True, help="where to write them (new)")
    ni.add_argument("--name", required=True, help="the network's name")
    ni.add_argument("--notary", action="append", required=True, metavar="URL",
                    help="a notary's peer URL, http://HOST:PORT (repeat: 3f+1 of them)")
    ni.add_argument("--f", type=int, default=0, help="faulty notaries tolerated")
    ni.add_argument("--dht-port", type=int, default=DEFAULT_DHT_PORT,
                    help="the notaries' DHT port (they are the bootstrap peers)")
    ni.add_argument("--bootstrap", action="append", default=[], metavar="HOST:PORT=URL",
                    help="a bootstrap peer instead of the notaries (repeat)")
    ni.add_argument("--shared-prefix", action="append", default=[], metavar="CIDR",
                    help="a network free of the DHT's per-/24 caps (private deployments)")
    ni.add_argument("--puzzle-bits", type=int, default=0, help="node-id puzzle difficulty")


def parse_notary_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.port is None:
        raise NetworkError("a notary URL is http://HOST:PORT", url)
    if parts.path not in ("", "/"):
        raise NetworkError("a notary URL has no path", url)
    return parts.hostname, parts.port


def parse_bootstrap(text: str) -> BootstrapPeer:
    address, sep, url = text.partition("=")
    host, colon, port = address.rpartition(":")
    if not sep or not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise NetworkError("a bootstrap peer is HOST:DHT_PORT=URL", text)
    parse_notary_url(url)
    return BootstrapPeer(host.strip("[]"), int(port), url)


def create_network(root: Path, name: str, notary_urls: list[str], f: int = 0,
                   dht_port: int = DEFAULT_DHT_PORT, bootstrap: list[str] | None = None,
                   shared: list[str] | None = None, puzzle_bits: int = 0) -> Genesis:
    """Write genesis.json, notary-<i>/ and mint/ under ``root`` (see the module
    docstring); refuse to overwrite an existing network."""
    if (root / "genesis.json").exists():
        raise NetworkError(f"a network already exists in {root}", str(root))
    if not 0 <= puzzle_bits <= 24:
        raise NetworkError("--puzzle-bits must be 0..24", puzzle_bits)
    if len(set(notary_urls)) != len(notary_urls):
        raise NetworkError("each notary needs its own URL", notary_urls)
    hosts = [parse_notary_url(u) for u in notary_urls]
    for net in shared or []:
        try:
            ipaddress.ip_network(net)
        except ValueError:
            raise NetworkError("--shared-prefix takes a CIDR network", net) from None
    idents = [Identity.generate(puzzle_bits) for _ in notary_urls]
    mint = Identity.generate(puzzle_bits)
    peers = ([parse_bootstrap(b) for b in bootstrap] if bootstrap else
             [BootstrapPeer(h, dht_port, u) for (h, _), u in zip(hosts, notary_urls,
                                                                  strict=True)])
    genesis = Genesis(
        network=name, mint_key=mint.public_key, f=f, puzzle_bits=puzzle_bits,
        notaries=tuple(NotaryInfo(i.public_key, u)
                       for i, u in zip(idents, notary_urls, strict=True)),
        bootstrap=tuple(peers), shared_prefixes=tuple(shared or ()))
    root.mkdir(parents=True, exist_ok=True)
    for i, ident in enumerate(idents, start=1):
        data = DataDir(root / f"notary-{i}")
        data.create()
        save_key(ident, data.key)
        save_genesis(genesis, data.genesis)
        data.bind_network(genesis)
    WalletDir(root / "mint").create(genesis, mint)
    save_genesis(genesis, root / "genesis.json")   # last: its presence marks a whole network
    return genesis


async def network_init(args: argparse.Namespace) -> int:
    root: Path = args.dir
    genesis = create_network(root, args.name, args.notary, args.f, args.dht_port,
                             args.bootstrap, args.shared_prefix, args.puzzle_bits)
    out.print(f"network {genesis.network!r} (id {genesis.network_id.hex()}) in {root}:")
    for i, notary in enumerate(genesis.notaries, start=1):
        host, port = parse_notary_url(notary.url)
        out.print(f"  copy {root / f'notary-{i}'}/ to the notary at {notary.url}, then run\n"
                  f"    p2pmarket node --data-dir notary-{i} --listen-host 0.0.0.0 "
                  f"--advertise-host {host} --http-port {port} --dht-port {args.dht_port}")
    out.print(f"  keep {root / 'mint'}/ (the mint's key) safe; mint with\n"
              f"    p2pmarket bank mint --mint-wallet {root / 'mint'} --to KEY --amount N")
    out.print(f"  every other machine needs only {root / 'genesis.json'}:\n"
              "    p2pmarket node --data-dir D --genesis genesis.json --listen-host 0.0.0.0\n"
              "    p2pmarket wallet new --genesis genesis.json")
    return 0
