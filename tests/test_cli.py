"""The command line: bad input gives one readable error line, exit code = errors, no change."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pmarket.cli.buy import parse_duration
from p2pmarket.cli.main import main
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.config import load_genesis, save_genesis
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.genesis import Genesis, NotaryInfo
from p2pmarket.core.identity import Identity


@pytest.fixture
def genesis_file(tmp_path: Path) -> Path:
    notary = Identity.generate()
    g = Genesis(network="cli-test", mint_key=Identity.generate().public_key,
                notaries=(NotaryInfo(notary.public_key, "http://127.0.0.1:1"),))
    path = tmp_path / "genesis.json"
    save_genesis(g, path)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("args", [
    ["--help"], ["node", "--help"], ["wallet", "new", "--help"], ["buy", "--help"],
    ["hosts", "--help"], ["leases", "--help"], ["testnet", "up", "--help"],
    ["bank", "mint", "--help"], ["status", "--help"],
])
def test_help_has_examples_and_exits_zero(capsys: pytest.CaptureFixture[str],
                                          args: list[str]) -> None:
    code, out, _ = run(capsys, *args)
    assert code == 0
    assert "usage:" in out
    if args != ["--help"] and args[0] not in ("status",):
        assert "example" in out


def test_usage_error_is_one_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "buy", "--budget")
    assert code == 1
    assert "error" in err
    code, _, _ = run(capsys, "frobnicate")
    assert code == 1


def test_wallet_new_show_and_refuse_overwrite(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path, genesis_file: Path) -> None:
    w = tmp_path / "w"
    code, out, _ = run(capsys, "wallet", "new", "--genesis", str(genesis_file), "--wallet", str(w))
    assert code == 0
    key = WalletDir(w).identity().public_key.hex()
    assert key in out
    code, _, err = run(capsys, "wallet", "new", "--genesis", str(genesis_file),
                       "--wallet", str(w))
    assert code == 1
    assert err.startswith("error: a wallet already exists") and err.count("\n") == 1
    assert WalletDir(w).identity().public_key.hex() == key  # unchanged
    code, out, _ = run(capsys, "wallet", "show", "--wallet", str(w), "--json")
    assert code == 0 and key in out


@pytest.mark.parametrize("args,message", [
    (["wallet", "show", "--wallet", "{missing}"], "no wallet in"),
    (["wallet", "new", "--genesis", "{missing}/g.json", "--wallet", "{tmp}/x"],
     "no genesis file"),
    (["bank", "mint", "--mint-wallet", "{wallet}", "--to", "zz", "--amount", "1"],
     "public key must be 64 hex"),
    (["bank", "mint", "--mint-wallet", "{wallet}", "--to", "ab" * 32, "--amount", "-5"],
     "amount must be positive"),
    (["bank", "mint", "--mint-wallet", "{wallet}", "--to", "ab" * 32, "--amount", "1e30"],
     "too large"),
    (["buy", "--wallet", "{wallet}", "--budget", "abc", "cpu:1,0.1,1"], "not an amount"),
    (["buy", "--wallet", "{wallet}", "--budget", "1", "--duration", "soon", "cpu:1,0.1,1"],
     "duration"),
    (["buy", "--wallet", "{wallet}", "--budget", "1", "gpu:1,1,2"], "unknown resource"),
    (["buy", "--wallet", "{wallet}", "--budget", "1", "memory:1,2GiB,1GiB"], "min"),
    (["buy", "--wallet", "{wallet}", "--budget", "1", "--hosts", "0", "cpu:1,0.1,1"],
     "--hosts"),
    (["audit", "status", "abc", "--wallet", "{wallet}"], "host must be a hex public key"),
    (["audit", "status", "zz" * 20, "--wallet", "{wallet}"], "host must be a hex public key"),
    (["audit", "status", "ab" * 21, "--wallet", "{wallet}"], "host must be a hex public key"),
    (["status", "--data-dir", "{missing}"], "no running node"),
    (["testnet", "status", "--dir", "{missing}"], "no testnet running"),
    (["testnet", "up", "--nodes", "0", "--dir", "{tmp}/tn"], "1 to 64 nodes"),
])
def test_bad_arguments_give_one_readable_line(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, genesis_file: Path,
        args: list[str], message: str) -> None:
    wallet = tmp_path / "wallet"
    WalletDir(wallet).create(load_genesis(genesis_file))
    before = sorted(p.name for p in wallet.iterdir())
    filled = [a.format(missing=tmp_path / "missing", tmp=tmp_path, wallet=wallet) for a in args]
    code, _, err = run(capsys, *filled)
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err
    assert sorted(p.name for p in wallet.iterdir()) == before  # nothing written


def test_parse_duration() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("30m") == 1800
    assert parse_duration("2h") == 7200
    assert parse_duration("1d") == 86400
    for bad in ("0", "-1h", "1w", "h", "99999999d"):
        with pytest.raises(P2PMarketError):
            parse_duration(bad)


def test_host_status_shows_bids_in_the_bid_syntax() -> None:
    from p2pmarket.cli.host import bid_text

    assert bid_text("cpu", [1_000_000, "0.1", "1"]) == "1, 10% of capacity, 100% of capacity"
    assert bid_text("memory", [2_500_000, 256 * 1024, 1 << 20]) == "2.5, 256 MiB, 1 GiB"
    assert bid_text("tcp_port,30000", [1_000_000, None, None]) == "1, -, -"
    assert bid_text("disk", "not a bid") == "not a bid"


def test_json_output_shows_bytes_as_hex(capsys: pytest.CaptureFixture[str]) -> None:
    from p2pmarket.cli.terminal import dump

    dump({"host": b"\x01\xab", "proofs": [{"id": b"\x02"}], "dir": Path("/x")})
    assert capsys.readouterr().out.split() == [
        "{", '"dir":', '"/x",', '"host":', '"01ab",', '"proofs":', "[", "{", '"id":', '"02"',
        "}", "]", "}"]


def test_set_min_price_takes_credits(capsys: pytest.CaptureFixture[str],
                                     tmp_path: Path) -> None:
    for bad, said in (("-1", "must be positive"), ("0.0000001", "at most 6 decimals"),
                      ("five", "not an amount")):
        code, _, err = run(capsys, "host", "set-min-price", "--data-dir", str(tmp_path),
                           "cpu", bad)
        assert code == 1 and said in err and len(err.strip().splitlines()) == 1
