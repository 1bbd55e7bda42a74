"""``p2pmarket network init``: a network deployable without writing Python."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from p2pmarket.cli.main import main
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.config import DataDir, load_genesis
from p2pmarket.core.keyfile import load_key

URLS = [f"http://198.18.0.{11 + i}:7400" for i in range(4)]


def test_init_writes_genesis_notary_dirs_and_mint(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "net"
    args = ["network", "init", "--dir", str(root), "--name", "lab", "--f", "1",
            "--shared-prefix", "198.18.0.0/15"]
    for url in URLS:
        args += ["--notary", url]
    assert main(args) == 0
    printed = capsys.readouterr().out
    genesis = load_genesis(root / "genesis.json")
    assert genesis.f == 1 and genesis.quorum == 3
    assert [n.url for n in genesis.notaries] == URLS
    assert [(b.host, b.dht_port) for b in genesis.bootstrap] == [
        (f"198.18.0.{11 + i}", 7401) for i in range(4)]
    assert genesis.shared_prefixes == ("198.18.0.0/15",)
    for i, notary in enumerate(genesis.notaries, start=1):
        data = DataDir(root / f"notary-{i}")
        assert load_key(data.key).public_key == notary.key
        assert stat.S_IMODE(data.key.stat().st_mode) == 0o600
        assert load_genesis(data.genesis) == genesis
        data.bind_network(genesis)   # bound to this network already
        assert f"notary-{i}" in printed
    assert WalletDir(root / "mint").identity().public_key == genesis.mint_key
    assert "bank mint" in printed and genesis.network_id.hex() in printed
    # a second init never overwrites a network
    assert main(args) == 1
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    (["--notary", "198.18.0.11:7400"], "http://HOST:PORT"),
    (["--notary", URLS[0], "--f", "1"], "3f+1"),
    (["--notary", URLS[0], "--notary", URLS[0]], "own URL"),
    (["--notary", URLS[0], "--shared-prefix", "lan"], "CIDR"),
    (["--notary", URLS[0], "--bootstrap", "198.18.0.11"], "HOST:DHT_PORT=URL"),
])
def test_bad_init_arguments_are_one_error_and_write_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
        message: str) -> None:
    root = tmp_path / "net"
    assert main(["network", "init", "--dir", str(root), "--name", "x", *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (root / "genesis.json").exists()


def test_explicit_bootstrap_peers(tmp_path: Path) -> None:
    root = tmp_path / "net"
    assert main(["network", "init", "--dir", str(root), "--name", "x", "--notary", URLS[0],
                 "--bootstrap", "198.18.0.21:7501=http://198.18.0.21:7500"]) == 0
    doc = json.loads((root / "genesis.json").read_text())
    assert doc["bootstrap"] == [{"host": "198.18.0.21", "dht_port": 7501,
                                 "url": "http://198.18.0.21:7500"}]
