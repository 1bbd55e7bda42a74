"""How a topology becomes network namespaces (pure): names, commands, configs.

Namespaces (``prefix`` is short and random per testnet, e.g. ``p2pm3f2a``)::

    <prefix>             the internet: a bridge br0, nothing else (no address)
    <prefix>-<router>    eth0 on the internet, bridge lan0 = the LAN's first address;
                         ip_forward=1, iptables MASQUERADE of the LAN out of eth0, no
                         new connections in, except the port forward (DNAT)
    <prefix>-<proxy>     eth0 on the internet, bridge lan0 as above; ip_forward=0,
                         tinyproxy listening on the LAN address, and nothing but
                         replies let in on eth0 (a router's own address refuses
                         connections; a proxy's drops them)
    <prefix>-<site>      eth0 with the site's address; a default route via its router,
                         none behind a proxy (its LAN is all it can reach)

Every namespace has ``lo`` up (the node's control API is on 127.0.0.1 there). A
veth pair joins each site or gateway (its ``eth0``) to the bridge in front of it,
where its end is named ``v<name>``; every interface name fits in 15 characters.
The root namespace is never touched.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from p2pmarket.core.genesis import BootstrapPeer, Genesis, NotaryInfo
from p2pmarket.testnet.topology import (
    DHT_PORT,
    HTTP_PORT,
    TESTNET_RANGE,
    Proxy,
    Router,
    Site,
    Topology,
)

INTERNET_BRIDGE = "br0"
LAN_BRIDGE = "lan0"
UPLINK = "eth0"
IFNAME_MAX = 15
Command = tuple[str, ...]


def namespace(prefix: str, name: str | None = None) -> str:
    """The namespace of a site, router or proxy; the internet's without a name."""
    return prefix if name is None else f"{prefix}-{name}"


def namespaces(topo: Topology, prefix: str) -> list[str]:
    """Every namespace of the testnet, in the order they are made: the internet,
    then the routers and proxies, then the sites."""
    return [namespace(prefix), *(namespace(prefix, g.name) for g in topo.gateways),
            *(namespace(prefix, s.name) for s in topo.sites)]


def veth_name(name: str) -> str:
    """The bridge's end of the veth pair to ``name``."""
    ifname = f"v{name}"
    assert len(ifname) <= IFNAME_MAX, ifname
    return ifname


