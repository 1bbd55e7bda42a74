"""An LXC guest's domain XML and the files the host writes into its root: pure, no I/O.

A container (``lxc:///``) boots no kernel: its ``/`` is a directory the host unpacked
from the account's root file system image (:mod:`p2pmarket.auction.rootfscheck`,
:mod:`.lxcroot`), its first process that root's ``/sbin/init``
(:data:`LXC_INIT`). :func:`lxc_domain_xml` takes the :class:`~.domainxml.DomainPlan`
every driver gets (memory limit, ``cpu_shares``, metadata, the interface on the
project network with its MAC) and adds what a container needs::

    <os><type>exe</type><init>/sbin/init</init></os>
    <idmap>                                   (a user namespace of its own)
      <uid start="0" target="BASE" count="65536"/>
      <gid start="0" target="BASE" count="65536"/>
    </idmap>
    <devices>
      <filesystem type="mount"><source dir="ROOT"/><target dir="/"/></filesystem>
      <interface type="network"> ... <mac address="52:54:00:..."/>
        <ip address="198.19.200.N" prefix="24"/>      (its static DHCP entry's address)
        <route address="0.0.0.0" prefix="0" gateway="198.19.200.1"/>
      </interface>
      <console type="pty"/>
    </devices>

libvirt configures ``eth0`` inside the container itself (address and default route)
before ``/sbin/init`` runs, so the guest needs no DHCP client and is on the network at
once; the same address is the MAC's static DHCP host entry on the network
(:mod:`.guestnet`), so a guest whose init does run DHCP gets it too, and
``guest_address`` reads it as for qemu guests. The container's uids and gids 0..65535
are host ids ``BASE``..``BASE+65535``, ``BASE`` from the domain's name
(:func:`id_base`), so no two guests (nor the host) share ids; the host unpacks the
root with its owners shifted so (:mod:`.lxcroot`).

:func:`root_from_xml` reads a defined domain's root directory back (a host restart).
"""

from __future__ import annotations

import hashlib
import ipaddress
import xml.etree.ElementTree as ET

from p2pmarket.auction.rootfscheck import ID_COUNT
from p2pmarket.core.sshkey import SshKey
from p2pmarket.host.vmm.domainxml import DomainPlan, domain_xml
from p2pmarket.host.vmm.guestnet import GuestNetwork

LXC_INIT = "/sbin/init"
ID_BASE_MIN = 1 << 20            # above any ordinary host user
ID_SLOTS = 1 << 14               # 16384 ranges of 65536 ids: bases below 2**31
MOUNT_POINTS = ("proc", "sys", "dev", "dev/pts", "tmp", "run", "root", "root/.ssh", "etc")
"""Directories a root must have for libvirt to mount into (made when missing)."""
AUTHORIZED_KEYS = "root/.ssh/authorized_keys"


def id_base(name: str) -> int:
    """The first host uid/gid of domain ``name``'s user namespace."""
    slot = int.from_bytes(hashlib.sha256(b"p2pm-idmap\0" + name.encode()).digest()[:4],
                          "big") % ID_SLOTS
    return ID_BASE_MIN + slot * ID_COUNT


def lxc_domain_xml(plan: DomainPlan, root: str, address: str | None,
                   net: GuestNetwork | None, ids: int) -> str:
    """The container's domain XML (see the module docstring): ``root`` its directory,
    ``address`` its static address on ``net`` (None: libvirt leaves eth0 to the
    guest), ``ids`` its first host uid (:func:`id_base`)."""
    if plan.dtype != "lxc":
        raise ValueError("lxc_domain_xml builds lxc domains only")
    tree = ET.fromstring(domain_xml(plan))
    os_el = tree.find("os")
    assert os_el is not None   # domain_xml always writes one
    for old in os_el.findall("init"):
        os_el.remove(old)
    ET.SubElement(os_el, "init").text = LXC_INIT
    idmap = ET.Element("idmap")
    for kind in ("uid", "gid"):
        ET.SubElement(idmap, kind, start="0", target=str(ids), count=str(ID_COUNT))
    tree.insert(list(tree).index(os_el) + 1, idmap)
    devices = tree.find("devices")
    assert devices is not None
    fs = ET.Element("filesystem", type="mount")
    ET.SubElement(fs, "source", dir=root)
    ET.SubElement(fs, "target", dir="/")
    devices.insert(0, fs)
    iface = devices.find("interface")
    if iface is not None and address is not None and net is not None:
        ipaddress.IPv4Address(address)   # a ValueError for anything else
        mac = iface.find("mac")
        at = len(iface) if mac is None else list(iface).index(mac) + 1
        iface.insert(at, ET.Element("ip", address=address, prefix=str(net.network.prefixlen)))
        iface.insert(at + 1, ET.Element("route", address="0.0.0.0", prefix="0",
                                        gateway=net.gateway))
    ET.SubElement(devices, "console", type="pty")
    return ET.tostring(tree, encoding="unicode")


def root_from_xml(xml: str) -> str | None:
    """The directory a defined container mounts as its ``/``, None when none."""
    for fs in ET.fromstring(xml).iter("filesystem"):
        src, target = fs.find("source"), fs.find("target")
        if src is not None and target is not None and target.get("dir") == "/":
            return src.get("dir")
    return None


def authorized_keys(key: SshKey) -> bytes:
    """``/root/.ssh/authorized_keys`` for the buyer's checked key (re-emitted from its
    parsed fields, as the NoCloud seed is)."""
    return key.line.encode() + b"\n"


__all__ = ["AUTHORIZED_KEYS", "LXC_INIT", "MOUNT_POINTS", "authorized_keys", "id_base",
           "lxc_domain_xml", "root_from_xml"]
