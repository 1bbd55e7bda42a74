"""The market across routers, for real (root): the default namespace topology with real
node processes. Every reachability class is observed and matches the seed's table;
buyers behind NAT and behind an HTTP proxy buy from a public host; a public buyer buys
from hosts behind plain NAT and behind the proxy through their relays; payments settle,
supply equals mints at every notary, witnesses audit every host with no exposure; a
squatter is refused; a host whose relay dies moves to another and its lease refreshes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pmarket.nat.table import Callback, ReachClass, decide
from p2pmarket.testnet.netns import NetnsTestnet
from tests.testnet.conftest import (
    DEFAULT_TOPOLOGY,
    needs_root,
    needs_tools,
    running_testnet,
    until,
)

pytestmark = [needs_root, needs_tools]
READY_S = 120.0
MINTED = 0   # credits minted so far in this module's network (checked against supply)
PROXY = "http://198.19.3.1:8888"
EXPECTED = {   # site: (class, verified, direct URL or None for relayed)
    "h1": (ReachClass.PUBLIC, True, "http://198.18.0.21:7400"),
    "hf1": (ReachClass.FORWARDED, True, "http://198.18.0.102:7400"),
    "hn1": (ReachClass.NAT, False, None),
    "hp1": (ReachClass.PROXIED, False, None),
}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsTestnet]:
    with running_testnet(DEFAULT_TOPOLOGY, tmp_path_factory.mktemp("market") / "net",
                         settings={"audit_seconds": 2.0, "tick_seconds": 0.5}) as t:
        t.wait_ready(READY_S)
        yield t


def cli(net: NetnsTestnet, site: str, *args: str, check: bool = True) -> Any:
    """``p2pmarket ARGS --json`` in a site's namespace (``status`` prints JSON anyway);
    the parsed output."""
    flag = [] if args[0] == "status" else ["--json"]
    done = net.run_in(site, [sys.executable, "-m", "p2pmarket", *args, *flag],
                      capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    if check:
        assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout) if done.stdout.strip() else {"stderr": done.stderr}


def status(net: NetnsTestnet, site: str) -> dict[str, Any]:
    out: dict[str, Any] = cli(net, site, "status", "--data-dir", str(net.data_dir(site)))
    return out


def node_id(net: NetnsTestnet, site: str) -> str:
    return str(status(net, site)["node_id"])


def mint(net: NetnsTestnet, buyer: str, credits: int) -> None:
    global MINTED
    key = cli(net, buyer, "wallet", "show", "--wallet", str(net.wallet_dir(buyer)))["key"]
    done = net.run_in("b1", [sys.executable, "-m", "p2pmarket", "bank", "mint",
                             "--mint-wallet", str(net.wallet_dir("mint")), "--to", key,
                             "--amount", str(credits)],
                      capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    MINTED += credits


def buy(net: NetnsTestnet, buyer: str, hosts: list[str], *extra: str) -> list[dict[str, Any]]:
    args = ["buy", "--wallet", str(net.wallet_dir(buyer)), "--budget", "2",
            "--duration", "1h", "--hosts", str(len(hosts)), *extra,
            "cpu:1,0.1,1", "memory:1,64MiB,256MiB"]
    for h in hosts:
        args += ["--host", node_id(net, h)]
    report = cli(net, buyer, *args)
    assert report["skipped"] == [] and report["unfinished"] == []
    purchases: list[dict[str, Any]] = report["purchases"]
    return purchases


def settled(st: dict[str, Any], relayed: bool) -> dict[str, Any] | None:
    """The status once classed and, for a relayed host, once it holds a relay
    (the class is known a registration round before the relay is chosen)."""
    reach = st["reach"]
    if reach["class"] == "unknown" or (relayed and not reach["relay"]):
        return None
    return st


def test_each_class_is_observed_for_real_and_matches_its_table_row(net: NetnsTestnet) -> None:
    for site, (cls, verified, url) in EXPECTED.items():
        st = until(f"{site} classed and settled", 60,
                   lambda s=site, u=url: settled(status(net, s), u is None))
        reach = st["reach"]
        assert (reach["class"], reach["verified"]) == (cls.value, verified), (site, reach)
        assert reach["agreeing"] >= 3
        if url is not None:
            assert st["url"] == url and reach["relay"] == ""
        else:    # relayed: the relay's URL for us, and the DHT as a client
            assert reach["relay"] and st["url"] == f"{reach['relay']}/relay/{st['node_id']}"
            assert st["dht_address"] == ["0.0.0.0", 1]
        for reg in reach["registrations"]:
            same = reg["address"][0] == net.address(site) and cls is ReachClass.PUBLIC
            decision = decide(Callback(reg["external"]), Callback(reg["self"]), same)
            assert decision is not None
            assert (decision.reach_class.value, decision.verified) == (reg["class"],
                                                                     reg["verified"])
    rows = {site: [(r["external"], r["self"]) for r in status(net, site)["reach"]
                   ["registrations"]] for site in EXPECTED}
    assert set(rows["h1"]) == {("ok", "ok")}            # row 1: public
    assert {e for e, _ in rows["hf1"]} == {"ok"}         # rows 2/3: a port forward
    assert set(rows["hn1"]) == {("failed", "none")}      # row 6: the router refuses: NAT
    assert set(rows["hp1"]) == {("none", "none")}        # row 9: nothing answers: proxied
    assert status(net, "hn1")["reach"]["seen"][0] == net.address("nat1")
    market = cli(net, "b1", "hosts", "--wallet", str(net.wallet_dir("b1")))
    classes = {h["node_id"]: h["class"] for h in market["hosts"]}
    for site, (cls, _, _) in EXPECTED.items():
        assert classes[node_id(net, site)] == cls.value
    only_nat = cli(net, "b1", "hosts", "--wallet", str(net.wallet_dir("b1")), "--reach", "nat")
    assert [h["node_id"] for h in only_nat["hosts"]] == [node_id(net, "hn1")]
    assert market["unreachable"] == []


class Unclean(list[Any]):
    """The witnesses' rows of a host not yet audited clean: false, and shown on a
    timeout."""

    def __bool__(self) -> bool:
        return False


def audited_clean(net: NetnsTestnet, site: str, after_us: int) -> bool | Unclean:
    doc = cli(net, "b1", "audit", "status", node_id(net, site), "--wallet",
              str(net.wallet_dir("b1")))
    rows = [h for w in doc["witnesses"] for h in w["hosts"]]
    clean = (len(rows) >= 2 and all(h["state"] == "trusted" and not h["proofs"]
                                    and h["last_audit"] and h["last_audit"] > after_us
                                    for h in rows))
    return True if clean else Unclean([after_us, doc["witnesses"]])


def test_buyers_behind_nat_and_proxy_and_hosts_behind_relays(net: NetnsTestnet) -> None:
    for buyer in ("b1", "bn1", "bp1"):
        mint(net, buyer, 20)
    start = time.time_ns() // 1000
    behind_nat = buy(net, "bn1", ["h1"])
    behind_proxy = buy(net, "bp1", ["h1"], "--http-proxy", PROXY)
    through_relays = buy(net, "b1", ["hn1", "hp1"])
    assert [p["url"] for p in behind_nat + behind_proxy] == ["http://198.18.0.21:7400"] * 2
    relayed = {p["url"] for p in through_relays}
    assert relayed == {status(net, "hn1")["url"], status(net, "hp1")["url"]}
    assert all("/relay/" in u for u in relayed)
    # the hosts hold the accounts the buyers paid for
    for site, bought in (("h1", behind_nat + behind_proxy), ("hn1", through_relays),
                         ("hp1", through_relays)):
        accounts = cli(net, site, "status", "--data-dir", str(net.data_dir(site)),
                       "--what", "accounts")["accounts"]
        ids = {a["account_id"] for a in accounts}
        assert {p["account_id"] for p in bought if p["host"] == node_id(net, site)} <= ids
    # supply equals mints at every notary
    supply = cli(net, "b1", "ledger", "supply", "--wallet", str(net.wallet_dir("b1")))
    assert supply["errors"] == 0 and supply["agree"] == 4
    assert {n["minted"] for n in supply["notaries"]} == {MINTED * 1_000_000}
    assert all(n["ok"] for n in supply["notaries"])
    # each host's witnesses audit it after the purchases, with no exposure
    for site in ("h1", "hn1", "hp1"):
        until(f"{site} audited", 60, lambda s=site: audited_clean(net, s, start))


SQUAT = """
import asyncio, json, sys
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import Identity
from p2pmarket.nat.errors import NatError
from p2pmarket.nat.registration import register
genesis = Genesis.from_doc(json.load(open(sys.argv[1])))
notary = next(n for n in genesis.notaries if n.url == sys.argv[2])
async def main():
    out = []
    for pay in (True, False):
        try:
            r = await register(Identity.generate(), notary.url, notary.key,
                               ("198.18.0.21", 7400), send_dial_data=pay)
            out.append(["registered", r.attestation.host, r.attestation.verified])
        except NatError as exc:
            out.append([exc.code, exc.message])
    print(json.dumps(out))
