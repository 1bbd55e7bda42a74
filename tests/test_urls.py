"""Peer URLs, and how a node calls its own public URL (a port-forwarded node cannot
reach its router's address from inside: found on the namespace testnet, where the
forwarded host was a witness of the host it relayed)."""

from __future__ import annotations

from p2pmarket.core.urls import http_url, own_route

OWN, LOCAL = "http://198.18.0.102:7400", "http://127.0.0.1:7400"


def test_http_url_brackets_ipv6() -> None:
    assert http_url("198.18.0.5", 7400) == "http://198.18.0.5:7400"
    assert http_url("::1", 7400) == "http://[::1]:7400"


def test_own_urls_are_called_locally_and_others_as_they_are() -> None:
    relayed = f"{OWN}/relay/{'ab' * 20}"
    assert own_route(relayed, OWN, LOCAL) == f"{LOCAL}/relay/{'ab' * 20}"
    assert own_route(OWN, OWN + "/", LOCAL) == LOCAL
    assert own_route(OWN + "/rpc", OWN, LOCAL + "/") == LOCAL + "/rpc"
    for other in ("http://198.18.0.103:7400", "http://198.18.0.102:74000",
                  "http://198.18.0.102:7400x/rpc", "http://198.18.0.10:7400"):
        assert own_route(other, OWN, LOCAL) == other
    assert own_route(relayed, "", LOCAL) == relayed == own_route(relayed, OWN, "")
