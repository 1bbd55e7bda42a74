"""Virtual machine monitors: one interface, one libvirt backend."""

from __future__ import annotations

from p2pmarket.auction.enforce import DomainSpec
from p2pmarket.host.vmm.base import VMM, VmInfo, VmmError, VolumeInfo

__all__ = ["VMM", "DomainSpec", "VmInfo", "VmmError", "VolumeInfo"]
