"""A testnet of network namespaces built from a topology (root only).

:meth:`NetnsTestnet.up` writes the testnet's files (:mod:`.datadirs`), makes one
namespace per site, router and proxy plus one for the internet's bridge and wires
them (:mod:`.plan`), starts tinyproxy in each proxy's namespace and a node in each
notary's and host's (``ip netns exec NS <python> -m p2pmarket node ...``, notaries
first). Everything is listed in the state file (:mod:`.state`) before it is made;
:func:`.teardown.down` reads only that file, so it cleans up after a runner killed
at any point. A node's control API is on 127.0.0.1 inside its namespace: whatever talks to
it runs there (:meth:`NetnsTestnet.run_in`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from p2pmarket.core.config import DataDir
from p2pmarket.core.files import write_atomic
from p2pmarket.testnet import procs, state
from p2pmarket.testnet.datadirs import GENESIS_FILE, TOPOLOGY_FILE, write_network
from p2pmarket.testnet.plan import (
    in_namespace,
    link_commands,
    namespace,
    namespaces,
    node_command,
    status_command,
    tinyproxy_command,
    tinyproxy_config,
)
from p2pmarket.testnet.state import Proc, State, TestnetError
from p2pmarket.testnet.teardown import down, existing_namespaces, run
from p2pmarket.testnet.topology import Topology, TopologyError, parse

STATUS_TIMEOUT_S = 10.0
LISTEN_WAIT_S = 20.0
LOOPBACK_STATE = "testnet.json"   # a loopback testnet's (p2pmarket.cli.testnet)


def load_topology(path: Path) -> Topology:
    try:
        return parse(path.read_text())
    except OSError as exc:
        raise TopologyError(f"cannot read topology {path}: {exc.strerror}", str(path)) from None


def missing_requirements(topo: Topology) -> list[str]:
    """What this machine lacks to build ``topo``: root, ``ip``, ``iptables`` (for
    routers), ``tinyproxy`` (for proxies)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("a namespace testnet needs root (network namespaces, iptables)")
    tools = [("ip", "iproute2", True), ("iptables", "iptables", bool(topo.routers)),
             ("tinyproxy", "tinyproxy", bool(topo.proxies))]
    for tool, package, needed in tools:
        if needed and shutil.which(tool) is None:
            missing.append(f"`{tool}` is missing (apt-get install {package})")
    return missing


def new_prefix() -> str:
    """A prefix no namespace on this machine starts with."""
    taken = existing_namespaces()
    for _ in range(100):
        prefix = "p2pm" + secrets.token_hex(2)
        if not any(ns.startswith(prefix) for ns in taken):
            return prefix
    raise TestnetError("no free namespace prefix (too many p2pm* namespaces)")


