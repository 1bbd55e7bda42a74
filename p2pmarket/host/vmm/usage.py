"""What a machine really uses, read from libvirt (issue 13: usage is measured, not
assumed). Thin: one read of a domain's counters.

:func:`read_usage` gives a :class:`~p2pmarket.host.vmm.base.Usage`: the CPU time the
domain has used since it started (``cpu_ns``, ``virDomainGetInfo``), its memory
(``memory_kib``: the balloon's ``actual``, or what the domain holds when the driver
keeps no balloon stats; ``rss_kib``: the QEMU process's resident memory, 0 where
unknown), its disks' allocated bytes (``disk_kib``, ``virDomainGetBlockInfo`` summed
over its disks) and its interfaces' counters (``net_rx_bytes``, ``net_tx_bytes``,
``virDomainInterfaceStats``). A counter a driver cannot give (the test driver has no
interface stats; a stopped domain has no balloon) is 0 and named in ``unknown``,
never made up.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import libvirt

from p2pmarket.host.vmm.base import Usage


def read_usage(dom: Any) -> Usage:
    """The domain's counters now (see the module docstring)."""
    _state, _max_mem, mem, _vcpus, cpu_time = dom.info()
    unknown: list[str] = []
    memory, rss = int(mem), 0
    try:
        stats = dom.memoryStats()
        memory = int(stats.get("actual", memory))
        rss = int(stats.get("rss", 0))
        if "rss" not in stats:
            unknown.append("rss_kib")
    except libvirt.libvirtError:
        unknown.append("rss_kib")
    tree = ET.fromstring(dom.XMLDesc(0))
    disk = 0
    for target in tree.findall("./devices/disk[@device='disk']/target"):
        try:
            disk += int(dom.blockInfo(target.get("dev", ""))[1]) // 1024
        except libvirt.libvirtError:
            unknown.append("disk_kib")
    rx = tx = 0
    for target in tree.findall("./devices/interface/target"):
        try:
            got = dom.interfaceStats(target.get("dev", ""))
            rx, tx = rx + int(got[0]), tx + int(got[4])
        except libvirt.libvirtError:
            unknown.append("net")
    if not tree.findall("./devices/interface/target"):
        unknown.append("net")
    return Usage(int(cpu_time), memory, rss, disk, rx, tx, tuple(sorted(set(unknown))))


__all__ = ["Usage", "read_usage"]
