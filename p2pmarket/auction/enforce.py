"""What an allocation means for a domain (pure): :func:`domain_spec`.

- vcpus: the cpu share of the host's cpus, rounded up (at least 1);
- cpu weight: the cpu share of the host in 1/10000 (at least 1), i.e. the
  cgroup's ``cpu_shares`` (qemu/lxc) or the test driver's ``weight``;
- memory: the allocation; the domain's max memory is the bid's max, so it can
  grow live later;
- blkio weight: 100 + 900 x the disk share, when the account bids on disk;
- bandwidth: net_in/net_out allocations in bit/s -> KiB/s (libvirt's unit);
- disk: the disk allocation (the volume's size bound).

In the auction (:func:`p2pmarket.auction.allocation.running`, replayed by witnesses)
a domain runs only with both cpu and memory allocated. The host enforces with its
:class:`VmDefaults` (stated in its DHT record): a bundle with *no* memory bid gets
the default memory, one with no cpu bid one vcpu at the lowest weight, so every
active account has a machine; a bid that is there but allocated nothing (outbid, or
below its min) still stops the domain. Small moves (at most 0.5 %) are not pushed
to the hypervisor every tick: :func:`close_enough`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from p2pmarket.auction.model import Bid

WEIGHT_SCALE = 10_000
TOLERANCE_PPM = 5_000


@dataclass(frozen=True)
class DomainSpec:
    vcpus: int
    memory_kib: int
    cpu_weight: int
    max_memory_kib: int = 0
    blkio_weight: int | None = None
    net_in_kib_s: int | None = None
    net_out_kib_s: int | None = None
    disk_kib: int | None = None


@dataclass(frozen=True)
class VmDefaults:
    """What a host gives a machine for a resource its bundle does not bid on."""

    memory_kib: int = 256 * 1024

    def to_doc(self) -> dict[str, int]:
        return {"memory_kib": self.memory_kib}


def domain_spec(allocation: Mapping[str, int], bids: Mapping[str, Bid],
                capacities: Mapping[str, int], max_vcpus: int,
                defaults: VmDefaults | None = None) -> DomainSpec | None:
    """The domain of an allocation, or None when it has none (see the module
    docstring; ``defaults`` None: cpu and memory both needed, the auction's view)."""
    cpu, mem = allocation.get("cpu", 0), allocation.get("memory", 0)
    cap = capacities.get("cpu", 0)
    if defaults is not None and "memory" not in bids:
        mem = defaults.memory_kib
    if defaults is not None and "cpu" not in bids:
        cpu, cap = 1, max(cap, WEIGHT_SCALE)   # one vcpu, weight 1
    if cpu <= 0 or mem <= 0 or cap <= 0:
        return None
    vcpus = min(max_vcpus, max(1, -(-cpu * max_vcpus // cap)))
    weight = max(1, cpu * WEIGHT_SCALE // cap)
    max_mem = max(mem, bids["memory"].max if "memory" in bids else mem)
    blkio = None
    disk_cap = capacities.get("disk", 0)
    if "disk" in bids and disk_cap > 0:
        blkio = 100 + 900 * allocation.get("disk", 0) // disk_cap
    net_in = max(1, allocation["net_in"] // 8192) if allocation.get("net_in") else None
    net_out = max(1, allocation["net_out"] // 8192) if allocation.get("net_out") else None
    disk = allocation.get("disk") if "disk" in bids else None
    return DomainSpec(vcpus, mem, weight, max_mem, blkio, net_in, net_out, disk)


def _near(a: int | None, b: int | None) -> bool:
    if a is None or b is None:
        return a == b
    return abs(a - b) * 1_000_000 <= TOLERANCE_PPM * max(a, b)


def close_enough(old: DomainSpec | None, new: DomainSpec | None) -> bool:
    """True if ``new`` need not be pushed when ``old`` is in force."""
    if old is None or new is None:
        return old == new
    return (old.vcpus == new.vcpus and old.max_memory_kib == new.max_memory_kib
            and _near(old.memory_kib, new.memory_kib) and _near(old.cpu_weight, new.cpu_weight)
            and _near(old.blkio_weight, new.blkio_weight)
            and _near(old.net_in_kib_s, new.net_in_kib_s)
            and _near(old.net_out_kib_s, new.net_out_kib_s))
