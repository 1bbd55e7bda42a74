"""Where a node listens and what address it gives: bind errors as one line, the
wildcard test, and the local end of the route to the bootstrap peers (design §7,
"Any address")."""

from __future__ import annotations

import socket
from collections.abc import Awaitable
from typing import Any

from p2pmarket.core.genesis import ConfigError


async def bind(what: str, host: str, port: int, starting: Awaitable[Any]) -> None:
    """Await ``starting`` (a server's start); an OSError becomes one ConfigError line."""
    try:
        await starting
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot listen for the {what} on {host}:{port}: {reason}",
                          {"host": host, "port": port}) from None


def is_wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::", "")


def route_source(targets: list[str], fallback: str) -> str:
    """The local address of the route to the first of ``targets`` that has one (a UDP
    socket's connect sends nothing); ``fallback`` when none has (no bootstrap peers, or
    no route: a proxied node)."""
    for target in targets:
        family = socket.AF_INET6 if ":" in target else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((target, 9))
                return str(probe.getsockname()[0])
        except OSError:
            continue
    return "127.0.0.1" if is_wildcard(fallback) else fallback


__all__ = ["bind", "is_wildcard", "route_source"]
