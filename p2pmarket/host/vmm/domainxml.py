"""The libvirt domain XML for an account: pure, no I/O.

One :class:`DomainPlan` in, one ``<domain>`` document out (:func:`domain_xml`),
for the test, qemu and lxc drivers:

- sizes: ``<memory>`` (the max) and ``<currentMemory>``, ``<vcpu current=..>``
  up to the host's cpus, ``<cputune><shares>`` (not on the test driver),
  ``<blkiotune><weight>``;
- ``<metadata>``: the allocation asked for (``<p2pmarket:alloc vcpus=.. ..>``
  in namespace :data:`META_URI`), since some drivers report other figures;
- qemu (TCG, type ``qemu``, machine ``pc``): direct kernel boot
  (``<kernel>``, ``<initrd>``, ``<cmdline>``) when the :class:`GuestBoot` says
  so, else ``<boot dev="hd"/>``; the account's volume as ``vda`` (virtio, the
  format given: qcow2 or raw); the NoCloud seed as a read-only IDE cdrom
  (``hdc``, the guest's ``/dev/sr0``); a serial console (pty, logged to
  ``serial_log`` when given); a virtio balloon; a virtio NIC;
- lxc: ``<init>/bin/sh</init>``, no disk (a container host completes it with its root,
  user namespace and address: :mod:`.lxcguest`);
- the interface on ``network`` with the given MAC and ``<bandwidth>``.

:func:`guest_from_xml` reads back what a defined domain boots, so a host that
restarts can start a stopped guest again without being told.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from p2pmarket.auction.enforce import DomainSpec
from p2pmarket.host.vmm.guest import GuestBoot

META_URI = "https://p2pmarket.invalid/host"
META_KEY = "p2pmarket"

MIN_CPU_SHARES = 2
"""The lowest ``cpu_shares`` libvirt takes for qemu and lxc domains."""


@dataclass(frozen=True)
class DomainPlan:
    """Everything the domain XML depends on."""

    dtype: str                 # test, qemu, lxc
    name: str
    spec: DomainSpec
    vcpus: int
    max_vcpus: int
    want: dict[str, int] = field(default_factory=dict)
    uuid: str | None = None
    disk: str | None = None    # the account's volume
    disk_format: str = "raw"
    boot: GuestBoot | None = None
    seed: str | None = None    # the NoCloud seed ISO
    network: str | None = None
    mac: str | None = None
    serial_log: str | None = None
    cpuset: str | None = None  # the host cpus the guest may run on (libvirt's syntax)


CPUSET_RE = re.compile(r"^[0-9]+(?:-[0-9]+)?(?:,[0-9]+(?:-[0-9]+)?)*$")


def check_cpuset(text: str) -> str:
    """A host cpu list in libvirt's syntax (``0``, ``0-1``, ``0,2-3``; at most 64
    characters); :class:`ValueError` otherwise."""
    if len(text) > 64 or not CPUSET_RE.match(text):
        raise ValueError(f"bad cpu list {text[:64]!r}: give cpus like 0, 0-1 or 0,2-3")
    return text


def meta_element(want: dict[str, int], namespaced: bool = True) -> ET.Element:
    tag = f"{{{META_URI}}}alloc" if namespaced else "alloc"
    return ET.Element(tag, {k: str(v) for k, v in sorted(want.items())})


def domain_xml(p: DomainPlan) -> str:
    spec, dtype = p.spec, p.dtype
    root = ET.Element("domain", type=dtype)
    ET.SubElement(root, "name").text = p.name
    if p.uuid is not None:
        ET.SubElement(root, "uuid").text = p.uuid
    top = max(spec.memory_kib, spec.max_memory_kib)
    ET.SubElement(root, "memory", unit="KiB").text = str(top)
    ET.SubElement(root, "currentMemory", unit="KiB").text = str(spec.memory_kib)
    vcpu = ET.SubElement(root, "vcpu", placement="static", current=str(p.vcpus))
    vcpu.text = str(p.max_vcpus)
    if p.cpuset and dtype != "test":
        vcpu.set("cpuset", p.cpuset)
    if dtype != "test":
        # cgroups take cpu.shares from 2: the lowest weight (1) is 2 there
        tune = ET.SubElement(root, "cputune")
        ET.SubElement(tune, "shares").text = str(max(MIN_CPU_SHARES, spec.cpu_weight))
        if p.cpuset:
            ET.SubElement(tune, "emulatorpin", cpuset=p.cpuset)
    if spec.blkio_weight is not None:
        ET.SubElement(ET.SubElement(root, "blkiotune"), "weight").text = str(spec.blkio_weight)
    ET.SubElement(root, "metadata").append(meta_element(p.want))
    os_el = ET.SubElement(root, "os")
    if dtype == "lxc":
        ET.SubElement(os_el, "type").text = "exe"
        ET.SubElement(os_el, "init").text = "/bin/sh"
    elif dtype == "qemu":
        ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
        if p.boot is not None and p.boot.direct:
            for key in ("kernel", "initrd", "cmdline"):
                value = getattr(p.boot, key)
                if value:
                    ET.SubElement(os_el, key).text = value
        elif p.disk is not None:
            ET.SubElement(os_el, "boot", dev="hd")
        features = ET.SubElement(root, "features")
        ET.SubElement(features, "acpi")
        ET.SubElement(features, "apic")
    else:
        ET.SubElement(os_el, "type", arch="x86_64").text = "hvm"
    devices = ET.SubElement(root, "devices")
    if dtype == "qemu":
        serial = ET.SubElement(devices, "serial", type="pty")
        if p.serial_log is not None:
            ET.SubElement(serial, "log", file=p.serial_log, append="off")
        ET.SubElement(devices, "memballoon", model="virtio")
    if p.disk is not None and dtype != "lxc":
        disk = ET.SubElement(devices, "disk", type="file", device="disk")
        ET.SubElement(disk, "driver", name="qemu" if dtype == "qemu" else dtype,
                      type=p.disk_format)
        ET.SubElement(disk, "source", file=p.disk)
        ET.SubElement(disk, "target", dev="vda", bus="virtio")
    if p.seed is not None and dtype != "lxc":
        cdrom = ET.SubElement(devices, "disk", type="file", device="cdrom")
        ET.SubElement(cdrom, "driver", name="qemu" if dtype == "qemu" else dtype, type="raw")
        ET.SubElement(cdrom, "source", file=p.seed)
        ET.SubElement(cdrom, "target", dev="hdc", bus="ide")
        ET.SubElement(cdrom, "readonly")
    if p.network is not None:
        iface = ET.SubElement(devices, "interface", type="network")
        ET.SubElement(iface, "source", network=p.network)
        if p.mac is not None:
            ET.SubElement(iface, "mac", address=p.mac)
        if dtype == "qemu":
            ET.SubElement(iface, "model", type="virtio")
        if spec.net_in_kib_s or spec.net_out_kib_s:
            bw = ET.SubElement(iface, "bandwidth")
            if spec.net_in_kib_s:
                ET.SubElement(bw, "inbound", average=str(spec.net_in_kib_s))
            if spec.net_out_kib_s:
                ET.SubElement(bw, "outbound", average=str(spec.net_out_kib_s))
    return ET.tostring(root, encoding="unicode")


def guest_from_xml(xml: str) -> tuple[GuestBoot | None, str | None]:
    """What a defined domain boots: its direct-boot settings (None when it boots
    its disk) and its seed cdrom's path (None without one)."""
    root = ET.fromstring(xml)
    os_el = root.find("os")
    boot = None
    if os_el is not None and os_el.findtext("kernel"):
        boot = GuestBoot(os_el.findtext("kernel"), os_el.findtext("initrd") or None,
                         os_el.findtext("cmdline") or None)
    seed = None
    for disk in root.iter("disk"):
        src = disk.find("source")
        if disk.get("device") == "cdrom" and src is not None and src.get("file"):
            seed = src.get("file")
    return boot, seed
