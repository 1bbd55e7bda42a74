"""The dashboard in a real browser (Chromium through Playwright, tests/web/browser.py)
against a loopback market of three nodes with a buyer's lease on one of them and a
phantom host whose record holds HTML in its URL: the token is refused when missing or
wrong and taken once; each page's figures equal the node's control API; a price change
shows up live on the host page and then in the market; the phantom's HTML shows as
text; a screenshot of each page is saved in the test's tmp dir."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from p2pmarket.api.server import jsonable
from p2pmarket.audit.evidence import proof_host_id
from p2pmarket.client.buyer import buy
from p2pmarket.core.identity import Identity
from p2pmarket.core.money import format_credits
from p2pmarket.dht.node import DhtNode
from p2pmarket.dht.records import ResourceAd
from p2pmarket.node.service import Node
from p2pmarket.web.app import cookie_name
from tests.client.test_quote_before_pay import BIDS, BUDGET, funded
from tests.market_helpers import local_market
from tests.web.browser import Page, browser, expect, figure, shows

EVIL = ('http://127.0.0.1:9/<script>window.__pwned=1</script>'
        '<img src=x onerror="window.__pwned=2"><b>bold</b>')
SPENT = 1_250_000


async def api(node: Node, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    return jsonable(await node.control_handlers()[name](args or {}))  # type: ignore[no-any-return]


async def market_holds(node: Node, want: int, timeout_s: float = 30.0) -> None:
    """Wait until the node's market read holds ``want`` hosts."""
    async def held() -> None:
        while len(node.sampler.last_market["hosts"]) < want:
            node.sampler.market_read.clear()
            node.sampler.read_now.set()
            await node.sampler.market_read.wait()
    await asyncio.wait_for(held(), timeout_s)


async def shot(page: Page, out: Path, name: str) -> Path:
    path = out / f"dashboard-{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


async def test_the_dashboard_in_a_browser(tmp_path: Path) -> None:
    root = tmp_path / "m"
    async with local_market(root, n=3, overrides={1: {"dashboard_wallet": str(root / "buyer")}}
                            ) as m:
        for node in m.nodes:
            await node.announced.wait()
        host, other = m.nodes[1], m.nodes[2]
        buyer = await funded(m)
        [bought] = (await buy(buyer, BIDS, BUDGET, 3600, max_hosts=1,
                              only=frozenset({host.identity.node_id}))).purchases
        await host.wallet.send(other.identity.public_key, SPENT, "dashboard test")
        # a phantom's record with HTML in its URL, from the network side
        phantom = DhtNode(Identity.generate(m.genesis.puzzle_bits), m.genesis,
                          proof_verifier=proof_host_id, url=EVIL)
        await phantom.start("127.0.0.1", 0)
        try:
            assert await phantom.bootstrap([(b.host, b.dht_port) for b in m.genesis.bootstrap])
            await phantom.publish_host({"cpu": ResourceAd(1000, 7, 7)})
            await phantom.publish_offer("cpu", 1000, 7)
            host.sampler.market_every_s = 0.5
            await market_holds(host, 4)
            async with browser(tmp_path / "chromium-profile") as ctx:
                page = await ctx.new_page()
                dialogs: list[str] = []
                page.on("dialog", lambda d: dialogs.append(d.message))
                await sign_in(page, host, tmp_path)
                await market_page(page, host, tmp_path)
                await host_page(page, host, bought.account_id, tmp_path)
                await wallet_page(page, host, bought.lease.lease_id, tmp_path)
                await price_change(page, host, tmp_path)
                assert dialogs == []
        finally:
            await phantom.close()


async def sign_in(page: Page, host: Node, out: Path) -> None:
    base, token = host.local_url(), host.data_dir.token.read_text().strip()
    refused = await page.goto(base + "/ui/host")
    assert refused is not None and refused.status == 401
    await expect(page.locator("input[name=token]")).to_be_visible()
    await page.fill("input[name=token]", token + "x")
    async with page.expect_response(base + "/ui/login") as wrong:
        await page.click("button[type=submit]")
    assert (await wrong.value).status == 401
    await expect(page.locator(".message")).to_have_text("Wrong token.")
    await shot(page, out, "login-refused")
    await page.fill("input[name=token]", token)
    await page.click("button[type=submit]")
    await expect(page).to_have_url(base + "/ui/host")
    cookies = await page.context.cookies(base + "/ui/host")
    [cookie] = [c for c in cookies if c["name"] == cookie_name(token)]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and token not in cookie["value"]


