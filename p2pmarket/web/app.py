"""The dashboard's HTTP side (aiohttp, on the peer app under ``/ui/``): sign-in, the
three pages, their JSON and the static files.

- ``/ui/login``: takes the control token once (``?token=`` or a form POST), compares it
  (:func:`hmac.compare_digest`) with the node's, and sets a cookie (HttpOnly,
  SameSite=Strict, path ``/ui``) to :func:`session_value`, an HMAC of a fixed label under
  the token: the cookie never holds the token, and a new token ends every session. Its
  name, ``p2pm_ui_<10 hex>`` (:func:`cookie_name`, another HMAC), differs between nodes,
  since browsers share cookies across the ports of one address. A wrong token gets 401
  and the form again.
- ``/ui/`` the market, ``/ui/host``, ``/ui/wallet``; ``?window=1h|6h|1d|90d``;
  ``?part=main`` gives only the page's ``<main>`` (what ``dash.js`` polls to follow
  changes live). ``/ui/api/market|host|wallet``: the docs a page is drawn from, JSON.
- ``/ui/static/dash.css``, ``/ui/static/dash.js``: from the package.

Without the cookie (or an ``Authorization: Bearer <token>`` header) a page gets 401
with the sign-in form, the JSON 401 and an error, unless the setting
``dashboard_public`` is on: then the market page and its JSON are public. The pages
only read: they call the control API's read-only handlers (:data:`READ_CALLS`).
Every answer carries a strict Content-Security-Policy (the node's own script and
stylesheet only, no inline script or style) and ``no-store``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

from aiohttp import web

from p2pmarket.api.server import ControlHandler, jsonable
from p2pmarket.core.clock import now_us
from p2pmarket.core.errors import P2PMarketError, error_dict
from p2pmarket.web import views
from p2pmarket.web.html import Safe, document, el

DashboardData = Mapping[str, ControlHandler]
"""The node's control handlers; the dashboard calls only :data:`READ_CALLS`."""
READ_CALLS = frozenset({"status", "host_status", "market", "history", "price_history",
                        "history_series",
                        "audit_witnesses", "wallet_leases"})
SESSION_LABEL = b"p2pmarket/dashboard-session/1"
COOKIE_LABEL = b"p2pmarket/dashboard-cookie/1"
COOKIE_MAX_AGE = 30 * 86400
REFRESH_MS = 2000
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
           "Cache-Control": "no-store"}
STATIC = {"dash.css": "text/css", "dash.js": "text/javascript"}
PAGE_PATHS = {"/ui/": "market", "/ui/host": "host", "/ui/wallet": "wallet"}
MARKET_CHART_TYPES = 6


def session_value(token: str) -> str:
    return hmac.new(token.encode(), SESSION_LABEL, hashlib.sha256).hexdigest()


def cookie_name(token: str) -> str:
    return "p2pm_ui_" + hmac.new(token.encode(), COOKIE_LABEL, hashlib.sha256).hexdigest()[:10]


def _static(name: str) -> bytes:
    return resources.files("p2pmarket.web").joinpath("static", name).read_bytes()


