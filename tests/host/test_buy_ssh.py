"""Issue 13 end to end, on a real guest: a buyer runs ``p2pmarket buy --ssh-key`` in a
market of two in-process nodes, one of them a qemu:///system host whose guests boot the
host's own kernel and initramfs (the test guest of :mod:`tests.support.testguest`:
busybox + dropbear); the host puts the key into the guest's NoCloud seed and forwards
the won tcp_port to the guest's port 22; the buyer logs in through that port with the
key, runs a command and reads its output; another key is refused. Then the lease is
cancelled: the port stops at once, and a second buyer wins it (the host leases one
port); its short lease expires: the machine stops and the port closes.
QEMU TCG; needs root and libvirtd (``scripts/setup-qemu``), else skipped. Every
libvirt object made is removed."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from p2pmarket.cli.main import parser
from p2pmarket.client.walletdir import WalletDir
from tests.client.test_lease_money import ready
from tests.client.test_quote_before_pay import funded
from tests.market_helpers import LocalMarket
from tests.support.guestmarket import URI, login, qemu_market, restart_host, skip_reason

asyncssh = pytest.importorskip("asyncssh")
pytestmark = pytest.mark.slow
LOGIN_LIMIT_S = 120.0
BIDS = ["cpu:1,0.1,1", "memory:1,128MiB,256MiB"]


def one_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def market(tmp_path: Path) -> AsyncIterator[LocalMarket]:
    """The qemu host leases one TCP port, so two buyers in turn must share it."""
    why = skip_reason()
    if why is not None:
        pytest.skip(f"{why}; run scripts/setup-qemu")
    port = one_free_port()
    async with qemu_market(tmp_path / "m", tcp_ports=f"{port}-{port}") as m:
        yield m


async def run_cli(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    args = parser().parse_args(list(argv))
    code = await args.run(args)
    return code, json.loads(capsys.readouterr().out)


async def wait_answering(host: Any, account_id: str) -> None:
    """Until the host's sync has seen the guest's SSH port answer (ticks run it)."""
    while account_id not in host.access.answering:
        await asyncio.sleep(0.2)


async def buy_with_key(market: LocalMarket, buyer: WalletDir, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str], *bids: str,
                       duration: str = "1h") -> tuple[Any, dict[str, Any], Any]:
    """``p2pmarket buy --ssh-key`` from ``buyer`` at the qemu host with a fresh ed25519
    key: the buy's JSON, its one ``ssh`` outcome, and the key."""
    host = market.nodes[1]
    key = asyncssh.generate_private_key("ssh-ed25519")
    pub = tmp_path / f"{buyer.root.name}_id_ed25519.pub"
    pub.write_bytes(key.export_public_key())
    code, doc = await run_cli("buy", "--wallet", str(buyer.root),
                              "--budget", "2", "--duration", duration, "--hosts", "1", "--host",
                              host.identity.node_id.hex(), "--ssh-key", str(pub), "--json",
                              *BIDS, *bids, capsys=capsys)
    assert code == 0, doc
    [ssh] = doc["ssh"]
    return doc, ssh, key


