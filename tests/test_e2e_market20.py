"""A market of 20 node processes on loopback, through the command line: a buyer spreads
its budget over 3 hosts, cancels one lease and gets what was left back to the
micro-credit; a following buyer moves its money away from a host whose price a whale
raises; the notary's supply equals the mints throughout (issue 12)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pmarket.core.identity import node_id_of
from tests.test_e2e import balance, cli, cli_json

MINT = 100                       # credits minted to the buyer
NODES = 20
MINTED = [MINT]                  # every mint of the module, in credits


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("m20") / "net"
    cli("testnet", "up", "--nodes", str(NODES), "--dir", root, "--tick-seconds", "0.5")
    try:
        wallet = root.parent / "wallet"
        cli("wallet", "new", "--genesis", root / "genesis.json", "--wallet", wallet)
        key = cli_json("wallet", "show", "--wallet", wallet)["key"]
        cli("bank", "mint", "--mint-wallet", root / "mint", "--to", key,
            "--amount", str(MINT))
        yield root, wallet
    finally:
        cli("testnet", "down", "--dir", root, check=False)


def supply_ok(root: Path, wallet: Path) -> None:
    ledger = cli_json("ledger", "supply", "--wallet", wallet)
    assert ledger["errors"] == 0 and ledger["supply"] == sum(MINTED) * 1_000_000
    assert all(n["ok"] for n in ledger["notaries"])


def test_buy_over_three_hosts_cancel_one_and_get_the_rest_back(
        market: tuple[Path, Path]) -> None:
    root, wallet = market
    assert len(cli_json("hosts", "--wallet", wallet, "--limit", "30")["hosts"]) == NODES
    before = balance(wallet)
    report = cli_json("buy", "--wallet", wallet, "--budget", "6", "--duration", "1h",
                      "--hosts", "3", "cpu:1,0.1,1", "memory:1,64MiB,512MiB")
    bought = report["purchases"]
    assert len({p["host"] for p in bought}) == 3 and report["unfinished"] == []
    paid = sum(p["paid"] for p in bought)
    assert paid == 6_000_000                                   # the budget, exactly
    assert balance(wallet) == before - paid
    supply_ok(root, wallet)

    lease = bought[0]["lease"]["lease_id"]
    cancelled = cli_json("cancel", lease, "--wallet", wallet)
    assert cancelled["status"] == "done"
    refunded = int(cancelled["refunded"])
    assert 0 < refunded <= bought[0]["paid"]
    # the refund is certified and in the wallet, to the micro-credit
    assert balance(wallet) == before - paid + refunded == int(cancelled["balance"])
    supply_ok(root, wallet)
    leases = {x["lease"]["lease_id"]: x for x in
              cli_json("leases", "--wallet", wallet)["leases"] if x.get("lease")}
    assert set(leases) >= {p["lease"]["lease_id"] for p in bought}


def funded(root: Path, name: str, credits: int) -> Path:
    wallet = root.parent / name
    cli("wallet", "new", "--genesis", root / "genesis.json", "--wallet", wallet)
    key = cli_json("wallet", "show", "--wallet", wallet)["key"]
    cli("bank", "mint", "--mint-wallet", root / "mint", "--to", key, "--amount", str(credits))
    MINTED.append(credits)
    return wallet


def lease_hosts(wallet: Path) -> list[bytes]:
    """The hosts of the leases a wallet holds (read from its leases.json, which the
    following process writes atomically)."""
    path = wallet / "leases.json"
    doc = json.loads(path.read_text()) if path.exists() else {}
    return [node_id_of(bytes.fromhex(r["host_key"])) for r in doc.values()]


def test_buy_follow_moves_money_away_from_a_host_whose_price_rises(
        market: tuple[Path, Path]) -> None:
    root, _ = market
    follower = funded(root, "follower", 10)
    whale = funded(root, "whale", 50)
    follow = subprocess.Popen(
        [sys.executable, "-m", "p2pmarket", "buy", "--wallet", str(follower), "--budget", "6",
         "--duration", "1h", "--hosts", "3", "--follow", "--every", "0.5",
         "--follow-for", "25s", "--json", "cpu:1,0.1,1", "memory:1,64MiB,512MiB"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(lease_hosts(follower)) < 3 and follow.poll() is None:
            assert time.monotonic() < deadline, "the follower bought no 3 leases in 30 s"
            time.sleep(0.2)
        target = lease_hosts(follower)[0]
        raised = cli_json("buy", "--wallet", whale, "--budget", "40", "--duration", "1h",
                          "--hosts", "1", "--host", target.hex(),
                          "cpu:1,0.1,1", "memory:1,64MiB,512MiB")
        assert [p["host"] for p in raised["purchases"]] == [target.hex()]
        out, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert follow.returncode == 0, err
    doc = json.loads(out)
    bought, moved = doc["purchase"]["purchases"], doc["follow"]
    assert len({p["host"] for p in bought}) == 3 and moved["errors"] == []
    share = next(p["paid"] for p in bought if p["host"] == target.hex())
    # money left the host whose price rose, by more than the 5 % threshold
    assert any(m["host"] == target.hex() and m["kind"] in ("refund", "cancel")
               for m in moved["moves"]), moved
    at_target = next(h for h in moved["per_host"] if h["host"] == target.hex())
    assert at_target["spent"] < share - 300_000
    assert 0 < moved["spent"] <= 6_000_000
    assert moved["spent"] == sum(h["spent"] for h in moved["per_host"])
    assert balance(follower) == 10_000_000 - moved["spent"]   # to the micro-credit
    supply_ok(root, follower)
