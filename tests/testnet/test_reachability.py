"""The default topology's namespaces, for real (root): who reaches whom, and as whom."""

from __future__ import annotations

import json

import pytest

from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.config import Settings, load_genesis
from p2pmarket.core.keyfile import load_key
from p2pmarket.testnet import state
from p2pmarket.testnet.netns import NetnsTestnet
from tests.testnet.conftest import DEFAULT_TOPOLOGY, needs_root, needs_tools, probe, server

pytestmark = [needs_root, needs_tools]

PROXY = "http://198.19.3.1:8888"


def test_a_public_site_reaches_another_and_is_seen_as_itself(default_net: NetnsTestnet) -> None:
    with server(default_net, "h1", 7400):
        assert probe(default_net, "b1", "get", "http://198.18.0.21:7400/") == (0, "198.18.0.31")
        assert probe(default_net, "n1", "get", "http://198.18.0.21:7400/") == (0, "198.18.0.11")


def test_a_natted_site_reaches_out_as_its_router(default_net: NetnsTestnet) -> None:
    with server(default_net, "h1", 7400, 7401):
        assert probe(default_net, "hn1", "get", "http://198.18.0.21:7400/") == (
            0, default_net.address("nat1"))
        assert probe(default_net, "bn1", "udp", "198.18.0.21", "7401") == (0, "198.18.0.101")
        assert probe(default_net, "hf1", "get", "http://198.18.0.21:7400/") == (
            0, "198.18.0.102")


def test_a_public_site_cannot_connect_to_a_natted_one(default_net: NetnsTestnet) -> None:
    with server(default_net, "hn1", 7400):
        assert probe(default_net, "bn1", "get", "http://198.19.1.10:7400/") == (
            0, "198.19.1.20")                    # it listens: its LAN neighbour gets in
        for target in ("198.19.1.10", "198.18.0.101"):
            code, said = probe(default_net, "h1", "connect", target, "7400")
            assert code == 1, said
        # a route to the LAN through the router does not help: it lets no one in
        default_net.run_in("h1", ["ip", "route", "add", "198.19.1.0/24", "via",
                                  "198.18.0.101"], check=True)
        try:
            code, said = probe(default_net, "h1", "connect", "198.19.1.10", "7400")
            assert code == 1 and "timed out" in said
        finally:
            default_net.run_in("h1", ["ip", "route", "del", "198.19.1.0/24"], check=True)


def test_the_port_forward_reaches_the_host_behind_it(default_net: NetnsTestnet) -> None:
    with server(default_net, "hf1", 7400, 7401):
        assert probe(default_net, "b1", "get", "http://198.18.0.102:7400/") == (
            0, "198.18.0.31")                    # DNAT keeps the caller's address
        assert probe(default_net, "b1", "udp", "198.18.0.102", "7401") == (0, "198.18.0.31")
        assert probe(default_net, "hn1", "udp", "198.18.0.102", "7401") == (0, "198.18.0.101")
    with server(default_net, "hf1", 7402):       # only the node's ports are forwarded
        assert probe(default_net, "b1", "connect", "198.18.0.102", "7402")[0] == 1


def test_a_proxied_site_has_no_way_out_but_the_proxy(default_net: NetnsTestnet) -> None:
    with server(default_net, "h1", 7400):
        code, said = probe(default_net, "bp1", "connect", "198.18.0.21", "7400")
        assert code == 1 and "unreachable" in said
        routes = default_net.run_in("hp1", ["ip", "route"], capture_output=True, text=True,
                                    check=True).stdout
        assert "default" not in routes and "198.19.3.0/24" in routes
        forwarding = default_net.run_in("px1", ["cat", "/proc/sys/net/ipv4/ip_forward"],
                                        capture_output=True, text=True, check=True).stdout
        assert forwarding.strip() == "0"
        # through the proxy it gets there, seen as the proxy's public address
        assert probe(default_net, "bp1", "get", "http://198.18.0.21:7400/", PROXY) == (
            0, "198.18.0.103")
        assert probe(default_net, "hp1", "tunnel", PROXY, "198.18.0.21:7400") == (
            0, "198.18.0.103")
    # the proxy listens on its LAN side only, and its public side answers nothing (a
    # router's own address refuses: that is how a registrar tells NAT from a proxy)
    code, said = probe(default_net, "b1", "connect", "198.18.0.103", "8888")
    assert code == 1 and "timed out" in said
    code, said = probe(default_net, "b1", "connect", "198.18.0.101", "7400")
    assert code == 1 and "refused" in said


def test_every_namespace_has_loopback_up(default_net: NetnsTestnet) -> None:
    topo = default_net.topology
    for name in [s.name for s in topo.sites] + [g.name for g in topo.gateways]:
        done = default_net.run_in(name, ["ip", "-o", "link", "show", "lo"],
                                  capture_output=True, text=True, check=True)
        assert "UP" in done.stdout.split("<")[1].split(">")[0], name


def test_the_testnet_dir_holds_the_network(default_net: NetnsTestnet) -> None:
    genesis = load_genesis(default_net.genesis_path)
    assert genesis.f == 1 and len(genesis.notaries) == 4
    assert [n.url for n in genesis.notaries] == [
        f"http://198.18.0.1{i}:7400" for i in range(1, 5)]
    assert [(b.host, b.dht_port) for b in genesis.bootstrap] == [
        (f"198.18.0.1{i}", 7401) for i in range(1, 5)]
    assert genesis.shared_prefixes == ("198.18.0.0/15",)
    assert [load_key(default_net.data_dir(f"n{i}") / "node.key").public_key
            for i in range(1, 5)] == [n.key for n in genesis.notaries]
    mint = WalletDir(default_net.wallet_dir("mint"))
    assert mint.identity().public_key == genesis.mint_key
    for site in default_net.topology.nodes:
        d = default_net.data_dir(site.name)
        settings = Settings.load(d / "config.toml", env={})
        assert (settings.listen_host, settings.url) == (
            "0.0.0.0", f"http://{site.address}:7400")
        assert load_genesis(d / "genesis.json") == genesis
    for site in default_net.topology.buyers:
        assert WalletDir(default_net.wallet_dir(site.name)).genesis() == genesis
    doc = json.loads((default_net.root / "netns.json").read_text())
    assert doc["built"] is True and len(doc["namespaces"]) == 1 + 3 + 11
    assert [p["kind"] for p in doc["processes"]] == ["tinyproxy"]
    with pytest.raises(state.TestnetError, match="buyer"):
        default_net.data_dir("b1")
    with pytest.raises(state.TestnetError, match="already runs"):
        NetnsTestnet.up(DEFAULT_TOPOLOGY, default_net.root, start_nodes=False)
    used = default_net.root.parent / "used"
    used.mkdir()
    (used / "notes.txt").write_text("mine")
    with pytest.raises(state.TestnetError, match="not empty"):
        NetnsTestnet.up(DEFAULT_TOPOLOGY, used, start_nodes=False)
    assert [p.name for p in used.iterdir()] == ["notes.txt"]
