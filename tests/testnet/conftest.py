"""Fixtures of the testnet tests: the root check, namespace testnets that are always
taken down, probes (``probe.py``) run inside namespaces, and the session's one Docker
Compose testnet (``compose_net``: the default topology, up once, down at the end with
nothing of its project left)."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import p2pmarket
from p2pmarket.testnet.docker import DockerTestnet, missing_requirements
from p2pmarket.testnet.netns import NetnsTestnet
from p2pmarket.testnet.teardown import existing_namespaces

REPO = Path(p2pmarket.__file__).resolve().parents[1]
DEFAULT_TOPOLOGY = REPO / "testnet" / "default.toml"
PROBE = str(Path(__file__).with_name("probe.py"))
SERVER_START_S = 10.0
COMPOSE_PROJECT = "p2pmc"
COMPOSE_READY_S = 120.0
TESTNET_SETTINGS = {"audit_seconds": 2.0, "tick_seconds": 0.5}

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="namespace testnets need root and iproute2 (`ip`); run the tests as root")
needs_tools = pytest.mark.skipif(
    shutil.which("iptables") is None or shutil.which("tinyproxy") is None,
    reason="the default topology needs iptables and tinyproxy (apt-get install iptables "
           "tinyproxy)")


def until(what: str, timeout_s: float, check: Any) -> Any:
    """Poll ``check()`` until it gives something true (bounded in time)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s}s ({got!r})"
        time.sleep(0.5)


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


def docker_skip() -> str | None:
    """Why the compose testnet cannot run here, None if it can."""
    if os.geteuid() != 0:
        return "the docker testnet needs root (scripts/setup-docker); run the tests as root"
    missing = missing_requirements()
    return "; ".join(missing) if missing else None


def compose_leftovers(project: str) -> tuple[list[str], list[str]]:
    """The containers and networks of ``project`` still on this machine."""
    label = f"label=com.docker.compose.project={project}"
    ps = subprocess.run(["docker", "ps", "-aq", "--filter", label], capture_output=True,
                        text=True, check=True).stdout.split()
    nets = subprocess.run(["docker", "network", "ls", "-q", "--filter", label],
                          capture_output=True, text=True, check=True).stdout.split()
    return ps, nets


@pytest.fixture(scope="session")
def compose_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerTestnet]:
    """The default topology under Docker Compose, every node ready (skipped without
    root or docker); taken down at the end of the session, checked gone."""
    reason = docker_skip()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("compose") / "net"
    t = DockerTestnet.up(DEFAULT_TOPOLOGY, root, project=COMPOSE_PROJECT,
                         settings=TESTNET_SETTINGS)
    try:
        t.wait_ready(COMPOSE_READY_S)
        yield t
    finally:
        t.down()
        assert compose_leftovers(COMPOSE_PROJECT) == ([], [])
