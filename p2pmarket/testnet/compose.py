"""How a topology becomes a Docker Compose file (pure): names, services, networks.

The document (:func:`document`, dumped by :func:`dump`) is Compose file format 2.4
(Compose 1.29 reads it; 3.x has no IPAM ``gateway``). The naming contract, which the
fault harness and the tests rely on::

    container   <project>-<name>       every site, router and proxy (container_name)
    network     <project>-internet     the public network (the topology's internet)
                <project>-<gateway>    the LAN behind each router or proxy

Every network is a plain bridge (never ``internal: true``: since Engine 25 an internal
network has no gateway and Docker drops traffic routed through a container) with the
topology's subnet, Docker's own masquerade off, and Docker's host-side gateway on the
subnet's **last** host address (a LAN's first address is its router's or proxy's).
Every service has its topology address (``ipv4_address``), ``NET_ADMIN``, and starts
by fixing its routes: a site behind a router replaces its default route with the
router's LAN address; every other container drops its default route (the internet is
one flat network: nothing needs to leave it, and a site behind a proxy has no route out).

* a router: ``net.ipv4.ip_forward=1``, iptables MASQUERADE of its LAN, only replies
  and its port forward (DNAT of TCP+UDP 7400 and 7401 on its public address) let in;
* a proxy: ``ip_forward=0``, tinyproxy on its LAN address (its config in the testnet
  dir, :func:`tinyproxy_files`), and its public address answers nothing but replies;
* a notary or host: ``p2pmarket node`` on its data dir (:func:`plan.node_command`),
  its output appended to the data dir's ``node.log``;
* a buyer: idles; tests and people run ``docker exec <container> p2pmarket buy ...``.

The testnet dir (:mod:`.datadirs`; data dirs, wallets, genesis) is bind-mounted at
:data:`MOUNT` in every container, so a container's state survives SIGKILL and
``docker start``. ``data`` in :class:`Options` is that dir on the host, relative to
the compose file or absolute.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from dataclasses import dataclass
from typing import Any

from p2pmarket.core.errors import P2PMarketError
from p2pmarket.testnet.plan import node_command, tinyproxy_command, tinyproxy_config
from p2pmarket.testnet.topology import DHT_PORT, HTTP_PORT, Proxy, Router, Site, Topology

COMPOSE_VERSION = "2.4"
DEFAULT_PROJECT = "p2pm"
DEFAULT_IMAGE = "p2pmarket-testnet:latest"
MOUNT = "/testnet"
PYTHON = "/opt/p2pmarket/bin/python"
INTERNET = "internet"
PROJECT_RE = re.compile(r"[a-z][a-z0-9]{0,11}")
NO_MASQUERADE = {"com.docker.network.bridge.enable_ip_masquerade": "false"}
IDLE = "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"
STOP_GRACE = "5s"


class ComposeError(P2PMarketError):
    """A topology or option that cannot become a compose file."""


@dataclass(frozen=True)
class Options:
    project: str = DEFAULT_PROJECT
    image: str = DEFAULT_IMAGE
    data: str = "."


def container_name(project: str, name: str) -> str:
    """The container of a site, router or proxy."""
    return f"{project}-{name}"


def network_name(project: str, name: str) -> str:
    """The network ``internet``, or the LAN behind the router or proxy ``name``."""
    return f"{project}-{name}"


def network_key(name: str) -> str:
    """The key of a network inside the compose file (``internet``, ``lan_<gateway>``)."""
    return INTERNET if name == INTERNET else f"lan_{name}"


def containers(topo: Topology, project: str) -> list[str]:
    """Every container, in the order they start: gateways, notaries, hosts, buyers."""
    return [container_name(project, n) for n in start_order(topo)]


def networks(topo: Topology, project: str) -> list[str]:
    return [network_name(project, INTERNET),
            *(network_name(project, g.name) for g in topo.gateways)]


def start_order(topo: Topology) -> list[str]:
    return [*(g.name for g in topo.gateways), *(s.name for s in topo.nodes),
            *(s.name for s in topo.buyers)]


def site_path(name: str) -> str:
    """A site's data dir or wallet dir (or a proxy's dir) inside its container."""
    return f"{MOUNT}/{name}"


def docker_gateway(subnet: str) -> str:
    """Docker's own (host-side) address on a network: the last host address."""
    return str(ipaddress.IPv4Network(subnet).broadcast_address - 1)


