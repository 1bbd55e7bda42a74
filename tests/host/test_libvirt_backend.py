"""The libvirt backend against libvirt's in-process test driver."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import libvirt
import pytest

from p2pmarket.host.vmm import VmmError
from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM


@pytest.fixture
def vmm() -> Iterator[LibvirtVMM]:
    backend = LibvirtVMM("test:///default", prefix=f"t{uuid.uuid4().hex[:10]}-")
    yield backend
    for info in backend.list():
        backend.undefine(info.account_id)
    backend.close()


def test_define_start_and_describe(vmm: LibvirtVMM) -> None:
    info = vmm.ensure_domain("acc1", 2, 262144, 300, max_memory_kib=1048576)
    assert info.name == vmm.prefix + "acc1"
    assert info.state == "running"
    assert (info.vcpus, info.memory_kib, info.max_memory_kib) == (2, 262144, 1048576)
    assert info.weight == 300 and info.weight_key == "weight"
    # the test driver accepts but ignores the weight; the backend says so
    assert any("not enforced" in n for n in info.notes)
    conn = libvirt.open("test:///default")
    dom = conn.lookupByName(info.name)
    assert dom.isActive() and dom.info()[2] == 262144
    conn.close()


def test_live_update(vmm: LibvirtVMM) -> None:
    vmm.ensure_domain("acc1", 1, 262144, 100, max_memory_kib=1048576)
    info = vmm.ensure_domain("acc1", 3, 524288, 700)
    assert (info.state, info.vcpus, info.memory_kib, info.weight) == ("running", 3, 524288, 700)
    assert vmm.describe("acc1") == info
    # above the max set at define time: clamped and noted
    info = vmm.ensure_domain("acc1", 3, 4 * 1048576, 700)
    assert info.memory_kib == 1048576
    assert any("clamped" in n for n in info.notes)


def test_shutdown_restart_and_undefine(vmm: LibvirtVMM) -> None:
    vmm.ensure_domain("acc1", 1, 131072, 10)
    vmm.shutdown("acc1")
    info = vmm.describe("acc1")
    assert info is not None and info.state == "shutoff"
    vmm.shutdown("acc1")   # idempotent
    # a stopped domain is redefined with the new size and started again
    info = vmm.ensure_domain("acc1", 2, 2 * 1048576, 20, max_memory_kib=4 * 1048576)
    assert (info.state, info.memory_kib, info.max_memory_kib) == ("running", 2 * 1048576,
                                                                  4 * 1048576)
    vmm.undefine("acc1")
    assert vmm.describe("acc1") is None
    vmm.undefine("acc1")   # idempotent


def test_hosts_sharing_the_driver_see_only_their_domains(vmm: LibvirtVMM) -> None:
    other = LibvirtVMM("test:///default", prefix=f"u{uuid.uuid4().hex[:10]}-")
    try:
        vmm.ensure_domain("same", 1, 131072, 10)
        other.ensure_domain("same", 1, 262144, 10)
        assert [i.memory_kib for i in vmm.list()] == [131072]
        assert [i.memory_kib for i in other.list()] == [262144]
    finally:
        other.undefine("same")
        other.close()


def test_bad_requests(vmm: LibvirtVMM) -> None:
    with pytest.raises(VmmError):
        vmm.ensure_domain("acc1", 0, 131072, 10)
    with pytest.raises(VmmError):
        vmm.ensure_domain("../evil", 1, 131072, 10)
    with pytest.raises(VmmError):
        LibvirtVMM("test:///default", prefix="Bad Prefix")
    assert vmm.list() == []