class NetnsTestnet:
    """A running (or half-built) namespace testnet in ``root``."""

    def __init__(self, root: Path, topology: Topology, st: State) -> None:
        self.root = root
        self.topology = topology
        self.state = st

    # -- making and unmaking ---------------------------------------------------------

    @classmethod
    def up(cls, topology_path: Path, root: Path, *, start_nodes: bool = True,
           python: str = sys.executable,
           settings: Mapping[str, Any] | None = None) -> NetnsTestnet:
        """Build the topology's namespaces in a new testnet dir ``root`` and (unless
        ``start_nodes`` is false) start its nodes on ``python``; ``settings`` go into
        every node's config.toml over the topology's [node] table. On any failure,
        takes down what it made and raises. It does not wait for the nodes to be
        ready (:meth:`wait_ready`)."""
        topo = load_topology(topology_path).with_settings(settings or {})
        problems = missing_requirements(topo)
        if problems:
            raise TestnetError("; ".join(problems), problems)
        root = root.resolve()
        if state.exists(root) or (root / LOOPBACK_STATE).exists():
            raise TestnetError(f"a testnet already runs in {root}; use `testnet down` first",
                               str(root))
        if root.exists() and any(root.iterdir()):
            raise TestnetError(f"{root} is not empty: a namespace testnet needs a new dir",
                               str(root))
        root.mkdir(parents=True, exist_ok=True)
        write_atomic(root / TOPOLOGY_FILE, topology_path.read_bytes())
        net = cls(root, topo, State(new_prefix(), python))
        net._save(net.state)
        try:
            write_network(topo, root)
            net._build()
            for proxy in topo.proxies:
                net._start_tinyproxy(proxy.name)
            if start_nodes:
                net.start_nodes()
            net._save(replace(net.state, built=True))
        except BaseException:
            with contextlib.suppress(TestnetError):   # the state file stays for a retry
                net.down()
            raise
        return net

    @classmethod
    def open(cls, root: Path) -> NetnsTestnet:
        """The testnet built in ``root`` (by this process or another)."""
        root = root.resolve()
        st = state.load(root)
        return cls(root, load_topology(root / TOPOLOGY_FILE), st)

    def _save(self, st: State) -> None:
        state.save(self.root, st)
        self.state = st

    def _build(self) -> None:
        for ns in namespaces(self.topology, self.state.prefix):
            self._save(self.state.with_namespace(ns))
            run(["ip", "netns", "add", ns])
        for cmd in link_commands(self.topology, self.state.prefix):
            run(cmd)

    def down(self) -> int:
        """Take the testnet down (see :func:`.teardown.down`)."""
        return down(self.root)

    # -- where things are ------------------------------------------------------------

    def namespace(self, name: str) -> str:
        """The namespace of a site, router or proxy."""
        if name not in {x.name for x in (*self.topology.sites, *self.topology.gateways)}:
            raise TestnetError(f"no site, router or proxy named {name!r}", name)
        return namespace(self.state.prefix, name)

    def address(self, name: str) -> str:
        """A site's address, or a router's or proxy's public one."""
        self.namespace(name)
        try:
            return self.topology.site(name).address
        except TopologyError:
            return self.topology.gateway(name).address

    def data_dir(self, site: str) -> Path:
        """A node's data dir."""
        if not self.topology.site(site).runs_node:
            raise TestnetError(f"{site} is a buyer: it has a wallet dir, no data dir", site)
        return self.root / site

    def wallet_dir(self, name: str) -> Path:
        """A buyer site's wallet dir, or the mint's (by its name in the topology)."""
        if name != self.topology.mint and self.topology.site(name).role != "buyer":
            raise TestnetError(f"{name} runs a node: it has a data dir, no wallet dir", name)
        return self.root / name

    @property
    def genesis_path(self) -> Path:
        return self.root / GENESIS_FILE

    def pid(self, site: str) -> int | None:
        """The pid of a site's node (or a proxy's tinyproxy) while it runs."""
        p = self.state.process(site)
        return p.pid if p and p.pid and procs.runs(p.pid, p.program, p.arg) else None

    # -- running things inside -------------------------------------------------------

    def run_in(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in the namespace of a site, router or proxy (``subprocess.run``
        keyword arguments pass through). :func:`down` ends only the testnet's own
        processes: end whatever you start here."""
        return subprocess.run(in_namespace(self.namespace(name), argv), **kwargs)

    def popen_in(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in a namespace (``subprocess.Popen`` keyword arguments)."""
        return subprocess.Popen(in_namespace(self.namespace(name), argv), **kwargs)

    def _spawn(self, proc: Proc, argv: list[str], log: Path) -> None:
        self._save(self.state.with_process(proc))        # listed before it exists
        out: IO[bytes] = open(log, "ab")  # noqa: SIM115 - handed to the child
        try:
            child = subprocess.Popen(in_namespace(proc.namespace, argv), stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        finally:
            out.close()
        self._save(self.state.with_process(replace(proc, pid=child.pid)))

    def _start_tinyproxy(self, name: str) -> None:
        proxy = next(p for p in self.topology.proxies if p.name == name)
        d = self.root / name
        d.mkdir(exist_ok=True)
        conf, pid_file, log = d / "tinyproxy.conf", d / "tinyproxy.pid", d / "tinyproxy.log"
        write_atomic(conf, tinyproxy_config(proxy, str(pid_file), str(log)).encode())
        pid_file.unlink(missing_ok=True)
        self._spawn(Proc(name, "tinyproxy", self.namespace(name), str(conf)),
                    tinyproxy_command(str(conf)), d / "tinyproxy.out")
        self._wait_for([pid_file], [name], LISTEN_WAIT_S, f"tinyproxy of {name}", log)

    def start(self, site: str) -> None:
        """Start a site's node (again: after :meth:`kill` or :meth:`stop`)."""
        s = self.topology.site(site)
        if not s.runs_node:
            raise TestnetError(f"{site} is a buyer: it runs no node", site)
        if self.pid(site) is not None:
            raise TestnetError(f"the node of {site} already runs", site)
        d = DataDir(self.data_dir(site))
        d.control.unlink(missing_ok=True)        # a killed node leaves its own behind
        argv = node_command(self.state.python, self.topology, s, str(d.root))
        self._spawn(Proc(site, "node", self.namespace(site), str(d.root)), argv, d.log)

    def start_nodes(self) -> None:
        """Start every node, notaries first: the others start once the notaries listen
        (their bootstrap peers answer the first DHT ping instead of timing out)."""
        notaries = [s.name for s in self.topology.notaries]
        for name in notaries:
            self.start(name)
        self._wait_for([DataDir(self.data_dir(n)).control for n in notaries], notaries,
                       LISTEN_WAIT_S, "the notaries")
        for s in self.topology.nodes[len(notaries):]:
            self.start(s.name)

    def _wait_for(self, files: list[Path], names: list[str], timeout_s: float, what: str,
                  log: Path | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(f.exists() for f in files):
            dead = [n for n in names if self.pid(n) is None]
            if dead or time.monotonic() > deadline:
                where = log or self.root / (dead or names)[0] / "node.log"
                raise TestnetError(f"{what} did not start ({', '.join(dead) or 'timeout'}); "
                                   f"see {where}", dead)
            time.sleep(0.02)

    def kill(self, site: str) -> bool:
        """SIGKILL a site's node (a crash, for fault tests). True if it was running."""
        return self._stop(site, signal.SIGKILL)

    def stop(self, site: str) -> bool:
        """Stop a site's node cleanly (SIGTERM). True if it was running."""
        return self._stop(site, signal.SIGTERM)

    def _stop(self, site: str, sig: signal.Signals) -> bool:
        p = self.state.process(site)
        if p is None or p.kind != "node" or p.pid is None:
            return False
        return procs.stop_all([(p.pid, p.program, p.arg)], sig=sig) == 1

    # -- asking the nodes ------------------------------------------------------------

    def statuses(self) -> dict[str, dict[str, Any]]:
        """Each node's ``p2pmarket status`` (run in its namespace, all at once), or
        ``{"error": ...}`` for one that did not answer."""
        return self._statuses([s.name for s in self.topology.nodes])

    def _statuses(self, sites: list[str]) -> dict[str, dict[str, Any]]:
        running = {site: self.popen_in(site, status_command(self.state.python,
                                                            str(self.data_dir(site))),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       stdin=subprocess.DEVNULL, text=True)
                   for site in sites}
        deadline = time.monotonic() + STATUS_TIMEOUT_S
        found: dict[str, dict[str, Any]] = {}
        for site, child in running.items():
            try:
                stdout, stderr = child.communicate(
                    timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()
                found[site] = {"error": "status timed out"}
                continue
            try:
                doc = json.loads(stdout) if child.returncode == 0 else None
            except ValueError:
                doc = None
            found[site] = doc if isinstance(doc, dict) else {
                "error": (stderr.strip().splitlines() or ["no answer"])[-1]}
        return found

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until every node's status says ready; raises naming the nodes that are
        not (or that exited) when ``timeout_s`` is out."""
        state.wait_ready([s.name for s in self.topology.nodes],
                         lambda n: None if self.pid(n) is not None
                         else str(self.data_dir(n) / "node.log"),
                         self._statuses, timeout_s)

    def rows(self) -> list[dict[str, Any]]:
        """One row per site for ``testnet status``: name, namespace, address, role,
        behind, pid, ready (and the node's error or status fields)."""
        st = self.statuses()
        rows = []
        for s in self.topology.sites:
            row: dict[str, Any] = {"name": s.name, "namespace": self.namespace(s.name),
                                   "address": s.address, "role": s.role,
                                   "behind": s.behind, "pid": self.pid(s.name),
                                   "ready": None}
            if s.runs_node:
                row.update(state.node_columns(st[s.name]))
            rows.append(row)
        return rows
