"""Removing what a test (or a benchmark) made in libvirt: its domains with their logs,
and a storage pool with its volumes and directory."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import libvirt

from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM

LOG_DIRS = (Path("/var/log/libvirt/qemu"), Path("/var/log/libvirt/lxc"))


def forget_domains(vmm: LibvirtVMM) -> None:
    """Undefine every domain of ``vmm`` (their volumes and seeds go too) and remove the
    logs libvirt kept of them (``<prefix>*.log``: QEMU's log and serial console, or the
    LXC driver's log)."""
    for info in vmm.list():
        vmm.undefine(info.account_id)
    for logs in LOG_DIRS:
        for log in logs.glob(f"{vmm.prefix}*.log"):
            log.unlink(missing_ok=True)


def remove_pool(conn: Any, name: str) -> None:
    """Delete the storage pool ``name``: its volumes, its directory, its definition
    (whatever of it exists)."""
    with contextlib.suppress(libvirt.libvirtError):
        pool = conn.storagePoolLookupByName(name)
        if pool.isActive():
            for vol in pool.listAllVolumes():
                vol.delete(0)
            pool.destroy()
        with contextlib.suppress(libvirt.libvirtError):
            pool.delete(0)
        pool.undefine()
