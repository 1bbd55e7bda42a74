"""The project's guest network in libvirt (thin: decisions in :mod:`.guestnet`).

:func:`ensure_network` defines and starts the NAT network of a
:class:`GuestNetwork` if it is missing or stopped (idempotent; several hosts
on one libvirtd share it), refusing one of that name whose subnet differs.
:func:`reserve` adds a static DHCP host entry for a guest MAC (live and in the
persistent config), :func:`release` removes it, :func:`address` reads it back
(or the DHCP lease, for a guest without an entry). Starting a network needs
dnsmasq (Debian ``dnsmasq-base``) and iptables on the host.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from p2pmarket.host.vmm.base import VmmError
from p2pmarket.host.vmm.guestnet import (
    GuestNetwork,
    host_xml,
    lease_address,
    network_xml,
    pick_address,
    static_hosts,
)
from p2pmarket.host.vmm.volumes import libvirt_message

_RETRIES = 8    # racing hosts that picked the same address


def _update_flags() -> int:
    return int(libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE | libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG)


def _lookup(conn: Any, name: str) -> Any:
    try:
        return conn.networkLookupByName(name)
    except libvirt.libvirtError:
        return None


def ensure_network(conn: Any, net: GuestNetwork) -> Any:
    """The network, defined and active."""
    try:
        found = _lookup(conn, net.name)
        if found is None:
            found = conn.networkDefineXML(network_xml(net))
        else:
            ip = ET.fromstring(found.XMLDesc(0)).find("ip")
            have = None if ip is None else ipaddress.IPv4Network(
                f"{ip.get('address')}/{ip.get('netmask') or ip.get('prefix')}", strict=False)
            if have != net.network:
                raise VmmError(f"libvirt network {net.name} exists with another subnet",
                               {"have": str(have), "want": net.subnet})
        if not found.isActive():
            found.create()
        return found
    except libvirt.libvirtError as exc:
        raise VmmError(f"cannot start libvirt network {net.name}: {libvirt_message(exc)}",
                       net.name) from None


def remove_network(conn: Any, name: str) -> None:
    """Stop and undefine the network; no-op when it does not exist."""
    found = _lookup(conn, name)
    if found is None:
        return
    try:
        if found.isActive():
            found.destroy()
        found.undefine()
    except libvirt.libvirtError as exc:
        raise VmmError(f"cannot remove libvirt network {name}: {libvirt_message(exc)}",
                       name) from None


def reserve(conn: Any, net: GuestNetwork, mac: str) -> str:
    """A static DHCP address for ``mac`` (its existing one if it has one)."""
    found = ensure_network(conn, net)
    last = ""
    for _ in range(_RETRIES):
        taken = static_hosts(found.XMLDesc(0))
        ip = pick_address(net, taken, mac)
        if taken.get(mac.lower()) == ip:
            return ip
        try:
            found.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
                         libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, host_xml(mac, ip),
                         _update_flags())
            return ip
        except libvirt.libvirtError as exc:   # another host took it meanwhile: pick again
            last = libvirt_message(exc)
    raise VmmError(f"cannot add a DHCP host entry: {last}", mac)


def release(conn: Any, net: GuestNetwork, mac: str) -> None:
    """Remove ``mac``'s static entry; no-op when it has none or the network is gone."""
    found = _lookup(conn, net.name)
    if found is None:
        return
    try:
        ip = static_hosts(found.XMLDesc(0)).get(mac.lower())
        if ip is not None:
            found.update(libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE,
                         libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1, host_xml(mac, ip),
                         _update_flags())
    except libvirt.libvirtError as exc:
        raise VmmError(f"cannot remove the DHCP host entry: {libvirt_message(exc)}", mac) from None


def address(conn: Any, net: GuestNetwork, mac: str) -> str | None:
    """``mac``'s static address, else its current DHCP lease, else None."""
    found = _lookup(conn, net.name)
    if found is None:
        return None
    try:
        ip = static_hosts(found.XMLDesc(0)).get(mac.lower())
        if ip is not None:
            return ip
        if not found.isActive():
            return None
        return lease_address(list(found.DHCPLeases(mac, 0)), mac)
    except libvirt.libvirtError:
        return None   # the test driver has no leases
