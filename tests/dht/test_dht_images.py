"""The ``images`` field of host records: the base images a host offers (issue 13)."""

from __future__ import annotations

from typing import Any

import pytest
from dht_helpers import ALICE, NOW, host, host_body

from p2pmarket.core.domains import DHT_RECORD
from p2pmarket.core.wire import seal
from p2pmarket.dht.checks import MAX_VALUE_BYTES, DhtError
from p2pmarket.dht.records import MAX_IMAGES, HostRecord, ImageAd, host_doc

SHA = bytes(range(32))


def image(name: str = "debian-12", **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": name, "format": "qcow2", "virtual_size": 2 << 30,
                           "sha256": SHA}
    doc.update(changes)
    return doc


def test_images_round_trip_and_are_found_by_name() -> None:
    ads = [ImageAd("debian-12", "qcow2", 2 << 30, SHA), ImageAd("alpine.3_19", "raw", 1 << 28,
                                                                 SHA)]
    rec = host(images=ads)
    again = HostRecord.from_bytes(rec.value, NOW)
    assert again.images == tuple(ads) and again.image("alpine.3_19") == ads[1]
    assert again.image("nope") is None
    assert host_doc(again)["images"][0] == {"name": "debian-12", "format": "qcow2",
                                            "virtual_size": 2 << 30, "sha256": SHA.hex()}
    assert host().images == () and "images" not in host().envelope.body


def test_the_most_images_with_the_longest_names_fit_a_record() -> None:
    ads = [ImageAd(f"{i}" + "x" * 47, "qcow2", 1 << 50, SHA) for i in range(MAX_IMAGES)]
    rec = host(images=ads)
    assert len(rec.value) <= MAX_VALUE_BYTES and len(rec.images) == MAX_IMAGES


@pytest.mark.parametrize("images", [
    "debian", [image()] * 2, [image(f"i{i}") for i in range(MAX_IMAGES + 1)],
    [image("Debian")], [image("x" * 49)], [image("-x")], [image("a/b")], [image("")],
    [image(format="vmdk")], [image(virtual_size=0)], [image(virtual_size=(1 << 50) + 1)],
    [image(virtual_size=True)], [image(sha256=b"x" * 31)], [image(sha256=SHA.hex())],
    [{**image(), "path": "/srv/images/debian.qcow2"}], [{"name": "x"}], ["x"],
])
def test_malformed_images_are_refused(images: object) -> None:
    env = seal(ALICE, DHT_RECORD, "dht.host", host_body(ALICE, images=images), ts=NOW)
    with pytest.raises(DhtError) as err:
        HostRecord.from_envelope(env, NOW)
    assert err.value.value == "malformed"


def test_the_vm_field_says_what_a_machine_is_and_round_trips() -> None:
    from p2pmarket.dht.records import VmAd
    rec = host(vm=VmAd("qemu", 256 * 1024, "30000-30009"))
    again = HostRecord.from_bytes(rec.value, NOW)
    assert again.vm == VmAd("qemu", 256 * 1024, "30000-30009")
    assert again.vm.port_range() == (30000, 30009)
    assert VmAd("test", 1 << 14, "22").port_range() == (22, 22)
    assert VmAd("test", 1 << 14).port_range() is None
    assert host_doc(again)["vm"] == {"driver": "qemu", "memory_kib": 256 * 1024,
                                     "ssh_ports": "30000-30009"}
    assert host().vm is None and "vm" not in host().envelope.body


VM = {"driver": "qemu", "memory_kib": 1 << 18, "ssh_ports": ""}


@pytest.mark.parametrize("vm", [
    "qemu", {**VM, "extra": 1}, {"driver": "qemu"}, {**VM, "driver": "QEMU"},
    {**VM, "driver": "a" * 17}, {**VM, "memory_kib": 1024}, {**VM, "memory_kib": True},
    {**VM, "ssh_ports": 22}, {**VM, "ssh_ports": "0"}, {**VM, "ssh_ports": "9-8"},
    {**VM, "ssh_ports": "1-5000"}, {**VM, "ssh_ports": "70000"}, {**VM, "ssh_ports": "a-b"},
])
def test_a_malformed_vm_field_is_refused(vm: object) -> None:
    env = seal(ALICE, DHT_RECORD, "dht.host", host_body(ALICE, vm=vm), ts=NOW)
    with pytest.raises(DhtError) as err:
        HostRecord.from_envelope(env, NOW)
    assert err.value.value == "malformed"
