"""The VMM interface: what the auctioneer needs from a virtualization technology.

Backends are synchronous (libvirt calls block); the auctioneer calls them
through :func:`asyncio.to_thread`. One domain per host account; each backend
names its domains with a host-specific prefix so several hosts can share one
hypervisor (or one ``test:///default`` in tests).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from p2pmarket.host import HostError


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

    def to_doc(self) -> dict[str, Any]:
        return {"name": self.name, "account_id": self.account_id, "state": self.state,
                "vcpus": self.vcpus, "memory_kib": self.memory_kib,
                "max_memory_kib": self.max_memory_kib, "weight": self.weight,
                "weight_key": self.weight_key, "notes": list(self.notes)}


class VMM(ABC):
    """Drives one virtualization technology for one host."""

    @property
    @abstractmethod
    def max_vcpus(self) -> int:
        """Most vcpus one domain may get (the host's cpus)."""

    @abstractmethod
    def ensure_domain(self, account_id: str, vcpus: int, memory_kib: int, cpu_weight: int,
                      max_memory_kib: int | None = None) -> VmInfo:
        """Define and start the account's domain, or update the running one live."""

    @abstractmethod
    def shutdown(self, account_id: str) -> None:
        """Stop the domain (keeps its definition); no-op when not running."""

    @abstractmethod
    def undefine(self, account_id: str) -> None:
        """Stop and forget the domain; no-op when it does not exist."""

    @abstractmethod
    def describe(self, account_id: str) -> VmInfo | None:
        """The domain's current state, None when it does not exist."""

    @abstractmethod
    def list(self) -> list[VmInfo]:
        """This host's domains."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection."""
