"""The project's libvirt network for guests: pure, no I/O.

libvirt's stock ``default`` network (192.168.122.0/24) is never used: guests
sit on the project's own NAT network, by default ``p2pm-net`` on bridge
``p2pm-br0`` with 198.19.200.0/24 (inside 198.18.0.0/15, the benchmarking
range). The gateway is the subnet's first address. The first half of the
hosts (``.2``..``.127`` in a /24) is for static DHCP host entries, one per
guest MAC, chosen by :func:`pick_address`, so a guest's address is known
before it boots; the second half is the dynamic DHCP range for anything else.

The network XML this module owns (:func:`network_xml`)::

    <network>
      <name>p2pm-net</name>
      <forward mode="nat"/>
      <bridge name="p2pm-br0" stp="off" delay="0"/>
      <ip address="198.19.200.1" netmask="255.255.255.0">
        <dhcp>
          <range start="198.19.200.128" end="198.19.200.254"/>
          <host mac="52:54:00:..." ip="198.19.200.2"/>   (added per guest)
        </dhcp>
      </ip>
    </network>

The bridge runs without STP: with it, the kernel keeps a new port (a guest's) from
forwarding for twice its least forward delay, 4 s. A guest's MAC is derived from its
domain name (the host's prefix plus the account id): ``52:54:00`` and the first three
bytes of SHA-256(name).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Protocol

from p2pmarket.auction import HostError

BENCH_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
DEFAULT_NAME = "p2pm-net"
DEFAULT_BRIDGE = "p2pm-br0"
DEFAULT_SUBNET = "198.19.200.0/24"
_NAME = re.compile(r"[A-Za-z0-9_-]{1,50}")
_BRIDGE = re.compile(r"[A-Za-z0-9_-]{1,15}")


class GuestNetError(HostError):
    """A guest network setting or entry is unusable."""


@dataclass(frozen=True)
class GuestNetwork:
    """The project's NAT network: name, bridge and subnet (inside 198.18.0.0/15)."""

    name: str = DEFAULT_NAME
    bridge: str = DEFAULT_BRIDGE
    subnet: str = DEFAULT_SUBNET

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name) or self.name == "default":
            raise GuestNetError("network name: 1..50 letters, digits, - or _, not 'default'",
                                self.name[:60])
        if not _BRIDGE.fullmatch(self.bridge):
            raise GuestNetError("bridge name: 1..15 letters, digits, - or _", self.bridge[:60])
        try:
            net = ipaddress.IPv4Network(self.subnet)
        except ValueError:
            raise GuestNetError("subnet must be an IPv4 network like 198.19.200.0/24",
                                self.subnet[:60]) from None
        if not net.subnet_of(BENCH_RANGE) or not 16 <= net.prefixlen <= 28:
            raise GuestNetError("subnet must be a /16../28 inside 198.18.0.0/15", self.subnet)

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        return str(self.network.network_address + 1)

    def static_range(self) -> tuple[int, int]:
        """First and last integer address for static host entries."""
        net = self.network
        first = int(net.network_address) + 2
        return first, int(net.network_address) + net.num_addresses // 2 - 1

    def dynamic_range(self) -> tuple[str, str]:
        net = self.network
        start = ipaddress.IPv4Address(int(net.network_address) + net.num_addresses // 2)
        return str(start), str(net.broadcast_address - 1)


def mac_for(name: str) -> str:
    """The guest interface's MAC for domain ``name``."""
    h = hashlib.sha256(name.encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in h[:3])


def network_xml(net: GuestNetwork) -> str:
    root = ET.Element("network")
    ET.SubElement(root, "name").text = net.name
    ET.SubElement(root, "forward", mode="nat")
    # no STP: one bridge, no loops, and the kernel holds an STP port 2 x 2 s (its least
    # forward delay) before it forwards, longer than a container takes to boot
    ET.SubElement(root, "bridge", name=net.bridge, stp="off", delay="0")
    ip = ET.SubElement(root, "ip", address=net.gateway, netmask=str(net.network.netmask))
    start, end = net.dynamic_range()
    ET.SubElement(ET.SubElement(ip, "dhcp"), "range", start=start, end=end)
    return ET.tostring(root, encoding="unicode")


def host_xml(mac: str, ip: str) -> str:
    """One static DHCP host entry (libvirt's ``networkUpdate`` IP_DHCP_HOST section)."""
    return ET.tostring(ET.Element("host", mac=mac, ip=ip), encoding="unicode")


def static_hosts(xml: str) -> dict[str, str]:
    """The network's static DHCP host entries, ``{mac: ip}`` (MACs lower-case)."""
    out: dict[str, str] = {}
    for host in ET.fromstring(xml).iter("host"):
        mac, ip = host.get("mac"), host.get("ip")
        if mac and ip:
            out[mac.lower()] = ip
    return out


def pick_address(net: GuestNetwork, taken: dict[str, str], mac: str) -> str:
    """The static address for ``mac``: its current entry, else the lowest free one.

    ``taken`` is :func:`static_hosts` of the network as it is now.
    """
    mac = mac.lower()
    if mac in taken:
        return taken[mac]
    used = set(taken.values())
    first, last = net.static_range()
    for value in range(first, last + 1):
        ip = str(ipaddress.IPv4Address(value))
        if ip not in used:
            return ip
    raise GuestNetError("no free static address left in the guest network", net.subnet)


def lease_address(leases: list[dict[str, object]], mac: str) -> str | None:
    """The IPv4 address in libvirt's DHCP leases (``networkGetDHCPLeases``) for ``mac``."""
    for lease in leases:
        if str(lease.get("mac", "")).lower() == mac.lower() and lease.get("type") == 0:
            addr = lease.get("ipaddr")
            return None if addr is None else str(addr)
    return None


class _NetSettings(Protocol):
    @property
    def guest_network(self) -> str: ...
    @property
    def guest_subnet(self) -> str: ...


def guest_network(settings: _NetSettings) -> GuestNetwork:
    """A node's guest network from its settings (``guest_network``, ``guest_subnet``):
    the default name keeps the default bridge; another name is its own bridge's (the
    first 15 characters)."""
    name = settings.guest_network
    bridge = DEFAULT_BRIDGE if name == DEFAULT_NAME else name[:15]
    return GuestNetwork(name, bridge, settings.guest_subnet)
