"""A testnet's topology (pure): who sits where on which network, parsed from TOML.

The format is independent of how it is run (network namespaces today, Docker Compose
later); ``testnet/README.md`` describes it for people. A file has these tables::

    [network]            name = "..."  (the genesis's network name)
                         internet = "198.18.0.0/24"  (the public network; the default)
                         f = 1  (faults the notary committee tolerates; default 0)
                         mint = "mint"  (the mint: a wallet, not a site; default "mint")
    [node]               optional settings written to every node's config.toml
                         (tick_seconds, cpu_mhz, ...; not the addresses or ports)
    [sites.NAME]         role = "notary" | "host" | "buyer"
                         address = "198.18.0.11"
                         behind = "ROUTER-OR-PROXY"  (absent: a public site)
    [routers.NAME]       address = "198.18.0.101"  (its public address, on the internet)
                         lan = "198.19.1.0/24"  (the network behind it; it is .1 there)
                         forward = "SITE"  (optional: TCP+UDP 7400 and 7401 on its public
                         address go to this site behind it)
    [proxies.NAME]       address, lan as for a router; port = 8888 (the HTTP proxy's port,
                         on its LAN address; the default)

A router masquerades (NAT) the sites behind it; a proxy does not route at all: the
sites behind it reach the internet only through its HTTP proxy. Notaries and hosts
run a node (HTTP on :data:`HTTP_PORT`, DHT on :data:`DHT_PORT`); buyers only hold a
wallet. The notaries (at least 3f+1) are public. Every address is inside
:data:`TESTNET_RANGE`; names are short (:data:`NAME_MAX`) so that they fit in
interface names. Every error names the bad key.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from p2pmarket.core.errors import P2PMarketError

TESTNET_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
DEFAULT_INTERNET = "198.18.0.0/24"
HTTP_PORT = 7400
DHT_PORT = 7401
PROXY_PORT = 8888
NAME_MAX = 11
NAME_RE = re.compile(rf"[a-z][a-z0-9]{{0,{NAME_MAX - 1}}}")
ROLES = ("notary", "host", "buyer")
RESERVED_SETTINGS = frozenset({"listen_host", "advertise_host", "http_port", "dht_port",
                               "control_port"})


class TopologyError(P2PMarketError):
    """A topology file that cannot be run; the message names the bad key."""


@dataclass(frozen=True)
class Site:
    """A machine: a node (notary or host) or a buyer's wallet."""

    name: str
    role: str
    address: str
    behind: str | None = None   # the router or proxy in front of it; None: public

    @property
    def runs_node(self) -> bool:
        return self.role != "buyer"


@dataclass(frozen=True)
class Router:
    """A NAT router: public ``address``, the ``lan`` behind it, maybe a port forward."""

    name: str
    address: str
    lan: str
    forward: str | None = None

    @property
    def gateway(self) -> str:
        return gateway_of(self.lan)


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy (with CONNECT) on its LAN address; it routes nothing."""

    name: str
    address: str
    lan: str
    port: int = PROXY_PORT

    @property
    def gateway(self) -> str:
        return gateway_of(self.lan)

    @property
    def url(self) -> str:
        return f"http://{self.gateway}:{self.port}"


@dataclass(frozen=True)
class Topology:
    name: str
    internet: str
    f: int
    mint: str
    sites: tuple[Site, ...]
    routers: tuple[Router, ...] = ()
    proxies: tuple[Proxy, ...] = ()
    node_settings: tuple[tuple[str, Any], ...] = ()

    def with_settings(self, settings: Mapping[str, Any]) -> Topology:
        """The topology with ``settings`` over its [node] table (checked the same way)."""
        merged = {**dict(self.node_settings), **settings}
        return replace(self, node_settings=_settings(merged))

    def site(self, name: str) -> Site:
        for s in self.sites:
            if s.name == name:
                return s
        raise TopologyError(f"no site named {name!r}", name)

    @property
    def gateways(self) -> tuple[Router | Proxy, ...]:
        """The routers, then the proxies."""
        return (*self.routers, *self.proxies)

    def gateway(self, name: str) -> Router | Proxy:
        for g in self.gateways:
            if g.name == name:
                return g
        raise TopologyError(f"no router or proxy named {name!r}", name)

    @property
    def notaries(self) -> tuple[Site, ...]:
        return tuple(s for s in self.sites if s.role == "notary")

    @property
    def nodes(self) -> tuple[Site, ...]:
        """The sites that run a node, notaries first."""
        return self.notaries + tuple(s for s in self.sites if s.role == "host")

    @property
    def buyers(self) -> tuple[Site, ...]:
        return tuple(s for s in self.sites if s.role == "buyer")

    def proxy_of(self, site: Site) -> Proxy | None:
        """The proxy a site reaches the internet through, if it sits behind one."""
        return next((p for p in self.proxies if p.name == site.behind), None)

    def network_of(self, site: Site) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(
            self.gateway(site.behind).lan if site.behind else self.internet)


def gateway_of(lan: str) -> str:
    """A LAN's router or proxy sits at its first address."""
    return str(ipaddress.IPv4Network(lan).network_address + 1)