# -- the document --------------------------------------------------------------------

def document(topo: Topology, options: Options = Options()) -> dict[str, Any]:
    """The compose document of ``topo`` (a dict, dumped by :func:`dump`)."""
    _check(topo, options)
    p = options.project
    nets: dict[str, Any] = {INTERNET: _network(network_name(p, INTERNET), topo.internet)}
    for g in topo.gateways:
        nets[network_key(g.name)] = _network(network_name(p, g.name), g.lan)
    services: dict[str, Any] = {}
    for g in topo.routers:
        services[g.name] = _gateway(topo, g, options, _router_script(topo, g), forward=True)
    for x in topo.proxies:
        services[x.name] = _gateway(topo, x, options, _proxy_script(x), forward=False)
    notaries = [s.name for s in topo.notaries]
    for s in topo.nodes:
        after = [] if s.role == "notary" else notaries
        services[s.name] = _site(topo, s, options, _node_script(topo, s), after)
    for s in topo.buyers:
        services[s.name] = _site(topo, s, options, IDLE, [])
    return {"version": COMPOSE_VERSION, "services": services, "networks": nets}


def _check(topo: Topology, options: Options) -> None:
    if not PROJECT_RE.fullmatch(options.project):
        raise ComposeError("a compose project name is 1 to 12 lowercase letters and digits, "
                           "starting with a letter", options.project)
    names = {g.name for g in topo.gateways}
    if INTERNET in names:
        raise ComposeError(f"a router or proxy may not be named {INTERNET!r} (its network "
                           "would be the internet's)", INTERNET)
    taken = {s.address for s in topo.sites} | {g.address for g in topo.gateways}
    for subnet in (topo.internet, *(g.lan for g in topo.gateways)):
        if docker_gateway(subnet) in taken:
            raise ComposeError(f"{docker_gateway(subnet)} is Docker's own address on "
                               f"{subnet} (its last host address): move the site", subnet)


def _network(name: str, subnet: str) -> dict[str, Any]:
    return {"name": name, "driver": "bridge", "driver_opts": dict(NO_MASQUERADE),
            "ipam": {"config": [{"subnet": subnet, "gateway": docker_gateway(subnet)}]}}


def _base(name: str, options: Options, script: str,
          networks: dict[str, Any], sysctls: dict[str, int]) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "image": options.image,
        "container_name": container_name(options.project, name),
        "hostname": name,
        "cap_add": ["NET_ADMIN"],
        "networks": networks,
        "volumes": [f"{options.data}:{MOUNT}"],
        "command": ["/bin/sh", "-c", script.replace("$", "$$")],   # $$: Compose's escape
        "stop_grace_period": STOP_GRACE,
    }
    if sysctls:
        svc["sysctls"] = sysctls
    return svc


def _gateway(topo: Topology, g: Router | Proxy, options: Options, script: str,
             forward: bool) -> dict[str, Any]:
    nets = {INTERNET: {"ipv4_address": g.address},
            network_key(g.name): {"ipv4_address": g.gateway}}
    return _base(g.name, options, script, nets, {"net.ipv4.ip_forward": int(forward)})


def _site(topo: Topology, s: Site, options: Options, script: str,
          after: list[str]) -> dict[str, Any]:
    key = network_key(s.behind) if s.behind else INTERNET
    svc = _base(s.name, options, f"{_route(topo, s)}; {script}",
                {key: {"ipv4_address": s.address}}, {})
    depends = [*after, *([s.behind] if s.behind else [])]
    if depends:
        svc["depends_on"] = depends
    return svc


# -- what each container runs --------------------------------------------------------

def _route(topo: Topology, s: Site) -> str:
    if s.behind is not None and isinstance(topo.gateway(s.behind), Router):
        return f"ip route replace default via {topo.gateway(s.behind).gateway}"
    return NO_DEFAULT


NO_DEFAULT = "ip route del default 2>/dev/null || true"


def _ipt(*args: str) -> str:
    return shlex.join(["iptables", "-w", *args])


