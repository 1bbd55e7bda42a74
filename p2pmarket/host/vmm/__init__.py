"""Virtual machine monitors: one interface, one libvirt backend."""

from __future__ import annotations

from p2pmarket.host.vmm.base import VMM, VmInfo, VmmError

__all__ = ["VMM", "VmInfo", "VmmError"]
