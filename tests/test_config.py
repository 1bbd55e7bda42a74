"""Settings precedence, genesis validation, and the testnet layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from p2pmarket.cli import testnet
from p2pmarket.core.config import DataDir, Settings, load_genesis, save_genesis
from p2pmarket.core.genesis import ConfigError, Genesis, NotaryInfo
from p2pmarket.core.identity import Identity
from p2pmarket.core.keyfile import load_key

KEYS = [Identity(bytes([i + 1]) * 32).public_key for i in range(5)]


def notaries(n: int) -> tuple[NotaryInfo, ...]:
    return tuple(NotaryInfo(KEYS[i], f"http://127.0.0.1:{7000 + i}") for i in range(n))


def test_settings_precedence(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(Settings(http_port=1000, dht_port=2000, cpu_mhz=1).to_toml())
    s = Settings.load(path, env={"P2PMARKET_DHT_PORT": "3000", "P2PMARKET_CPU_MHZ": "2"},
                      flags={"cpu_mhz": 3, "vmm_uri": None})
    assert (s.http_port, s.dht_port, s.cpu_mhz) == (1000, 3000, 3)
    assert s.vmm_uri == "test:///default"
    assert Settings.load(path, env={}) == Settings(http_port=1000, dht_port=2000, cpu_mhz=1)


@pytest.mark.parametrize("text,message", [
    ("[node]\nhttp_port = 'x'\n", "bad value"),
    ("[node]\nnonsense = 1\n", "unknown setting"),
    ("[node\n", "config.toml"),
])
def test_bad_settings(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Settings.load(path, env={})


def test_genesis_round_trip_and_quorum(tmp_path: Path) -> None:
    g = Genesis(network="n", mint_key=KEYS[0], notaries=notaries(4), f=1)
    save_genesis(g, tmp_path / "g.json")
    assert load_genesis(tmp_path / "g.json") == g
    assert g.quorum == 3
    assert g.network_id == load_genesis(tmp_path / "g.json").network_id


@pytest.mark.parametrize("kwargs,message", [
    ({"notaries": notaries(3), "f": 1}, "3f\\+1"),
    ({"notaries": (), "f": 0}, "at least one notary"),
    ({"notaries": notaries(1) * 2, "f": 0}, "distinct"),
    ({"notaries": notaries(1), "mint_key": b"short"}, "mint key"),
])
def test_bad_genesis(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"network": "n", "mint_key": KEYS[0]}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        Genesis(**args)  # type: ignore[arg-type]


def test_malformed_genesis_file(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    path.write_text("{")
    with pytest.raises(ConfigError, match="not JSON"):
        load_genesis(path)
    path.write_text(json.dumps({"network": "n"}))
    with pytest.raises(ConfigError, match="malformed"):
        load_genesis(path)


def test_testnet_layout(tmp_path: Path) -> None:
    root = tmp_path / "tn"
    dirs = testnet.create(root, 3)
    genesis = load_genesis(root / "genesis.json")
    keys = [load_key(DataDir(d).key).public_key for d in dirs]
    assert genesis.notary_keys == {keys[0]}
    assert len(genesis.bootstrap) == 2
    assert load_key(root / "mint" / "wallet.key").public_key == genesis.mint_key
    ports = set()
    for d in dirs:
        s = Settings.load(DataDir(d).config, env={})
        ports |= {s.http_port, s.dht_port, s.control_port}
        assert load_genesis(DataDir(d).genesis) == genesis
        assert oct(os.stat(d).st_mode & 0o777) == "0o700"
    assert len(ports) == 9


def test_is_our_node_refuses_other_processes(tmp_path: Path) -> None:
    assert testnet.is_our_node(os.getpid(), str(tmp_path)) is False
    assert testnet.is_our_node(2**22 + 12345, str(tmp_path)) is False
    assert testnet.stop_pid(os.getpid(), str(tmp_path)) is False  # never signals us


@pytest.mark.parametrize(("ports", "message"), [
    ("30000-29999", "ports 1..65535"), ("0-10", "ports 1..65535"), ("a-b", "a port or"),
    ("1-9999", "at most 4096"), ("7400", "the node's own port"), ("30000,30001", "a port or")])
def test_bad_tcp_ports(ports: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(tcp_ports=ports, http_port=7400).check()


def test_tcp_ports_are_offered_as_unique_resources_until_the_owner_saves_others() -> None:
    from p2pmarket.auction.hostconfig import HostConfig
    config = HostConfig.defaults(4000, 1 << 20, 3, "30000-30009")
    assert config.unique == {"tcp_port,30000-30009": 3}
    assert config.updated({}).unique == config.unique
    assert config.updated({"unique": {"tcp_port,31000": 5}}).unique == {"tcp_port,31000": 5}
    assert HostConfig.defaults(4000, 1 << 20, 3).unique == {}
    Settings(tcp_ports="30000-30009").check()
