"""Tycoon's account rules end to end on the auctioneer: contingency, refunds, unique
resources, expiry, 12/18 precedence, host settings, the audit log, failed operations."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_auctioneer import ALICE, BOB, GIB, Host, Make, S, cert, ctx, make_host, snapshot

from p2pmarket.auction import HostError
from p2pmarket.auction.lease import verify_lease
from p2pmarket.auction.rpcargs import parse_args
from p2pmarket.audit.entry import AuditAuthenticator, AuditEntry, verify_segment
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.host.accountstore import AccountStore
from p2pmarket.host.auctioneer import Auctioneer
from p2pmarket.host.control import control_handlers
from tests.support.refunds import RefundPayer

__all__ = ["make_host"]   # the fixture, used by name

BIDS = {"cpu": "1,0,1", "memory": "1,256MiB,1GiB"}


async def open_acc(h: Host, who: Any = ALICE, amount: int = 100_000_000,
                   bids: dict[str, Any] | None = None, **extra: Any) -> str:
    res = await h.auct.create_account(ctx(who), {"payment": cert(amount), "bids": bids or BIDS,
                                                 "interval_s": 3600, **extra})
    return str(res["account_id"])


def acct(h: Host, aid: str) -> Any:
    return {a.account_id: a for a in h.auct.accounts()}[aid]


async def test_contingency_split_recomputed_on_bid_change_only(make_host: Make) -> None:
    h = make_host()
    aid = await open_acc(h, amount=1_000_000, contingency="0.25")
    a = acct(h, aid)
    assert (a.fund, a.contingency, a.contingency_ppm) == (750_000, 250_000, 250_000)
    await h.auct.fund(ctx(ALICE), {"account_id": aid, "payment": cert(1000)})
    a = acct(h, aid)
    assert (a.fund, a.contingency) == (750_750, 250_250)   # new money split by the ratio
    h.clock.now += S
    await h.auct.tick(h.clock.now)
    await h.auct.lease(ctx(ALICE), {"account_id": aid})   # the lease is current
    spent = acct(h, aid)
    # an identical bid keeps everything, the contingency (and the lease) included (1/17)
    await h.auct.bid(ctx(ALICE), {"account_id": aid, "bids": BIDS, "contingency": "0.25"})
    assert acct(h, aid) == spent
    # a changed bid re-splits all the money by the ratio
    await h.auct.bid(ctx(ALICE), {"account_id": aid, "bids": {"cpu": "2"}})
    a = acct(h, aid)
    assert a.contingency == spent.money * 250_000 // 1_000_000
    assert a.money == spent.money


async def test_refund_pays_back_and_is_idempotent(make_host: Make) -> None:
    h = make_host()
    paid: list[tuple[bytes, int, str]] = []

    payer = RefundPayer(h.identity)

    async def refund_payment(holder: bytes, amount: int, memo: str) -> dict[str, Any]:
        paid.append((holder, amount, memo))
        return await payer(holder, amount, memo)

    h.auct.refund_payment = refund_payment
    aid = await open_acc(h, amount=10_000_000)
    res = await h.auct.refund(ctx(ALICE), {"account_id": aid, "amount": 1000,
                                           "refund_id": "r1"})
    assert res["refund"]["status"] == "done" and res["balance"] == 10_000_000 - 1000
    again = await h.auct.refund(ctx(ALICE), {"account_id": aid, "amount": 1000,
                                             "refund_id": "r1"})
    assert again["refund"] == res["refund"] and len(paid) == 1
    assert paid[0][0] == ALICE.public_key and paid[0][1] == 1000 and "r1" in paid[0][2]
    # too much, and someone else's account: refused, nothing changes
    before = snapshot(h)
    with pytest.raises(HostError, match="larger than"):
        await h.auct.refund(ctx(ALICE), {"account_id": aid, "amount": 10**12})
    with pytest.raises(HostError, match="no such account"):
        await h.auct.refund(ctx(BOB), {"account_id": aid, "amount": 1})
    assert snapshot(h) == before and len(paid) == 1
    # close: everything back, VM and account gone
    res = await h.auct.refund(ctx(ALICE), {"account_id": aid, "close": True,
                                           "refund_id": "r2"})
    assert res["state"] == "closed" and paid[-1][1] == 10_000_000 - 1000
    assert h.auct.accounts() == [] and h.vmm.describe(aid) is None


async def test_refund_that_would_drop_a_claim_is_refused(make_host: Make) -> None:
    h = make_host()
    await open_acc(h, BOB, amount=10**9, bids={"cpu": "1,0,1", "memory": "1,0,1"})
    aid = await open_acc(h, amount=10**9, bids={"cpu": "1,0,1", "memory": "1,1GiB,2GiB"})
    before = snapshot(h)
    with pytest.raises(HostError, match="cannot be met"):
        await h.auct.refund(ctx(ALICE), {"account_id": aid, "amount": 10**9 - 10})
    assert snapshot(h) == before


async def test_refund_failure_stays_pending_and_is_retried(make_host: Make) -> None:
    h = make_host()
    calls: list[int] = []

    payer = RefundPayer(h.identity)

    async def flaky(holder: bytes, amount: int, memo: str) -> dict[str, Any]:
        calls.append(amount)
        if len(calls) == 1:
            raise P2PMarketError("notaries unreachable")
        return await payer(holder, amount, memo)

    h.auct.refund_payment = flaky
    aid = await open_acc(h, amount=10_000_000)
    res = await h.auct.refund(ctx(ALICE), {"account_id": aid, "amount": 500,
                                           "refund_id": "x1"})
    assert res["refund"]["status"] == "pending" and res["balance"] == 10_000_000 - 500
    await h.auct.tick(h.clock.now + S)     # durable: retried by the tick
    assert h.store.refund("x1").status == "done"  # type: ignore[union-attr]
    assert calls == [500, 500]


async def test_unique_resources_by_sealed_bid(make_host: Make) -> None:
    h = make_host()
    handlers = control_handlers(h.auct)
    await handlers["host_set_capacity"]({"resource": "tcp_port", "amount": "30000-30009"})
    await handlers["host_set_min_price"]({"resource": "tcp_port", "price": 2})
    a = await open_acc(h, ALICE, amount=10**8, bids={**BIDS, "tcp_port,30000": "1"})
    b = await open_acc(h, BOB, amount=10**7, bids={**BIDS, "tcp_port,30000": "1",
                                                    "tcp_port,30005": "1"})
    h.clock.now += S
    await h.auct.tick(h.clock.now)
    assert h.auct.winners() == {"tcp_port,30000": a, "tcp_port,30005": b}
    assert acct(h, a).allocation["tcp_port,30000"] == 1
    assert acct(h, b).allocation["tcp_port,30000"] == 0     # lost one,
    assert acct(h, b).allocation["memory"] > 0              # the rest of the bid stands (2/7)
    assert any(e["kind"] == "outbid" for e in h.auct.account_doc(acct(h, b))["events"])
    assert h.auct.market_summary()["tcp_port"]["capacity"] == 10


async def test_fraction_or_amount_last_given_wins(make_host: Make) -> None:
    h = make_host()
    aid = await open_acc(h, bids={"cpu": "1,0.25,1", "memory": "1,256MiB,1GiB"})
    handlers = control_handlers(h.auct)
    await handlers["host_set_capacity"]({"resource": "cpu", "amount": "8GHz"})
    assert h.auct.account_doc(acct(h, aid))["resolved"]["cpu"][1] == 2000   # follows capacity
    await h.auct.bid(ctx(ALICE), {"account_id": aid, "bids": {"cpu": ",500MHz"}})
    await handlers["host_set_capacity"]({"resource": "cpu", "amount": "4GHz"})
    doc = h.auct.account_doc(acct(h, aid))
    assert doc["resolved"]["cpu"][1] == 500 and doc["bids"]["cpu"][1] == 500
    assert doc["resolved"]["cpu"][2] == 4000    # the max stayed a fraction: all of it


async def test_settings_persist_across_restart(make_host: Make) -> None:
    h = make_host(db="settings.sqlite")
    handlers = control_handlers(h.auct)
    await handlers["host_set_capacity"]({"resource": "disk", "amount": "100GiB"})
    await handlers["host_set_min_price"]({"resource": "memory", "price": "7"})
    with pytest.raises(HostError):
        await handlers["host_set_min_price"]({"resource": "memory", "price": -1})
    h2 = make_host(db="settings.sqlite", identity=h.identity)
    assert h2.auct.config.capacities["disk"] == 100 * GIB
    assert h2.auct.config.min_prices["memory"] == 7
    status = await control_handlers(h2.auct)["host_status"]({})
    assert status["config"]["capacities"]["disk"] == 100 * GIB
    assert "disk" in status["market"]


async def test_expiry_shuts_down_and_resets(make_host: Make) -> None:
    h = make_host()
    aid = await open_acc(h, amount=10_000_000, contingency="0.5")
    h.clock.now += 3601 * S
    await h.auct.tick(h.clock.now)
    a = acct(h, aid)
    assert a.state == "expired" and a.money > 0
    assert a.interval_end_us == h.clock.now + h.auct.long_interval_us
    assert h.vmm.describe(aid).state == "shutoff"  # type: ignore[union-attr]
    # a bid with a new interval wakes it up
    await h.auct.bid(ctx(ALICE), {"account_id": aid, "bids": BIDS, "interval_s": 60})
    assert acct(h, aid).state == "active"
    assert h.vmm.describe(aid).state == "running"  # type: ignore[union-attr]


async def test_expired_account_outbid_is_collected_and_refunded(make_host: Make) -> None:
    h = make_host()
    paid: list[int] = []

    payer = RefundPayer(h.identity)

    async def refund_payment(holder: bytes, amount: int, memo: str) -> dict[str, Any]:
        paid.append(amount)
        return await payer(holder, amount, memo)

    h.auct.refund_payment = refund_payment
    aid = await open_acc(h, amount=10_000, bids={"cpu": "1,0.1,1", "memory": "1,1GiB,2GiB"},
                         contingency="0.9")
    h.clock.now += 3601 * S
    await h.auct.tick(h.clock.now)
    assert acct(h, aid).state == "expired"
    await open_acc(h, BOB, amount=10**12, bids={"cpu": "1,0,1", "memory": "1,0,1"})
    h.clock.now += S
    await h.auct.tick(h.clock.now)          # outbid on everything: collected
    assert aid not in {a.account_id for a in h.auct.accounts()}
    assert paid and h.vmm.describe(aid) is None


async def test_audit_log_records_everything_and_verifies(make_host: Make) -> None:
    h = make_host()
    aid = await open_acc(h)
    res = await h.auct.lease(ctx(ALICE), {"account_id": aid})
    head = h.auct.audit.head
    with pytest.raises(HostError, match="gpu"):   # malformed: refused before the log
        await h.auct.bid(ctx(ALICE), {"account_id": aid, "bids": {"gpu": "1"}})
    assert h.auct.audit.head == head
    with pytest.raises(HostError):   # refused for the state: logged, for the replay
        await h.auct.bid(ctx(ALICE), {"account_id": aid, "bids": {"memory": "1,8GiB,8GiB"}})
    await h.auct.tick(h.clock.now + S)
    seg = h.auct.audit.segment()
    entries = [AuditEntry.from_wire(e) for e in seg["entries"]]
    auths = [AuditAuthenticator.from_wire(a) for a in seg["auths"]]
    verify_segment(entries, auths, h.identity.public_key)
    kinds = [e.kind for e in entries]
    # the log starts with the state it replays from, then the first input
    assert kinds[:2] == ["in.genesis", "in.create_account"] and "out.create_account" in kinds
    assert "in.bid" in kinds and "in.tick" in kinds and "out.tick" in kinds
    # the lease carries the authenticator of the entry that recorded its terms
    lease = verify_lease(res["lease"], h.identity.public_key)
    assert lease.audit is not None
    auth = AuditAuthenticator.from_wire(lease.audit)
    recorded = entries[auth.seq]
    assert recorded.kind == "out.lease" and auth.hash == recorded.hash()
    body = lease.body() if hasattr(lease, "body") else {}
    body["audit"] = None
    assert recorded.body == body
    # replies carry their own authenticator
    assert AuditAuthenticator.from_wire(res["audit"]).verify()


async def test_create_with_unique_loss_does_not_fail(make_host: Make) -> None:
    h = make_host()
    with pytest.raises(HostError, match="not offered"):
        await open_acc(h, bids={**BIDS, "tcp_port,30000": "1"})
    await control_handlers(h.auct)["host_set_capacity"]({"resource": "tcp_port",
                                                         "amount": "30000"})
    await open_acc(h, BOB, amount=10**10, bids={**BIDS, "tcp_port,30000": "1"})
    aid = await open_acc(h, bids={**BIDS, "tcp_port,30000": "1"})   # loses the port: fine
    assert acct(h, aid).allocation["memory"] > 0


BAD_BIDS = st.one_of(
    st.just({"gpu": "1"}), st.just({"cpu": "1,0.5,0.1"}), st.just({"memory": "1,8GiB,8GiB"}),
    st.just({"memory": "1,3GiB,4GiB"}), st.just({"cpu": [True, 0, 1]}), st.just([1]),
    st.builds(lambda w: {"cpu": f"{w},0,2"}, st.integers(0, 9)),
    st.builds(lambda m: {"memory": f"1,{m}GiB,5GiB"}, st.integers(5, 99)))


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bids=BAD_BIDS, interval=st.sampled_from([None, 60, 0, -5]))
async def test_failed_bid_changes_nothing(make_host: Make, bids: Any,
                                          interval: int | None) -> None:
    import uuid
    h = make_host(db=f"{uuid.uuid4().hex}.sqlite")   # a fresh host per example
    await open_acc(h, BOB, amount=10**8, bids={"cpu": "1,0,1", "memory": "1,0,1"})
    aid = await open_acc(h, amount=10**8, bids={"cpu": "1,0,1", "memory": "1,256MiB,1GiB"})
    before = snapshot(h)
    audit_head = h.auct.audit.head
    args: dict[str, Any] = {"account_id": aid, "bids": bids}
    if interval is not None:
        args["interval_s"] = interval
    try:
        await h.auct.bid(ctx(ALICE), args)
    except HostError:
        assert snapshot(h) == before
        try:
            parse_args("bid", args)
        except HostError:   # malformed arguments: refused before anything is logged
            assert h.auct.audit.head == audit_head
        else:   # refused for the state: the input is logged too (the replay re-derives it)
            assert h.auct.audit.head[0] > audit_head[0]
    else:
        assert isinstance(bids, dict)


def test_store_migrates_old_schema(tmp_path: Any) -> None:
    import sqlite3
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript("""CREATE TABLE accounts (id TEXT PRIMARY KEY, holder BLOB NOT NULL,
        fund INTEGER NOT NULL, interval_end_us INTEGER NOT NULL, bids BLOB NOT NULL,
        allocation BLOB NOT NULL, created_us INTEGER NOT NULL, lease BLOB);""")
    conn.commit()
    conn.close()
    store = AccountStore(path)
    assert store.all() == [] and store.settings() == {}
    store.close()
    assert Auctioneer is not None
