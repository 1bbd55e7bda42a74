"""The SHARP commands on a loopback market, as a host owner, a broker and a buyer type
them: ``host set-reservable``, ``host delegate --out``, ``broker enable / set-price /
set-oversubscription / add-ticket / status``, ``reserve`` (through the DHT's ticket
adverts), ``tickets`` and ``leases``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from p2pmarket.cli.broker import parse_degree
from p2pmarket.cli.main import parser
from p2pmarket.core.errors import P2PMarketError
from tests.broker.helpers import funded_wallet, key
from tests.market_helpers import local_market


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    """Run one command in this loop; its ``--json`` document, else its text."""
    args = parser().parse_args(list(argv))
    assert await args.run(args) == 0
    text = capsys.readouterr().out
    return json.loads(text) if "--json" in argv else text


async def test_owner_broker_and_buyer_commands(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    async with local_market(tmp_path / "m", n=3) as m:
        for node in m.nodes:
            await node.announced.wait()
        site, a = m.nodes[1], m.nodes[2]
        sdir, adir = str(site.data_dir.root), str(a.data_dir.root)
        tickets = tmp_path / "friends.tickets"
        await run(capsys, "host", "set-reservable", "--data-dir", sdir, "cpu", "10%")
        text = await run(capsys, "host", "delegate", "--data-dir", sdir, "--to",
                         key(a).hex(), "--cpu", "400MHz", "--duration", "2h", "--out",
                         str(tickets))
        assert "1 ticket(s)" in text
        await run(capsys, "broker", "enable", "--data-dir", adir)
        await run(capsys, "broker", "set-price", "--data-dir", adir, "cpu", "1000")
        await run(capsys, "broker", "set-oversubscription", "--data-dir", adir, "10%")
        a.broker.advertised.clear()
        text = await run(capsys, "broker", "add-ticket", "--data-dir", adir, str(tickets))
        assert "holding 400 MHz cpu at site" in text
        await a.broker.advertised.wait()

        buyer = await funded_wallet(m, "buyer")
        got = await run(capsys, "reserve", "--wallet", str(buyer.root), "--cpu", "100MHz",
                        "--duration", "1h", "--json")
        assert got["resources"] == {"cpu": 100} and got["broker"] == key(a).hex()
        assert got["site"] == key(site).hex() and got["rejections"] == []
        assert got["price"] == 100 * 1000   # 100 MHz for one hour at 1000 µc/MHz-hour

        listed = await run(capsys, "tickets", "--wallet", str(buyer.root), "--json")
        [t] = listed["tickets"]
        assert t["state"] == "redeemed" and t["lease_id"] == got["lease_id"]
        assert t["count"] == 100 and t["broker"] == key(a).hex()
        leases = await run(capsys, "leases", "--wallet", str(buyer.root), "--json")
        assert [x["lease_id"] for x in leases["leases"]] == [got["lease_id"]]

        status = await run(capsys, "broker", "status", "--data-dir", adir, "--json")
        [held] = status["holdings"]
        assert held["count"] == 400 and held["promised_peak"] == 100
        assert status["oversubscription_ppm"] == 100_000 and status["sales"] == {"sold": 1}
        host = await run(capsys, "host", "status", "--data-dir", sdir, "--json")
        [res] = host["reservations"]
        assert res["resources"] == {"cpu": 100} and res["active"]


def test_degrees_are_percentages() -> None:
    assert parse_degree("25%") == 250_000 and parse_degree("0") == 0
    assert parse_degree("12.5%") == 125_000
    for bad in ("-1%", "lots", "nan"):
        with pytest.raises(P2PMarketError):
            parse_degree(bad)


def test_bad_arguments_are_one_error_line_before_anything_is_done(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from p2pmarket.cli.main import main

    d, w = str(tmp_path / "nonode"), str(tmp_path / "nowallet")
    cases = [
        (["broker", "set-price", "--data-dir", d, "cpu", "1.5"], "a posted price is a whole"),
        (["host", "set-anchor-price", "--data-dir", d, "cpu", "-3"], "an anchor price is"),
        (["broker", "set-oversubscription", "--data-dir", d, "lots"], "a percentage"),
        (["broker", "buy", "--data-dir", d, "--from", "http://127.0.0.1:9", "--broker",
          "00", "--site", "00", "--duration", "1h"], "give at least one of"),
        (["reserve", "--wallet", w, "--cpu", "0.5", "--duration", "1h"],
         "give an amount with its unit"),
        (["reserve", "--wallet", w, "--cpu", "100MHz", "--duration", "1h", "--broker",
          "http://127.0.0.1:9", "--broker-key", "zz", "--site", "00"],
         "public key must be 64 hex digits"),
    ]
    for argv, message in cases:
        assert main(argv) == 1, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "nonode").exists() and not (tmp_path / "nowallet").exists()
