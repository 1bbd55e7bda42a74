"""Peer URLs (pure): ``http://host:port``, an IPv6 literal in brackets."""

from __future__ import annotations


def http_url(host: str, port: int) -> str:
    """``http://host:port``, with brackets around an IPv6 literal."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