class Dashboard:
    def __init__(self, token: str, data: DashboardData, public_market: bool,
                 clock: Callable[[], int] = now_us) -> None:
        self.token = token
        self.session = session_value(token)
        self.cookie = cookie_name(token)
        self.data = data
        self.public_market = public_market
        self.clock = clock
        self.static = {name: _static(name) for name in STATIC}
        self.pages: dict[str, Callable[[views.Window], Awaitable[
            tuple[dict[str, Any], Safe]]]] = {
            "market": self.market, "host": self.host, "wallet": self.wallet}

    # -- plumbing --------------------------------------------------------------------

    async def call(self, name: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        assert name in READ_CALLS
        return jsonable(await self.data[name](args or {}))  # type: ignore[no-any-return]

    def signed_in(self, request: web.Request) -> bool:
        cookie = request.cookies.get(self.cookie, "")
        if cookie and hmac.compare_digest(cookie.encode(), self.session.encode()):
            return True
        given = request.headers.get("Authorization", "")
        return bool(given) and hmac.compare_digest(given.encode(),
                                                   f"Bearer {self.token}".encode())

    @staticmethod
    def _headers(response: web.StreamResponse) -> web.StreamResponse:
        response.headers.update(HEADERS)
        return response

    def _html(self, title: str, body: Safe, status: int = 200) -> web.StreamResponse:
        page = document(title, body, scripts=["/ui/static/dash.js"],
                        styles=["/ui/static/dash.css"])
        return self._headers(web.Response(text=page, status=status, content_type="text/html"))

    def _json(self, doc: Any, status: int = 200) -> web.StreamResponse:
        return self._headers(web.Response(text=json.dumps(doc), status=status,
                                          content_type="application/json"))

    def _login_page(self, message: str, next_path: str, status: int) -> web.StreamResponse:
        return self._html("p2pmarket: sign in", el("main", views.login_main(message, next_path),
                                                   id="main"), status)

    # -- routes ------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/ui":
            raise web.HTTPFound("/ui/")
        if path == "/ui/login":
            return await self.login(request)
        if path == "/ui/logout":
            response = web.HTTPSeeOther("/ui/login")
            response.del_cookie(self.cookie, path="/ui")
            raise response
        if request.method not in ("GET", "HEAD"):
            return self._headers(web.Response(status=405, text="method not allowed"))
        if path.startswith("/ui/static/"):
            name = path.removeprefix("/ui/static/")
            if name not in STATIC:
                raise web.HTTPNotFound()
            return self._headers(web.Response(body=self.static[name],
                                              content_type=STATIC[name]))
        api = path.startswith("/ui/api/")
        page = path.removeprefix("/ui/api/") if api else PAGE_PATHS.get(path)
        if page not in self.pages:
            raise web.HTTPNotFound()
        if not (self.signed_in(request) or (page == "market" and self.public_market)):
            if api:
                return self._json(error_dict("sign in to the dashboard: a missing or "
                                             "wrong token"), 401)
            return self._login_page("Sign in with the node's control token.",
                                    request.path_qs, 401)
        window = views.window_named(request.query.get("window"))
        try:
            doc, main = await self.pages[page](window)
        except P2PMarketError as exc:
            if api:
                return self._json(exc.to_dict(), 500)
            doc, main = {}, el("p", f"cannot read the node: {exc.message}", class_="error")
        if api:
            return self._json(doc)
        if request.query.get("part") == "main":
            return self._headers(web.Response(text=main.text, content_type="text/html"))
        status = await self.call("status")
        head = views.header(page, str(status.get("node_id", "")), self.clock(), window,
                            self.public_market and not self.signed_in(request))
        return self._html(f"p2pmarket: {page}", head + el(
            "main", main, id="main", data_refresh=str(REFRESH_MS)))

    async def login(self, request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            form = await request.post()
            given, nxt = str(form.get("token", "")), str(form.get("next", ""))
        elif request.method in ("GET", "HEAD"):
            given, nxt = request.query.get("token", ""), request.query.get("next", "")
        else:
            return self._headers(web.Response(status=405, text="method not allowed"))
        target = nxt if nxt.split("?")[0] in PAGE_PATHS else "/ui/"
        if not given:
            return self._login_page("Sign in with the node's control token.", target, 200)
        if not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            return self._login_page("Wrong token.", target, 401)
        response = web.HTTPSeeOther(target)
        response.set_cookie(self.cookie, self.session, path="/ui", httponly=True,
                            samesite="Strict", max_age=COOKIE_MAX_AGE)
        response.headers.update(HEADERS)
        raise response

    # -- pages -------------------------------------------------------------------------

    async def series(self, scope: str, name: str, window: views.Window) -> dict[str, Any]:
        return await self.call("price_history", {"scope": scope, "name": name, "step": window.step,
                                           "since": self.clock() - window.seconds * 1_000_000})

    async def market(self, window: views.Window) -> tuple[dict[str, Any], Safe]:
        market = await self.call("market")
        history: dict[str, dict[str, Any]] = {}
        for res in list(market.get("prices", {}))[:MARKET_CHART_TYPES]:
            for name in (res, f"{res}.low"):
                history[name] = await self.series("market", name, window)
        doc = {"market": market, "history": history}
        return doc, views.market_main(market, history, self.clock(), window)

    async def host(self, window: views.Window) -> tuple[dict[str, Any], Safe]:
        status = await self.call("host_status")
        offered = [r for r, m in status.get("market", {}).items() if m.get("capacity")]
        own = {r: await self.series("own", r, window) for r in offered}
        since = self.clock() - window.seconds * 1_000_000
        keys = (await self.call("history_series", {"prefix": "alloc:", "since": since}))
        alloc: dict[str, dict[str, dict[str, Any]]] = {}
        for scope, name in keys.get("series", []):
            if name in ("cpu", "memory", "disk"):
                alloc.setdefault(name, {})[scope.removeprefix("alloc:")] = \
                    await self.series(scope, name, window)
        witnesses = await self.call("audit_witnesses")
        doc = {"host_status": status, "own": own, "alloc": alloc, "witnesses": witnesses}
        return doc, views.host_main(status, own, dict(sorted(alloc.items())), witnesses,
                                    self.clock(), window)

    async def wallet(self, window: views.Window) -> tuple[dict[str, Any], Safe]:
        status = await self.call("status")
        entries = (await self.call("history")).get("history", [])
        leases = await self.call("wallet_leases")
        doc = {"balance": status.get("balance"), "history": entries, "leases": leases}
        return doc, views.wallet_main(status, entries, leases, self.clock(), window)


__all__ = ["CSP", "READ_CALLS", "Dashboard", "DashboardData", "cookie_name", "session_value"]
