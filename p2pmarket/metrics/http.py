"""``GET /metrics``: a registry in Prometheus' text format, served by aiohttp.

The route goes on the node's peer app (the node's HTTP port) and, when the setting
``metrics_port`` is set, on an app of its own (:func:`metrics_app`) that the node
listens with on its listen host. prometheus-client's own HTTP server is not used: it
runs a thread, and the node already has an event loop and aiohttp. The text is made
in the loop (a scrape of a node is a few hundred lines: well under a millisecond of
work per hundred series).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

PATH = "/metrics"


def metrics_route(registry: CollectorRegistry) -> web.RouteDef:
    """The ``GET /metrics`` route of ``registry``."""
    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    return web.get(PATH, metrics)


def metrics_app(registry: CollectorRegistry) -> web.Application:
    """An app serving only ``GET /metrics`` (the ``metrics_port`` listener)."""
    app = web.Application()
    app.add_routes([metrics_route(registry)])
    return app
