"""Tycoon bid syntax, units and the wire form."""

from __future__ import annotations

import pytest

from p2pmarket.auction import HostError
from p2pmarket.auction.model import Bid
from p2pmarket.auction.resources import (
    PPM,
    BidSpec,
    Quantity,
    bid_from_wire,
    bids_from_wire,
    parse_bid,
    parse_bids,
    parse_quantity,
    resolve_bid,
    resource_type,
)

GIB_KIB = 1024 * 1024


def test_cpu_fractions() -> None:
    assert parse_bid("cpu:1,0.1,1") == BidSpec(
        "cpu", None, PPM, Quantity(100_000, True), Quantity(PPM, True))


def test_units() -> None:
    assert parse_quantity("cpu", "500MHz") == Quantity(500)
    assert parse_quantity("cpu", "2GHz") == Quantity(2000)
    assert parse_quantity("cpu", "1.5ghz") == Quantity(1500)
    assert parse_quantity("memory", "256MiB") == Quantity(256 * 1024)
    assert parse_quantity("memory", "1GiB") == Quantity(GIB_KIB)
    assert parse_quantity("memory", "2TiB") == Quantity(2 * 1024**3)
    assert parse_quantity("memory", "0.5") == Quantity(500_000, True)
    assert parse_quantity("disk", "100GB") == Quantity(10**11 // 1024)
    assert parse_quantity("net_in", "10Mbps") == Quantity(10**7)
    assert parse_quantity("net_out", "1Gbit/s") == Quantity(10**9)
    assert parse_quantity("cpu", "250000ppm") == Quantity(250_000, True)


def test_memory_bid_and_weights() -> None:
    spec = parse_bid("memory:2.5,256MiB,1GiB")
    assert spec.weight_ppm == 2_500_000
    assert spec.min == Quantity(262144) and spec.max == Quantity(GIB_KIB)


def test_left_out_fields_are_none() -> None:
    assert parse_bid("cpu:2") == BidSpec("cpu", None, 2 * PPM, None, None)
    assert parse_bid("cpu:,,0.5") == BidSpec("cpu", None, None, None, Quantity(500_000, True))
    assert parse_bid("memory") == BidSpec("memory")


def test_tycoon_names_and_unique_resources() -> None:
    assert resource_type("CPU") == "cpu"
    assert resource_type("NetworkInterfaceIncoming") == "net_in"
    spec = parse_bid("tcp_port,30000:1")
    assert spec.key == "tcp_port,30000" and spec.weight_ppm == PPM
    assert parse_bid("IPv4Address,204.123.34.92:1").key == "ipv4_address,204.123.34.92"
    assert parse_bid("tcp_port,30000-30010:1").ident == "30000-30010"


@pytest.mark.parametrize("text", [
    "gpu:1,0,1",            # unknown resource
    "cpu:x,0,1",            # bad number
    "cpu:1,0.5,0.1",        # min > max
    "memory:1,1GiB,256MiB",
    "cpu:-1,0,1",           # negative
    "cpu:1,-0.1,1",
    "cpu:1,0,2",            # a plain number above 1 is not a fraction
    "memory:1,256Mfoo,1GiB",  # unknown unit
    "cpu:1,0,1,5",          # too many fields
    "cpu,3:1",              # divisible with an id
    "tcp_port,70000:1",
    "ipv4_address,1.2.3:1",
    "cpu:nan,0,1",
    "cpu:inf,0,1",
])
def test_bad_bids(text: str) -> None:
    with pytest.raises(HostError):
        parse_bid(text)


def test_resource_bid_twice() -> None:
    with pytest.raises(HostError, match="twice"):
        parse_bids(["cpu:1", "CPU:2"])


def test_wire_forms_agree() -> None:
    from_text = parse_bid("cpu:1,0.1,1")
    assert bid_from_wire("cpu", "1,0.1,1") == from_text
    assert bid_from_wire("cpu", [PPM, "0.1", "1"]) == from_text
    assert bid_from_wire("cpu", from_text.to_wire()) == from_text
    assert from_text.to_wire() == [PPM, "0.1", "1"]
    mem = bid_from_wire("memory", [PPM, 262144, None])
    assert mem.min == Quantity(262144) and mem.max is None
    assert bids_from_wire({"memory": "1,256MiB,1GiB"})["memory"].max == Quantity(GIB_KIB)


@pytest.mark.parametrize("value", [3.5, [1.0, 0, 1], [True, 0, 1], [-1, 0, 1], {"w": 1},
                                   [1, 2, 3, 4]])
def test_bad_wire_bids(value: object) -> None:
    with pytest.raises(HostError):
        bid_from_wire("cpu", value)


def test_bids_must_be_a_map() -> None:
    with pytest.raises(HostError):
        bids_from_wire(["cpu:1"])


def test_resolve_bid_defaults_and_patch() -> None:
    new = resolve_bid(parse_bid("cpu:2,0.1"), None, 4000)
    assert new == Bid(2 * PPM, 400, 4000)
    patched = resolve_bid(parse_bid("cpu:,,0.5"), new, 4000)
    assert patched == Bid(2 * PPM, 400, 2000)
    assert resolve_bid(parse_bid("memory:1,0,8GiB"), None, GIB_KIB).max == GIB_KIB
    with pytest.raises(HostError, match="min is larger than max"):
        resolve_bid(parse_bid("cpu:1,500MHz"), Bid(PPM, 0, 300), 4000)
    with pytest.raises(HostError):
        resolve_bid(parse_bid("memory:1,2GiB,4GiB"), None, GIB_KIB)   # min above capacity
