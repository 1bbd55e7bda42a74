"""A node on any address: what it advertises, one node per data dir, one network per data
dir, and bind errors or bad settings as one error line (issue 11, item 1)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from p2pmarket.cli import testnet
from p2pmarket.core.config import DataDir, Settings, load_genesis, save_genesis
from p2pmarket.core.genesis import ConfigError, Genesis, NotaryInfo
from p2pmarket.core.identity import Identity
from p2pmarket.core.keyfile import load_key
from p2pmarket.node.addresses import route_source
from p2pmarket.node.service import Node


def one_node(root: Path, **overrides: object) -> Node:
    [path] = testnet.create(root, 1)
    data = DataDir(path)
    settings = Settings.load(data.config, env={}, flags=dict(overrides))
    return Node(data, settings, load_genesis(root / "genesis.json"), load_key(data.key))


async def test_a_node_on_wildcard_and_port_zero_advertises_what_it_bound(
        tmp_path: Path) -> None:
    """Listening on 0.0.0.0 with ports 0, the record names a routable address and the
    ports actually bound, never 0.0.0.0 or port 0."""
    node = one_node(tmp_path, listen_host="0.0.0.0", http_port=0, dht_port=0)
    await node.start()
    try:
        await node.advertised.wait()
        record = await node.dht.get_host(node.identity.node_id)
        assert record is not None
        assert node.peer_site.port != 0 and node.dht.port != 0
        assert record.url == f"http://127.0.0.1:{node.peer_site.port}"
        assert record.dht == ("127.0.0.1", node.dht.port)
        assert node.url == record.url
        status = await node.control_handlers()["status"]({})
        assert status["url"] == record.url and status["dht_address"] == ["127.0.0.1", node.dht.port]
    finally:
        await node.stop()


def test_route_source_is_the_local_end_of_the_route() -> None:
    assert route_source(["127.0.0.1"], "0.0.0.0") == "127.0.0.1"
    assert route_source([], "0.0.0.0") == "127.0.0.1"
    assert route_source([], "198.18.0.5") == "198.18.0.5"


def test_one_node_per_data_dir(tmp_path: Path) -> None:
    data = DataDir(tmp_path / "d")
    data.create()
    fd = data.acquire()
    try:
        with pytest.raises(ConfigError, match="another node runs on the data dir"):
            data.acquire()
    finally:
        import os
        os.close(fd)
    os_fd = data.acquire()   # released: free again
    import os
    os.close(os_fd)


def test_a_data_dir_stays_with_its_network(tmp_path: Path) -> None:
    def genesis(name: str) -> Genesis:
        return Genesis(name, Identity.generate().public_key,
                       (NotaryInfo(Identity.generate().public_key, "http://127.0.0.1:1"),))

    data = DataDir(tmp_path / "d")
    data.create()
    first, other = genesis("a"), genesis("b")
    data.bind_network(first)
    data.bind_network(first)
    with pytest.raises(ConfigError, match="belongs to network"):
        data.bind_network(other)


@pytest.mark.parametrize(("flags", "message"), [
    ({"cpu_mhz": -1}, "must not be negative"),
    ({"memory_kib": -5}, "must not be negative"),
    ({"http_port": 70000}, "must be a port"),
    ({"tick_seconds": 0}, "must be positive"),
    ({"http_proxy": "proxy:8888"}, "http:// URL"),
    ({"relay": "perhaps"}, "bad value"),
])
def test_bad_settings_are_refused(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(None, env={}, flags=flags)


def test_boolean_settings_from_text() -> None:
    assert Settings.load(None, env={"P2PMARKET_RELAY": "false"}).relay is False
    assert Settings.load(None, env={"P2PMARKET_NAT": "yes"}).nat is True


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2pmarket", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def node_args(path: Path, *extra: str) -> list[str]:
    return ["node", "--data-dir", str(path), *extra]


def test_a_port_in_use_is_one_error_line(tmp_path: Path) -> None:
    [path] = testnet.create(tmp_path, 1)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli(*node_args(path, "--http-port", str(port)))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: cannot listen for the peer API (TCP) on 127.0.0.1:")
    assert "Traceback" not in done.stderr


def test_an_address_not_ours_and_a_negative_capacity_are_one_error_line(
        tmp_path: Path) -> None:
    [path] = testnet.create(tmp_path, 1)
    done = run_cli(*node_args(path, "--listen-host", "198.18.255.254"))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: cannot listen")
    done = run_cli(*node_args(path, "--cpu-mhz", "-4"))
    assert done.returncode == 1
    assert "must not be negative" in done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr


def test_another_networks_genesis_is_refused(tmp_path: Path) -> None:
    [path] = testnet.create(tmp_path, 1)
    DataDir(path).bind_network(load_genesis(path / "genesis.json"))
    other = tmp_path / "other.json"
    save_genesis(Genesis("other", Identity.generate().public_key,
                         (NotaryInfo(Identity.generate().public_key, "http://127.0.0.1:1"),)),
                 other)
    done = run_cli(*node_args(path, "--genesis", str(other)))
    assert done.returncode == 1
    assert "belongs to network" in done.stderr


def test_the_relay_operator_sets_the_circuit_limits(tmp_path: Path) -> None:
    node = one_node(tmp_path, relay_circuit_seconds=60, relay_circuit_bytes=1 << 20)
    assert node.relay is not None
    assert (node.relay.limits.circuit_seconds, node.relay.limits.circuit_bytes) == (
        60.0, 1 << 20)
    assert one_node(tmp_path / "b", relay=False).relay is None
    with pytest.raises(ConfigError, match="must be positive"):
        Settings.load(None, env={}, flags={"relay_circuit_bytes": 0})
