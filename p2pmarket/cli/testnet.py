"""A local market: N node processes on loopback with a shared genesis, or (``up
--netns TOPOLOGY``) a testnet of network namespaces (:mod:`p2pmarket.testnet`).

Layout of a testnet directory::

    genesis.json     the network: node0 is the notary, node0/node1 bootstrap
    mint/            the mint's wallet (its key is the genesis mint key)
    node<i>/         one node's data dir (key, config.toml, genesis.json, sqlite files)
    testnet.json     what `up` started: pids, ports, data dirs

``down`` ends only the processes listed in testnet.json, by pid, after checking
that each pid still runs a p2pmarket node on that data dir.

The ``p2pmarket testnet up|init|compose|down|status`` commands are at the end; for a
namespace testnet (``--netns``) they are thin calls of
:class:`p2pmarket.testnet.netns.NetnsTestnet`, for a docker one (``--docker``) of
:class:`p2pmarket.testnet.docker.DockerTestnet` (``down`` and ``status`` tell the
kinds apart by their state files).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from p2pmarket.api.control import ControlClient, ControlError
from p2pmarket.cli.dockernet import (
    add_docker_actions,
    docker_opts,
    docker_status,
    docker_up,
    ready_or_kept,
)
from p2pmarket.cli.options import Subcommands, json_opt
from p2pmarket.cli.terminal import dump, err, out
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.config import DataDir, Settings, load_genesis, save_genesis
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.files import write_atomic
from p2pmarket.core.genesis import BootstrapPeer, Genesis, NotaryInfo
from p2pmarket.core.identity import Identity
from p2pmarket.core.keyfile import load_key, save_key
from p2pmarket.core.money import format_credits
from p2pmarket.testnet import docker, netns, state, teardown
from p2pmarket.testnet.datadirs import TOPOLOGY_FILE
from p2pmarket.testnet.procs import is_our_node, stop_pid
from p2pmarket.testnet.state import TestnetError

HOST = "127.0.0.1"


@dataclass(frozen=True)
class NodeProc:
    name: str
    data_dir: str
    pid: int
    url: str
    dht_port: int
    control_port: int
    notary: bool


TCP_PORTS_PER_NODE = 4
"""The ``tcp_ports`` each node of a loopback testnet leases (SSH to its guests)."""
LEASED_PORTS_FROM = 21000   # below Linux's ephemeral ports (32768-60999)


def free_block(count: int, avoid: set[int]) -> int:
    """The first port of ``count`` consecutive TCP ports free on loopback now (from
    :data:`LEASED_PORTS_FROM`, none in ``avoid``)."""
    base = LEASED_PORTS_FROM
    while base + count <= 32768:
        clash = next((p for p in range(base, base + count) if p in avoid or not _free(p)),
                     None)
        if clash is None:
            return base
        base = clash + 1
    raise TestnetError("no block of free TCP ports for the leased ports", count)


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        try:
            tcp.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Ports free for both TCP and UDP on loopback right now."""
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < count:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.bind((HOST, 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.bind((HOST, port))
            except OSError:
                tcp.close()
                udp.close()
                continue
            held += [tcp, udp]
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def create(root: Path, nodes: int, base_port: int = 0, cpu_mhz: int = 4000,
           memory_kib: int = 4 * 1024 * 1024, tick_seconds: float = 1.0) -> list[Path]:
    """Write genesis, mint wallet and node data dirs; returns the node dirs."""
    if not 1 <= nodes <= 64:
        raise TestnetError("a testnet has 1 to 64 nodes", nodes)
    if (root / "testnet.json").exists():
        raise TestnetError(f"a testnet already runs in {root}; use `testnet down` first",
                           str(root))
    ports = (list(range(base_port, base_port + 3 * nodes)) if base_port
             else free_ports(3 * nodes))
    idents = [Identity.generate() for _ in range(nodes)]
    mint = Identity.generate()
    leased = free_block(TCP_PORTS_PER_NODE * nodes, set(ports))
    settings = [Settings(listen_host=HOST, http_port=ports[3 * i], dht_port=ports[3 * i + 1],
                         control_port=ports[3 * i + 2], cpu_mhz=cpu_mhz,
                         memory_kib=memory_kib, tick_seconds=tick_seconds,
                         tcp_ports=f"{leased + TCP_PORTS_PER_NODE * i}-"
                                   f"{leased + TCP_PORTS_PER_NODE * (i + 1) - 1}")
                for i in range(nodes)]
    genesis = Genesis(
        network=f"testnet-{root.name}",
        mint_key=mint.public_key,
        notaries=(NotaryInfo(idents[0].public_key, settings[0].url),),
        f=0,
        bootstrap=tuple(BootstrapPeer(HOST, s.dht_port, s.url) for s in settings[:2]),
    )
    root.mkdir(parents=True, exist_ok=True)
    save_genesis(genesis, root / "genesis.json")
    WalletDir(root / "mint").create(genesis, mint)
    dirs = []
    for i, (ident, s) in enumerate(zip(idents, settings, strict=True)):
        d = DataDir(root / f"node{i}")
        d.create()
        save_key(ident, d.key)
        save_genesis(genesis, d.genesis)
        write_atomic(d.config, s.to_toml().encode())
        dirs.append(d.root)
    return dirs


BOOTSTRAP_WAIT_S = 20.0


def start(root: Path, dirs: list[Path]) -> list[NodeProc]:
    """Start every node; the bootstrap nodes (the first two) first, so the others' first
    DHT ping finds them listening instead of waiting out a UDP timeout."""
    procs = []
    genesis = load_genesis(root / "genesis.json")
    for i, path in enumerate(dirs):
        if i == len(genesis.bootstrap):
            _wait_listening(dirs[:i], BOOTSTRAP_WAIT_S)
        d = DataDir(path)
        s = Settings.load(d.config, env={})
        log = open(d.log, "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "p2pmarket", "node", "--data-dir", str(path)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        procs.append(NodeProc(f"node{i}", str(path), proc.pid, s.url, s.dht_port,
                              s.control_port, notary=load_key(d.key).public_key
                              in genesis.notary_keys))
    write_atomic(root / "testnet.json",
                 json.dumps({"nodes": [asdict(p) for p in procs]}, indent=2).encode())
    return procs


def _wait_listening(dirs: list[Path], timeout_s: float) -> None:
    """Wait until each node has written control.json (it does so once it listens)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(DataDir(d).control.exists() for d in dirs):
            return
        time.sleep(0.02)


def load(root: Path) -> list[NodeProc]:
    try:
        doc = json.loads((root / "testnet.json").read_text())
        return [NodeProc(**n) for n in doc["nodes"]]
    except FileNotFoundError:
        raise TestnetError(f"no testnet running in {root}", str(root)) from None
    except (KeyError, TypeError, ValueError):
        raise TestnetError(f"{root}/testnet.json is damaged", str(root)) from None


def stop(root: Path) -> int:
    """Stop every node of the testnet; returns how many were running."""
    procs = load(root)
    stopped = sum(stop_pid(p.pid, p.data_dir) for p in procs)
    (root / "testnet.json").unlink(missing_ok=True)
    return stopped


# -- the commands ------------------------------------------------------------------

EXAMPLES = """examples:
  p2pmarket testnet up --nodes 5 --dir run/testnet
  p2pmarket testnet status --dir run/testnet
  p2pmarket testnet down --dir run/testnet
  sudo p2pmarket testnet up --netns testnet/default.toml --dir run/netns   # as root
  p2pmarket testnet up --docker testnet/default.toml --dir run/docker     # dockerd
  p2pmarket testnet init --docker testnet/default.toml --dir testnet/run  # then:
  docker-compose -p p2pm -f testnet/docker-compose.yml up -d"""
READY_TIMEOUT_S = 60.0


def add_testnet(sub: Subcommands) -> None:
    t = sub.add("testnet", "Run a local market of node processes on loopback, or in "
                "network namespaces.", EXAMPLES)
    actions = Subcommands(t, "action", "ACTION")
    tu = actions.add("up", "create and start a testnet", EXAMPLES, testnet_up)
    tu.add_argument("--netns", type=Path, metavar="TOPOLOGY",
                    help="build this topology (testnet/README.md) in network namespaces "
                         "instead (root; needs ip, iptables, tinyproxy)")
    tu.add_argument("--docker", type=Path, metavar="TOPOLOGY",
                    help="build this topology as Docker containers (docker-compose; "
                         "scripts/setup-docker)")
    docker_opts(tu)
    tu.add_argument("--nodes", type=int, default=5,
                    help="number of node processes (loopback)")
    tu.add_argument("--base-port", type=int, default=0,
                    help="first port (loopback; default: any free)")
    tu.add_argument("--tick-seconds", type=float, default=None,
                    help="auction tick (default 1; with --netns, the topology's)")
    for action, text, run in (("down", "stop the testnet's nodes", testnet_down),
                              ("status", "show its nodes", testnet_status)):
        q = actions.add(action, text, EXAMPLES, run)
        dir_opt(q)
        json_opt(q)
    dir_opt(tu)
    add_docker_actions(actions, dir_opt)


def dir_opt(q: argparse.ArgumentParser) -> None:
    q.add_argument("--dir", type=Path, default=Path("run/testnet"), help="testnet dir")


async def testnet_up(args: argparse.Namespace) -> int:
    root: Path = args.dir
    if args.netns is not None:
        return netns_up(args)
    if args.docker is not None:
        return docker_up(args)
    dirs = create(root, args.nodes, args.base_port, tick_seconds=args.tick_seconds or 1.0)
    procs = start(root, dirs)
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
    procs = load(root)
    deadline = time.monotonic() + timeout_s
    pending = {p.name: p for p in procs}
    last: dict[str, str] = {}
    while pending and time.monotonic() < deadline:
        for name, p in list(pending.items()):
            if not is_our_node(p.pid, p.data_dir):
                return [f"{name} exited; see {Path(p.data_dir) / 'node.log'}"]
            try:
                st = await ControlClient(DataDir(Path(p.data_dir)), timeout_s=2).call("status")
                if st.get("ready"):
                    del pending[name]
            except (ControlError, P2PMarketError) as exc:
                last[name] = exc.message
        await asyncio.sleep(0.2)
    return [f"{n} not ready after {timeout_s:.0f}s ({last.get(n, 'starting')})" for n in pending]


def netns_up(args: argparse.Namespace) -> int:
    settings = {} if args.tick_seconds is None else {"tick_seconds": args.tick_seconds}
    net = netns.NetnsTestnet.up(args.netns, args.dir, settings=settings)
    nodes = len(net.topology.nodes)
    if not ready_or_kept(net.wait_ready, READY_TIMEOUT_S, args.dir,
                         f"starting {nodes} nodes in namespaces {net.state.prefix}-*…"):
        return 1
    out.print(f"namespace testnet of {nodes} nodes up in {args.dir} (namespaces "
              f"{net.state.prefix}-*, genesis {net.genesis_path}, "
              f"mint wallet {net.wallet_dir(net.topology.mint)})")
    return 0


async def testnet_down(args: argparse.Namespace) -> int:
    if docker.state_exists(args.dir):
        removed = docker.down(args.dir)
        out.print(f"removed {removed} container(s) and the networks of the docker testnet "
                  f"in {args.dir}")
        return 0
    if state.exists(args.dir) or (args.dir / TOPOLOGY_FILE).exists():   # a namespace one
        stopped = teardown.down(args.dir)
        out.print(f"stopped {stopped} process(es) and removed the namespaces of the "
                  f"testnet in {args.dir}")
        return 0
    stopped = stop(args.dir)
    out.print(f"stopped {stopped} node(s) of the testnet in {args.dir}")
    return 0


def netns_status(args: argparse.Namespace) -> int:
    rows = netns.NetnsTestnet.open(args.dir).rows()
    errors = sum(1 for r in rows if r["ready"] is False)
    if args.json:
        dump({"sites": rows})
        return errors
    table = Table(title=f"namespace testnet {args.dir}")
    for col in ("site", "namespace", "address", "role", "behind", "pid", "ready", "contacts"):
        table.add_column(col)
    for r in rows:
        ready = "" if r["ready"] is None else "yes" if r["ready"] else r.get("error", "no")
        table.add_row(r["name"], r["namespace"], r["address"], r["role"], r["behind"] or "",
                      str(r["pid"] or ""), ready, str(r.get("contacts", "")))
    out.print(table)
    return errors


async def testnet_status(args: argparse.Namespace) -> int:
    if docker.state_exists(args.dir):
        return docker_status(args)
    if state.exists(args.dir):
        return netns_status(args)
    procs = load(args.dir)
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