asyncio.run(main())
"""


def test_a_squatter_on_a_public_nodes_address_is_refused(net: NetnsTestnet) -> None:
    """From behind nat1, claim h1's address at a registrar that verified h1: paying for
    the dial-back, h1 answers with its own key (rejected); not paying, the address is
    never dialled and the unverified claim cannot displace h1's verified one (held)."""
    registrar = next(r["registrar"] for r in status(net, "h1")["reach"]["registrations"])
    done = net.run_in("bn1", [sys.executable, "-c", SQUAT, str(net.genesis_path), registrar],
                      capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert [code for code, *_ in json.loads(done.stdout)] == ["rejected", "held"]
    assert status(net, "h1")["reach"]["class"] == "public"


def test_a_host_whose_relay_dies_moves_and_its_lease_refreshes(net: NetnsTestnet) -> None:
    mint(net, "b1", 5)
    [purchase] = buy(net, "b1", ["hn1"])
    old = status(net, "hn1")["reach"]["relay"]
    # the relay is a public node: a site, or the host behind a port forward
    where = {f"http://{s.address}:7400": s.name for s in net.topology.sites}
    where.update({f"http://{r.address}:7400": r.forward for r in net.topology.routers
                  if r.forward is not None})
    relay_site = where[old]
    assert net.kill(relay_site)
    killed = time.monotonic()
    try:
        moved = until("hn1 re-advertised through another relay", 30,
                      lambda: (lambda r: r if r["relay"] not in ("", old) else None)(
                          status(net, "hn1")["reach"]))
        took = time.monotonic() - killed
        assert took < 30
        # other leases of this wallet may be at hosts still moving (exit code = errors):
        # this one must be current
        leases = cli(net, "b1", "leases", "--wallet", str(net.wallet_dir("b1")),
                     check=False)["leases"]
        mine = [x for x in leases if x["lease"] and x["lease"]["lease_id"]
                == purchase["lease"]["lease_id"]]
        assert [x["source"] for x in mine] == ["current"]
        assert mine[0]["url"].startswith(moved["relay"] + "/relay/")
    finally:
        net.start(relay_site)
        net.wait_ready(READY_S)


def test_the_state_file_lists_what_it_made(net: NetnsTestnet) -> None:
    doc = json.loads(Path(net.root / "netns.json").read_text())
    assert len(doc["namespaces"]) == 15 and doc["built"]
