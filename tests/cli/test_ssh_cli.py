"""``p2pmarket ssh LEASE --print``: the ssh command for a lease at a public host and at a
relayed one, the lease found by a prefix of its id, and the clear errors (no such lease,
no tcp port, a cancelled lease)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from p2pmarket.auction.lease import Lease, ResourceTerm, sign_lease
from p2pmarket.client.sshaccess import DIRECT, RELAY, access_of, leased_ports, reach_of
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.config import load_genesis
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import pack
from tests.test_cli import genesis_file, run

__all__ = ["genesis_file"]   # the fixture


def store_lease(wdir: WalletDir, host: Identity, lease_id: str, url: str,
                resources: dict[str, ResourceTerm], **extra: str) -> None:
    lease = Lease(lease_id, host.node_id, wdir.identity().public_key, resources,
                  start=0, end=2**62, balance=10)
    env = sign_lease(host, lease, ts=1)
    wdir.save_lease(lease_id, {"host_key": host.public_key.hex(), "url": url,
                               "account_id": lease_id, "lease": pack(env.to_wire()).hex(),
                               "paid": "10", **extra})


PORT = {"tcp_port,30022": ResourceTerm(1, 1, 1), "cpu": ResourceTerm(0, 1000, 500)}


@pytest.fixture
def wallet(tmp_path: Path, genesis_file: Path) -> tuple[str, WalletDir, Identity]:
    w = tmp_path / "w"
    wdir = WalletDir(w)
    wdir.create(load_genesis(genesis_file))
    host = Identity.generate()
    store_lease(wdir, host, "aaaa1111", "http://198.18.0.7:8000", PORT)
    store_lease(wdir, host, "bbbb2222",
                f"http://198.18.0.1:8000/relay/{host.node_id.hex()}", PORT)
    store_lease(wdir, host, "cccc3333", "http://198.18.0.7:8000",
                {"cpu": ResourceTerm(0, 1000, 500)})
    store_lease(wdir, host, "dddd4444", "http://198.18.0.7:8000",
                {"tcp_port,30023": ResourceTerm(1, 1, 0)})
    store_lease(wdir, host, "eeee5555", "http://198.18.0.7:8000", PORT, closed="yes")
    return str(w), wdir, host


def test_a_public_hosts_lease_prints_ssh_to_its_address_and_port(
        capsys: pytest.CaptureFixture[str], wallet: tuple[str, WalletDir, Identity]) -> None:
    w, _, _ = wallet
    code, out, _ = run(capsys, "ssh", "aaaa", "--print", "--offline", "--wallet", w)
    assert code == 0 and out.strip() == "ssh -p 30022 root@198.18.0.7"
    code, out, _ = run(capsys, "ssh", "--print", "--offline", "--wallet", w, "--user",
                       "debian", "-i", "/k/id", "aaaa1111", "--", "-L", "8080:localhost:80")
    assert shlex.split(out) == ["ssh", "-i", "/k/id", "-p", "30022", "-L",
                                "8080:localhost:80", "debian@198.18.0.7"]
    code, out, _ = run(capsys, "ssh", "aaaa", "--print", "--offline", "--json", "--wallet", w)
    doc = json.loads(out)
    assert doc["reach"] == "direct" and doc["port"] == 30022
    assert doc["address"] == "198.18.0.7" and doc["command"] == "ssh -p 30022 root@198.18.0.7"


def test_a_relayed_hosts_lease_prints_ssh_through_the_tunnel_command(
        capsys: pytest.CaptureFixture[str], wallet: tuple[str, WalletDir, Identity]) -> None:
    w, _, _ = wallet
    code, out, _ = run(capsys, "ssh", "bbbb2222", "--print", "--offline", "--wallet", w)
    assert code == 0
    argv = shlex.split(out)
    assert argv[0] == "ssh" and argv[-1] == "root@lease-bbbb2222"
    proxy = argv[argv.index("-o") + 1]
    assert proxy.startswith("ProxyCommand=")
    tunnel = shlex.split(proxy.removeprefix("ProxyCommand="))
    assert tunnel[-4:] == ["tunnel", "bbbb2222", "--wallet", w]
    assert "HostKeyAlias=p2pmarket-bbbb2222" in argv
    # and the tunnel command parses
    from p2pmarket.cli.main import parser
    args = parser().parse_args(tunnel[tunnel.index("tunnel"):])
    assert args.lease == "bbbb2222" and str(args.wallet) == w


def test_leases_without_a_port_say_why(capsys: pytest.CaptureFixture[str],
                                       wallet: tuple[str, WalletDir, Identity]) -> None:
    w, _, _ = wallet
    for lease, why in (("cccc", "the lease has no tcp port: bid on one"),
                       ("dddd", "the lease holds no tcp port now (outbid for it?)"),
                       ("eeee", "this lease was cancelled"),
                       ("ffff", "no such lease in this wallet"),
                       ("", "no such lease in this wallet")):
        code, out, err = run(capsys, "ssh", lease, "--print", "--offline", "--wallet", w)
        assert code == 1 and out == "" and err.startswith(f"error: {why}"), (lease, err)


def test_access_rules() -> None:
    host = Identity.generate()
    assert reach_of(f"http://h:1/relay/{host.node_id.hex()}") == RELAY
    assert reach_of("http://h:1/") == DIRECT and reach_of("http://h:1/relay/xyz") == DIRECT
    lease = Lease("x", host.node_id, host.public_key,
                  {"tcp_port,30001": ResourceTerm(1, 1, 1), "tcp_port,30000": ResourceTerm(
                      1, 1, 1), "tcp_port,30002": ResourceTerm(1, 1, 0),
                   "tcp_port,40000-40009": ResourceTerm(1, 1, 3)}, 0, 1, 0)
    assert leased_ports(lease) == [30000, 30001]
    record = {"host_key": host.public_key.hex(), "url": "http://[2001:db8::1]:8000",
              "account_id": "x", "lease": ""}
    got = access_of("x", record, lease)
    assert (got.reach, got.address, got.port) == (DIRECT, "2001:db8::1", 30000)
    named = access_of("x", {**record, "ssh_host": "203.0.113.5", "ssh_port": "40003"}, lease)
    assert (named.address, named.port) == ("203.0.113.5", 40003)
