"""The Docker Compose testnet: the pure generator (always), and for real (root, dockerd;
``scripts/setup-docker``): the default topology up, every node ready, the public buyer
buys from a public host and from the NAT'd host through its relay, supply equals mints
at every notary, and ``down`` leaves no container or network of the project (the
session's compose testnet, ``compose_net`` in conftest.py, shared with the fault tests
and the soak)."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from typing import Any

import pytest

from p2pmarket.testnet import compose
from p2pmarket.testnet.compose import ComposeError, Options, container_name, network_name
from p2pmarket.testnet.docker import DockerTestnet
from p2pmarket.testnet.topology import Router, parse
from tests.testnet.conftest import COMPOSE_PROJECT as PROJECT
from tests.testnet.conftest import DEFAULT_TOPOLOGY, REPO, until

COMMITTED = REPO / "testnet" / "docker-compose.yml"
TOPO = parse(DEFAULT_TOPOLOGY.read_text())


def default_doc() -> dict[str, Any]:
    return compose.document(TOPO, Options(data="./run"))


# -- the generator -------------------------------------------------------------------

def test_the_committed_compose_file_is_the_generated_one() -> None:
    assert COMMITTED.read_text() == compose.dump(default_doc(), "testnet/default.toml"), (
        "regenerate: p2pmarket testnet compose testnet/default.toml --data ./run "
        "-o testnet/docker-compose.yml")


def test_services_networks_and_addresses_match_the_topology() -> None:
    doc = default_doc()
    services, nets = doc["services"], doc["networks"]
    assert set(services) == {s.name for s in TOPO.sites} | {g.name for g in TOPO.gateways}
    assert nets["internet"]["name"] == "p2pm-internet"
    assert nets["internet"]["ipam"]["config"] == [{"subnet": "198.18.0.0/24",
                                                   "gateway": "198.18.0.254"}]
    for g in TOPO.gateways:
        lan = nets[f"lan_{g.name}"]
        assert lan["name"] == network_name("p2pm", g.name)
        assert lan["ipam"]["config"][0]["subnet"] == g.lan
        assert "internal" not in lan and lan["driver"] == "bridge"
        svc = services[g.name]
        assert svc["networks"] == {"internet": {"ipv4_address": g.address},
                                   f"lan_{g.name}": {"ipv4_address": g.gateway}}
        assert svc["sysctls"] == {"net.ipv4.ip_forward": int(isinstance(g, Router))}
    for s in TOPO.sites:
        svc = services[s.name]
        key = f"lan_{s.behind}" if s.behind else "internet"
        assert svc["container_name"] == container_name("p2pm", s.name) == f"p2pm-{s.name}"
        assert svc["networks"] == {key: {"ipv4_address": s.address}}
        assert svc["volumes"] == ["./run:/testnet"] and svc["cap_add"] == ["NET_ADMIN"]
        script = svc["command"][2]
        if s.runs_node:
            assert f"-m p2pmarket node --data-dir /testnet/{s.name} " in script
            assert f"--advertise-host {s.address} " in script
        else:
            assert "p2pmarket" not in script and "sleep" in script
        behind = TOPO.gateway(s.behind) if s.behind else None
        if isinstance(behind, Router):
            assert script.startswith(f"ip route replace default via {behind.gateway};")
        else:
            assert script.startswith("ip route del default")
        if behind is not None and not isinstance(behind, Router):
            assert f"--http-proxy http://{behind.gateway}:8888" in script or not s.runs_node
    assert "MASQUERADE" in services["nat1"]["command"][2]
    assert "DNAT" not in services["nat1"]["command"][2]
    assert "--to-destination 198.19.2.10:7400" in services["fwd1"]["command"][2]
    assert "exec tinyproxy -d -c /testnet/px1/tinyproxy.conf" in services["px1"]["command"][2]
    every = [a["ipv4_address"] for svc in services.values() for a in svc["networks"].values()]
    assert all(ipaddress.IPv4Address(a) in ipaddress.IPv4Network("198.18.0.0/15")
               for a in every)
    assert len(every) == len(set(every))
    assert compose.containers(TOPO, "p2pm")[:3] == ["p2pm-nat1", "p2pm-fwd1", "p2pm-px1"]
    assert compose.networks(TOPO, "p2pm") == ["p2pm-internet", "p2pm-nat1", "p2pm-fwd1",
                                              "p2pm-px1"]


def test_the_yaml_reads_back_as_the_document() -> None:
    """The emitter's YAML, read by PyYAML as Compose reads it (the system python's,
    which docker-compose brings), is the document; Compose itself accepts it."""
    reader = "/usr/bin/python3"
    probe = subprocess.run([reader, "-c", "import yaml"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("no PyYAML on the system python (apt-get install python3-yaml)")
    done = subprocess.run([reader, "-c", "import json, sys, yaml; "
                           "print(json.dumps(yaml.safe_load(sys.stdin)))"],
                          input=COMMITTED.read_text(), capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout) == default_doc()
    if shutil.which("docker-compose"):
        check = subprocess.run(["docker-compose", "-f", str(COMMITTED), "config", "-q"],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


def test_bad_options_and_topologies_are_refused() -> None:
    with pytest.raises(ComposeError, match="project name"):
        compose.document(TOPO, Options(project="P2P_M"))
    text = DEFAULT_TOPOLOGY.read_text()
    with pytest.raises(ComposeError, match="Docker's own address"):
        compose.document(parse(text.replace('"198.18.0.21"', '"198.18.0.254"')))
    with pytest.raises(ComposeError, match="'internet'"):
        compose.document(parse(text.replace("nat1", "internet")))


# -- for real ------------------------------------------------------------------------

def cli(net: DockerTestnet, site: str, *args: str) -> Any:
    """``p2pmarket ARGS --json`` in a site's container (``status`` prints JSON anyway,
    ``bank`` has no JSON); the parsed output."""
    flag = [] if args[0] in ("status", "bank") else ["--json"]
    done = net.exec(site, [compose.PYTHON, "-m", "p2pmarket", *args, *flag],
                    capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout if args[0] == "bank" else json.loads(done.stdout)


def status(net: DockerTestnet, site: str) -> dict[str, Any]:
    st: dict[str, Any] = cli(net, site, "status", "--data-dir", net.path(site))
    return st


def test_every_container_has_its_name_and_address(compose_net: DockerTestnet) -> None:
    net = compose_net
    for s in TOPO.sites:
        done = subprocess.run(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}",
                               f"{PROJECT}-{s.name}"], capture_output=True, text=True,
                              check=True)
        nets = json.loads(done.stdout)
        want = network_name(PROJECT, s.behind or "internet")
        assert nets[want]["IPAMConfig"]["IPv4Address"] == s.address
    assert json.loads((net.root / "docker.json").read_text())["built"]


def test_a_buyer_container_buys_from_a_public_and_a_natd_host(compose_net: DockerTestnet
                                                              ) -> None:
    net = compose_net   # shared with test_faults and test_soak: mints are counted
    before = cli(net, "b1", "ledger", "supply", "--wallet", net.path("b1"))
    h1 = until("h1 public", 60, lambda: (lambda st: st if st["reach"]["class"] == "public"
                                         else None)(status(net, "h1")))
    hn1 = until("hn1 relayed", 60, lambda: (lambda st: st if st["reach"]["class"] == "nat"
                                            and st["reach"]["relay"] else None)(
        status(net, "hn1")))
    assert status(net, "hn1")["reach"]["seen"][0] == "198.18.0.101"   # nat1's address
    key = cli(net, "b1", "wallet", "show", "--wallet", net.path("b1"))["key"]
    cli(net, "b1", "bank", "mint", "--mint-wallet", net.path("mint"), "--to", key,
        "--amount", "10")
    urls = {}
    for st in (h1, hn1):
        report = cli(net, "b1", "buy", "--wallet", net.path("b1"), "--budget", "2",
                     "--duration", "1h", "--hosts", "1", "--host", st["node_id"],
                     "cpu:1,0.1,1", "memory:1,64MiB,256MiB")
        assert report["skipped"] == [] and report["unfinished"] == []
        [purchase] = report["purchases"]
        urls[st["node_id"]] = purchase["url"]
    assert urls[h1["node_id"]] == "http://198.18.0.21:7400"
    assert urls[hn1["node_id"]] == hn1["url"] and "/relay/" in hn1["url"]
    supply = cli(net, "b1", "ledger", "supply", "--wallet", net.path("b1"))
    assert supply["errors"] == 0 and supply["agree"] == 4
    minted = {n["minted"] for n in before["notaries"]}
    assert {n["minted"] for n in supply["notaries"]} == {m + 10 * 1_000_000 for m in minted}
    assert all(n["ok"] for n in supply["notaries"])
