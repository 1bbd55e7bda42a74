"""Issue 13's light path end to end: a buyer runs ``p2pmarket buy --image p2pm-test
--ssh-key`` in a market of two in-process nodes, one an ``lxc:///`` host offering the
LXC test guest's root archive (:func:`tests.support.testguest.build_rootfs`) as a base
image; the host unpacks it into the account's root, writes the key into it, starts the
container on the project network and forwards the won tcp_port to its port 22; the buyer
logs in through that port, runs a command and reads its output, within the issue's 3 s
of the lease; another key is refused. A host restart brings the container back. Needs
root and libvirtd with its LXC driver (``scripts/setup-qemu``), else skipped. Every
libvirt object and root directory made is removed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import libvirt
import pytest

from p2pmarket.client.walletdir import WalletDir
from tests.client.test_lease_money import ready
from tests.client.test_quote_before_pay import funded
from tests.host.test_buy_ssh import run_cli
from tests.market_helpers import LocalMarket
from tests.support.guestmarket import (
    LXC_IMAGE,
    LXC_URI,
    login,
    lxc_market,
    restart_host,
    skip_reason,
)

asyncssh = pytest.importorskip("asyncssh")
pytestmark = pytest.mark.slow
LOGIN_LIMIT_S = 30.0
BIDS = ["cpu:1,0.1,1", "memory:1,64MiB,128MiB", "disk:1,64MiB,64MiB"]


@pytest.fixture
async def market(tmp_path: Path) -> AsyncIterator[LocalMarket]:
    why = skip_reason(LXC_URI)
    if why is not None:
        pytest.skip(f"{why}; run scripts/setup-qemu")
    async with lxc_market(tmp_path) as m:
        yield m


async def buy(market: LocalMarket, buyer: WalletDir, tmp_path: Path,
              capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, object], object, float]:
    host = market.nodes[1]
    key = asyncssh.generate_private_key("ssh-ed25519")
    pub = tmp_path / "id_ed25519.pub"
    pub.write_bytes(key.export_public_key())
    code, doc = await run_cli("buy", "--wallet", str(buyer.root), "--budget", "2",
                              "--duration", "1h", "--hosts", "1", "--host",
                              host.identity.node_id.hex(), "--image", LXC_IMAGE,
                              "--ssh-key", str(pub), "--json", *BIDS, capsys=capsys)
    assert code == 0, doc
    return doc, key, time.monotonic()


async def test_buy_a_container_and_log_in_through_the_leased_port(
        market: LocalMarket, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await ready(market)
    buyer = await funded(market)
    host = market.nodes[1]
    doc, key, bought = await buy(market, buyer, tmp_path, capsys)
    [image] = doc["images"]            # type: ignore[misc]
    assert image["ok"] and image["format"] == "tar.gz", image
    [ssh] = doc["ssh"]                 # type: ignore[misc]
    assert ssh["ok"] and ssh["access"]["state"] == "forwarded", ssh
    port = ssh["access"]["port"]
    out = await login(port, key, bought + LOGIN_LIMIT_S,
                      command="echo hello from $(hostname); id -u; cat /proc/1/cmdline")
    login_s = time.monotonic() - bought
    lines = out.splitlines()
    assert lines[0].startswith("hello from ") and lines[1] == "0", out
    assert lines[2].startswith("dropbear\0"), out   # the root's init exec'd dropbear
    with pytest.raises(asyncssh.PermissionDenied):
        await login(port, asyncssh.generate_private_key("ssh-ed25519"),
                    time.monotonic() + 10)
    account = doc["purchases"][0]["account_id"]  # type: ignore[index]
    info = host.vmm.describe(account)
    assert info is not None and info.state == "running" and info.weight_key == "cpu_shares"
    conn = libvirt.open(LXC_URI)
    try:
        xml = conn.lookupByName(host.vmm.name_of(account)).XMLDesc(0)
    finally:
        conn.close()
    root = host.vmm.lxc.root(host.vmm.name_of(account))
    assert f"<source dir='{root}'/>" in xml and "<idmap>" in xml, xml
    assert "<memory unit='KiB'>131072</memory>" in xml, xml
    # the guest's root owner is its namespace's root, shifted: no host user's
    assert root.stat().st_uid >= 1 << 20 and root.stat().st_mode & 0o777 == 0o700
    code, cancelled = await run_cli("cancel", ssh["lease_id"], "--wallet", str(buyer.root),
                                    "--json", capsys=capsys)
    assert code == 0 and cancelled["status"] == "done", cancelled
    assert port not in host.access.forwards.table
    print(f"buy returned to SSH login: {login_s:.2f} s")
    assert login_s < 3.0, login_s


async def test_a_host_restart_brings_the_container_back(
        market: LocalMarket, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await ready(market)
    buyer = await funded(market)
    doc, key, bought = await buy(market, buyer, tmp_path, capsys)
    [ssh] = doc["ssh"]                 # type: ignore[misc]
    port, account = ssh["access"]["port"], doc["purchases"][0]["account_id"]  # type: ignore[index]
    assert (await login(port, key, bought + LOGIN_LIMIT_S)).startswith("hello")
    again = await restart_host(market, account, LXC_URI)
    start = time.monotonic()
    assert (await login(port, key, start + LOGIN_LIMIT_S)).startswith("hello")
    assert again.vmm.describe(account).state == "running"   # type: ignore[union-attr]
    print(f"host restart to SSH login: {time.monotonic() - start:.2f} s")
