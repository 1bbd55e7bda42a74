"""A real browser for the dashboard tests: Debian's Chromium (``/usr/bin/chromium``,
installed by ``scripts/setup-browser``) driven by Playwright's async API in the test's
own event loop, headless, with a fresh profile and the flags that keep it off the
network (without ``--disable-background-networking`` this machine's closed network
refuses its connections)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]

if not Path(CHROMIUM).exists():   # scripts/test installs it (scripts/setup-browser)
    pytest.skip("no Chromium at /usr/bin/chromium (run scripts/setup-browser)",
                allow_module_level=True)
playwright_api = pytest.importorskip("playwright.async_api")

Page = playwright_api.Page
expect = playwright_api.expect


@asynccontextmanager
async def browser(profile: Path) -> AsyncIterator[playwright_api.BrowserContext]:
    """A Chromium context with a fresh profile in ``profile``."""
    profile.mkdir(parents=True, exist_ok=True)
    async with playwright_api.async_playwright() as pw:
        ctx = await pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1440, "height": 900})
        try:
            yield ctx
        finally:
            await ctx.close()


def figure(page: Page, name: str) -> playwright_api.Locator:
    return page.locator(f'[data-figure="{name}"]')


async def shows(page: Page, name: str, want: Callable[[], Awaitable[str]],
                timeout_s: float = 30.0) -> str:
    """Wait until the figure ``name`` on the page reads what ``want`` (the node's API,
    asked again on each try: the node moves on) says; the value it showed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        expected = await want()
        try:
            await expect(figure(page, name)).to_have_text(expected, timeout=3000)
            return expected
        except AssertionError:
            if loop.time() > deadline:
                raise
