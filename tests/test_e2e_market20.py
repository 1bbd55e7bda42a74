"""A market of 20 node processes on loopback, through the command line: a buyer spreads
its budget over 3 hosts, cancels one lease and gets what was left back to the
micro-credit; the notary's supply equals the mints throughout (issue 12)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_e2e import balance, cli, cli_json

MINT = 100                       # credits minted to the buyer
NODES = 20


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
    assert ledger["errors"] == 0 and ledger["supply"] == MINT * 1_000_000
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
