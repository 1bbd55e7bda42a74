"""Virtual machine monitors: one interface, one libvirt backend."""

from __future__ import annotations

from p2pmarket.auction.enforce import DomainSpec
from p2pmarket.host.vmm.base import VMM, VmInfo, VmmError, VolumeInfo
from p2pmarket.host.vmm.guest import GuestBoot, GuestError
from p2pmarket.host.vmm.guestnet import GuestNetwork

__all__ = ["VMM", "DomainSpec", "GuestBoot", "GuestError", "GuestNetwork", "VmInfo", "VmmError",
           "VolumeInfo"]