def in_namespace(ns: str, argv: list[str] | tuple[str, ...]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def _ip(ns: str, *args: str) -> Command:
    return ("ip", "-n", ns, *args)


def _iptables(ns: str, *args: str) -> Command:
    return tuple(in_namespace(ns, ("iptables", "-w", *args)))


def _sysctl_forward(ns: str, on: bool) -> Command:
    return tuple(in_namespace(ns, ("sh", "-c",
                                   f"echo {int(on)} > /proc/sys/net/ipv4/ip_forward")))


def _join(upstream: str, bridge: str, name: str, ns: str, address: str,
          plen: int) -> list[Command]:
    """A veth from the bridge in ``upstream`` to ``ns``'s eth0 with its address."""
    v = veth_name(name)
    return [_ip(upstream, "link", "add", v, "type", "veth", "peer", "name", UPLINK,
                "netns", ns),
            _ip(upstream, "link", "set", v, "master", bridge, "up"),
            _ip(ns, "addr", "add", f"{address}/{plen}", "dev", UPLINK),
            _ip(ns, "link", "set", UPLINK, "up")]


def link_commands(topo: Topology, prefix: str) -> list[Command]:
    """The ``ip`` and ``iptables`` commands that wire up the namespaces once they exist."""
    inet = namespace(prefix)
    plen = ipaddress.IPv4Network(topo.internet).prefixlen
    cmds: list[Command] = [_ip(inet, "link", "set", "lo", "up"),
                           _ip(inet, "link", "add", INTERNET_BRIDGE, "type", "bridge"),
                           _ip(inet, "link", "set", INTERNET_BRIDGE, "up")]
    for g in topo.gateways:
        ns = namespace(prefix, g.name)
        lan = ipaddress.IPv4Network(g.lan)
        cmds += [_ip(ns, "link", "set", "lo", "up"),
                 *_join(inet, INTERNET_BRIDGE, g.name, ns, g.address, plen),
                 _ip(ns, "link", "add", LAN_BRIDGE, "type", "bridge"),
                 _ip(ns, "addr", "add", f"{g.gateway}/{lan.prefixlen}", "dev", LAN_BRIDGE),
                 _ip(ns, "link", "set", LAN_BRIDGE, "up")]
        cmds += _nat(topo, ns, g) if isinstance(g, Router) else _proxy_host(ns)
    for s in topo.sites:
        ns = namespace(prefix, s.name)
        cmds.append(_ip(ns, "link", "set", "lo", "up"))
        if s.behind is None:
            cmds += _join(inet, INTERNET_BRIDGE, s.name, ns, s.address, plen)
            continue
        g = topo.gateway(s.behind)
        cmds += _join(namespace(prefix, g.name), LAN_BRIDGE, s.name, ns, s.address,
                      ipaddress.IPv4Network(g.lan).prefixlen)
        if isinstance(g, Router):
            cmds.append(_ip(ns, "route", "add", "default", "via", g.gateway))
    return cmds


def _proxy_host(ns: str) -> list[Command]:
    """A proxy forwards nothing itself, and its public side answers nothing but replies
    (a firewalled proxy: a registrar's callback to its address gets no answer at all,
    where a NAT router's own address refuses, so the two are told apart)."""
    return [_sysctl_forward(ns, False),
            _iptables(ns, "-A", "INPUT", "-i", UPLINK, "-m", "conntrack",
                      "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"),
            _iptables(ns, "-A", "INPUT", "-i", UPLINK, "-j", "DROP")]


def _nat(topo: Topology, ns: str, r: Router) -> list[Command]:
    """Masquerade the LAN; let in only replies and the port forward."""
    cmds = [_sysctl_forward(ns, True),
            _iptables(ns, "-t", "nat", "-A", "POSTROUTING", "-s", r.lan, "-o", UPLINK,
                      "-j", "MASQUERADE"),
            _iptables(ns, "-A", "FORWARD", "-i", LAN_BRIDGE, "-o", UPLINK, "-j", "ACCEPT"),
            _iptables(ns, "-A", "FORWARD", "-i", UPLINK, "-o", LAN_BRIDGE, "-m", "conntrack",
                      "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")]
    if r.forward is not None:
        to = topo.site(r.forward).address
        for proto in ("tcp", "udp"):
            for port in (HTTP_PORT, DHT_PORT):
                cmds.append(_iptables(ns, "-t", "nat", "-A", "PREROUTING", "-i", UPLINK,
                                      "-d", r.address, "-p", proto, "--dport", str(port),
                                      "-j", "DNAT", "--to-destination", f"{to}:{port}"))
        cmds.append(_iptables(ns, "-A", "FORWARD", "-i", UPLINK, "-o", LAN_BRIDGE,
                              "-d", to, "-m", "conntrack", "--ctstate", "DNAT",
                              "-j", "ACCEPT"))
    cmds.append(_iptables(ns, "-A", "FORWARD", "-i", UPLINK, "-o", LAN_BRIDGE, "-j", "DROP"))
    return cmds


# -- processes -----------------------------------------------------------------------

LEASED_PORTS = "30000-30009"
"""The ports a host site leases for SSH to its guests (each site has its own address)."""


def node_settings(topo: Topology, site: Site) -> dict[str, Any]:
    """The settings of a site's node (its config.toml): the topology's [node] table,
    then its addresses and ports (a host's leased ``tcp_ports`` too)."""
    leased = {"tcp_ports": LEASED_PORTS} if site.role == "host" else {}
    return {**dict(topo.node_settings), "listen_host": "0.0.0.0",
            "advertise_host": site.address, "http_port": HTTP_PORT, "dht_port": DHT_PORT,
            **leased}


def node_command(python: str, topo: Topology, site: Site, data_dir: str) -> list[str]:
    """The command that runs a site's node (inside its namespace)."""
    argv = [python, "-m", "p2pmarket", "node", "--data-dir", data_dir,
            "--listen-host", "0.0.0.0", "--advertise-host", site.address,
            "--http-port", str(HTTP_PORT), "--dht-port", str(DHT_PORT)]
    proxy = topo.proxy_of(site)
    if proxy is not None:
        argv += ["--http-proxy", proxy.url]
    return argv


def status_command(python: str, data_dir: str) -> list[str]:
    return [python, "-m", "p2pmarket", "status", "--data-dir", data_dir]


def tinyproxy_config(proxy: Proxy, pid_file: str, log_file: str) -> str:
    """tinyproxy on the proxy's LAN address for its LAN only. No ConnectPort line:
    CONNECT to any port is allowed."""
    return "\n".join([
        "# written by p2pmarket testnet",
        f"Port {proxy.port}",
        f"Listen {proxy.gateway}",
        "Timeout 60",
        f"Allow {proxy.lan}",
        f'PidFile "{pid_file}"',
        f'LogFile "{log_file}"',
        "LogLevel Info",
        "MaxClients 100",
        "DisableViaHeader Yes",
    ]) + "\n"


def tinyproxy_command(config: str) -> list[str]:
    return ["tinyproxy", "-d", "-c", config]


# -- the network ---------------------------------------------------------------------

def genesis_for(topo: Topology, notary_keys: list[bytes], mint_key: bytes) -> Genesis:
    """The genesis: the notary sites with ``notary_keys`` (in their order) at their
    public addresses, which are also the bootstrap peers; the whole testnet range is
    shared (free of the DHT's per-prefix caps)."""
    notaries = topo.notaries
    urls = [f"http://{s.address}:{HTTP_PORT}" for s in notaries]
    return Genesis(
        network=topo.name,
        mint_key=mint_key,
        notaries=tuple(NotaryInfo(k, u) for k, u in zip(notary_keys, urls, strict=True)),
        f=topo.f,
        bootstrap=tuple(BootstrapPeer(s.address, DHT_PORT, u)
                        for s, u in zip(notaries, urls, strict=True)),
        shared_prefixes=(str(TESTNET_RANGE),),
    )