def router_rules(topo: Topology, r: Router) -> list[str]:
    """Masquerade the LAN; let in only replies and the port forward (by address, as a
    container's interface names depend on the order Docker attached its networks)."""
    rules = [_ipt("-t", "nat", "-A", "POSTROUTING", "-s", r.lan, "!", "-d", r.lan,
                  "-j", "MASQUERADE"),
             _ipt("-A", "FORWARD", "-s", r.lan, "!", "-d", r.lan, "-j", "ACCEPT"),
             _ipt("-A", "FORWARD", "-d", r.lan, "-m", "conntrack", "--ctstate",
                  "ESTABLISHED,RELATED", "-j", "ACCEPT")]
    if r.forward is not None:
        to = topo.site(r.forward).address
        for proto in ("tcp", "udp"):
            for port in (HTTP_PORT, DHT_PORT):
                rules.append(_ipt("-t", "nat", "-A", "PREROUTING", "!", "-s", r.lan,
                                  "-d", r.address, "-p", proto, "--dport", str(port),
                                  "-j", "DNAT", "--to-destination", f"{to}:{port}"))
        rules.append(_ipt("-A", "FORWARD", "-d", to, "-m", "conntrack", "--ctstate",
                          "DNAT", "-j", "ACCEPT"))
    rules.append(_ipt("-A", "FORWARD", "-d", r.lan, "-j", "DROP"))
    return rules


def _router_script(topo: Topology, r: Router) -> str:
    return "; ".join(["set -e", NO_DEFAULT, *router_rules(topo, r), IDLE])


def proxy_rules(x: Proxy) -> list[str]:
    """The proxy's public address answers nothing but replies."""
    return [_ipt("-A", "INPUT", "-d", x.address, "-m", "conntrack", "--ctstate",
                 "ESTABLISHED,RELATED", "-j", "ACCEPT"),
            _ipt("-A", "INPUT", "-d", x.address, "-j", "DROP")]


def tinyproxy_files(x: Proxy) -> tuple[str, str, str]:
    """(config, pid file, log file) of a proxy's tinyproxy, inside its container."""
    d = site_path(x.name)
    return f"{d}/tinyproxy.conf", f"{d}/tinyproxy.pid", f"{d}/tinyproxy.log"


def tinyproxy_conf(x: Proxy) -> str:
    """The text of the proxy's tinyproxy.conf (in its dir of the testnet dir)."""
    _, pid, log = tinyproxy_files(x)
    return tinyproxy_config(x, pid, log)


def _proxy_script(x: Proxy) -> str:
    conf, pid, _ = tinyproxy_files(x)
    return "; ".join(["set -e", NO_DEFAULT, *proxy_rules(x), f"rm -f {pid}",
                      "exec " + shlex.join(tinyproxy_command(conf))])


def _node_script(topo: Topology, s: Site) -> str:
    d = site_path(s.name)
    argv = node_command(PYTHON, topo, s, d)
    return f"rm -f {d}/control.json; exec {shlex.join(argv)} >>{d}/node.log 2>&1"


# -- YAML ----------------------------------------------------------------------------

PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
HEADER = ("# Generated from {source} by `p2pmarket testnet compose` (p2pmarket/testnet/"
          "compose.py):\n# do not edit by hand. testnet/README.md says how to run it.\n")


def dump(doc: dict[str, Any], source: str = "the topology") -> str:
    """The document as YAML (block style; every string double-quoted as in JSON, which
    YAML reads the same), under a header naming its ``source``."""
    return HEADER.format(source=source) + "".join(_lines(doc, 0))


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    raise ComposeError(f"cannot write {type(v).__name__} as YAML", repr(v))


def _key(k: str) -> str:
    return k if PLAIN_KEY.fullmatch(k) and k not in ("true", "false", "null") else json.dumps(k)


def _lines(v: Any, indent: int) -> list[str]:
    pad = "  " * indent
    out: list[str] = []
    if isinstance(v, dict):
        for k, x in v.items():
            if isinstance(x, dict | list) and x:
                out += [f"{pad}{_key(k)}:\n", *_lines(x, indent + 1)]
            else:
                out.append(f"{pad}{_key(k)}: {_empty(x)}\n")
        return out
    for x in v:
        if isinstance(x, dict) and x:
            inner = _lines(x, indent + 1)
            out += [f"{pad}- {inner[0].lstrip()}", *inner[1:]]
        elif isinstance(x, list) and x:
            raise ComposeError("nested lists are not written", repr(x))
        else:
            out.append(f"{pad}- {_empty(x)}\n")
    return out


def _empty(x: Any) -> str:
    if isinstance(x, dict):
        return "{}"
    if isinstance(x, list):
        return "[]"
    return _scalar(x)
