"""The dashboard over HTTP (no browser): a missing or wrong token is refused on every
page and JSON route, the sign-in cookie holds a session value and never the token, the
public setting opens only the market, every answer carries the CSP; and the price
history the control API serves fills from the ticks (a loopback market)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from p2pmarket.core.clock import now_us
from p2pmarket.node.service import Node
from p2pmarket.web.app import CSP, cookie_name, session_value
from tests.market_helpers import local_market

PAGES = ["/ui/", "/ui/host", "/ui/wallet", "/ui/api/market", "/ui/api/host",
         "/ui/api/wallet", "/ui/?part=main", "/ui/host?part=main"]


def token_of(node: Node) -> str:
    return node.data_dir.token.read_text().strip()


async def test_a_missing_or_wrong_token_is_refused(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=1) as m:
        node = m.nodes[0]
        base, token = node.local_url(), token_of(node)
        async with aiohttp.ClientSession() as anon:
            for path in PAGES:
                async with anon.get(base + path) as r:
                    assert r.status == 401, path
                    assert r.headers["Content-Security-Policy"] == CSP
                    body = await r.text()
                    if "/api/" not in path:
                        assert 'name="token"' in body   # the sign-in form
            for bad in ("", "x", token + "x", token[:-1]):
                async with anon.get(base + "/ui/", headers={"Authorization": f"Bearer {bad}"}
                                    ) as r:
                    assert r.status == 401
            async with anon.get(base + "/ui/login", params={"token": "wrong"}) as r:
                assert r.status == 401 and cookie_name(token) not in r.cookies
            async with anon.post(base + "/ui/login", data={"token": "wrong"}) as r:
                assert r.status == 401
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as forged:
            forged.cookie_jar.update_cookies({cookie_name(token): token})   # no session
            async with forged.get(base + "/ui/host") as r:
                assert r.status == 401
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            async with s.post(base + "/ui/login", data={"token": token, "next": "/ui/host"},
                              allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"] == "/ui/host"
                cookie = r.headers["Set-Cookie"]
                assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
                assert token not in cookie and session_value(token) in cookie
            for path in PAGES:
                async with s.get(base + path) as r:
                    assert r.status == 200, path
                    assert r.headers["Content-Security-Policy"] == CSP
                    assert r.headers["Cache-Control"] == "no-store"
            async with s.get(base + "/ui/login", params={"token": token, "next": "//evil"},
                             allow_redirects=False) as r:
                assert r.headers["Location"] == "/ui/"   # no redirect off the dashboard
        bearer = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession() as c, c.get(base + "/ui/api/host",
                                                       headers=bearer) as r:
            assert r.status == 200
            doc = await r.json()
            assert doc["host_status"]["market"]["cpu"]["capacity"] > 0


async def test_the_public_setting_opens_the_market_only(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=1,
                            overrides={0: {"dashboard_public": True}}) as m:
        base = m.nodes[0].local_url()
        async with aiohttp.ClientSession() as anon:
            for path in ("/ui/", "/ui/api/market", "/ui/?part=main"):
                async with anon.get(base + path) as r:
                    assert r.status == 200, path
            for path in ("/ui/host", "/ui/wallet", "/ui/api/host", "/ui/api/wallet"):
                async with anon.get(base + path) as r:
                    assert r.status == 401, path
            async with anon.post(base + "/ui/") as r:
                assert r.status == 405   # read-only


async def test_the_history_fills_from_the_ticks(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=1, tick_seconds=0.1) as m:
        node = m.nodes[0]
        node.sampler.every_s = 0.05
        handlers = node.control_handlers()
        price = node.auctioneer.market_summary()["cpu"]["price"]
        for _ in range(200):
            doc = await handlers["price_history"]({"scope": "own", "name": "cpu"})
            if doc["points"] and doc["points"][-1]["n"] >= 3:
                break
            await asyncio.sleep(0.05)
        [point] = doc["points"]
        assert point["last"] == price and point["t"] <= now_us()
        hours = await handlers["price_history"]({"scope": "own", "name": "cpu", "step": "hour"})
        assert hours["points"][0]["n"] >= point["n"]
        # without a scope, history stays the wallet's chain
        assert "history" in await handlers["history"]({})
        series = await handlers["history_series"]({"prefix": "own"})
        assert ["own", "cpu"] in series["series"]
        assert node.data_dir.history_db.exists()