def parse(text: str) -> Topology:
    """Parse and check a topology file's text."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"topology is not TOML: {exc}") from None
    return from_doc(doc)


def from_doc(doc: Mapping[str, Any]) -> Topology:
    _only(doc, "", {"network", "node", "sites", "routers", "proxies"})
    net = _table(doc, "network")
    _only(net, "network", {"name", "internet", "f", "mint"})
    name = _str(net, "network.name", "p2pmarket-testnet")
    internet = _network(_str(net, "network.internet", DEFAULT_INTERNET), "network.internet")
    f = _int(net, "network.f", 0)
    if f < 0:
        raise TopologyError("network.f must be >= 0", f)
    mint = _name(_str(net, "network.mint", "mint"), "network.mint")
    routers = tuple(_router(n, t) for n, t in _tables(doc, "routers").items())
    proxies = tuple(_proxy(n, t) for n, t in _tables(doc, "proxies").items())
    sites = tuple(_site(n, t) for n, t in _tables(doc, "sites").items())
    topo = Topology(name, str(internet), f, mint, sites, routers, proxies,
                    _settings(_table(doc, "node")))
    _check(topo)
    return topo


# -- the checks across tables --------------------------------------------------------

def _check(topo: Topology) -> None:
    internet = ipaddress.IPv4Network(topo.internet)
    gateways = {g.name: g for g in topo.gateways}
    taken: dict[str, str] = {topo.mint: "network.mint"}
    for key, n in ([(f"routers.{g.name}", g.name) for g in topo.routers]
                   + [(f"proxies.{g.name}", g.name) for g in topo.proxies]
                   + [(f"sites.{s.name}", s.name) for s in topo.sites]):
        if n in taken:
            raise TopologyError(f"{key}: the name {n!r} is taken by {taken[n]}", n)
        taken[n] = key
    nets: dict[str, ipaddress.IPv4Network] = {"network.internet": internet}
    for g in gateways.values():
        key = f"{'routers' if isinstance(g, Router) else 'proxies'}.{g.name}"
        lan = ipaddress.IPv4Network(g.lan)
        for other, net in nets.items():
            if lan.overlaps(net):
                raise TopologyError(f"{key}.lan overlaps {other}", g.lan)
        nets[f"{key}.lan"] = lan
    used: dict[str, str] = {}

    def place(key: str, address: str, net: ipaddress.IPv4Network, where: str) -> None:
        ip = ipaddress.IPv4Address(address)
        reserved = {net.network_address, net.broadcast_address}
        if net != internet:
            reserved.add(net.network_address + 1)
        if ip not in net or ip in reserved:
            raise TopologyError(f"{key}.address must be a host address of {where} "
                                f"({net}, not its first or last)", address)
        if address in used:
            raise TopologyError(f"{key}.address is also {used[address]}'s", address)
        used[address] = key

    for g in gateways.values():
        kind = "routers" if isinstance(g, Router) else "proxies"
        place(f"{kind}.{g.name}", g.address, internet, "network.internet")
    for s in topo.sites:
        key = f"sites.{s.name}"
        if s.behind is None:
            place(key, s.address, internet, "network.internet")
            continue
        if s.behind not in gateways:
            raise TopologyError(f"{key}.behind: {s.behind!r} is no router or proxy", s.behind)
        if s.role == "notary":
            raise TopologyError(f"{key}: a notary must be public (no 'behind')", s.behind)
        g = gateways[s.behind]
        place(key, s.address, ipaddress.IPv4Network(g.lan), f"{s.behind}'s lan")
    for r in topo.routers:
        if r.forward is not None and not any(
                s.name == r.forward and s.behind == r.name for s in topo.sites):
            raise TopologyError(f"routers.{r.name}.forward: {r.forward!r} is no site "
                                f"behind {r.name}", r.forward)
    notaries = len(topo.notaries)
    if notaries < 3 * topo.f + 1:
        raise TopologyError(f"sites: {notaries} notaries, but network.f = {topo.f} needs "
                            f"at least {3 * topo.f + 1}", notaries)


# -- one table at a time -------------------------------------------------------------

def _site(name: str, t: Mapping[str, Any]) -> Site:
    key = f"sites.{name}"
    _name(name, key)
    _only(t, key, {"role", "address", "behind"})
    role = _str(t, f"{key}.role")
    if role not in ROLES:
        raise TopologyError(f"{key}.role must be one of {', '.join(ROLES)}", role)
    behind = _str(t, f"{key}.behind", "") or None
    return Site(name, role, _address(t, key), behind)


def _router(name: str, t: Mapping[str, Any]) -> Router:
    key = f"routers.{name}"
    _name(name, key)
    _only(t, key, {"address", "lan", "forward"})
    forward = _str(t, f"{key}.forward", "") or None
    return Router(name, _address(t, key), _lan(t, key), forward)


def _proxy(name: str, t: Mapping[str, Any]) -> Proxy:
    key = f"proxies.{name}"
    _name(name, key)
    _only(t, key, {"address", "lan", "port"})
    port = _int(t, f"{key}.port", PROXY_PORT)
    if not 1 <= port <= 65535:
        raise TopologyError(f"{key}.port must be 1..65535", port)
    return Proxy(name, _address(t, key), _lan(t, key), port)


def _settings(t: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    for k, v in t.items():
        if k in RESERVED_SETTINGS:
            raise TopologyError(f"node.{k} is set by the testnet itself", k)
        if not isinstance(v, str | int | float | bool):
            raise TopologyError(f"node.{k} must be a string or a number", repr(v))
    return tuple(t.items())


def _only(t: Mapping[str, Any], key: str, allowed: set[str]) -> None:
    for k in t:
        if k not in allowed:
            raise TopologyError(f"{key + '.' if key else ''}{k}: unknown key "
                                f"(known: {', '.join(sorted(allowed))})", k)


def _table(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    t = doc.get(key, {})
    if not isinstance(t, dict):
        raise TopologyError(f"{key} must be a table", repr(t))
    return t


def _tables(doc: Mapping[str, Any], key: str) -> dict[str, Mapping[str, Any]]:
    t = _table(doc, key)
    for name, sub in t.items():
        if not isinstance(sub, dict):
            raise TopologyError(f"{key}.{name} must be a table", repr(sub))
    return dict(t)


def _str(t: Mapping[str, Any], key: str, default: str | None = None) -> str:
    v = t.get(key.rpartition(".")[2], default)
    if v is None:
        raise TopologyError(f"{key} is missing")
    if not isinstance(v, str):
        raise TopologyError(f"{key} must be a string", repr(v))
    return v


def _int(t: Mapping[str, Any], key: str, default: int) -> int:
    v = t.get(key.rpartition(".")[2], default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise TopologyError(f"{key} must be an integer", repr(v))
    return v


def _name(name: str, key: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise TopologyError(f"{key}: a name is 1 to {NAME_MAX} lowercase letters and "
                            "digits, starting with a letter", name)
    return name


def _address(t: Mapping[str, Any], key: str) -> str:
    text = _str(t, f"{key}.address")
    try:
        ip = ipaddress.IPv4Address(text)
    except ValueError:
        raise TopologyError(f"{key}.address is not an IPv4 address", text) from None
    if ip not in TESTNET_RANGE:
        raise TopologyError(f"{key}.address must be inside {TESTNET_RANGE}", text)
    return str(ip)


def _lan(t: Mapping[str, Any], key: str) -> str:
    return str(_network(_str(t, f"{key}.lan"), f"{key}.lan"))


def _network(text: str, key: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(text)
    except ValueError:
        raise TopologyError(f"{key} is not an IPv4 network (CIDR, host bits zero)",
                            text) from None
    if not net.subnet_of(TESTNET_RANGE):
        raise TopologyError(f"{key} must be inside {TESTNET_RANGE}", text)
    if net.prefixlen > 29:
        raise TopologyError(f"{key} is too small (at most /29)", text)
    return net
