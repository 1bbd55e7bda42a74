"""The rooms' observation hooks, without a node: the RPC dispatcher reports each
request's name and outcome, the event families count what the hooks tell them, and
a node's registry is its own (two nodes in one process do not share counters)."""

from __future__ import annotations

from typing import Any

from prometheus_client.registry import CollectorRegistry

from p2pmarket.api.rpc import CallContext, RpcDispatcher, make_request
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity
from p2pmarket.metrics.events import EventMetrics
from p2pmarket.metrics.process import descriptors, resident_bytes
from p2pmarket.metrics.state import Sources, StateCollector

SERVER = Identity(b"\x05" * 32)
CALLER = Identity(b"\x06" * 32)


async def ok(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return {}


async def refuse(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    raise P2PMarketError("no")


async def crash(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("broken")


async def test_the_dispatcher_reports_name_and_outcome() -> None:
    seen: list[tuple[str, str]] = []
    d = RpcDispatcher(SERVER)
    d.register_all("t", {"ok": ok, "refuse": refuse, "crash": crash})
    d.observe = lambda name, outcome, seconds: seen.append((name, outcome))
    for name in ("t.ok", "t.refuse", "t.crash", "t.missing"):
        await d.dispatch(make_request(CALLER, SERVER.node_id, name, {}))
    await d.dispatch(b"\x00garbage")
    await d.dispatch(make_request(CALLER, CALLER.node_id, "t.ok", {}))   # not to us
    d.refusal("request too large")
    assert seen == [("t.ok", "ok"), ("t.refuse", "error"), ("t.crash", "internal"),
                    ("unknown", "refused"), ("unknown", "refused"), ("unknown", "refused"),
                    ("unknown", "refused")]


def test_each_registry_counts_its_own() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    ma, mb = EventMetrics(a), EventMetrics(b)
    ma.rpc("t.ok", "ok", 0.01)
    ma.rpc("unknown", "refused", 0.0)
    ma.tick(0.002, ["expired", "expired", "below_min"])
    ma.dht_lookup("find_value", 0.05, 2, False)
    ma.certify(0.1, True)
    ma.audit("trusted")
    sample = a.get_sample_value
    assert sample("p2pmarket_rpc_requests_total", {"rpc": "t.ok", "outcome": "ok"}) == 1
    assert sample("p2pmarket_rpc_duration_seconds_count", {"rpc": "t.ok"}) == 1
    assert sample("p2pmarket_rpc_duration_seconds_count", {"rpc": "unknown"}) is None
    assert sample("p2pmarket_auction_tick_events_total", {"kind": "expired"}) == 2
    assert sample("p2pmarket_dht_lookup_failures_total", {"kind": "find_value"}) == 1
    assert sample("p2pmarket_dht_lookup_hops_sum", {"kind": "find_value"}) == 2
    assert sample("p2pmarket_ledger_certifications_total", {"outcome": "ok"}) == 1
    assert sample("p2pmarket_witness_audits_total", {"outcome": "trusted"}) == 1
    assert b.get_sample_value("p2pmarket_rpc_requests_total",
                              {"rpc": "t.ok", "outcome": "ok"}) is None
    assert mb.registry is b


def test_state_readings_aggregate_and_survive_a_broken_source() -> None:
    def broken() -> dict[str, int]:
        raise RuntimeError("gone")

    registry = CollectorRegistry()
    registry.register(StateCollector(Sources(
        node_id="ab", accounts=lambda: {"active": 3},
        market=lambda: {"cpu": {"capacity": 4000, "price": 2_500_000, "free": 1000}},
        witness_hosts=broken)))
    sample = registry.get_sample_value
    assert sample("p2pmarket_auction_accounts", {"state": "active"}) == 3
    assert sample("p2pmarket_auction_price_credits_per_second", {"resource": "cpu"}) == 2.5
    assert sample("p2pmarket_auction_allocated", {"resource": "cpu"}) == 3000
    assert sample("p2pmarket_node_info", {"node_id": "ab", "notary": "false"}) == 1
    assert sample("p2pmarket_witness_hosts", {"state": "trusted"}) is None
    assert (sample("p2pmarket_process_resident_memory_bytes") or 0) > 0
    assert resident_bytes() > 0 and descriptors().fds >= descriptors().sockets >= 0
