"""The buyer's command line (issue 12): units, exit codes, --json schemas, --dry-run,
lease states, -v after the command, --version. In-process markets are driven through
the command functions the parser names (``main`` runs its own event loop)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from p2pmarket.auction.lease import Lease, ResourceTerm
from p2pmarket.cli.buy import lease_doc
from p2pmarket.cli.main import parser, version
from p2pmarket.client.buyer import open_wallet
from p2pmarket.client.leases import lease_status
from p2pmarket.core.errors import P2PMarketError
from tests.client.test_lease_money import kill, ready
from tests.client.test_quote_before_pay import BIDS, FUNDS, funded, sends
from tests.market_helpers import local_market
from tests.test_cli import genesis_file, run

__all__ = ["genesis_file"]   # the fixture


async def command(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    args = parser().parse_args(list(argv))
    code = await args.run(args)
    captured = capsys.readouterr()
    return int(code), captured.out, captured.err


def test_version_and_verbose_after_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"p2pmarket {version()}"
    p = parser()
    assert p.parse_args(["buy", "-v", "-v", "--budget", "1", "cpu:1"]).verbose == 2
    assert p.parse_args(["-v", "buy", "--budget", "1", "cpu:1"]).verbose == 1
    assert p.parse_args(["buy", "--budget", "1", "cpu:1"]).verbose == 0
    assert p.parse_args(["wallet", "balance", "-v"]).verbose == 1


def test_balance_with_silent_notaries_is_an_error(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path, genesis_file: Path) -> None:
    w = str(tmp_path / "w")
    assert run(capsys, "wallet", "new", "--genesis", str(genesis_file), "--wallet", w)[0] == 0
    code, out, err = run(capsys, "wallet", "balance", "--wallet", w)
    assert code == 1
    assert "may be stale" in out
    [line] = err.strip().splitlines()
    assert line.startswith("error: 1 of 1 notaries did not answer: http://127.0.0.1:1")
    code, out, _ = run(capsys, "wallet", "balance", "--wallet", w, "--json")
    assert code == 1 and json.loads(out)["unanswered_notaries"] == ["http://127.0.0.1:1"]


def test_budget_error_is_in_credits(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                    genesis_file: Path) -> None:
    w = str(tmp_path / "w")
    run(capsys, "wallet", "new", "--genesis", str(genesis_file), "--wallet", w)
    code, _, err = run(capsys, "buy", "--wallet", w, "--budget", "5.25", "cpu:1,0.1,1")
    assert code == 1
    assert err.strip() == ("error: balance 0 credits is below the budget 5.25 credits")


def lease(allocs: dict[str, int], end: int = 2_000) -> Lease:
    return Lease("l1", b"\x01" * 20, b"\x02" * 32,
                 {r: ResourceTerm(1, 10, a) for r, a in allocs.items()}, 0, end, 7)


def test_lease_states() -> None:
    now = 1_000
    assert lease_status(lease({"cpu": 5}), True, False, False, now) == "active"
    assert lease_status(lease({"cpu": 0, "memory": 0}), True, False, False, now) == "outbid"
    assert lease_status(lease({"cpu": 5}, end=900), True, False, False, now) == "ended"
    assert lease_status(lease({"cpu": 5}), False, True, False, now) == "ended"
    assert lease_status(lease({"cpu": 5}), False, False, False, now) == "unreachable"
    assert lease_status(lease({"cpu": 5}), False, False, True, now) == "cancelled"
    assert lease_status(None, False, False, False, now) == "unknown"


def test_lease_json_names_its_units() -> None:
    doc = lease_doc(lease({"cpu": 5, "memory": 3}))
    assert doc["balance"] == 7 and doc["balance_credits"] == "0.000007"
    assert doc["resources"]["cpu"]["unit"] == "MHz"
    assert doc["resources"]["memory"]["unit"] == "KiB"


def check_lease_doc(doc: dict[str, Any]) -> None:
    assert set(doc) == {"lease_id", "host_id", "holder", "start", "end", "balance",
                        "balance_credits", "resources"}
    for term in doc["resources"].values():
        assert set(term) == {"min", "max", "alloc", "unit"}


async def test_buy_json_schema_dry_run_and_leases(capsys: pytest.CaptureFixture[str],
                                                  tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=3) as m:
        await ready(m)
        wallet = await funded(m)
        w = ["--wallet", str(wallet.root)]
        code, out, _ = await command(capsys, "buy", *w, "--budget", "2", "--hosts", "2",
                                     "--dry-run", "--json", *BIDS)
        doc = json.loads(out)
        assert code == 0 and doc["dry_run"] is True and doc["purchases"] == []
        assert sum(p["amount"] for p in doc["plan"]) == 2_000_000
        assert set(doc["plan"][0]) == {"host", "url", "amount", "amount_credits",
                                       "cost_per_hour", "cost_per_hour_credits"}
        assert await sends(wallet) == []
        code, out, _ = await command(capsys, "buy", *w, "--budget", "2", "--dry-run", *BIDS)
        assert code == 0 and "nothing paid" in out

        host = ["--host", m.nodes[1].identity.node_id.hex()]   # not the notary (node0)
        code, out, _ = await command(capsys, "buy", *w, "--budget", "1.5", "--duration",
                                     "30m", "--hosts", "1", *host, "--json", *BIDS)
        doc = json.loads(out)
        assert code == 0
        assert set(doc) == {"dry_run", "plan", "purchases", "skipped", "unfinished",
                            "errors", "unspent", "unspent_credits", "images", "ssh", "cancelled"}
        assert doc["images"] == []   # no --image
        [p] = doc["purchases"]
        assert set(p) == {"host", "url", "paid", "paid_credits", "cost_per_hour",
                          "cost_per_hour_credits", "account_id", "lease", "signed_lease"}
        assert (p["paid"], p["paid_credits"]) == (1_500_000, "1.5")
        assert p["cost_per_hour_credits"] == "3"
        check_lease_doc(p["lease"])

        code, out, _ = await command(capsys, "buy", *w, "--budget", "1", "--hosts", "1",
                                     *host, *BIDS)
        assert code == 0
        assert "lease(s) bought" in out and "cost per hour" in out and "1 c/h" in out

        code, out, _ = await command(capsys, "leases", *w, "--json")
        docs = json.loads(out)["leases"]
        assert code == 0 and len(docs) == 2
        for d in docs:
            assert d["status"] == "active" and d["source"] == "current"
            assert d["left"] == d["lease"]["balance"] and d["time_left_s"] > 0
            assert d["spent"] == d["paid"] - d["left"]
            check_lease_doc(d["lease"])
        code, out, _ = await command(capsys, "leases", *w)
        assert code == 0 and "allocation now" in out and "time left" in out

        lease_id = p["lease"]["lease_id"]
        code, out, _ = await command(capsys, "cancel", *w, lease_id, "--json")
        got = json.loads(out)
        assert code == 0 and got["status"] == "done" and got["refunded"] > 0
        async with open_wallet(wallet) as (wal, _):
            assert got["balance"] == wal.balance() == FUNDS - 2_500_000 + got["refunded"]
        code, out, _ = await command(capsys, "leases", *w, "--json")
        states = {d["lease_id"]: d["status"] for d in json.loads(out)["leases"]}
        assert states[lease_id] == "cancelled"

        # every host gone: the leases command says so, one error per lease
        for node in [n for n in m.nodes if n is not m.nodes[0]]:
            await kill(m, node)
        code, out, err = await command(capsys, "leases", *w)
        assert code == 1 and "unreachable" in out and err.count("error:") == 1


async def test_an_ended_lease_shows_as_ended(capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=2, tick_seconds=0.2) as m:
        await ready(m)
        wallet = await funded(m)
        w = ["--wallet", str(wallet.root)]
        code, _, _ = await command(capsys, "buy", *w, "--budget", "1", "--duration", "1s",
                                   "--hosts", "1", *BIDS)
        assert code == 0
        for _ in range(100):   # the interval ends and the host closes the account
            code, out, _ = await command(capsys, "leases", *w, "--json")
            [d] = json.loads(out)["leases"]
            if d["status"] == "ended":
                break
            await asyncio.sleep(0.1)
        assert code == 0 and d["status"] == "ended" and d["time_left_s"] == 0
        assert "no such account" not in out or d["source"].startswith("stored copy")


@pytest.mark.parametrize("args", [["cancel", "--help"], ["topup", "--help"],
                                  ["rebid", "--help"], ["leases", "--help"],
                                  ["buy", "--help"]])
def test_lease_command_help_has_examples_and_schemas(capsys: pytest.CaptureFixture[str],
                                                     args: list[str]) -> None:
    code, out, _ = run(capsys, *args)
    assert code == 0 and "usage:" in out and "examples:" in out and "--json" in out


@pytest.mark.parametrize(("args", "message"), [
    (["cancel", "nope"], "error: no such lease in this wallet"),
    (["topup", "nope", "-1"], "error: amount must be positive: '-1'"),
    (["topup", "nope", "1.0000001"], "error: at most 6 decimals: '1.0000001'"),
    (["topup", "nope", "1"], "error: no such lease in this wallet"),
    (["rebid", "nope", "cpu:1,0.1,1"], "error: no such lease in this wallet"),
])
def test_lease_commands_refuse_bad_input_in_one_line(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, genesis_file: Path,
        args: list[str], message: str) -> None:
    w = str(tmp_path / "w")
    run(capsys, "wallet", "new", "--genesis", str(genesis_file), "--wallet", w)
    code, _, err = run(capsys, *args, "--wallet", w)
    assert code == 1 and err.strip() == message


async def test_buy_filters_on_reachability_class_and_availability(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Hosts of a 3-node loopback market have too few registrars to be attested
    (``unattested``): buying from public hosts only finds none and pays nothing;
    ``--reach unattested`` buys; an availability above every host's finds none; a
    percentage out of range is one error line."""
    async with local_market(tmp_path / "m", n=3) as m:
        await ready(m)
        wallet = await funded(m)
        w = ["--wallet", str(wallet.root)]
        with pytest.raises(P2PMarketError, match="no host offers"):
            await command(capsys, "buy", *w, "--budget", "1", "--reach", "public", *BIDS)
        assert await sends(wallet) == []
        with pytest.raises(P2PMarketError, match="percentage"):
            await command(capsys, "buy", *w, "--budget", "1", "--min-availability", "100.5",
                          *BIDS)
        code, out, _ = await command(capsys, "hosts", *w, "--min-availability", "100",
                                     "--json")
        assert code == 0
        code, out, _ = await command(capsys, "buy", *w, "--budget", "1", "--hosts", "1",
                                     "--reach", "unattested", "--json", *BIDS)
        assert code == 0 and len(json.loads(out)["purchases"]) == 1
