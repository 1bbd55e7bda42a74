"""The VMM interface: what the auctioneer needs from a virtualization technology.

Backends are synchronous (libvirt calls block); the auctioneer calls them
through :func:`asyncio.to_thread`. One domain per host account; each backend
names its domains with a host-specific prefix so several hosts can share one
hypervisor (or one ``test:///default`` in tests).

A :class:`DomainSpec` is what an allocation means for a domain: vcpus, memory
(current and max), the CPU scheduler weight (1..10000, a share of the host),
the block I/O weight (100..1000), inbound/outbound bandwidth (KiB/s, libvirt's
unit) and the disk volume's size. ``None`` means "not bid for": not limited.
What a driver cannot enforce is said in :attr:`VmInfo.notes`, never pretended.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.enforce import DomainSpec
from p2pmarket.host.vmm.guest import GuestBoot


class VmmError(HostError):
    """The hypervisor refused or failed an operation."""


@dataclass(frozen=True)
class VmInfo:
    """A domain as the backend sees it.

    ``weight`` is the CPU scheduler weight in force (``weight_key`` names the
    driver's parameter: ``weight`` for the test/Xen drivers, ``cpu_shares`` for
    qemu/lxc). ``notes`` say what the driver could not enforce.
    """

    name: str
    account_id: str
    state: str            # running, shutoff, paused, ...
    vcpus: int
    memory_kib: int
    max_memory_kib: int
    weight: int
    weight_key: str
    notes: tuple[str, ...] = field(default=())
    blkio_weight: int | None = None
    net_in_kib_s: int | None = None
    net_out_kib_s: int | None = None

    def to_doc(self) -> dict[str, Any]:
        return {"name": self.name, "account_id": self.account_id, "state": self.state,
                "vcpus": self.vcpus, "memory_kib": self.memory_kib,
                "max_memory_kib": self.max_memory_kib, "weight": self.weight,
                "weight_key": self.weight_key, "blkio_weight": self.blkio_weight,
                "net_in_kib_s": self.net_in_kib_s, "net_out_kib_s": self.net_out_kib_s,
                "notes": list(self.notes)}


@dataclass(frozen=True)
class VolumeInfo:
    """An account's disk volume: its size (the guest's), the space it uses, what it could
    shrink to without losing data (equal to ``usage_kib`` when the backend cannot tell),
    and the format the host checked it as (``raw`` or ``qcow2``: the domain's disk
    driver type, never probed from the bytes, which the guest may rewrite)."""

    name: str
    path: str
    capacity_kib: int
    usage_kib: int
    floor_kib: int
    format: str = "raw"


@dataclass(frozen=True)
class Usage:
    """What a domain really uses: counters read from the hypervisor
    (:mod:`p2pmarket.host.vmm.usage`); ``unknown`` names those it could not give."""

    cpu_ns: int
    memory_kib: int
    rss_kib: int = 0
    disk_kib: int = 0
    net_rx_bytes: int = 0
    net_tx_bytes: int = 0
    unknown: tuple[str, ...] = field(default=())

    def to_doc(self) -> dict[str, Any]:
        return {"cpu_ns": self.cpu_ns, "memory_kib": self.memory_kib,
                "rss_kib": self.rss_kib, "disk_kib": self.disk_kib,
                "net_rx_bytes": self.net_rx_bytes, "net_tx_bytes": self.net_tx_bytes,
                "unknown": list(self.unknown)}


class VMM(ABC):
    """Drives one virtualization technology for one host."""

    @property
    def image_kind(self) -> str:
        """What a buyer's image is here: ``disk`` (raw or qcow2,
        :mod:`p2pmarket.auction.imagecheck`) or ``rootfs`` (a root file system archive
        for containers, :mod:`p2pmarket.auction.rootfscheck`)."""
        return "disk"

    @property
    @abstractmethod
    def max_vcpus(self) -> int:
        """Most vcpus one domain may get (the host's cpus)."""

    @abstractmethod
    def apply(self, account_id: str, spec: DomainSpec) -> VmInfo:
        """Define and start the account's domain, or update the running one live."""

    @abstractmethod
    def shutdown(self, account_id: str) -> None:
        """Stop the domain (keeps its definition); no-op when not running."""

    @abstractmethod
    def undefine(self, account_id: str) -> None:
        """Stop and forget the domain and its volume; no-op when it does not exist."""

    @abstractmethod
    def describe(self, account_id: str) -> VmInfo | None:
        """The domain's current state, None when it does not exist."""

    @abstractmethod
    def list(self) -> list[VmInfo]:
        """This host's domains."""

    # -- disk volumes (optional: the default says the backend has none) ------------

    def volume(self, account_id: str) -> VolumeInfo | None:
        """The account's disk volume, None when it has none."""
        return None

    def upload_volume(self, account_id: str, size: int, chunks: Iterator[bytes],
                      fmt: str = "raw") -> VolumeInfo:
        """Create (or replace) the account's volume with ``size`` bytes from ``chunks``,
        streamed: never more than one chunk in memory. ``fmt`` (``raw``, ``qcow2``) is
        what the host's check found the bytes to be (:mod:`p2pmarket.auction.imagecheck`;
        ``tar``, ``tar.gz`` for containers: :mod:`p2pmarket.auction.rootfscheck`)."""
        raise VmmError("this VMM has no storage volumes", "upload")

    def resize_volume(self, account_id: str, capacity_kib: int) -> VolumeInfo:
        raise VmmError("this VMM has no storage volumes", "resize")

    def delete_volume(self, account_id: str) -> None:  # noqa: B027 - optional hook
        """Delete the account's volume; no-op when there is none."""

    # -- guests (optional: the default says the backend boots none) -----------------

    def prepare_guest(self, account_id: str, boot: GuestBoot, ssh_key: str) -> str | None:
        """Set what the account's guest boots and the SSH key it accepts; returns the
        guest's address when known in advance."""
        raise VmmError("this VMM boots no guests", "prepare_guest")

    def usage(self, account_id: str) -> Usage | None:
        """What the account's domain really uses (counters read from the hypervisor),
        None when it has none or the backend cannot tell."""
        return None

    def guest_address(self, account_id: str) -> str | None:
        """The IPv4 address the account's guest has on the guests' network, None when
        it has none (yet, or ever: the test driver's domains have no network)."""
        return None

    def release_guest(self, account_id: str) -> None:  # noqa: B027 - optional hook
        """Forget the guest's boot settings, key seed and address."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection."""
