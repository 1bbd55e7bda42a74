"""domain_spec with and without the host's VmDefaults (issue 13: every active account
has a machine; a bid allocated nothing still stops it)."""

from __future__ import annotations

from p2pmarket.auction.enforce import VmDefaults, domain_spec
from p2pmarket.auction.model import Bid

CAPS = {"cpu": 4000, "memory": 4 << 20}
CPU, MEM = Bid(1_000_000, 0, 4000), Bid(1_000_000, 0, 1 << 20)
DEF = VmDefaults(memory_kib=64 * 1024)


def test_the_auctions_view_needs_cpu_and_memory() -> None:
    assert domain_spec({"cpu": 2000}, {"cpu": CPU}, CAPS, 2) is None
    assert domain_spec({"memory": 1024}, {"memory": MEM}, CAPS, 2) is None
    spec = domain_spec({"cpu": 2000, "memory": 1024}, {"cpu": CPU, "memory": MEM}, CAPS, 2)
    assert spec is not None and (spec.vcpus, spec.cpu_weight, spec.memory_kib) == (1, 5000, 1024)


def test_a_missing_bid_gets_the_default() -> None:
    spec = domain_spec({"cpu": 2000}, {"cpu": CPU}, CAPS, 2, DEF)
    assert spec is not None and (spec.vcpus, spec.memory_kib, spec.max_memory_kib) == (
        1, 64 * 1024, 64 * 1024)
    spec = domain_spec({"memory": 1024}, {"memory": MEM}, CAPS, 2, DEF)
    assert spec is not None and (spec.vcpus, spec.cpu_weight, spec.memory_kib) == (1, 1, 1024)
    spec = domain_spec({}, {}, CAPS, 2, DEF)     # e.g. a disk- or port-only bundle
    assert spec is not None and (spec.vcpus, spec.cpu_weight, spec.memory_kib) == (
        1, 1, 64 * 1024)


def test_a_bid_allocated_nothing_stops_the_machine_whatever_the_defaults() -> None:
    assert domain_spec({"cpu": 2000, "memory": 0}, {"cpu": CPU, "memory": MEM},
                       CAPS, 2, DEF) is None
    assert domain_spec({"cpu": 0, "memory": 1024}, {"cpu": CPU, "memory": MEM},
                       CAPS, 2, DEF) is None
