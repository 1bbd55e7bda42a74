"""What the fault harness (:mod:`.faults`) needs from a running testnet, and the
namespace testnet's answer (:class:`NetnsBackend`; the Docker one is
:mod:`.dockerbackend`).

A backend runs ``p2pmarket`` commands at a site (in its namespace or container),
names the paths those commands use there, and injects the faults: SIGKILL and
restart a node, cut a site or gateway off its network and join it again, and put
a node's data dir on a small file system it can fill and free. Nothing here
decides anything: the harness says what to break and checks what it finds.

The namespace backend cuts a site off by setting the bridge's end of its veth
(``v<name>``, in the namespace in front of it) down and up again; its small disk is
a tmpfs of :data:`DISK_BYTES` mounted over the node's data dir (the node is stopped,
its files copied onto the tmpfs, the node started again), undone by :meth:`close`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from p2pmarket.testnet.netns import NetnsTestnet
from p2pmarket.testnet.plan import namespace, veth_name
from p2pmarket.testnet.state import TestnetError
from p2pmarket.testnet.teardown import run
from p2pmarket.testnet.topology import Topology, TopologyError

DISK_BYTES = 48 * 1024 * 1024
FILLER = "fault-filler"          # the file that fills a node's disk, in its data dir
READY_S = 90.0


class Backend(Protocol):
    """A running testnet as the fault harness sees it."""

    name: str                   # "netns" or "docker"
    topology: Topology

    def p2pmarket(self, site: str, args: list[str], timeout_s: float
                  ) -> subprocess.CompletedProcess[str]:
        """Run ``p2pmarket ARGS`` at a site (text output captured, never raises on a
        non-zero exit; raises :class:`subprocess.TimeoutExpired`)."""
        ...

    def data_dir(self, site: str) -> str:
        """A node's data dir as the commands run at that site see it."""
        ...

    def wallet_dir(self, name: str) -> str:
        """A buyer's wallet dir (at the buyer's site), or the mint's (at
        :attr:`mint_site`)."""
        ...

    @property
    def mint_site(self) -> str:
        """The site where ``bank mint`` with the mint's wallet runs."""
        ...

    def kill(self, site: str) -> None:
        """SIGKILL a node (a crash)."""
        ...

    def start(self, site: str) -> None:
        """Start a node killed or stopped before (not waiting for it to be ready)."""
        ...

    def disconnect(self, name: str) -> None:
        """Cut a site, router or proxy off the network in front of it."""
        ...

    def reconnect(self, name: str) -> None:
        """Join it again, with the same address."""
        ...

    def rss_kib(self, site: str) -> int | None:
        """A node's resident memory, KiB (None if it does not run)."""
        ...

    def limit_disk(self, site: str) -> None:
        """Put a node's data dir on a small file system of its own (the node may be
        restarted; it is ready again on return)."""
        ...

    def fill_disk(self, site: str) -> None:
        """Fill that file system (after :meth:`limit_disk`) to the last byte."""
        ...

    def free_disk(self, site: str) -> None:
        """Remove what :meth:`fill_disk` wrote."""
        ...

    def close(self) -> None:
        """Undo what this backend made (reconnect everything, unmount its disks); the
        testnet itself stays up."""
        ...


class CutsAndDisks:
    """What both backends do alike: the sites cut off (``cut``, joined again by
    :meth:`close` through the backend's ``reconnect``) and the small disks."""

    cut: set[str]
    disks: SmallDisks

    def reconnect(self, name: str) -> None:
        raise NotImplementedError

    def limit_disk(self, site: str) -> None:
        self.disks.limit(site)

    def fill_disk(self, site: str) -> None:
        self.disks.fill(site)

    def free_disk(self, site: str) -> None:
        self.disks.free(site)

    def close(self) -> None:
        for name in sorted(self.cut):
            self.reconnect(name)
        self.disks.close()


