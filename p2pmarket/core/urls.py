"""Peer URLs (pure): ``http://host:port``, an IPv6 literal in brackets; and the way a
node calls its own public URL (:func:`own_route`)."""

from __future__ import annotations


def http_url(host: str, port: int) -> str:
    """``http://host:port``, with brackets around an IPv6 literal."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def own_route(url: str, own: str, local: str) -> str:
    """``url`` with our own public base URL ``own`` replaced by ``local`` (our peer API
    from this machine), else ``url`` unchanged. A node behind a port forward cannot
    reach its own public address from inside (routers rarely hairpin), yet it calls
    itself there: as a witness of a host it relays (``<own>/relay/<id>``), or as a
    peer of its own records."""
    base = own.rstrip("/")
    if not base or not local:
        return url
    if url == base or url.startswith(base + "/"):
        return local.rstrip("/") + url[len(base):]
    return url
