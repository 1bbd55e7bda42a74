"""Auctioneer flows with a fake payment checker and the libvirt test driver."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from p2pmarket.api.rpc import CallContext, RpcDispatcher, make_request, open_reply
from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import Payment
from p2pmarket.auction.lease import verify_lease
from p2pmarket.core.config import Settings
from p2pmarket.core.errors import P2PMarketError, RemoteError
from p2pmarket.core.identity import Identity
from p2pmarket.host.accountstore import AccountStore
from p2pmarket.host.auctioneer import Auctioneer, domain_prefix
from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM

S = 1_000_000
GIB = 1024 * 1024  # KiB
T0 = 1_700_000_000 * S


class PaymentError(P2PMarketError):
    pass


@dataclass
class FakeBank:
    """Stands in for the ledger: a certificate is {"id", "amount"}. Like the real
    wallet, receiving the same certificate again credits nothing more and returns the
    same payment; the auctioneer must enforce single use itself."""

    received: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)

    async def accept(self, payer: bytes, cert: dict[str, Any]) -> Payment:
        self.calls.append((payer, cert))
        if not isinstance(cert.get("amount"), int) or cert["amount"] <= 0:
            raise PaymentError("invalid certificate")
        self.received.setdefault(cert["id"], cert["amount"])
        return Payment(cert["id"].encode(), int(cert["amount"]))


def cert(amount: int) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "amount": amount}


@dataclass
class Clock:
    now: int = T0

    def __call__(self) -> int:
        return self.now


@dataclass
class Host:
    auct: Auctioneer
    bank: FakeBank
    clock: Clock
    identity: Identity
    vmm: LibvirtVMM
    store: AccountStore


Make = Callable[..., Host]


@pytest.fixture
async def make_host(tmp_path: Path) -> AsyncIterator[Make]:
    made: list[Host] = []

    def make(db: str = "host.sqlite", identity: Identity | None = None) -> Host:
        ident = identity or Identity.generate()
        settings = Settings(cpu_mhz=4000, memory_kib=4 * GIB, tick_seconds=1.0, min_price=1)
        store = AccountStore(tmp_path / db)
        vmm = LibvirtVMM("test:///default", prefix=domain_prefix(ident))
        bank, clock = FakeBank(), Clock()
        host = Host(Auctioneer(ident, settings, store, vmm, bank.accept, clock), bank, clock,
                    ident, vmm, store)
        made.append(host)
        return host

    yield make
    for host in made:
        for info in host.vmm.list():
            host.vmm.undefine(info.account_id)
        host.vmm.close()
        host.store.close()


ALICE, BOB = Identity.generate(), Identity.generate()


def ctx(who: Identity) -> CallContext:
    return CallContext(sender=who.public_key, ts=T0)


BIDS = {"cpu": "1,0.1,1", "memory": "1,256MiB,1GiB"}


async def open_account(h: Host, who: Identity = ALICE, amount: int = 100_000_000,
                       bids: dict[str, Any] | None = None) -> str:
    res = await h.auct.create_account(ctx(who), {"payment": cert(amount),
                                                 "bids": bids or BIDS, "interval_s": 3600})
    return str(res["account_id"])


def snapshot(h: Host) -> Any:
    return ([(a.account_id, a.fund, dict(a.bids), dict(a.allocation), a.lease)
             for a in h.auct.accounts()], h.store.all())


async def test_create_account_starts_vm_with_leased_memory(make_host: Make) -> None:
    h = make_host()
    res = await h.auct.create_account(ctx(ALICE), {"payment": cert(100_000_000), "bids": BIDS,
                                                   "interval_s": 3600})
    lease = verify_lease(res["lease"], h.identity.public_key)
    assert lease.lease_id == res["account_id"] and lease.holder == ALICE.public_key
    assert lease.balance == 100_000_000 and lease.end == T0 + 3600 * S
    assert lease.resources["memory"].min == 256 * 1024
    assert lease.resources["memory"].max == GIB
    assert lease.resources["cpu"].min == 400 and lease.resources["cpu"].max == 4000
    # alone on the host the buyer gets everything up to its max, minus root's crumb
    mem = lease.resources["memory"].alloc
    assert mem == GIB
    assert 3990 <= lease.resources["cpu"].alloc < 4000
    info = h.vmm.describe(res["account_id"])
    assert info is not None and info.state == "running"
    assert info.memory_kib == mem and info.max_memory_kib == GIB
    assert info.vcpus == h.vmm.max_vcpus
    assert [v["name"] for v in await h.auct.vm_list()] == [info.name]
    assert h.bank.calls[0][0] == ALICE.public_key
    # the market sees the new bid before any tick
    assert h.auct.market_summary()["memory"]["price"] > 1


async def test_wrong_holder_refused(make_host: Make) -> None:
    h = make_host()
    aid = await open_account(h)
    before = snapshot(h)
    calls: list[tuple[str, dict[str, Any]]] = [
        ("bid", {"account_id": aid, "bids": {"cpu": "5"}}),
        ("fund", {"account_id": aid, "payment": cert(5)}),
        ("lease", {"account_id": aid})]
    for name, args in calls:
        with pytest.raises(HostError, match="no such account"):
            await h.auct.handlers()[name](ctx(BOB), args)
    assert snapshot(h) == before
    assert len(h.bank.calls) == 1          # Bob's payment was never even looked at
    assert (await h.auct.status(ctx(BOB), {}))["accounts"] == []
    assert [a["account_id"] for a in (await h.auct.status(ctx(ALICE), {}))["accounts"]] == [aid]


@pytest.mark.parametrize("args", [
    {"payment": cert(10), "bids": {"gpu": "1"}, "interval_s": 60},
    {"payment": cert(10), "bids": {"cpu": "1,0.5,0.1"}, "interval_s": 60},
    {"payment": cert(10), "bids": {"disk": "1,1GiB,2GiB"}, "interval_s": 60},
    {"payment": cert(10), "bids": {"tcp_port,8080": "1"}, "interval_s": 60},
    {"payment": cert(10), "bids": {"memory": "1,8GiB,8GiB"}, "interval_s": 60},
    {"payment": cert(10), "bids": BIDS, "interval_s": 0},
    {"payment": cert(10), "bids": BIDS},
    {"payment": cert(10), "bids": BIDS, "interval_s": 60, "extra": 1},
    {"payment": "cert", "bids": BIDS, "interval_s": 60},
    {"payment": cert(10), "bids": [1, 2], "interval_s": 60},
])
async def test_bad_create_args_change_nothing(make_host: Make, args: dict[str, Any]) -> None:
    h = make_host()
    with pytest.raises(HostError) as err:
        await h.auct.create_account(ctx(ALICE), args)
    assert err.value.message
    assert h.auct.accounts() == [] and h.store.all() == [] and h.vmm.list() == []
    if h.bank.calls:   # refused by the host's state after the payment: paid straight back
        assert "is refunded" in err.value.message
        assert [(r.holder, r.amount) for r in h.store.refunds()] == [(ALICE.public_key, 10)]
    else:
        assert h.store.refunds() == []


async def test_not_offered_message(make_host: Make) -> None:
    h = make_host()
    with pytest.raises(HostError, match="not offered by this host"):
        await h.auct.create_account(ctx(ALICE), {"payment": cert(10), "bids": {"disk": "1"},
                                                 "interval_s": 60})


async def test_bad_payment_changes_nothing(make_host: Make) -> None:
    h = make_host()
    aid = await open_account(h)
    before = snapshot(h)
    used = cert(50)
    await h.auct.fund(ctx(ALICE), {"account_id": aid, "payment": used})
    after_fund = snapshot(h)
    # a retry of the same fund is answered again and adds nothing
    again = await h.auct.fund(ctx(ALICE), {"account_id": aid, "payment": used})
    assert again["balance"] == h.store.get(aid).fund  # type: ignore[union-attr]
    with pytest.raises(PaymentError):
        await h.auct.fund(ctx(ALICE), {"account_id": aid, "payment": {"id": "x", "amount": -1}})
    assert snapshot(h) == after_fund != before
    with pytest.raises(HostError, match="already used"):
        await h.auct.create_account(ctx(BOB), {"payment": used, "bids": BIDS, "interval_s": 60})
    funds = {a.account_id: a.fund for a in h.auct.accounts()}
    other = await open_account(h, ALICE)
    with pytest.raises(HostError, match="already used"):
        await h.auct.fund(ctx(ALICE), {"account_id": other, "payment": used})
    assert h.store.get(aid).fund == funds[aid]  # type: ignore[union-attr]
    assert h.store.get(other).fund == 100_000_000  # type: ignore[union-attr]


async def test_create_account_retry_after_crash_is_idempotent(make_host: Make,
                                                              tmp_path: Path) -> None:
    ident = Identity.generate()
    h = make_host(db="crash.sqlite", identity=ident)
    payment = cert(100_000_000)
    # the host received the money (ledger side) but crashed before its account commit
    await h.bank.accept(ALICE.public_key, payment)
    first = await h.auct.create_account(ctx(ALICE), {"payment": payment, "bids": BIDS,
                                                     "interval_s": 3600})
    # the buyer never saw the answer and retries: same account, no second credit
    again = await h.auct.create_account(ctx(ALICE), {"payment": payment, "bids": BIDS,
                                                     "interval_s": 3600})
    assert again["account_id"] == first["account_id"]
    assert [a.fund for a in h.auct.accounts()] == [100_000_000]
    # and after a restart from the same store, still only one account
    h2 = make_host(db="crash.sqlite", identity=ident)
    third = await h2.auct.create_account(ctx(ALICE), {"payment": payment, "bids": BIDS,
                                                      "interval_s": 3600})
    assert third["account_id"] == first["account_id"]
    assert len(h2.auct.accounts()) == 1


async def test_fund_adds_to_balance_and_resigns(make_host: Make) -> None:
    h = make_host()
    aid = await open_account(h, amount=10**6)
    res = await h.auct.fund(ctx(ALICE), {"account_id": aid, "payment": cert(234)})
    assert res["amount"] == 234 and res["balance"] == 10**6 + 234
    assert verify_lease(res["lease"], h.identity.public_key).balance == 10**6 + 234


async def test_unmeetable_bid_refused_and_state_kept(make_host: Make) -> None:
    h = make_host()
    rich = await open_account(h, ALICE, amount=10**12,
                              bids={"cpu": "1,0,1", "memory": "1,0,1"})
    poor = await open_account(h, BOB, amount=1000, bids={"cpu": "1,0,1", "memory": "1,0,1"})
    before = snapshot(h)
    with pytest.raises(HostError, match="cannot be met") as err:
        await h.auct.bid(ctx(BOB), {"account_id": poor, "bids": {"memory": "1,2GiB,4GiB"}})
    assert err.value.value["resource"] == "memory"
    assert snapshot(h) == before
    assert rich != poor


async def test_create_with_unmeetable_min_refunds_the_payment(make_host: Make) -> None:
    """Issue 12: a create whose bids would all be dropped pays the money back at once
    (it used to keep it in an account with no bids)."""
    h = make_host()
    await open_account(h, ALICE, amount=10**12, bids={"cpu": "1,0,1", "memory": "1,0,1"})
    with pytest.raises(HostError, match=r"payment .* is refunded") as err:
        await open_account(h, BOB, amount=1000, bids={"memory": "1,3GiB,4GiB"})
    assert err.value.value["amount"] == 1000
    status = (await h.auct.status(ctx(BOB), {}))["accounts"]
    assert status == []
    [made] = [r for r in h.store.refunds() if r.holder == BOB.public_key]
    assert (made.refund_id, made.amount, made.status) == (
        err.value.value["refund_id"], 1000, "pending")   # no refund_payment here


@pytest.mark.parametrize("bids", [{"memory": "1,100TiB,200TiB"}, {"disk": "1"}])
async def test_create_refused_after_payment_refunds_it_at_once(
        make_host: Make, bids: dict[str, str]) -> None:
    """Refused before the payment is looked at (min above the capacity, or a resource
    not offered), yet paid: the payment is taken and paid straight back, certified,
    never stranded; a retry with the same payment refunds nothing more."""
    h = make_host()
    paid: list[tuple[bytes, int, str]] = []

    async def refund_payment(holder: bytes, amount: int, memo: str) -> dict[str, Any]:
        paid.append((holder, amount, memo))
        raise PaymentError("the fake ledger cannot sign a SEND")   # stays pending

    h.auct.refund_payment = refund_payment
    payment = cert(1_000_000)
    args = {"payment": payment, "bids": bids, "interval_s": 600}
    with pytest.raises(HostError, match="is refunded") as err:
        await h.auct.create_account(ctx(BOB), args)
    assert h.bank.calls and h.auct.accounts() == []
    assert [(who, amount) for who, amount, _ in paid] == [(BOB.public_key, 1_000_000)]
    rid = err.value.value["refund_id"]
    assert rid in paid[0][2]   # the refund memo names it
    with pytest.raises(HostError, match="refund"):
        await h.auct.create_account(ctx(BOB), args)   # a retry: nothing more
    with pytest.raises(HostError, match="already refunded"):
        await h.auct.create_account(ctx(BOB), {**args, "bids": BIDS})
    assert [r.amount for r in h.store.refunds()] == [1_000_000]
    assert h.auct.accounts() == []


async def test_identical_bid_changes_nothing_and_patch_keeps_fields(make_host: Make) -> None:
    h = make_host()
    aid = await open_account(h)
    before = snapshot(h)
    res = await h.auct.bid(ctx(ALICE), {"account_id": aid, "bids": BIDS})
    assert snapshot(h) == before
    assert res["lease"] == before[0][0][4]
    # patch only the cpu max; weight and min stay
    h.clock.now += S
    res = await h.auct.bid(ctx(ALICE), {"account_id": aid, "bids": {"cpu": ",,0.5"}})
    lease = verify_lease(res["lease"], h.identity.public_key)
    assert lease.resources["cpu"].min == 400 and lease.resources["cpu"].max == 2000
    assert lease.resources["cpu"].alloc == 2000
    assert lease.resources["memory"].max == GIB
    info = h.vmm.describe(aid)
    assert info is not None and info.weight == 5000          # half the host, in 1/10000
    # replace would drop the unlisted memory bid and so shut the VM down: refused (6/27)
    before = snapshot(h)
    with pytest.raises(HostError, match="shut down"):
        await h.auct.bid(ctx(ALICE), {"account_id": aid, "bids": {"cpu": "1"}, "replace": True})
    assert snapshot(h) == before
    info = h.vmm.describe(aid)
    assert info is not None and info.state == "running"


async def test_tick_charges_and_shares_three_to_one(make_host: Make) -> None:
    h = make_host()
    a = await open_account(h, ALICE, amount=3600 * 3000, bids={"cpu": "1,0,1",
                                                               "memory": "1,0,1"})
    b = await open_account(h, BOB, amount=3600 * 1000, bids={"cpu": "1,0,1",
                                                             "memory": "1,0,1"})
    before = {x.account_id: x.fund for x in h.auct.accounts()}
    h.clock.now += S
    assert await h.auct.tick(h.clock.now) == ()
    after = {x.account_id: x.fund for x in h.auct.accounts()}
    # each spends what its fund / remaining interval was when it opened (3600 s): 3000
    # and 1000 per tick, split 1:1 over cpu and memory; alone uncapped, each pays its bids
    assert {k: before[k] - after[k] for k in before} == {a: 3000, b: 1000}
    alloc = {x.account_id: dict(x.allocation) for x in h.auct.accounts()}
    # root bids 1 per tick
    assert alloc[a]["cpu"] == 1500 * 4000 // 2001 and alloc[b]["cpu"] == 500 * 4000 // 2001
    for x in h.auct.accounts():
        res = await h.auct.lease(ctx(ALICE if x.account_id == a else BOB),
                                 {"account_id": x.account_id})
        lease = verify_lease(res["lease"], h.identity.public_key)
        assert lease.balance == x.fund and lease.signed_at == h.clock.now
        assert lease.audit is not None
        info = h.vmm.describe(x.account_id)
        assert info is not None and info.memory_kib == x.allocation["memory"]
    summary = h.auct.market_summary()
    assert summary["cpu"]["capacity"] == 4000 and summary["memory"]["capacity"] == 4 * GIB
    assert summary["cpu"]["price"] == 1 + 1500 + 500
    assert summary["cpu"]["free"] == 4000 - alloc[a]["cpu"] - alloc[b]["cpu"]


async def test_a_bundle_without_memory_or_cpu_still_gets_a_machine(make_host: Make) -> None:
    """Issue 13: never charged for nothing. A cpu-only bundle runs with the host's
    default memory; a memory-only one with one vcpu at the lowest weight."""
    h = make_host()
    cpu_only = await open_account(h, ALICE, bids={"cpu": "1,0.1,1"})
    info = h.vmm.describe(cpu_only)
    assert info is not None and info.state == "running"
    assert info.memory_kib == Settings().vm_default_memory_kib == 256 * 1024
    mem_only = await open_account(h, BOB, bids={"memory": "1,64MiB,128MiB"})
    info = h.vmm.describe(mem_only)
    assert info is not None and info.state == "running"
    assert (info.vcpus, info.weight, info.memory_kib) == (1, 1, 128 * 1024)


async def test_outbid_claim_dropped_and_vm_shut_down(make_host: Make) -> None:
    h = make_host()
    poor = await open_account(h, ALICE, amount=360_000, bids={"cpu": "1,0,1",
                                                           "memory": "1,1GiB,2GiB"})
    assert h.vmm.describe(poor).state == "running"  # type: ignore[union-attr]
    await open_account(h, BOB, amount=10**12, bids={"cpu": "1,0,1", "memory": "1,0,1"})
    status = (await h.auct.status(ctx(ALICE), {}))["accounts"][0]
    assert "memory" not in status["bids"] and status["fund"] == 360_000
    assert h.vmm.describe(poor).state == "shutoff"  # type: ignore[union-attr]


async def test_state_survives_restart(make_host: Make) -> None:
    h = make_host(db="persist.sqlite")
    aid = await open_account(h)
    await h.auct.tick(h.clock.now + S)
    h2 = make_host(db="persist.sqlite", identity=h.identity)
    assert h2.auct.accounts() == h.auct.accounts()
    res = await h2.auct.lease(ctx(ALICE), {"account_id": aid})
    assert verify_lease(res["lease"], h.identity.public_key).balance == \
        h.auct.accounts()[0].fund


async def test_run_ticks_until_cancelled(make_host: Make) -> None:
    import asyncio
    from dataclasses import replace

    h = make_host()
    h.auct.settings = replace(h.auct.settings, tick_seconds=0.01)
    await open_account(h)
    fund = h.auct.accounts()[0].fund
    task = asyncio.create_task(h.auct.run())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert h.auct.accounts()[0].fund < fund


async def test_run_sleeps_until_the_next_tick_is_due(make_host: Make,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    h = make_host()
    await open_account(h)
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        """The clock moves on by what is slept, except that the second sleep wakes
        half-way (the tick then is too early, and the rest is slept)."""
        slept.append(seconds)
        if len(slept) == 5:
            raise asyncio.CancelledError
        h.clock.now += round(seconds * S) // (2 if len(slept) == 2 else 1)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    with pytest.raises(asyncio.CancelledError):
        await h.auct.run()
    # before the first tick one tick length, then until the next tick is due
    assert slept[:4] == [1.0, 1.0, 0.5, 1.0]
    ticks = [e.ts for e, _ in h.auct.audit.entries(0, 100) if e.kind == "in.tick"]
    assert ticks == [T0 + S, T0 + 2 * S, T0 + 3 * S]
    assert h.auct.seconds_to_next_tick() == 1.0


async def test_run_waits_a_tick_length_after_a_failed_tick(
        make_host: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    h = make_host()
    await h.auct.tick(T0)
    h.clock.now = T0 + S // 2
    assert h.auct.seconds_to_next_tick() == 0.5
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            raise asyncio.CancelledError
        h.clock.now += round(seconds * S)
        await real_sleep(0)

    async def broken(now_us: int) -> Any:
        raise RuntimeError("the VMM is gone")

    monkeypatch.setattr(asyncio, "sleep", sleep)
    monkeypatch.setattr(h.auct, "tick", broken)
    with pytest.raises(asyncio.CancelledError):
        await h.auct.run()
    # the tick is overdue after the failure, but the loop does not spin
    assert slept == [0.5, 1.0, 1.0]


async def test_through_the_rpc_dispatcher(make_host: Make) -> None:
    h = make_host()
    disp = RpcDispatcher(h.identity, clock=h.clock)
    disp.register_all("host", h.auct.handlers())
    req = make_request(ALICE, h.identity.node_id, "host.create_account",
                       {"payment": cert(10**8), "bids": {"memory": [1_000_000, 262144, GIB],
                                                          "cpu": [1_000_000, "0.1", "1"]},
                        "interval_s": 60}, ts=h.clock.now)
    result = open_reply(req, await disp.dispatch(req), ALICE, h.identity.public_key)
    assert verify_lease(result["lease"], h.identity.public_key).holder == ALICE.public_key
    req = make_request(BOB, h.identity.node_id, "host.lease",
                       {"account_id": result["account_id"]}, ts=h.clock.now)
    with pytest.raises(RemoteError, match="no such account"):
        open_reply(req, await disp.dispatch(req), BOB, h.identity.public_key)
