"""``p2pmarket node`` (run a node) and ``p2pmarket status`` (ask a running one)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from p2pmarket.api.control import ControlClient
from p2pmarket.cli.options import Subcommands, data_dir_opt
from p2pmarket.core.config import DataDir, load_genesis, save_genesis

NODE_EXAMPLES = """examples:
  p2pmarket node --data-dir ~/.p2pmarket/node --genesis genesis.json
  p2pmarket node --data-dir run/testnet/node0          # settings from its config.toml
  p2pmarket node --data-dir D --genesis genesis.json --listen-host 0.0.0.0   # behind NAT
  p2pmarket node --data-dir D --genesis genesis.json --http-proxy http://proxy:8888"""
STATUS_EXAMPLES = """examples:
  p2pmarket status --data-dir run/testnet/node1
  p2pmarket status --data-dir run/testnet/node1 --what vms"""
FLAGS = ("listen_host", "advertise_host", "http_port", "dht_port", "control_port",
         "metrics_port", "vmm_uri",
         "cpu_mhz", "memory_kib", "http_proxy", "dht_gateway", "relay", "nat", "log_format")


def add_node(sub: Subcommands) -> None:
    n = sub.add("node", "Run a node: host, DHT peer, and notary if the genesis names its key.",
                NODE_EXAMPLES, node)
    data_dir_opt(n)
    n.add_argument("--genesis", type=Path, help="genesis file to copy into a new data dir")
    n.add_argument("--listen-host", help="address to listen on (default 127.0.0.1)")
    n.add_argument("--advertise-host", help="address peers should use, if not the listen one")
    n.add_argument("--http-port", type=int, help="peer RPC port (TCP)")
    n.add_argument("--dht-port", type=int, help="Kademlia port (UDP)")
    n.add_argument("--control-port", type=int, help="control API port on 127.0.0.1")
    n.add_argument("--metrics-port", type=int,
                   help="also serve GET /metrics on this port of the listen host "
                        "(it is always on the peer port; docs/monitoring.md)")
    n.add_argument("--vmm-uri", help="libvirt URI (default test:///default)")
    n.add_argument("--cpu-mhz", type=int, help="CPU capacity offered, MHz")
    n.add_argument("--memory-kib", type=int, help="memory capacity offered, KiB")
    n.add_argument("--http-proxy", metavar="URL",
                   help="send all HTTP through this proxy (no UDP: the DHT through a gateway)")
    n.add_argument("--dht-gateway", metavar="URL",
                   help="the public peer whose HTTP DHT gateway to use behind a proxy "
                        "(default: the first bootstrap peer)")
    n.add_argument("--no-relay", dest="relay", action="store_const", const=False,
                   help="do not serve as registrar and relay for other nodes")
    n.add_argument("--no-nat", dest="nat", action="store_const", const=False,
                   help="do not check reachability with registrars; advertise as is")
    n.add_argument("--log-format", choices=["plain", "json"],
                   help="plain lines (default) or one JSON object per line "
                        "(docs/monitoring.md lists the events)")


def add_status(sub: Subcommands) -> None:
    st = sub.add("status", "Ask a running node about itself through its control API.",
                 STATUS_EXAMPLES, status)
    st.add_argument("--data-dir", type=Path, required=True)
    st.add_argument("--what", default="node",
                    choices=["node", "vms", "accounts", "supply", "history"])


async def node(args: argparse.Namespace) -> int:
    from p2pmarket.node.service import run_node

    if args.verbose == 0:
        logging.getLogger("p2pmarket").setLevel(logging.INFO)
    data_dir = DataDir(args.data_dir)
    data_dir.create()
    if args.genesis is not None:
        genesis = load_genesis(args.genesis)
        data_dir.bind_network(genesis)   # never overwrite another network's genesis
        save_genesis(genesis, data_dir.genesis)
    await run_node(data_dir, {k: getattr(args, k) for k in FLAGS})
    return 0


async def status(args: argparse.Namespace) -> int:
    from p2pmarket.cli.terminal import dump  # rich: not in a node process

    name = "status" if args.what == "node" else args.what
    dump(await ControlClient(DataDir(args.data_dir)).call(name))
    return 0
