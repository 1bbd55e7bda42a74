"""Host and witness over real HTTP on loopback (Site + peer_app + PeerClient), and an
honest host under random bids, funds, refunds and ticks never exposed (hypothesis)."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

from audit_world import BIDS, S, World, cert, overcharge_next_tick
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pmarket.api.client import PeerClient
from p2pmarket.api.rpc import RpcDispatcher
from p2pmarket.api.server import Site, peer_app
from p2pmarket.audit.evidence import verify_proof
from p2pmarket.audit.evidencestore import EvidenceStore
from p2pmarket.audit.watched import EXPOSED, TRUSTED
from p2pmarket.audit.witness import Peer, WitnessService, push_to_witnesses
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity

ALICE = Identity.generate()


async def test_audit_over_http(tmp_path: Path) -> None:
    world = World(tmp_path)
    h = world.host()
    host_disp = RpcDispatcher(h.identity)            # real clocks over HTTP
    host_disp.register_all("host", h.auct.handlers())
    wid = Identity.generate()
    client = PeerClient(wid, timeout_s=5)
    service = WitnessService(wid, client, EvidenceStore(), directory=world.directory)
    wdisp = RpcDispatcher(wid)
    wdisp.register_all("witness", service.handlers())
    sites = [Site(peer_app(host_disp)), Site(peer_app(wdisp))]
    ports = [await s.start("127.0.0.1", 0) for s in sites]
    host_url, w_url = (f"http://127.0.0.1:{p}" for p in ports)
    world.directory.peers.append(Peer(wid.node_id, wid.public_key, w_url))
    buyer = PeerClient(ALICE, timeout_s=5)
    try:
        res = await buyer.call(host_url, h.key, "host.create_account", {
            "payment": cert(10**8), "bids": BIDS, "interval_s": 600})
        assert await push_to_witnesses(buyer, world.directory, h.key, [res["audit"]],
                                       host_url) == 1
        assert await service.audit(h.key) == TRUSTED
        overcharge_next_tick(h.auct, res["account_id"])
        world.clock.now += S
        await h.auct.tick(world.clock.now)
        assert await service.audit(h.key) == EXPOSED
        got = await buyer.call(w_url, wid.public_key, "witness.evidence", {"host": h.key})
        proof = verify_proof(got["proofs"][0], h.identity.node_id)
        assert proof.type == "nonconformance"
        status = await buyer.call(w_url, wid.public_key, "witness.status", {})
        assert status["hosts"][0]["state"] == EXPOSED
    finally:
        await buyer.close()
        await client.close()
        for s in sites:
            await s.stop()
        world.close()


OPS = st.lists(st.one_of(
    st.tuples(st.just("create"), st.integers(0, 2), st.integers(10**5, 10**9),
              st.sampled_from(["1,0,1", "1,0.1,0.5", "2,100MHz,1GHz"]),
              st.sampled_from(["1,0,1", "1,256MiB,1GiB", "1,2GiB,4GiB"]),
              st.sampled_from([0, "0.2"])),
    st.tuples(st.just("bid"), st.integers(0, 2), st.sampled_from(["1", "3,0.2", ",,0.5"]),
              st.sampled_from([None, 30, 3600]), st.booleans()),
    st.tuples(st.just("fund"), st.integers(0, 2), st.integers(1, 10**8)),
    st.tuples(st.just("refund"), st.integers(0, 2), st.integers(1, 10**8), st.booleans()),
    st.tuples(st.just("tick"), st.integers(1, 40)),
    st.tuples(st.just("audit")),
), min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
async def test_honest_host_is_never_exposed(ops: list[tuple[Any, ...]]) -> None:
    buyers = [Identity(bytes([i + 1]) * 32) for i in range(3)]
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp))
        ws = [world.witness() for _ in range(2)]
        h = world.host()
        accounts: dict[int, str] = {}
        try:
            for op in ops:
                with contextlib.suppress(P2PMarketError):   # refused calls are replayed too
                    await _run(world, h, buyers, accounts, op)
            await world.audit_round()
            await world.audit_round()
            for w in ws:
                for info in w.service.status()["hosts"]:
                    assert info["state"] == TRUSTED, info
                assert not w.service.is_exposed(h.key)
        finally:
            world.close()


async def _run(world: World, h: Any, buyers: list[Identity], accounts: dict[int, str],
               op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "create":
        _, who, amount, cpu, mem, cont = op
        res = await world.call(buyers[who], h, "create_account", {
            "payment": cert(amount), "bids": {"cpu": cpu, "memory": mem}, "interval_s": 120,
            "contingency": cont})
        accounts[who] = res["account_id"]
    elif kind == "bid" and op[1] in accounts:
        _, who, cpu, interval, repl = op
        args: dict[str, Any] = {"account_id": accounts[op[1]], "bids": {"cpu": cpu},
                                "replace": repl}
        if interval:
            args["interval_s"] = interval
        await world.call(buyers[who], h, "bid", args)
    elif kind == "fund" and op[1] in accounts:
        await world.call(buyers[op[1]], h, "fund", {"account_id": accounts[op[1]],
                                                    "payment": cert(op[2])})
    elif kind == "refund" and op[1] in accounts:
        args = {"account_id": accounts[op[1]]}
        args.update({"close": True} if op[3] else {"amount": op[2]})
        await world.call(buyers[op[1]], h, "refund", args)
    elif kind == "tick":
        world.clock.now += op[1] * S
        await h.auct.tick(world.clock.now)
    elif kind == "audit":
        await world.audit_round()


async def test_cli_helpers(tmp_path: Path) -> None:
    from p2pmarket.audit.control import control_handlers
    from p2pmarket.audit.evidence import EvidenceError
    from p2pmarket.cli.audit import proof_lines, status_lines, verify_file

    world = World(tmp_path)
    w = world.witness()
    h = world.host()
    try:
        res = await world.call(ALICE, h, "create_account", {
            "payment": cert(10**8), "bids": BIDS, "interval_s": 600})
        await world.audit_round()
        calls = control_handlers(w.service)
        doc = await calls["audit_status"]({"host": h.identity.node_id.hex()})
        assert doc["hosts"][0]["state"] == TRUSTED and status_lines(doc)
        overcharge_next_tick(h.auct, res["account_id"])
        await world.tick(h)
        await world.audit_round()
        proof = w.service.evidence.proofs(h.key)[0]
        (tmp_path / "p.bin").write_bytes(proof)
        (tmp_path / "p.hex").write_text(proof.hex() + "\n")
        for name in ("p.bin", "p.hex"):
            summary = verify_file(tmp_path / name, h.key.hex())
            assert summary["type"] == "nonconformance" and proof_lines(summary)
        (tmp_path / "bad").write_bytes(proof[:-3])
        try:
            verify_file(tmp_path / "bad")
        except EvidenceError:
            pass
        else:
            raise AssertionError("a truncated proof verified")
        lines = status_lines(await calls["audit_status"]({}))
        assert any("exposed" in line for line in lines)
        assert (await calls["audit_exposed"]({}))["exposed"] == [h.identity.node_id]
    finally:
        world.close()
