"""A real guest under qemu:///system that accepts an SSH login with the buyer's key.

The guest is :mod:`tests.support.testguest` (the host's kernel plus a busybox +
dropbear initramfs, built offline and cached): it boots by direct kernel boot
through :class:`LibvirtVMM` on the test's own NAT network (a /24 of
198.19.0.0/16, never libvirt's ``default``), gets its reserved address by DHCP,
reads the key from the NoCloud seed cdrom and runs dropbear. The test logs in
with asyncssh, runs a command, checks a wrong key is refused, and reports the
seconds from domain start to the first SSH login. QEMU TCG (domain type
``qemu``): no KVM. Needs root and libvirtd (``scripts/setup-qemu``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p2pmarket.auction.enforce import DomainSpec
from p2pmarket.host.vmm import VmmError
from p2pmarket.host.vmm import network as guestnets
from p2pmarket.host.vmm.guest import GuestBoot
from p2pmarket.host.vmm.guestnet import GuestNetwork
from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM
from tests.support import testguest
from tests.support.guestmarket import URI, skip_reason
from tests.support.libvirtclean import forget_domains, remove_pool

asyncssh = pytest.importorskip("asyncssh")
pytestmark = pytest.mark.slow
BOOT_TO_SSH_LIMIT_S = 90.0


@dataclass
class Guests:
    vmm: LibvirtVMM
    boot: GuestBoot
    net: GuestNetwork


def _open(tag: str) -> LibvirtVMM:
    """A VMM on a fresh network: a /24 no other libvirt network holds (retried)."""
    last: Exception | None = None
    for _ in range(6):
        net = GuestNetwork(f"p2pmg{tag}-net", f"p2pmg{tag}",
                           f"198.19.{random.randrange(201, 251)}.0/24")
        vmm = LibvirtVMM(URI, prefix=f"p2pmg{tag}-", guest_network=net,
                         pool=f"p2pmg{tag}-pool",
                         pool_path=f"/var/lib/libvirt/images/p2pmg{tag}")
        if vmm.network == net.name:
            return vmm
        last = VmmError(vmm.network_error or "no network", net.subnet)
        with contextlib.suppress(VmmError):
            guestnets.remove_network(vmm.conn, net.name)
        vmm.close()
    raise AssertionError(f"cannot start a guest network: {last}")


@pytest.fixture
async def guests() -> AsyncIterator[Guests]:
    why = skip_reason()
    if why is not None:
        pytest.skip(f"{why}; run scripts/setup-qemu")
    try:
        built = await asyncio.to_thread(testguest.build)
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"cannot build the test guest: {exc}")
    tag = uuid.uuid4().hex[:8]
    vmm = await asyncio.to_thread(_open, tag)
    try:
        yield Guests(vmm, GuestBoot(built.kernel, built.initrd, built.cmdline), vmm.guest_net)
    finally:
        forget_domains(vmm)
        remove_pool(vmm.conn, f"p2pmg{tag}-pool")
        guestnets.remove_network(vmm.conn, vmm.guest_net.name)
        vmm.close()


def _serial(vmm: LibvirtVMM, aid: str) -> str:
    log = vmm.console_log(aid)
    if log is None or not os.path.exists(log):
        return "(no console log)"
    return Path(log).read_text(errors="replace")[-2000:]


async def test_guest_boots_and_accepts_the_buyers_key(guests: Guests) -> None:
    vmm = guests.vmm
    key = asyncssh.generate_private_key("ssh-ed25519")
    other = asyncssh.generate_private_key("ssh-ed25519")
    pub = key.export_public_key().decode()
    address = await asyncio.to_thread(vmm.prepare_guest, "acc1", guests.boot, pub)
    assert address is not None and address.startswith(guests.net.subnet.rsplit(".", 2)[0])
    assert vmm.guest_address("acc1") == address
    start = time.monotonic()
    info = await asyncio.to_thread(vmm.apply, "acc1", DomainSpec(1, 256 * 1024, 100,
                                                                 256 * 1024))
    assert info.state == "running"
    try:
        when, out = await testguest.ssh_login(address, key, start + BOOT_TO_SSH_LIMIT_S)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nconsole:\n{_serial(vmm, 'acc1')}") from None
    boot_to_ssh = when - start
    print(f"\nboot_to_ssh_s_qemu={boot_to_ssh:.1f} (TCG, direct kernel boot)")
    lines = out.splitlines()
    assert lines[0] == "hello"
    assert lines[1].startswith("processor") and lines[1].split(":")[1].strip() == "0"
    assert f"inet {address}/" in out
    # a key that is not the buyer's is refused
    with pytest.raises(asyncssh.PermissionDenied):
        await testguest.ssh_login(address, other, time.monotonic() + 30)
    xml = vmm.conn.lookupByName(vmm.name_of("acc1")).XMLDesc(0)
    assert "<kernel>" in xml and f"{vmm.name_of('acc1')}-seed.iso" in xml
    assert "192.168.122" not in xml and "network='default'" not in xml
    # a host restart: a new VMM that was told nothing starts the stopped guest alike
    await asyncio.to_thread(vmm.shutdown, "acc1")
    again = LibvirtVMM(URI, prefix=vmm.prefix, guest_network=guests.net,
                       pool=vmm.pool_name, pool_path=vmm.pool_path)
    try:
        assert again.guest_address("acc1") == address
        start = time.monotonic()
        info = await asyncio.to_thread(again.apply, "acc1", DomainSpec(1, 256 * 1024, 100,
                                                                       256 * 1024))
        assert info.state == "running"
        when, out = await testguest.ssh_login(address, key, start + BOOT_TO_SSH_LIMIT_S)
        print(f"boot_to_ssh_s_qemu after a host restart={when - start:.1f}")
        assert out.splitlines()[0] == "hello"
    finally:
        again.close()
