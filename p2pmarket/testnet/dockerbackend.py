"""The fault harness's backend over the Docker Compose testnet (the ``docker`` CLI by
subprocess; see :class:`~.backend.Backend`).

Naming contract with the compose testnet: a site's container is ``<project>-<site>``
(project ``p2pm`` by default); the internet is the network ``<project>-internet`` and
a router's or proxy's LAN ``<project>-<router-or-proxy>``; every site has its
topology address there. Inside a container the node's data dir is ``data_dir`` and a
buyer's wallet ``wallet_dir`` (the mint's wallet is at ``mint_wallet`` in the
``mint_site`` container); ``p2pmarket`` runs as ``python -m p2pmarket``.

Faults: ``docker kill --signal KILL`` and ``docker start`` (the node is the
container's main process); ``docker network disconnect`` and ``docker network
connect --ip ADDRESS`` (a site behind a router gets its default route through the
router again, the way the compose testnet sets it). The disk fault needs the data dir
on a small tmpfs of the container's own (compose: ``tmpfs: ["/data:size=48m"]`` on the
service), so filling it never fills the machine's disk: :meth:`limit_disk` checks
that it is one of at most :data:`MAX_DISK_BYTES` and refuses otherwise.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from p2pmarket.testnet.state import TestnetError
from p2pmarket.testnet.topology import Router, Topology, TopologyError

DOCKER_TIMEOUT_S = 60.0
MAX_DISK_BYTES = 256 * 1024 * 1024
FILLER = "fault-filler"


class DockerBackend:
    """:class:`~.backend.Backend` over a running compose testnet."""

    name = "docker"

    def __init__(self, topology: Topology, project: str = "p2pm", *,
                 python: str = "python3", data_dir: str = "/data",
                 wallet_dir: str = "/data/wallet", mint_site: str | None = None,
                 mint_wallet: str = "/data/mint", docker: str = "docker") -> None:
        self.topology = topology
        self.project = project
        self.python = python
        self._data_dir = data_dir
        self._wallet_dir = wallet_dir
        self._mint_site = mint_site or topology.buyers[0].name
        self.mint_wallet = mint_wallet
        self.docker = docker
        self.cut: set[str] = set()

    def container(self, name: str) -> str:
        return f"{self.project}-{name}"

    def network_of(self, name: str) -> str:
        """The compose network in front of a site, router or proxy."""
        try:
            behind = self.topology.site(name).behind
        except TopologyError:
            self.topology.gateway(name)
            behind = None
        return f"{self.project}-{behind or 'internet'}"

    def _address(self, name: str) -> str:
        try:
            return self.topology.site(name).address
        except TopologyError:
            return self.topology.gateway(name).address

    def _docker(self, *args: str, timeout_s: float = DOCKER_TIMEOUT_S
                ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.docker, *args], capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise TestnetError(f"docker {' '.join(args)} failed: {done.stderr.strip()}",
                               list(args))
        return done

    def p2pmarket(self, site: str, args: list[str], timeout_s: float
                  ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.docker, "exec", self.container(site), self.python,
                               "-m", "p2pmarket", *args], capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL)

    def data_dir(self, site: str) -> str:
        return self._data_dir

    def wallet_dir(self, name: str) -> str:
        return self.mint_wallet if name == self.topology.mint else self._wallet_dir

    @property
    def mint_site(self) -> str:
        return self._mint_site

    def kill(self, site: str) -> None:
        self._docker("kill", "--signal", "KILL", self.container(site))

    def start(self, site: str) -> None:
        self._docker("start", self.container(site))

    def disconnect(self, name: str) -> None:
        self._docker("network", "disconnect", self.network_of(name), self.container(name))
        self.cut.add(name)

    def reconnect(self, name: str) -> None:
        self._docker("network", "connect", "--ip", self._address(name),
                     self.network_of(name), self.container(name))
        self.cut.discard(name)
        behind = self.topology.site(name).behind if name in {
            s.name for s in self.topology.sites} else None
        if behind is not None:
            gw = self.topology.gateway(behind)
            if isinstance(gw, Router):   # the route docker dropped with the interface
                self._docker("exec", self.container(name), "ip", "route", "replace",
                             "default", "via", gw.gateway)

    def rss_kib(self, site: str) -> int | None:
        try:
            pid = self._docker("inspect", "-f", "{{.State.Pid}}",
                               self.container(site)).stdout.strip()
            for line in Path(f"/proc/{int(pid)}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except (TestnetError, OSError, ValueError):
            return None
        return None

    def limit_disk(self, site: str) -> None:
        out = self._docker("exec", self.container(site), "df", "-B1", "--output=fstype,size",
                           self._data_dir).stdout.split()
        if len(out) < 4 or out[2] != "tmpfs" or int(out[3]) > MAX_DISK_BYTES:
            raise TestnetError(f"{site}'s data dir {self._data_dir} is not a small tmpfs "
                               f"(compose: tmpfs: [\"{self._data_dir}:size=48m\"]): {out}",
                               site)

    def fill_disk(self, site: str) -> None:
        self.limit_disk(site)      # never fill anything but the small tmpfs
        subprocess.run([self.docker, "exec", self.container(site), "sh", "-c",
                        f"dd if=/dev/zero of={self._data_dir}/{FILLER} bs=4096 "
                        f"count={MAX_DISK_BYTES // 4096}"], capture_output=True,
                       timeout=DOCKER_TIMEOUT_S, stdin=subprocess.DEVNULL)

    def free_disk(self, site: str) -> None:
        self._docker("exec", self.container(site), "rm", "-f",
                     f"{self._data_dir}/{FILLER}")

    def close(self) -> None:
        for name in sorted(self.cut):
            self.reconnect(name)
