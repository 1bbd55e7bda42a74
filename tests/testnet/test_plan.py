"""The plan (pure): namespaces, interfaces, routes, NAT rules, commands, the genesis."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pmarket.cli.main import main
from p2pmarket.testnet import netns, plan
from p2pmarket.testnet.topology import parse
from tests.testnet.conftest import DEFAULT_TOPOLOGY

TOPO = parse(DEFAULT_TOPOLOGY.read_text())
PREFIX = "p2pm3f2a"
CMDS = plan.link_commands(TOPO, PREFIX)


def target(cmd: tuple[str, ...]) -> str:
    """The namespace a command acts in."""
    if cmd[:2] == ("ip", "-n"):
        return cmd[2]
    assert cmd[:3] == ("ip", "netns", "exec"), cmd
    return cmd[3]


def in_ns(name: str | None) -> list[tuple[str, ...]]:
    ns = plan.namespace(PREFIX, name)
    return [c for c in CMDS if target(c) == ns]


def test_one_namespace_each_and_none_outside_the_testnet() -> None:
    names = plan.namespaces(TOPO, PREFIX)
    assert names[0] == PREFIX and names[1:4] == ["p2pm3f2a-nat1", "p2pm3f2a-fwd1",
                                                  "p2pm3f2a-px1"]
    assert len(names) == len(set(names)) == 1 + 3 + len(TOPO.sites)
    assert {target(c) for c in CMDS} == set(names)     # the root namespace is not touched
    assert all(n.startswith(PREFIX) for n in names)


def test_interface_names_fit() -> None:
    names = {c[c.index("add") + 1] for c in CMDS if "link" in c and "add" in c}
    names |= {c[c.index("peer") + 2] for c in CMDS if "peer" in c}
    assert "vhn1" in names and "eth0" in names and "lan0" in names
    assert max(len(n) for n in names) <= 15
    assert len(plan.veth_name("abcdefghijk")) == 12


def test_loopback_up_everywhere() -> None:
    for name in plan.namespaces(TOPO, PREFIX):
        assert ("ip", "-n", name, "link", "set", "lo", "up") in CMDS


def test_routes_natted_sites_default_via_router_proxied_none() -> None:
    assert ("ip", "-n", "p2pm3f2a-hn1", "route", "add", "default", "via",
            "198.19.1.1") in CMDS
    assert ("ip", "-n", "p2pm3f2a-hf1", "route", "add", "default", "via",
            "198.19.2.1") in CMDS
    for site in ("hp1", "bp1", "h1", "n1"):
        assert not [c for c in in_ns(site) if "route" in c], site


def test_nat_rules_on_routers_only() -> None:
    joined = {name: [" ".join(c) for c in in_ns(name)] for name in ("nat1", "fwd1", "px1")}
    masq = "iptables -w -t nat -A POSTROUTING -s {} -o eth0 -j MASQUERADE"
    assert any(masq.format("198.19.1.0/24") in c for c in joined["nat1"])
    assert any(masq.format("198.19.2.0/24") in c for c in joined["fwd1"])
    # a proxy's public side lets in replies only (its address never answers a callback)
    assert [c.split("iptables -w ")[1] for c in joined["px1"] if "iptables" in c] == [
        "-A INPUT -i eth0 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A INPUT -i eth0 -j DROP"]
    assert not any("INPUT" in c for c in joined["nat1"] + joined["fwd1"])   # routers refuse
    assert any("echo 1 > /proc/sys/net/ipv4/ip_forward" in c for c in joined["nat1"])
    assert any("echo 0 > /proc/sys/net/ipv4/ip_forward" in c for c in joined["px1"])
    dnat = [c for c in joined["fwd1"] if "DNAT --to" in c]
    assert sorted(dnat) == sorted(
        f"ip netns exec p2pm3f2a-fwd1 iptables -w -t nat -A PREROUTING -i eth0 -d "
        f"198.18.0.102 -p {proto} --dport {port} -j DNAT --to-destination 198.19.2.10:{port}"
        for proto in ("tcp", "udp") for port in (7400, 7401))
    assert not any("DNAT" in c for c in joined["nat1"])
    for name in ("nat1", "fwd1"):     # nothing new gets in, the DROP comes last
        forward = [c for c in joined[name] if " FORWARD -i eth0" in c]
        assert forward[-1].endswith("-i eth0 -o lan0 -j DROP")


def test_the_node_command() -> None:
    h1 = plan.node_command("/py", TOPO, TOPO.site("h1"), "/t/h1")
    assert h1 == ["/py", "-m", "p2pmarket", "node", "--data-dir", "/t/h1",
                  "--listen-host", "0.0.0.0", "--advertise-host", "198.18.0.21",
                  "--http-port", "7400", "--dht-port", "7401"]
    hp1 = plan.node_command("/py", TOPO, TOPO.site("hp1"), "/t/hp1")
    assert hp1[-2:] == ["--http-proxy", "http://198.19.3.1:8888"]
    assert "--http-proxy" not in plan.node_command("/py", TOPO, TOPO.site("hn1"), "/t/hn1")
    assert plan.in_namespace("ns", ["a"]) == ["ip", "netns", "exec", "ns", "a"]


def test_node_settings_and_genesis() -> None:
    topo = parse(DEFAULT_TOPOLOGY.read_text() + "\n[node]\ntick_seconds = 0.5\n")
    assert plan.node_settings(topo, topo.site("hn1")) == {
        "tick_seconds": 0.5, "listen_host": "0.0.0.0", "advertise_host": "198.19.1.10",
        "http_port": 7400, "dht_port": 7401, "tcp_ports": "30000-30009"}
    assert "tcp_ports" not in plan.node_settings(topo, topo.site("n1"))   # a notary
    keys = [bytes([i]) * 32 for i in range(4)]
    g = plan.genesis_for(topo, keys, b"m" * 32)
    assert g.f == 1 and g.quorum == 3 and g.shared_prefixes == ("198.18.0.0/15",)
    assert [(n.key, n.url) for n in g.notaries] == [
        (keys[i], f"http://198.18.0.1{i + 1}:7400") for i in range(4)]
    assert [b.url for b in g.bootstrap] == [n.url for n in g.notaries]


def test_the_tinyproxy_config() -> None:
    conf = plan.tinyproxy_config(TOPO.proxies[0], "/t/px1/p.pid", "/t/px1/p.log").splitlines()
    assert {"Port 8888", "Listen 198.19.3.1", "Allow 198.19.3.0/24", 'PidFile "/t/px1/p.pid"',
            'LogFile "/t/px1/p.log"'} <= set(conf)
    assert not [line for line in conf if line.startswith(("ConnectPort", "Allow 0", "User"))]
    assert plan.tinyproxy_command("/t/c") == ["tinyproxy", "-d", "-c", "/t/c"]


def test_what_is_missing_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool != "ip" else "/ip")
    assert netns.missing_requirements(TOPO) == [
        "a namespace testnet needs root (network namespaces, iptables)",
        "`iptables` is missing (apt-get install iptables)",
        "`tinyproxy` is missing (apt-get install tinyproxy)"]
    assert netns.missing_requirements(parse(
        "[sites.n1]\nrole = 'notary'\naddress = '198.18.0.11'\n"))[1:] == []


def test_the_cli_says_what_is_missing_in_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    code = main(["testnet", "up", "--netns", str(DEFAULT_TOPOLOGY), "--dir", f"{tmp_path}/t"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: a namespace testnet needs root")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "t").exists()
    assert main(["testnet", "up", "--netns", f"{tmp_path}/none.toml"]) == 1
    assert "cannot read topology" in capsys.readouterr().err
