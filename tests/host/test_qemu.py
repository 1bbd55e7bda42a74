"""Real guests under qemu:///system: two accounts bid 3:1, the guests follow the bids.

Needs libvirtd (``scripts/setup-qemu`` installs and starts it, with a kernel and
busybox-static). The guest is the host's kernel with a tiny busybox initramfs
(built here) that loads the virtio balloon driver, so memory can be given back
live. Software emulation (domain type ``qemu``, TCG): no KVM needed.
"""

from __future__ import annotations

import glob
import gzip
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from test_auctioneer import ALICE, BOB, Clock, FakeBank, cert, ctx

from p2pmarket.core.config import Settings
from p2pmarket.core.identity import Identity
from p2pmarket.host.accountstore import AccountStore
from p2pmarket.host.auctioneer import Auctioneer
from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM
from tests.support.libvirtclean import forget_domains
from tests.support.testguest import cpio

pytestmark = pytest.mark.slow
URI = "qemu:///system"
MIB = 1024
MODULES = ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev",
           "virtio_pci", "virtio_balloon")
INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
for m in {mods}; do [ -f /mods/$m.ko ] && /bin/busybox insmod /mods/$m.ko; done
echo P2PM-GUEST-UP
while true; do /bin/busybox sleep 3600; done
"""


def _reachable() -> str | None:
    try:
        conn = libvirt.open(URI)
    except libvirt.libvirtError as exc:
        return str(exc.get_error_message())
    conn.close()
    return None


def build_guest(where: Path) -> dict[str, str]:
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    assert kernels, "no kernel in /boot: run scripts/setup-qemu"
    busybox = shutil.which("busybox") or "/bin/busybox"
    assert os.path.exists(busybox), "no busybox: run scripts/setup-qemu (busybox-static)"
    kernel = kernels[-1]
    version = kernel.split("vmlinuz-", 1)[1]
    files: dict[str, tuple[int, bytes]] = {
        "bin": (0o40755, b""), "mods": (0o40755, b""), "proc": (0o40755, b""),
        "sys": (0o40755, b""), "dev": (0o40755, b""),
        "bin/busybox": (0o100755, Path(busybox).read_bytes()),
        "init": (0o100755, INIT.format(mods=" ".join(MODULES)).encode())}
    for mod in MODULES:
        path = Path(f"/lib/modules/{version}/kernel/drivers/virtio/{mod}.ko")
        if path.exists():
            files[f"mods/{mod}.ko"] = (0o100644, path.read_bytes())
    where.mkdir(mode=0o755, parents=True)
    os.chmod(where, 0o755)
    shutil.copy(kernel, where / "vmlinuz")
    (where / "initrd.gz").write_bytes(gzip.compress(cpio(files), 1))
    for name in ("vmlinuz", "initrd.gz"):
        os.chmod(where / name, 0o644)
    return {"kernel": str(where / "vmlinuz"), "initrd": str(where / "initrd.gz"),
            "cmdline": "console=ttyS0 quiet"}


@pytest.fixture
async def qemu_host(tmp_path: Path) -> AsyncIterator[tuple[Auctioneer, LibvirtVMM]]:
    why = _reachable()
    if why is not None:
        pytest.skip(f"libvirtd not reachable at {URI} ({why}); run scripts/setup-qemu")
    tag = uuid.uuid4().hex[:8]
    base = Path("/var/lib/libvirt/images") if os.path.isdir("/var/lib/libvirt/images") \
        else Path("/var/tmp")
    guest_dir = base / f"p2pm-test-{tag}"
    boot = build_guest(guest_dir)
    vmm = LibvirtVMM(URI, prefix=f"p2pmt{tag}-", network=None, pool=None, boot=boot)
    store = AccountStore(tmp_path / "host.sqlite")
    settings = Settings(cpu_mhz=2000, memory_kib=512 * MIB, min_price=1)
    auct = Auctioneer(Identity.generate(), settings, store, vmm, FakeBank().accept, Clock())
    try:
        yield auct, vmm
    finally:
        forget_domains(vmm)
        vmm.close()
        store.close()
        shutil.rmtree(guest_dir, ignore_errors=True)


def _dom(vmm: LibvirtVMM, aid: str) -> Any:
    return vmm.conn.lookupByName(vmm.name_of(aid))


async def test_two_guests_follow_bids_three_to_one(qemu_host: tuple[Auctioneer, LibvirtVMM]
                                                  ) -> None:
    auct, vmm = qemu_host
    bids = {"cpu": "1,0,1", "memory": "1,32MiB,512MiB"}
    a = (await auct.create_account(ctx(ALICE), {"payment": cert(3 * 3600 * 10**6),
                                                "bids": bids, "interval_s": 3600}))["account_id"]
    b = (await auct.create_account(ctx(BOB), {"payment": cert(3600 * 10**6),
                                              "bids": bids, "interval_s": 3600}))["account_id"]
    await auct.tick(auct.clock() + 10**6)
    alloc = {x.account_id: dict(x.allocation) for x in auct.accounts()}
    assert 2.9 < alloc[a]["memory"] / alloc[b]["memory"] < 3.1
    da, db = _dom(vmm, a), _dom(vmm, b)
    assert da.isActive() and db.isActive()
    # cpu_shares (the cgroup's cpu weight) follow the bids 3:1
    sa, sb = da.schedulerParameters()["cpu_shares"], db.schedulerParameters()["cpu_shares"]
    assert 2.9 < sa / sb < 3.1, (sa, sb)
    assert sa == auct.sync.applied[a].cpu_weight  # type: ignore[union-attr]
    # memory: the balloon gives the guests what they won (Alice had it all first)
    deadline = time.monotonic() + 90
    while True:
        ma, mb = int(da.info()[2]), int(db.info()[2])
        if abs(ma - alloc[a]["memory"]) <= 2 * MIB and abs(mb - alloc[b]["memory"]) <= 2 * MIB:
            break
        assert time.monotonic() < deadline, ("balloon did not follow", ma, mb, alloc)
        await auct.sync_vmm()
        time.sleep(1)
    assert 2.8 < ma / mb < 3.2
    docs = {d["account_id"]: d for d in (await auct.status(ctx(ALICE), {}))["accounts"]}
    assert docs[a]["vm"]["weight_key"] == "cpu_shares"
    assert not any("cpu share not enforced" in n for n in docs[a]["notes"])
