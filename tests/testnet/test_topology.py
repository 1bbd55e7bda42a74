"""The topology format (pure): the default file parses, and every error names its key."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable
from typing import Any

import pytest

from p2pmarket.testnet.topology import Proxy, Router, Site, TopologyError, from_doc, parse
from tests.testnet.conftest import DEFAULT_TOPOLOGY

DEFAULT = tomllib.loads(DEFAULT_TOPOLOGY.read_text())
SMALL = """
[network]
name = "small"
f = 0
[sites.n1]
role = "notary"
address = "198.18.0.11"
[sites.h1]
role = "host"
address = "198.18.0.21"
"""


def test_the_default_topology() -> None:
    topo = parse(DEFAULT_TOPOLOGY.read_text())
    assert (topo.internet, topo.f, topo.mint) == ("198.18.0.0/24", 1, "mint")
    assert [s.name for s in topo.notaries] == ["n1", "n2", "n3", "n4"]
    assert [s.name for s in topo.nodes] == ["n1", "n2", "n3", "n4", "h1", "hn1", "hf1", "hp1"]
    assert [s.name for s in topo.buyers] == ["b1", "bn1", "bp1"]
    assert topo.routers == (Router("nat1", "198.18.0.101", "198.19.1.0/24"),
                            Router("fwd1", "198.18.0.102", "198.19.2.0/24", forward="hf1"))
    assert topo.proxies == (Proxy("px1", "198.18.0.103", "198.19.3.0/24", 8888),)
    assert topo.site("hp1") == Site("hp1", "host", "198.19.3.10", "px1")
    assert topo.proxy_of(topo.site("hp1")) == topo.proxies[0]
    assert topo.proxy_of(topo.site("hn1")) is None
    assert topo.proxies[0].url == "http://198.19.3.1:8888"
    assert topo.routers[0].gateway == "198.19.1.1"


def test_a_small_topology_with_one_notary_and_defaults() -> None:
    topo = parse(SMALL)
    assert (topo.name, topo.internet, topo.f, topo.mint) == ("small", "198.18.0.0/24", 0,
                                                            "mint")
    assert topo.routers == topo.proxies == () and topo.node_settings == ()
    assert parse(SMALL + "[node]\ntick_seconds = 0.5\n").node_settings == (
        ("tick_seconds", 0.5),)


def test_settings_over_the_node_table() -> None:
    topo = parse(SMALL + "[node]\ntick_seconds = 0.5\ncpu_mhz = 100\n")
    assert dict(topo.with_settings({"tick_seconds": 2.0}).node_settings) == {
        "tick_seconds": 2.0, "cpu_mhz": 100}
    with pytest.raises(TopologyError, match=r"node\.dht_port is set by the testnet"):
        topo.with_settings({"dht_port": 1})


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        *tables, key = path.split(".")
        for t in tables:
            doc = doc.setdefault(t, {})
        doc[key] = value
    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        *tables, key = path.split(".")
        for t in tables:
            doc = doc[t]
        del doc[key]
    return change


ERRORS = [
    (_set("colour", 1), "colour: unknown key"),
    (_set("network", 3), "network must be a table"),
    (_set("network.colour", "red"), "network.colour: unknown key"),
    (_set("network.name", 7), "network.name must be a string"),
    (_set("network.f", -1), "network.f must be >= 0"),
    (_set("network.f", "1"), "network.f must be an integer"),
    (_set("network.f", True), "network.f must be an integer"),
    (_set("network.f", 2), "sites: 4 notaries, but network.f = 2 needs at least 7"),
    (_set("network.internet", "198.18.0.1/24"), "network.internet is not an IPv4 network"),
    (_set("network.internet", "192.0.2.0/24"), "network.internet must be inside 198.18.0.0/15"),
    (_set("network.internet", "198.18.0.0/30"), "network.internet is too small"),
    (_set("network.mint", "Mint"), "network.mint: a name is"),
    (_set("network.mint", "h1"), "sites.h1: the name 'h1' is taken by network.mint"),
    (_set("sites.h1", "host"), "sites.h1 must be a table"),
    (_set("sites.Big", {"role": "host", "address": "198.18.0.40"}), "sites.Big: a name is"),
    (_set("sites.abcdefghijkl", {"role": "host", "address": "198.18.0.40"}),
     "sites.abcdefghijkl: a name is 1 to 11"),
    (_set("sites.nat1", {"role": "host", "address": "198.18.0.40"}),
     "sites.nat1: the name 'nat1' is taken by routers.nat1"),
    (_set("proxies.fwd1", {"address": "198.18.0.104", "lan": "198.19.9.0/24"}),
     "proxies.fwd1: the name 'fwd1' is taken by routers.fwd1"),
    (_set("sites.h1.colour", "red"), "sites.h1.colour: unknown key"),
    (_drop("sites.h1.role"), "sites.h1.role is missing"),
    (_set("sites.h1.role", "miner"), "sites.h1.role must be one of notary, host, buyer"),
    (_drop("sites.h1.address"), "sites.h1.address is missing"),
    (_set("sites.h1.address", 5), "sites.h1.address must be a string"),
    (_set("sites.h1.address", "198.18.0.300"), "sites.h1.address is not an IPv4 address"),
    (_set("sites.h1.address", "10.0.0.1"), "sites.h1.address must be inside 198.18.0.0/15"),
    (_set("sites.h1.address", "198.19.5.5"),
     "sites.h1.address must be a host address of network.internet"),
    (_set("sites.h1.address", "198.18.0.255"),
     "sites.h1.address must be a host address of network.internet"),
    (_set("sites.h1.address", "198.18.0.11"), "sites.h1.address is also sites.n1's"),
    (_set("sites.h1.address", "198.18.0.101"), "sites.h1.address is also routers.nat1's"),
    (_set("sites.hn1.address", "198.19.1.1"),
     "sites.hn1.address must be a host address of nat1's lan"),
    (_set("sites.hn1.address", "198.18.0.50"),
     "sites.hn1.address must be a host address of nat1's lan"),
    (_set("sites.hn1.behind", "nat9"), "sites.hn1.behind: 'nat9' is no router or proxy"),
    (_set("sites.hn1.behind", 1), "sites.hn1.behind must be a string"),
    (_set("sites.n1.behind", "nat1"), "sites.n1: a notary must be public"),
    (_set("routers.fwd1.forward", "hn1"), "routers.fwd1.forward: 'hn1' is no site behind fwd1"),
    (_set("routers.fwd1.forward", "zz"), "routers.fwd1.forward: 'zz' is no site behind fwd1"),
    (_drop("routers.nat1.lan"), "routers.nat1.lan is missing"),
    (_set("routers.nat1.lan", "198.19.1.1/24"), "routers.nat1.lan is not an IPv4 network"),
    (_set("routers.nat1.lan", "198.18.0.128/25"), "routers.nat1.lan overlaps network.internet"),
    (_set("routers.fwd1.lan", "198.19.0.0/16"), "routers.fwd1.lan overlaps routers.nat1.lan"),
    (_set("routers.nat1.address", "198.19.9.9"),
     "routers.nat1.address must be a host address of network.internet"),
    (_set("routers.nat1.port", 1), "routers.nat1.port: unknown key"),
    (_set("proxies.px1.forward", "hp1"), "proxies.px1.forward: unknown key"),
    (_set("proxies.px1.port", 0), "proxies.px1.port must be 1..65535"),
    (_set("proxies.px1.port", "8888"), "proxies.px1.port must be an integer"),
    (_set("node.http_port", 1), "node.http_port is set by the testnet itself"),
    (_set("node.labels", ["a"]), "node.labels must be a string or a number"),
]


@pytest.mark.parametrize(("change", "message"), ERRORS, ids=[m for _, m in ERRORS])
def test_each_error_names_the_bad_key(change: Callable[[dict[str, Any]], None],
                                      message: str) -> None:
    doc = copy.deepcopy(DEFAULT)
    change(doc)
    with pytest.raises(TopologyError) as caught:
        from_doc(doc)
    assert caught.value.message.startswith(message), caught.value.message


def test_too_few_notaries_and_bad_toml() -> None:
    with pytest.raises(TopologyError, match=r"0 notaries, but network\.f = 0 needs at least 1"):
        parse("[sites.h1]\nrole = 'host'\naddress = '198.18.0.21'\n")
    with pytest.raises(TopologyError, match="topology is not TOML"):
        parse("[sites\n")
    with pytest.raises(TopologyError, match="no site named 'zz'"):
        parse(SMALL).site("zz")
    with pytest.raises(TopologyError, match="no router or proxy named 'zz'"):
        parse(SMALL).gateway("zz")
