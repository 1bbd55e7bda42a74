"""Up, down and the nodes of a namespace testnet, for real (root): down leaves nothing,
even after the runner was killed mid-build; real nodes get ready in their namespaces."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pmarket.cli.main import main
from p2pmarket.testnet import netns, procs, state, teardown
from tests.testnet.conftest import (
    DEFAULT_TOPOLOGY,
    REPO,
    needs_root,
    needs_tools,
    ours,
    probe,
    running_testnet,
)

pytestmark = needs_root
READY_S = 60.0
SMALL = """
[network]
name = "small"
f = 0
[node]
tick_seconds = 0.5
[sites.n1]
role = "notary"
address = "198.18.0.11"
[sites.h1]
role = "host"
address = "198.18.0.21"
[sites.b1]
role = "buyer"
address = "198.18.0.31"
"""
BUILD = ("import sys; from pathlib import Path; from p2pmarket.testnet.netns import "
         "NetnsTestnet; NetnsTestnet.up(Path(sys.argv[1]), Path(sys.argv[2]), "
         "start_nodes=sys.argv[3] == 'nodes'); print('up', flush=True); sys.stdin.read()")


def kill_runner_when(topology: Path, root: Path, nodes: bool,
                     made: Callable[[state.State], bool]) -> state.State:
    """Build in another process, SIGKILL it as soon as ``made(state)``; the state left.

    The runner is killed with its process group: the ``ip`` command it may be running
    dies with it, as in a crash of the machine's session. (Killing the runner alone
    let an ``ip netns add`` in flight finish after ``down`` had listed the namespaces,
    so one was left: a race of the test, not of ``down``.)"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runner = subprocess.Popen([sys.executable, "-c", BUILD, str(topology), str(root),
                               "nodes" if nodes else "-"], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline and runner.poll() is None:
            if state.exists(root) and made(state.load(root)):
                break
            time.sleep(0.002)
    finally:
        os.killpg(runner.pid, signal.SIGKILL)   # its own session: the group is its
        runner.wait(timeout=10)
    return state.load(root)


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.toml"
    path.write_text(SMALL)
    return path


@needs_tools
def test_down_removes_every_namespace_and_process_and_is_idempotent(tmp_path: Path) -> None:
    net = netns.NetnsTestnet.up(DEFAULT_TOPOLOGY, tmp_path / "net", start_nodes=False)
    prefix, proxy = net.state.prefix, net.pid("px1")
    assert len(ours(prefix)) == 15 and proxy is not None
    assert net.down() == 1
    assert ours(prefix) == [] and not procs.runs(proxy, "tinyproxy", str(tmp_path))
    assert not (tmp_path / "net" / "netns.json").exists()
    assert net.down() == 0 and teardown.down(tmp_path / "nowhere") == 0


@needs_tools
def test_down_cleans_up_after_a_runner_killed_mid_build(tmp_path: Path) -> None:
    root = tmp_path / "net"
    st = kill_runner_when(DEFAULT_TOPOLOGY, root, False, lambda st: len(st.namespaces) >= 3)
    assert not st.built and len(st.namespaces) >= 3 and ours(st.prefix)
    teardown.down(root)
    assert ours(st.prefix) == [] and not state.exists(root)


def test_down_ends_the_nodes_of_a_killed_runner(small: Path, tmp_path: Path) -> None:
    root = tmp_path / "net"
    st = kill_runner_when(small, root, True, lambda st: any(p.pid for p in st.processes))
    n1 = st.process("n1")
    assert n1 is not None and n1.pid is not None and procs.is_our_node(n1.pid, n1.arg)
    assert teardown.down(root) >= 1
    assert ours(st.prefix) == [] and not procs.is_our_node(n1.pid, n1.arg)


def test_down_finds_a_process_listed_before_its_pid_and_spares_others(
        small: Path, tmp_path: Path) -> None:
    net = netns.NetnsTestnet.up(small, tmp_path / "net", start_nodes=False)
    try:
        d = str(net.data_dir("h1"))
        sleeper = [sys.executable, "-c", "import sys, time; time.sleep(60)"]
        node = net.popen_in("h1", [*sleeper, "p2pmarket", d])   # looks like h1's node
        other = net.popen_in("h1", [*sleeper, "not-ours", d])
        listed = state.Proc("h1", "node", net.namespace("h1"), d)      # pid not known
        state.save(net.root, net.state.with_process(listed))
        assert procs.is_our_node(node.pid, d) and not procs.is_our_node(other.pid, d)
    finally:
        assert net.down() == 1
    assert not procs.is_our_node(node.pid, d)     # ended (and reaped) by down
    assert other.poll() is None and procs.runs(other.pid, "not-ours", d)
    node.wait(timeout=10)
    other.kill()
    other.wait(timeout=10)


def test_real_nodes_get_ready_and_survive_a_crash(small: Path, tmp_path: Path) -> None:
    with running_testnet(small, tmp_path / "net") as net:
        net.wait_ready(READY_S)
        rows = {r["name"]: r for r in net.rows()}
        assert rows["n1"]["ready"] and rows["h1"]["ready"] and rows["b1"]["ready"] is None
        assert rows["h1"]["namespace"] == f"{net.state.prefix}-h1"
        assert rows["h1"]["address"] == net.address("h1") == "198.18.0.21"
        st = net.statuses()["h1"]
        assert st["url"] == "http://198.18.0.21:7400" and st["dht_contacts"] >= 1
        assert probe(net, "b1", "connect", "198.18.0.11", "7400") == (0, "ok")
        pid = net.pid("h1")
        assert pid is not None and net.kill("h1") and net.pid("h1") is None
        with pytest.raises(state.TestnetError, match="h1 exited"):
            net.wait_ready(READY_S)
        net.start("h1")
        assert net.pid("h1") not in (None, pid)
        net.wait_ready(READY_S)
        assert netns.NetnsTestnet.open(net.root).pid("h1") == net.pid("h1")


def test_the_cli_up_status_down(small: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "net"
    try:
        assert main(["testnet", "up", "--netns", str(small), "--dir", str(root)]) == 0
        assert "namespace testnet of 2 nodes up" in capsys.readouterr().out
        assert main(["testnet", "status", "--dir", str(root), "--json"]) == 0
        sites = json.loads(capsys.readouterr().out)["sites"]
        assert [(s["name"], s["role"], s["ready"]) for s in sites] == [
            ("n1", "notary", True), ("h1", "host", True), ("b1", "buyer", None)]
        assert main(["testnet", "status", "--dir", str(root)]) == 0
        table = capsys.readouterr().out
        assert "198.18.0.21" in table and "notary" in table
    finally:
        prefix = state.load(root).prefix if state.exists(root) else None
        assert main(["testnet", "down", "--dir", str(root)]) == 0
    assert "removed the namespaces" in capsys.readouterr().out
    assert prefix is not None and ours(prefix) == []