async def market_page(page: Page, host: Node, out: Path) -> None:
    await page.goto(host.local_url() + "/ui/")
    market = await api(host, "market")
    assert {"cpu", "memory"} <= set(market["prices"])
    for res, p in market["prices"].items():
        for what in ("low", "median", "high"):
            await expect(figure(page, f"market-{what}-{res}")).to_have_text(
                format_credits(p[what]))
        await expect(figure(page, f"market-hosts-{res}")).to_have_text(str(p["hosts"]))
    rows = page.locator('[data-table="hosts"] tbody tr')
    await expect(rows).to_have_count(len(market["hosts"]))
    # the phantom's URL shows as text: no element, no script run
    evil = page.locator(".host-url", has_text="<script>")
    await expect(evil).to_have_text(EVIL)
    assert await page.locator("main script, main img, main b").count() == 0
    assert await page.evaluate("window.__pwned === undefined")
    await expect(page.locator('[data-chart="market-cpu"] svg circle').first).to_be_visible()
    await shot(page, out, "market")


async def host_page(page: Page, host: Node, account_id: str, out: Path) -> None:
    await page.goto(host.local_url() + "/ui/host")
    status = await api(host, "host_status")
    for res, info in status["market"].items():
        if info["capacity"]:
            await expect(figure(page, f"own-capacity-{res}")).to_have_attribute(
                "data-value", str(info["capacity"]))

    async def cpu_price() -> str:
        return format_credits((await api(host, "host_status"))["market"]["cpu"]["price"]) + "/s"
    await shows(page, "own-price-cpu", cpu_price)
    await expect(figure(page, "accounts")).to_have_text(str(len(status["accounts"])))

    async def balance() -> str:
        [a] = [a for a in (await api(host, "host_status"))["accounts"]
               if a["account_id"] == account_id]
        return format_credits(a["balance"])
    await shows(page, f"account-balance-{account_id}", balance)
    # the buyer's allocation over time, stacked (the page follows the samples live)
    await expect(page.locator('[data-chart="alloc-cpu"] svg polygon')).to_have_count(
        1, timeout=20_000)
    await expect(page.locator('[data-table="witnesses"]')).to_have_count(1)
    await shot(page, out, "host")


async def wallet_page(page: Page, host: Node, lease_id: str, out: Path) -> None:
    await page.goto(host.local_url() + "/ui/wallet")

    async def balance() -> str:
        return format_credits((await api(host, "status"))["balance"])
    await shows(page, "wallet-balance", balance)
    entries = (await api(host, "history"))["history"]
    await expect(figure(page, "wallet-entries")).to_have_text(str(len(entries)))
    await expect(figure(page, "wallet-spent")).to_have_text(format_credits(SPENT))
    leases = (await api(host, "wallet_leases"))["leases"]
    assert [x["lease_id"] for x in leases] == [lease_id]
    await expect(page.locator('[data-table="leases"] tbody tr')).to_have_count(1)
    await expect(page.locator('[data-table="leases"]')).to_contain_text(lease_id[:12])
    await expect(page.locator('[data-chart="wallet-spent"] svg polyline')).to_have_count(1)
    await shot(page, out, "wallet")


async def price_change(page: Page, host: Node, out: Path) -> None:
    """The owner raises the cpu min price: the open host page follows without a reload,
    then the market page shows the host's new price as the dearest."""
    await page.goto(host.local_url() + "/ui/host")
    before = (await api(host, "host_status"))["market"]["cpu"]["price"]
    await api(host, "host_set_min_price", {"resource": "cpu", "price": 3_000_000})
    after = (await api(host, "host_status"))["market"]["cpu"]["price"]
    assert after > before

    async def cpu_price() -> str:
        return format_credits((await api(host, "host_status"))["market"]["cpu"]["price"]) + "/s"
    shown = await shows(page, "own-price-cpu", cpu_price)
    assert shown == format_credits(after) + "/s"
    await expect(page.locator('[data-chart="own-cpu"] svg')).to_have_attribute(
        "data-last", str(float(after)), timeout=20_000)
    assert int(await page.get_attribute("body", "data-refreshed") or 0) > 0   # live, no reload
    await shot(page, out, "host-after-price-change")
    await page.goto(host.local_url() + "/ui/")

    async def dearest() -> str:
        return format_credits((await api(host, "market"))["prices"]["cpu"]["high"])
    shown = await shows(page, "market-high-cpu", dearest, timeout_s=60)
    await expect(figure(page, "market-high-cpu")).to_have_text(format_credits(after),
                                                               timeout=60_000)
    await shot(page, out, "market-after-price-change")
