"""Uploads into a real libvirt storage pool (qemu:///system's dir pool under tmp): a
raw and a qcow2 image land in volumes of the right size and format; a refused one
leaves none. Needs libvirtd (scripts/setup-qemu); skipped without it. Only disk is
bought: the account gets the host's default memory, and its domain's boot fails
(qemu cannot read pytest's private tmp), which changes nothing here."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from test_auctioneer import ALICE, GIB, Clock, FakeBank, ctx
from test_upload import auth, mbr

from p2pmarket.auction.imagecheck import blank_qcow2
from p2pmarket.core.config import Settings
from p2pmarket.core.identity import Identity
from p2pmarket.host.accountstore import AccountStore
from p2pmarket.host.auctioneer import Auctioneer
from p2pmarket.host.control import AUTH_HEADER, control_handlers, upload_route
from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM
from tests.support.libvirtclean import forget_domains, remove_pool

URI = "qemu:///system"
MIB = 1024 * 1024


def _reachable() -> bool:
    try:
        libvirt.open(URI).close()
    except libvirt.libvirtError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _reachable(), reason="libvirtd not running "
                                                         "(scripts/setup-qemu)")


@pytest.fixture
def vmm(tmp_path: Path) -> Iterator[LibvirtVMM]:
    tag = uuid.uuid4().hex[:8]
    vmm = LibvirtVMM(URI, prefix=f"himg-{tag}-", network=None, pool=f"himg-{tag}",
                     pool_path=str(tmp_path / "pool"))
    try:
        yield vmm
    finally:
        forget_domains(vmm)   # a disk-only account still gets a machine
        remove_pool(vmm.conn, f"himg-{tag}")
        vmm.close()


async def test_raw_and_qcow2_images_land_in_volumes_of_their_size(
        tmp_path: Path, vmm: LibvirtVMM) -> None:
    ident = Identity.generate()
    store = AccountStore(tmp_path / "h.sqlite")
    clock = Clock()
    auct = Auctioneer(ident, Settings(cpu_mhz=4000, memory_kib=4 * GIB, min_price=1), store,
                      vmm, FakeBank().accept, clock)
    await control_handlers(auct)["host_set_capacity"]({"resource": "disk", "amount": "256MiB"})
    res = await auct.create_account(ctx(ALICE), {
        "payment": {"id": "p1", "amount": 10**8}, "interval_s": 600,
        "bids": {"disk": "1,128MiB,256MiB"}})
    aid = res["account_id"]
    app = web.Application()
    app.add_routes([upload_route(auct)])
    raw, qcow = mbr(3 * MIB), blank_qcow2(100 * MIB)
    docs: list[dict[str, Any]] = []
    async with TestClient(TestServer(app)) as client:
        for i, data in enumerate([raw, qcow, b"\x7fELF" + bytes(MIB)]):
            r = await client.put(f"/host/image/{aid}", data=data, headers={
                AUTH_HEADER: auth(ALICE, ident, aid, data, clock.now + i)})
            docs.append({"status": r.status, **(await r.json())})
            if i == 0:
                vol = vmm.volume(aid)
                assert vol is not None and vol.format == "raw", docs
                assert vol.capacity_kib == 3 * 1024 and vol.name.endswith(".img")
                assert hashlib.sha256(Path(vol.path).read_bytes()).digest() == \
                    hashlib.sha256(raw).digest()
    assert docs[0]["status"] == 200 and docs[1]["status"] == 200, docs
    vol = vmm.volume(aid)   # the qcow2 replaced the raw one; the ELF was refused
    assert vol is not None and vol.format == "qcow2" and vol.name.endswith(".qcow2")
    assert docs[1]["capacity_kib"] == 100 * 1024, docs   # from the checked header
    assert vol.capacity_kib == 100 * 1024   # what libvirt probed, once it has
    assert Path(vol.path).read_bytes() == qcow
    assert docs[2]["status"] == 400 and "ELF" in docs[2]["error"]
    names = [v.name() for v in vmm.conn.storagePoolLookupByName(vmm.pool_name or "")
             .listAllVolumes()]
    assert names == [vol.name]
    store.close()
