"""The node's web dashboard (docs/design.md, the dashboard): pages under ``/ui/`` on the
peer app. :func:`ui_routes` is all a node imports at start; the pages' modules
(:mod:`~p2pmarket.web.app` and what it uses) load on the first ``/ui`` request, so an
idle node that nobody looks at does not carry them."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from p2pmarket.web.app import Dashboard, DashboardData


def ui_routes(token: Callable[[], str], data: Callable[[], DashboardData],
              public_market: bool) -> list[web.RouteDef]:
    """``/ui`` and everything under it, served by a :class:`~p2pmarket.web.app.Dashboard`
    made on the first request (``token``: the control API's token; ``data``: where the
    pages' figures come from; ``public_market``: the market page needs no token)."""
    made: list[Dashboard] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        if not made:
            from p2pmarket.web.app import Dashboard
            made.append(Dashboard(token(), data(), public_market))
        return await made[0].handle(request)

    return [web.route("*", "/ui", serve), web.route("*", "/ui/{tail:.*}", serve)]


__all__ = ["ui_routes"]
