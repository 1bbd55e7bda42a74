"""The host's quote, pure: what it says, that it changes nothing, that it refuses what
``create_account`` would refuse, and that only the host's key signs one for its buyer."""

from __future__ import annotations

import pytest

from p2pmarket.auction import HostError
from p2pmarket.auction.buyersteps import refund_id_for
from p2pmarket.auction.quote import (
    QUOTE_TTL_US,
    bids_digest,
    make_quote,
    offered,
    parse_quote_args,
    sign_quote,
    verify_quote,
)
from p2pmarket.auction.snapshot import snapshot, state_digest
from p2pmarket.core.domains import QUOTE
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import Envelope, seal
from tests.support.auction_harness import T0, AuctionHarness

HOST = Identity(b"\x51" * 32)
BUYER = Identity(b"\x52" * 32)
NONCE = b"n" * 16
BIDS = {"cpu": "1,0,1", "memory": "1,0,1"}


def harness() -> AuctionHarness:
    return AuctionHarness.new(host_id=HOST.node_id)


def args(bids: dict[str, str] = BIDS, amount: int | None = None) -> dict[str, object]:
    doc: dict[str, object] = {"bids": bids, "interval_s": 100, "nonce": NONCE}
    if amount is not None:
        doc["amount"] = amount
    return doc


def quote_of(h: AuctionHarness, doc: dict[str, object]) -> object:
    return make_quote(h.state, BUYER.public_key, parse_quote_args(doc), h.now)


def test_a_quote_names_the_buyer_and_the_advertised_figures_and_changes_nothing() -> None:
    h = harness()
    before, digest, snap = h.state, state_digest(h.state), snapshot(h.state)
    q = quote_of(h, args(amount=100_000))
    market = offered(h.state)
    assert q == make_quote(h.state, BUYER.public_key,
                           parse_quote_args(args(amount=100_000)), h.now)
    assert q.host_id == HOST.node_id and q.holder == BUYER.public_key and q.nonce == NONCE
    assert q.bids == bids_digest(BIDS) and q.interval_s == 100 and q.amount == 100_000
    assert dict(q.resources) == {"cpu": market["cpu"], "memory": market["memory"]}
    assert q.resources["cpu"].capacity == 1000 and q.resources["cpu"].price >= 1
    assert (q.signed_at, q.expires) == (T0, T0 + QUOTE_TTL_US)
    # nothing changed: not an input, nothing to log or replay
    assert h.state == before and state_digest(h.state) == digest and snapshot(h.state) == snap
    assert h.log == []


def test_a_quote_refuses_what_create_account_would_refuse() -> None:
    h = harness()
    huge = {"memory": "1,100GiB,200GiB"}   # min above the host's 1,000,000 KiB
    with pytest.raises(HostError) as quoted:
        quote_of(h, args(huge))
    st = h.call(BUYER.public_key, "create_account",
                {"payment": {}, "bids": huge, "interval_s": 100}, payment=(b"p", 1000))
    # the same refusal; a create that gets this far anyway pays the money back (issue 12)
    assert st.error is not None and st.error.message.startswith(quoted.value.message)
    assert st.error.message.endswith(f"is refunded (refund {refund_id_for(b'p')})")
    assert [(r.holder, r.amount) for r in st.refunds] == [(BUYER.public_key, 1000)]
    assert st.state.accounts == h.state.accounts
    # offered, but with so little money the min is not met at once: create would refund
    # the payment, so the quote of that amount refuses
    tight = {"memory": "1,0.9,1"}
    with pytest.raises(HostError) as quoted:
        quote_of(h, args(tight, amount=100))
    assert "bids would all be dropped" in quoted.value.message
    st = h.call(BUYER.public_key, "create_account",
                {"payment": {}, "bids": tight, "interval_s": 100}, payment=(b"q", 100))
    assert st.error is not None and "is refunded" in st.error.message
    # with enough money the quote and the create both succeed
    h2 = harness()
    assert quote_of(h2, args(tight, amount=100_000)).amount == 100_000
    st = h2.call(BUYER.public_key, "create_account",
                 {"payment": {}, "bids": tight, "interval_s": 100}, payment=(b"r", 100_000))
    assert st.error is None


@pytest.mark.parametrize("bad", [
    {"bids": BIDS, "interval_s": 100},                               # no nonce
    {"bids": BIDS, "interval_s": 100, "nonce": b"short"},
    {"bids": BIDS, "interval_s": 100, "nonce": "n" * 16},
    {"bids": BIDS, "interval_s": 0, "nonce": NONCE},
    {"bids": BIDS, "interval_s": 100, "nonce": NONCE, "amount": 0},
    {"bids": BIDS, "interval_s": 100, "nonce": NONCE, "amount": True},
    {"bids": BIDS, "interval_s": 100, "nonce": NONCE, "extra": 1},
    {"bids": "cpu", "interval_s": 100, "nonce": NONCE},
    [],
])
def test_bad_quote_arguments_are_refused(bad: object) -> None:
    with pytest.raises(HostError):
        parse_quote_args(bad)


def test_a_signed_quote_verifies_only_against_the_host_key_and_for_its_holder() -> None:
    h = harness()
    q = quote_of(h, args())
    env = sign_quote(HOST, q)
    assert env.to == BUYER.node_id
    assert verify_quote(env.to_wire(), HOST.public_key) == q
    assert verify_quote(env.encode(), HOST.public_key) == q
    with pytest.raises(HostError, match="another key"):
        verify_quote(env.to_wire(), Identity(b"\x53" * 32).public_key)
    tampered = {**env.to_wire(), "body": {**env.body, "expires": env.body["expires"] * 2}}
    with pytest.raises(HostError, match="invalid quote"):
        verify_quote(tampered, HOST.public_key)
    # a quote for one buyer re-addressed to another does not verify...
    other = Identity(b"\x54" * 32)
    readdressed = seal(HOST, QUOTE, "quote", env.body, ts=env.ts, to=other.node_id)
    with pytest.raises(HostError, match="addressed"):
        verify_quote(readdressed.to_wire(), HOST.public_key)
    # ... nor one some other key signs for this host, nor a quote of another version
    forged = seal(other, QUOTE, "quote", env.body, ts=env.ts, to=BUYER.node_id)
    with pytest.raises(HostError):
        verify_quote(forged.to_wire(), other.public_key)
    v2 = seal(HOST, QUOTE, "quote", {**env.body, "v": 2}, ts=env.ts, to=BUYER.node_id)
    with pytest.raises(HostError, match="version"):
        verify_quote(v2.to_wire(), HOST.public_key)
    with pytest.raises(HostError, match="a quote must name"):
        sign_quote(other, q)
    with pytest.raises(HostError):
        verify_quote(None, HOST.public_key)
    lease_like: Envelope = seal(HOST, QUOTE, "lease", env.body, ts=env.ts, to=BUYER.node_id)
    with pytest.raises(HostError, match="not a quote"):
        verify_quote(lease_like.to_wire(), HOST.public_key)


def test_a_max_above_the_capacity_is_clamped_and_said() -> None:
    """Issue 12: `cpu:1,0.1,100GHz` is not clamped silently: the quote names it."""
    h = harness()
    cpu_cap = h.state.config.capacities["cpu"]
    q = quote_of(h, args({"cpu": "1,0.1,100GHz", "memory": "1,0,1"}))
    assert dict(q.clamped or {}) == {"cpu": cpu_cap}
    assert quote_of(h, args({"cpu": "1,0.1,1"})).clamped is None