class NetnsBackend(CutsAndDisks):
    """:class:`Backend` over a :class:`NetnsTestnet` (root)."""

    name = "netns"

    def __init__(self, net: NetnsTestnet, python: str) -> None:
        self.net = net
        self.topology = net.topology
        self.python = python
        self.cut: set[str] = set()
        self.disks = SmallDisks(net.data_dir, net.stop, net.start,
                                lambda: net.wait_ready(READY_S))

    def p2pmarket(self, site: str, args: list[str], timeout_s: float
                  ) -> subprocess.CompletedProcess[str]:
        return self.net.run_in(site, [self.python, "-m", "p2pmarket", *args],
                               capture_output=True, text=True, timeout=timeout_s,
                               stdin=subprocess.DEVNULL)

    def data_dir(self, site: str) -> str:
        return str(self.net.data_dir(site))

    def wallet_dir(self, name: str) -> str:
        return str(self.net.wallet_dir(name))

    @property
    def mint_site(self) -> str:
        return self.topology.buyers[0].name

    def kill(self, site: str) -> None:
        if not self.net.kill(site):
            raise TestnetError(f"the node of {site} was not running", site)

    def start(self, site: str) -> None:
        self.net.start(site)

    def _upstream(self, name: str) -> str:
        """The namespace whose bridge ``name``'s veth hangs on."""
        try:
            behind = self.topology.site(name).behind
        except TopologyError:     # a router or proxy: on the internet
            self.topology.gateway(name)
            behind = None
        return namespace(self.net.state.prefix, behind)

    def disconnect(self, name: str) -> None:
        run(["ip", "-n", self._upstream(name), "link", "set", veth_name(name), "down"])
        self.cut.add(name)

    def reconnect(self, name: str) -> None:
        run(["ip", "-n", self._upstream(name), "link", "set", veth_name(name), "up"])
        self.cut.discard(name)

    def rss_kib(self, site: str) -> int | None:
        pid = self.net.pid(site)
        if pid is None:
            return None
        return rss_kib_of(pid)



class SmallDisks:
    """Small file systems under nodes' data dirs, as this machine sees them (both
    backends: a container's data dir is a bind mount of the same dir). :meth:`limit`
    stops the node (``stop``: whether it ran), copies its data dir aside, mounts a
    tmpfs of :data:`DISK_BYTES` over it, copies the files back and starts the node
    again (``start``, then ``wait_ready``); :meth:`close` undoes it the same way."""

    def __init__(self, host_dir: Callable[[str], Path], stop: Callable[[str], bool],
                 start: Callable[[str], None], wait_ready: Callable[[], None]) -> None:
        self.host_dir = host_dir
        self.stop = stop
        self.start = start
        self.wait_ready = wait_ready
        self.mounts: dict[str, Path] = {}

    def limit(self, site: str) -> None:
        if site in self.mounts:
            return
        d = self.host_dir(site)
        self.stop(site)
        keep = Path(tempfile.mkdtemp(prefix=f"p2pm-disk-{site}-"))
        shutil.copytree(d, keep / "data")
        run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES},mode=0700",
             f"p2pm-{site}", str(d)])
        self.mounts[site] = keep
        shutil.copytree(keep / "data", d, dirs_exist_ok=True)
        self.start(site)
        self.wait_ready()

    def fill(self, site: str) -> None:
        if site not in self.mounts:
            raise TestnetError(f"{site}'s data dir is not on a small disk (limit_disk)", site)
        with open(self.host_dir(site) / FILLER, "wb", buffering=0) as f:
            for size in (1 << 20, 4096, 1):   # big blocks, then the last partial ones
                for _ in range(2 * DISK_BYTES // size if size > 1 else 4096):  # bounded
                    try:
                        f.write(b"\0" * size)
                    except OSError:
                        break

    def free(self, site: str) -> None:
        (self.host_dir(site) / FILLER).unlink(missing_ok=True)

    def close(self) -> None:
        for site, keep in sorted(self.mounts.items()):
            d = self.host_dir(site)
            self.free(site)
            running = self.stop(site)
            shutil.rmtree(keep / "data")
            shutil.copytree(d, keep / "data")
            umount(d)
            shutil.copytree(keep / "data", d, dirs_exist_ok=True)
            shutil.rmtree(keep)
            if running:
                self.start(site)
        self.mounts.clear()


def rss_kib_of(pid: int) -> int | None:
    """A process's resident memory (KiB, from /proc), None if it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def umount(path: Path, tries: int = 50) -> None:
    """Unmount ``path``, trying again while a process that just exited still holds it."""
    for _ in range(tries):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    run(["umount", str(path)])
