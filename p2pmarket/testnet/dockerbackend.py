"""The fault harness's backend over the Docker Compose testnet (see
:class:`~.backend.Backend`), driving a :class:`~.docker.DockerTestnet` with the
``docker`` CLI.

The compose testnet's naming (:mod:`.compose`): a site's container is
``<project>-<site>``, the internet the network ``<project>-internet`` and a
router's or proxy's LAN ``<project>-<router-or-proxy>``; every container sees the
testnet dir at ``/testnet``, where a node's data dir and a buyer's (or the mint's)
wallet is ``/testnet/<name>``; the node is the container's main process.

Faults: ``docker kill`` and ``docker start``; ``docker network disconnect`` and
``docker network connect --ip ADDRESS`` (a site behind a router gets its default
route through the router again, as its start script set it). The small disk is a
tmpfs mounted on this machine over the node's dir of the testnet dir while its
container is stopped (:class:`~.backend.SmallDisks`): the container's bind mount of
the testnet dir takes it in when it starts again, and nothing but that tmpfs fills.
"""

from __future__ import annotations

import subprocess

from p2pmarket.testnet import compose
from p2pmarket.testnet.backend import READY_S, CutsAndDisks, SmallDisks, rss_kib_of
from p2pmarket.testnet.docker import DockerTestnet, run
from p2pmarket.testnet.state import TestnetError
from p2pmarket.testnet.topology import Router, TopologyError


class DockerBackend(CutsAndDisks):
    """:class:`~.backend.Backend` over a running compose testnet."""

    name = "docker"

    def __init__(self, net: DockerTestnet) -> None:
        self.net = net
        self.topology = net.topology
        self.python = compose.PYTHON
        self.cut: set[str] = set()
        self.disks = SmallDisks(net.host_path, self._stop, net.start,
                                lambda: net.wait_ready(READY_S))

    def network_of(self, name: str) -> str:
        """The compose network in front of a site, router or proxy."""
        try:
            behind = self.topology.site(name).behind
        except TopologyError:
            self.topology.gateway(name)
            behind = None
        return compose.network_name(self.net.state.project, behind or "internet")

    def _address(self, name: str) -> str:
        try:
            return self.topology.site(name).address
        except TopologyError:
            return self.topology.gateway(name).address

    def p2pmarket(self, site: str, args: list[str], timeout_s: float
                  ) -> subprocess.CompletedProcess[str]:
        return self.net.exec(site, [self.python, "-m", "p2pmarket", *args],
                             capture_output=True, text=True, timeout=timeout_s,
                             stdin=subprocess.DEVNULL)

    def data_dir(self, site: str) -> str:
        return self.net.path(site)

    def wallet_dir(self, name: str) -> str:
        return self.net.path(name)

    @property
    def mint_site(self) -> str:
        return self.topology.buyers[0].name

    def kill(self, site: str) -> None:
        self.net.kill(site)

    def start(self, site: str) -> None:
        self.net.start(site)

    def _stop(self, site: str) -> bool:
        running = self.net.running(site)
        if running:
            run([self.net.docker, "stop", "-t", "10", self.net.container(site)])
        return running

    def disconnect(self, name: str) -> None:
        run([self.net.docker, "network", "disconnect", self.network_of(name),
             self.net.container(name)])
        self.cut.add(name)

    def reconnect(self, name: str) -> None:
        run([self.net.docker, "network", "connect", "--ip", self._address(name),
             self.network_of(name), self.net.container(name)])
        self.cut.discard(name)
        behind = self.topology.site(name).behind if name in {
            s.name for s in self.topology.sites} else None
        if behind is not None:
            gw = self.topology.gateway(behind)
            if isinstance(gw, Router):   # the route docker dropped with the interface
                run(self.net.exec_argv(name, ["ip", "route", "replace", "default", "via",
                                              gw.gateway]))

    def rss_kib(self, site: str) -> int | None:
        try:
            pid = int(run([self.net.docker, "inspect", "-f", "{{.State.Pid}}",
                           self.net.container(site)]).stdout.strip())
        except (TestnetError, ValueError):
            return None
        return rss_kib_of(pid) if pid > 0 else None


__all__ = ["DockerBackend"]
