"""The pure parts of guests (keys, seed, image formats, network, domain XML) and the
guest API on libvirt's test driver."""

from __future__ import annotations

import base64
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import libvirt
import pytest

from p2pmarket.auction.enforce import DomainSpec
from p2pmarket.host.vmm import network as guestnets
from p2pmarket.host.vmm.domainxml import DomainPlan, domain_xml, guest_from_xml
from p2pmarket.host.vmm.guest import (
    GuestBoot,
    GuestError,
    image_format,
    is_boot_sector,
    parse_ssh_key,
    seed_files,
)
from p2pmarket.host.vmm.guestnet import (
    GuestNetError,
    GuestNetwork,
    host_xml,
    lease_address,
    mac_for,
    network_xml,
    pick_address,
    static_hosts,
)
from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM
from p2pmarket.host.vmm.seediso import seed_iso


def _s(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


ED = "ssh-ed25519 " + base64.b64encode(_s(b"ssh-ed25519") + _s(b"\x11" * 32)).decode()


def _rsa(bits: int) -> str:
    n = (1 << (bits - 1)) | 1
    blob = _s(b"ssh-rsa") + _s(b"\x01\x00\x01") + _s(b"\x00" + n.to_bytes(bits // 8, "big"))
    return "ssh-rsa " + base64.b64encode(blob).decode()


def _ecdsa(kind: str, curve: bytes, size: int) -> str:
    blob = _s(kind.encode()) + _s(curve) + _s(b"\x04" + b"\x22" * (2 * size))
    return f"{kind} " + base64.b64encode(blob).decode()


def test_keys_that_parse() -> None:
    key = parse_ssh_key(ED + " alice@laptop\n")
    assert (key.type, key.comment) == ("ssh-ed25519", "alice@laptop")
    assert key.line == ED + " alice@laptop"
    assert key.fingerprint.startswith("SHA256:")
    assert parse_ssh_key(_rsa(2048)).type == "ssh-rsa"
    assert parse_ssh_key(_ecdsa("ecdsa-sha2-nistp256", b"nistp256", 32)).type.startswith("ecdsa")
    assert parse_ssh_key(_ecdsa("ecdsa-sha2-nistp521", b"nistp521", 66)).comment == ""
    # a comment that could break the YAML is dropped, not copied
    assert parse_ssh_key(ED + ' a"b\\c').comment == ""


@pytest.mark.parametrize("text, words", [
    ("", "expected"),
    ("hello world", "unsupported"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----", "private"),
    ('command="rm -rf /" ' + ED, "unsupported"),
    (ED + "\n" + ED, "exactly one"),
    ("ssh-ed25519 not*base64", "base64"),
    ("ssh-ed25519 " + base64.b64encode(_s(b"ssh-rsa") + _s(b"x" * 32)).decode(), "another"),
    ("ssh-ed25519 " + base64.b64encode(_s(b"ssh-ed25519") + _s(b"x" * 31)).decode(), "32"),
    ("ssh-ed25519 " + base64.b64encode(_s(b"ssh-ed25519") + _s(b"x" * 32) + b"!").decode(),
     "trailing"),
    ("ssh-ed25519 " + base64.b64encode(_s(b"ssh-ed25519")[:-2]).decode(), "truncated"),
    (_rsa(1024), "2048"),
    (_ecdsa("ecdsa-sha2-nistp256", b"nistp384", 32), "curve"),
    (_ecdsa("ecdsa-sha2-nistp384", b"nistp384", 32), "point"),
    ("x" * 20000, "16 KiB"),
])
def test_keys_that_do_not(text: str, words: str) -> None:
    with pytest.raises(GuestError, match=words):
        parse_ssh_key(text)


def test_seed_files_and_iso() -> None:
    key = parse_ssh_key(ED + " me@host")
    files = seed_files("p2pm-acc_1", key)
    user = files["user-data"].decode()
    assert user.startswith("#cloud-config\n")
    assert f'  - "{ED} me@host"\n' in user and "disable_root: false" in user
    meta = files["meta-data"].decode()
    assert "local-hostname: p2pm-acc-1\n" in meta and "instance-id: p2pm-acc-1-" in meta
    iso = seed_iso(files)
    assert iso[0x8001:0x8006] == b"CD001"                  # ISO 9660 primary descriptor
    assert iso[0x8028:0x8028 + 6] == b"cidata"              # its volume label
    assert files["user-data"] in iso and files["meta-data"] in iso
    assert b"u\x00s\x00e\x00r\x00-\x00d\x00a\x00t\x00a" in iso   # the Joliet name (UCS-2)


def test_image_formats() -> None:
    qcow2 = b"QFI\xfb" + (3).to_bytes(4, "big") + bytes(8) + bytes(100)
    assert image_format(qcow2) == "qcow2"
    with pytest.raises(GuestError, match="backing file"):
        image_format(b"QFI\xfb" + (3).to_bytes(4, "big") + (0x200).to_bytes(8, "big"))
    with pytest.raises(GuestError, match="vmdk"):
        image_format(b"KDMV" + bytes(600))
    mbr = bytes(510) + b"\x55\xaa"
    assert image_format(mbr) == "raw" and is_boot_sector(mbr)
    assert image_format(b"anything") == "raw" and not is_boot_sector(b"anything")


def test_guest_boot_is_checked() -> None:
    assert not GuestBoot().direct and GuestBoot("/k", "/i", "console=ttyS0").direct
    for bad in (dict(kernel="relative"), dict(initrd="/i"), dict(kernel="/k", cmdline="a\nb")):
        with pytest.raises(GuestError):
            GuestBoot(**bad)   # type: ignore[arg-type]


def test_network_plan() -> None:
    net = GuestNetwork()
    assert (net.name, net.bridge, net.subnet, net.gateway) == (
        "p2pm-net", "p2pm-br0", "198.19.200.0/24", "198.19.200.1")
    root = ET.fromstring(network_xml(net))
    assert root.find("forward").get("mode") == "nat"   # type: ignore[union-attr]
    assert root.find("ip/dhcp/range").attrib == {      # type: ignore[union-attr]
        "start": "198.19.200.128", "end": "198.19.200.254"}
    for bad in (dict(subnet="192.168.122.0/24"), dict(subnet="10.0.0.0/24"),
                dict(name="default"), dict(bridge="x" * 16), dict(subnet="198.19.0.0/8"),
                dict(subnet="nonsense")):
        with pytest.raises(GuestNetError):
            GuestNetwork(**bad)


def test_addresses() -> None:
    net = GuestNetwork(subnet="198.19.201.0/28")   # static .2 .. .7
    mac = mac_for("p2pm-acc1")
    assert mac.startswith("52:54:00:") and mac == mac_for("p2pm-acc1") != mac_for("p2pm-acc2")
    assert pick_address(net, {}, mac) == "198.19.201.2"
    taken = {"52:54:00:00:00:01": "198.19.201.2", mac: "198.19.201.5"}
    assert pick_address(net, taken, mac.upper()) == "198.19.201.5"
    assert pick_address(net, taken, "52:54:00:00:00:02") == "198.19.201.3"
    full = {f"52:54:00:00:01:{i:02x}": f"198.19.201.{i}" for i in range(2, 8)}
    with pytest.raises(GuestNetError, match="no free"):
        pick_address(net, full, mac)
    xml = network_xml(net).replace("</dhcp>", host_xml(mac, "198.19.201.4") + "</dhcp>")
    assert static_hosts(xml) == {mac: "198.19.201.4"}
    leases: list[dict[str, object]] = [{"mac": mac.upper(), "type": 0, "ipaddr": "198.19.201.9"}]
    assert lease_address(leases, mac) == "198.19.201.9"
    assert lease_address(leases, "52:54:00:00:00:00") is None


def test_domain_xml_for_a_guest() -> None:
    boot = GuestBoot("/g/vmlinuz", "/g/initrd.gz", "console=ttyS0")
    plan = DomainPlan(dtype="qemu", name="p2pm-a", spec=DomainSpec(1, 262144, 100, 262144),
                      vcpus=1, max_vcpus=2, disk="/p/p2pm-a.img", disk_format="qcow2",
                      boot=boot, seed="/p/p2pm-a-seed.iso", network="p2pm-net",
                      mac=mac_for("p2pm-a"), serial_log="/l/p2pm-a-serial.log")
    xml = domain_xml(plan)
    root = ET.fromstring(xml)
    assert root.get("type") == "qemu" and root.findtext("os/kernel") == "/g/vmlinuz"
    disks = {d.get("device"): d for d in root.iter("disk")}
    assert disks["disk"].find("driver").get("type") == "qcow2"   # type: ignore[union-attr]
    assert disks["cdrom"].find("target").attrib == {"dev": "hdc", "bus": "ide"}  # type: ignore
    assert disks["cdrom"].find("readonly") is not None
    assert root.find("devices/interface/model").get("type") == "virtio"  # type: ignore
    assert root.find("devices/serial/log").get("file") == "/l/p2pm-a-serial.log"  # type: ignore
    assert guest_from_xml(xml) == (boot, "/p/p2pm-a-seed.iso")
    # an image that boots from its disk
    disk_only = domain_xml(DomainPlan(dtype="qemu", name="p2pm-b", vcpus=1, max_vcpus=1,
                                      spec=DomainSpec(1, 262144, 100, 262144), disk="/p/b"))
    assert ET.fromstring(disk_only).find("os/boot").get("dev") == "hd"  # type: ignore
    assert guest_from_xml(disk_only) == (None, None)


@pytest.fixture
def vmm() -> Iterator[LibvirtVMM]:
    backend = LibvirtVMM("test:///default", prefix=f"g{uuid.uuid4().hex[:10]}-")
    yield backend
    for info in backend.list():
        backend.undefine(info.account_id)
    backend.close()


def test_guest_api_on_the_test_driver(vmm: LibvirtVMM) -> None:
    assert vmm.network == "p2pm-net"    # the project's network, never libvirt's default
    address = vmm.prepare_guest("acc1", GuestBoot("/k", "/i", "console=ttyS0"), ED + " me")
    assert address is not None and address.startswith("198.19.200.")
    assert vmm.guest_address("acc1") == address
    # a second guest gets another address; asking again keeps the first one
    other = vmm.prepare_guest("acc2", GuestBoot(), ED)
    assert other not in (None, address)
    assert vmm.prepare_guest("acc1", GuestBoot("/k"), ED) == address
    info = vmm.apply("acc1", DomainSpec(1, 131072, 10, 131072, net_in_kib_s=100))
    xml = vmm.conn.lookupByName(info.name).XMLDesc(0)
    assert f"{info.name}-seed.iso" in xml and "p2pm-net" in xml
    with pytest.raises(GuestError):
        vmm.prepare_guest("acc3", GuestBoot(), "not a key")
    assert vmm.guest_address("acc3") is None
    vmm.undefine("acc1")
    vmm.undefine("acc2")
    assert vmm.guest_address("acc1") is None and vmm.guest_address("acc2") is None
    conn = libvirt.open("test:///default")
    pool = conn.storagePoolLookupByName("default-pool")
    assert not any(n.startswith(vmm.prefix) for n in pool.listVolumes())
    conn.close()


def test_default_network_is_refused() -> None:
    with pytest.raises(guestnets.VmmError, match="default"):
        LibvirtVMM("test:///default", network="default")