async def test_buy_with_a_key_and_log_in_through_the_leased_port(
        market: LocalMarket, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await ready(market)
    buyer = await funded(market)
    host = market.nodes[1]
    start = time.monotonic()
    doc, ssh, key = await buy_with_key(market, buyer, tmp_path, capsys)
    [purchase] = doc["purchases"]
    assert ssh["ok"] and ssh["access"]["state"] == "forwarded", ssh
    port = ssh["access"]["port"]
    lo, hi = map(int, host.settings.tcp_ports.split("-"))
    assert lo <= port <= hi and ssh["ssh"] == f"ssh -p {port} root@127.0.0.1"
    assert purchase["lease"]["lease_id"] == ssh["lease_id"]
    out = await login(port, key, start + LOGIN_LIMIT_S)
    assert out.startswith("hello from "), out
    booted_s = time.monotonic() - start
    with pytest.raises(asyncssh.PermissionDenied):
        await login(port, asyncssh.generate_private_key("ssh-ed25519"),
                    time.monotonic() + 30)
    # the lease's record knows the way in: `p2pmarket ssh --print` says the same
    code, printed = await run_cli("ssh", "--print", "--json", "--wallet", str(buyer.root),
                                  ssh["lease_id"], capsys=capsys)
    assert code == 0 and printed["port"] == port, printed
    # what the machine really uses, read from libvirt, in the host's status
    [vm] = [v for v in await host.auctioneer.vm_list()
            if v["account_id"] == purchase["account_id"]]
    assert vm["state"] == "running" and vm["usage"]["cpu_ns"] > 0, vm
    assert vm["usage"]["net_rx_bytes"] > 0 and vm["usage"]["net_tx_bytes"] > 0, vm
    # `leases` shows the machine running and the way in
    await asyncio.wait_for(wait_answering(host, ssh["lease_id"]), 30)
    code, listed = await run_cli("leases", "--wallet", str(buyer.root), "--json",
                                 capsys=capsys)
    [row] = listed["leases"]
    assert row["machine"] == {"state": "running", "access": "forwarded",
                              "ssh": f"127.0.0.1:{port}"}, row
    # cancelled: the port stops at once
    code, cancelled = await run_cli("cancel", ssh["lease_id"], "--wallet", str(buyer.root),
                                    "--json", capsys=capsys)
    assert code == 0 and cancelled["status"] == "done", cancelled
    assert port not in host.access.forwards.table
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    # the freed port goes to the next buyer, whose short lease then expires
    second = await funded(market, "second")
    doc, ssh, _ = await buy_with_key(market, second, tmp_path, capsys, duration="30s")
    assert ssh["ok"] and ssh["access"]["port"] == port, ssh
    account = doc["purchases"][0]["account_id"]
    end_s = doc["purchases"][0]["lease"]["end"] / 1e6
    assert ssh["access"]["state"] == "forwarded", ssh
    assert host.access.forwards.table[port].account_id == account
    await asyncio.wait_for(stopped(host, account), max(0.0, end_s - time.time()) + 60)
    await asyncio.wait_for(unforwarded(host, port), 10)   # the next access sync
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    code, listed = await run_cli("leases", "--wallet", str(second.root), "--json",
                                 capsys=capsys)
    [row] = listed["leases"]
    assert row["machine"]["state"] == "stopped", row
    print(f"buy to SSH login: {booted_s:.1f} s")


async def unforwarded(host: Any, port: int) -> None:
    while port in host.access.forwards.table:
        await asyncio.sleep(0.1)


async def stopped(host: Any, account_id: str) -> None:
    """Until the account's libvirt domain is no longer running (its lease expired)."""
    while True:
        info = host.vmm.describe(account_id)
        if info is not None and info.state != "running":
            return
        await asyncio.sleep(0.5)


async def test_a_host_restart_brings_the_machine_back(
        market: LocalMarket, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The host machine goes down (its node stops, its guest dies with it) and comes
    back: the node starts the lease's machine again from its own definition (the key's
    seed kept), forwards the same port, and the buyer logs in again."""
    await ready(market)
    buyer = await funded(market)
    doc, ssh, key = await buy_with_key(market, buyer, tmp_path, capsys)
    port, account = ssh["access"]["port"], doc["purchases"][0]["account_id"]
    assert (await login(port, key, time.monotonic() + LOGIN_LIMIT_S)).startswith("hello")
    again = await restart_host(market, account, URI)
    start = time.monotonic()
    out = await login(port, key, start + LOGIN_LIMIT_S)
    assert out.startswith("hello from "), out
    assert again.vmm.describe(account).state == "running"   # type: ignore[union-attr]
    print(f"host restart to SSH login: {time.monotonic() - start:.1f} s")


async def test_an_uploaded_image_is_what_the_machine_boots(
        market: LocalMarket, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An image put on a lease whose machine already runs (bought with a key: it boots
    the host's kernel, the volume beside it): the host checks and streams the image into
    the account's volume, stopping the machine first (a running domain keeps the disks
    it was started with; ``LibvirtVMM.upload_volume``) and the sync starts it again, so
    the running domain's disk is that volume, in the format the upload checked, and the
    buyer still logs in."""
    from p2pmarket.auction.imagecheck import blank_qcow2

    await ready(market)
    buyer = await funded(market)
    host = market.nodes[1]
    await host.auctioneer.set_config(host.auctioneer.config.with_capacity("disk", "1GiB"))
    await host.publish_if_moved(force=True)     # the market sees the disk offered
    doc, ssh, key = await buy_with_key(market, buyer, tmp_path, capsys, "disk:1,64MiB,64MiB")
    port, account = ssh["access"]["port"], doc["purchases"][0]["account_id"]
    assert (await login(port, key, time.monotonic() + LOGIN_LIMIT_S)).startswith("hello")
    image = tmp_path / "disk.qcow2"
    image.write_bytes(blank_qcow2(32 << 20))
    code, put = await run_cli("upload", "--wallet", str(buyer.root), "--json",
                              ssh["lease_id"], str(image), capsys=capsys)
    assert code == 0 and put["ok"] and put["format"] == "qcow2", put
    volume = host.vmm.volume(account)
    assert volume is not None and volume.format == "qcow2"
    conn = libvirt.open(URI)
    try:
        dom = conn.lookupByName(host.vmm.name_of(account))
        xml = dom.XMLDesc(0)           # the running domain's, not its definition's
        assert dom.isActive(), xml
        assert f"<source file='{volume.path}'" in xml and "type='qcow2'" in xml, xml
    finally:
        conn.close()
    assert (await login(port, key, time.monotonic() + LOGIN_LIMIT_S)).startswith("hello")
