"""The market through faults, for real (root): the default topology under Docker
Compose (the session's ``compose_net``; in CI) and in network namespaces (brought up
for the module; ``-m long``), broken one fault per test by the harness
(p2pmarket.testnet.faults); after each, the invariants hold (supply equals mints at
every notary, every completed transfer on both chains, none half applied, no honest
host suspected or exposed)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from p2pmarket.testnet.backend import Backend, NetnsBackend
from p2pmarket.testnet.dockerbackend import DockerBackend
from p2pmarket.testnet.faults import Harness
from tests.testnet.conftest import (
    DEFAULT_TOPOLOGY,
    TESTNET_SETTINGS,
    needs_root,
    needs_tools,
    running_testnet,
)

pytestmark = [needs_root, needs_tools]
READY_S = 120.0


def harness_on(backend: Backend) -> Harness:
    h = Harness(backend, seed=14)
    for buyer in ("b1", "bn1"):
        h.mint(buyer, 40)
    return h


@pytest.fixture(scope="module", params=["docker", pytest.param("netns", marks=pytest.mark.long)])
def harness(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Harness]:
    if request.param == "docker":
        backend: Backend = DockerBackend(request.getfixturevalue("compose_net"))
        try:
            yield harness_on(backend)
        finally:
            backend.close()
        return
    with running_testnet(DEFAULT_TOPOLOGY, tmp_path_factory.mktemp("faults") / "net",
                         settings=TESTNET_SETTINGS) as net:
        net.wait_ready(READY_S)
        backend = NetnsBackend(net, sys.executable)
        try:
            yield harness_on(backend)
        finally:
            backend.close()


@pytest.fixture
def clean(harness: Harness) -> Iterator[Harness]:
    """The harness, and after the test: the invariants hold."""
    yield harness
    found = harness.check()
    assert found == [], [v.to_doc() for v in found]


def test_a_host_killed_mid_lease_restarts_with_everything_and_the_lease_refreshes(
        clean: Harness) -> None:
    fault = clean.crash_host("h1", "b1")
    assert fault.seconds < 60


def test_transfers_go_on_with_a_notary_cut_off_and_it_catches_up(clean: Harness) -> None:
    clean.cut_notary("n4", "b1", "h1")
    supply = clean.status("n4", "supply")
    assert supply["minted"] == clean.minted and supply["ok"]


def test_a_host_keeps_answering_through_its_witnesses_with_one_cut_off(
        clean: Harness) -> None:
    fault = clean.cut_witness("h1", "b1")
    assert fault.target in {s.name for s in clean.topology.nodes}


def test_a_relayed_host_moves_when_its_relay_is_cut_off(clean: Harness) -> None:
    fault = clean.cut_relay("hn1", "b1")
    assert fault.details["moved_to"]


def test_lookups_succeed_with_40_percent_of_the_dht_cut_off(clean: Harness) -> None:
    fault = clean.cut_dht(0.4, "b1")
    cut = fault.target.split(",")
    assert len(cut) >= 0.4 * fault.details["of"]
    assert sum(clean.topology.site(x).role == "notary" for x in cut) <= clean.topology.f


def test_a_full_disk_gives_a_clear_error_and_corrupts_nothing(clean: Harness) -> None:
    fault = clean.fill_disk("hf1", "bn1")
    assert "disk is full" in fault.details["error"]
