"""Fixtures of the namespace testnet tests: the root check, testnets that are always
taken down, and probes (``probe.py``) run inside namespaces."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import p2pmarket
from p2pmarket.testnet.netns import NetnsTestnet
from p2pmarket.testnet.teardown import existing_namespaces

REPO = Path(p2pmarket.__file__).resolve().parents[1]
DEFAULT_TOPOLOGY = REPO / "testnet" / "default.toml"
PROBE = str(Path(__file__).with_name("probe.py"))
SERVER_START_S = 10.0

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="namespace testnets need root and iproute2 (`ip`); run the tests as root")
needs_tools = pytest.mark.skipif(
    shutil.which("iptables") is None or shutil.which("tinyproxy") is None,
    reason="the default topology needs iptables and tinyproxy (apt-get install iptables "
           "tinyproxy)")


def ours(prefix: str) -> list[str]:
    """The namespaces on this machine that belong to the testnet with ``prefix``."""
    return [ns for ns in existing_namespaces() if ns == prefix or ns.startswith(prefix + "-")]


@contextmanager
def running_testnet(topology: Path, root: Path, **kwargs: object) -> Iterator[NetnsTestnet]:
    """A namespace testnet that is taken down (and checked gone) whatever happens."""
    net = NetnsTestnet.up(topology, root, **kwargs)  # type: ignore[arg-type]
    try:
        yield net
    finally:
        net.down()
        assert ours(net.state.prefix) == []


@pytest.fixture(scope="module")
def default_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsTestnet]:
    """The default topology's namespaces, without nodes (shared by a module's tests)."""
    with running_testnet(DEFAULT_TOPOLOGY, tmp_path_factory.mktemp("netns") / "net",
                 start_nodes=False) as net:
        yield net


def probe(net: NetnsTestnet, site: str, *args: str) -> tuple[int, str]:
    """Run a client probe in a site's namespace: (exit code, output)."""
    done = net.run_in(site, [sys.executable, PROBE, *args], capture_output=True, text=True,
                      timeout=20)
    return done.returncode, (done.stdout + done.stderr).strip()


@contextmanager
def server(net: NetnsTestnet, site: str, port: int, udp_port: int | None = None
           ) -> Iterator[None]:
    """A probe server in a site's namespace, answering with each client's address."""
    args = [sys.executable, PROBE, "serve", str(port)]
    if udp_port is not None:
        args.append(str(udp_port))
    child = net.popen_in(site, args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, text=True)
    try:
        assert child.stdout is not None
        ready, _, _ = select.select([child.stdout], [], [], SERVER_START_S)
        line = child.stdout.readline() if ready else ""
        assert line.strip() == "ready", f"probe server in {site} did not start: {line!r}"
        yield
    finally:
        child.kill()
        child.wait(timeout=10)
