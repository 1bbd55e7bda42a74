"""Brokers' ticket adverts (dht/ticketads.py): made, fitted into a set and parsed back;
expired, tampered and forged entries; every malformed body refused; one advert per
signer and the storer's seniority rule. Pure tests."""

from __future__ import annotations

from typing import Any

import pytest

from p2pmarket.core.domains import DHT_RECORD, LEASE
from p2pmarket.core.identity import Identity, meets_puzzle
from p2pmarket.core.limits import MAX_PRICE, max_capacity
from p2pmarket.core.wire import Envelope, pack, seal, unpack
from p2pmarket.dht.checks import MAX_SKEW_US, MAX_TTL_US, MAX_VALUE_BYTES, DhtError
from p2pmarket.dht.ticketads import (
    MAX_SITES,
    MAX_TICKET_ADS,
    TICKET_AD_KIND,
    TICKET_SET_KIND,
    SiteAmount,
    TicketAd,
    fit_ticket_set,
    is_tickets_key,
    keep_ads,
    make_ticket_ad,
    newest_ads,
    pack_ticket_set,
    parse_ticket_set,
    tickets_key,
)

NOW = 1_700_000_000_000_000
TTL = 1_500_000_000
HOUR = 3_600_000_000
URL = "http://127.0.0.1:8100"
BROKERS = [Identity(bytes([0x40, i]) + bytes(30)) for i in range(40)]
A, B, C, D, E = BROKERS[:5]
SITE1, SITE2 = b"\x51" * 32, b"\x52" * 32
KEY = "tickets/cpu"


def sites(*keys: bytes, amount: int = 1000) -> list[SiteAmount]:
    return [SiteAmount(k, amount, NOW, NOW + HOUR) for k in keys]


def ad(ident: Identity, ts: int = NOW, rtype: str = "cpu", price: int = 10,
       amount: int = 1000, ttl: int = TTL, where: tuple[bytes, ...] = (SITE1,),
       url: str = URL) -> TicketAd:
    return make_ticket_ad(ident, resource_type=rtype, url=url,
                          sites=sites(*where, amount=amount), price=price, now_us=ts,
                          ttl_us=ttl)


def body(ident: Identity, **changes: Any) -> dict[str, Any]:
    doc = {"key": KEY, "node_id": ident.node_id, "url": URL, "type": "cpu",
           "sites": [[SITE1, 1000, NOW, NOW + HOUR]], "price": 10, "expires": NOW + TTL}
    return {**doc, **changes}


def sealed(ident: Identity, ts: int = NOW, **changes: Any) -> Envelope:
    return seal(ident, DHT_RECORD, TICKET_AD_KIND, body(ident, **changes), ts=ts)


def reason(env: Envelope, now: int = NOW) -> object:
    with pytest.raises(DhtError) as exc:
        TicketAd.from_envelope(env, now)
    return exc.value.value


def container(key: str, entries: object) -> bytes:
    return pack({"kind": TICKET_SET_KIND, "key": key, "entries": entries})


# -- round trip ------------------------------------------------------------------------

def test_keys() -> None:
    assert tickets_key("memory") == "tickets/memory"
    assert is_tickets_key("tickets/cpu")
    assert not is_tickets_key("offers/cpu")
    assert not is_tickets_key(b"tickets/cpu")


def test_an_advert_round_trips_through_a_set() -> None:
    two = [SiteAmount(SITE1, 4000, NOW - HOUR, NOW + HOUR),
           SiteAmount(SITE2, 0, NOW, NOW + 2 * HOUR)]
    made = make_ticket_ad(A, resource_type="cpu", url=URL, sites=two, price=25, now_us=NOW,
                          ttl_us=TTL)
    assert (made.key, made.node_id, made.url, made.type, made.sites, made.price,
            made.expires, made.broker, made.ts) == (
        KEY, A.node_id, URL, "cpu", tuple(two), 25, NOW + TTL, A.public_key, NOW)
    other = ad(B, price=11, where=(SITE2,))
    value, kept = fit_ticket_set(KEY, [made, other])
    assert kept == [made, other]
    assert value == pack_ticket_set(KEY, [made, other])
    assert len(value) <= MAX_VALUE_BYTES
    got = parse_ticket_set(value, NOW + 1)
    assert (got.key, got.dropped, got.forged) == (KEY, 0, 0)
    assert got.entries == (made, other)
    back = got.entries[0]
    assert (back.key, back.node_id, back.url, back.type, back.sites, back.price,
            back.expires, back.broker, back.ts, back.value) == (
        made.key, made.node_id, made.url, made.type, made.sites, made.price,
        made.expires, made.broker, made.ts, made.value)
    assert back.to_doc() == {
        "broker": A.public_key.hex(), "node_id": A.node_id.hex(), "url": URL,
        "type": "cpu", "price": 25, "expires": NOW + TTL,
        "sites": [{"site": SITE1.hex(), "amount": 4000, "start": NOW - HOUR,
                   "end": NOW + HOUR},
                  {"site": SITE2.hex(), "amount": 0, "start": NOW, "end": NOW + 2 * HOUR}]}
    assert TicketAd.from_bytes(made.value, NOW) == made


def test_expired_adverts_are_dropped_not_forged() -> None:
    old, fresh = ad(A, ttl=TTL), ad(B, ttl=2 * TTL)
    value = pack_ticket_set(KEY, [old, fresh])
    assert parse_ticket_set(value, NOW + TTL - 1).entries == (old, fresh)
    got = parse_ticket_set(value, NOW + TTL)          # expires at NOW + TTL: gone
    assert (got.entries, got.dropped, got.forged) == ((fresh,), 1, 0)
    got = parse_ticket_set(value, NOW + 2 * TTL)
    assert (got.entries, got.dropped, got.forged) == ((), 2, 0)


def test_an_advert_from_the_future_is_dropped_as_innocent() -> None:
    ahead = ad(A, ts=NOW + MAX_SKEW_US + 1)
    got = parse_ticket_set(pack_ticket_set(KEY, [ahead, ad(B)]), NOW)
    assert (got.entries, got.dropped, got.forged) == ((ad(B),), 1, 0)
    assert parse_ticket_set(pack_ticket_set(KEY, [ahead]), NOW + 1).entries == (ahead,)


def tampered(value: bytes, **changes: Any) -> bytes:
    wire = unpack(value)
    wire["body"] = {**wire["body"], **changes}
    return pack(wire)


def test_a_tampered_or_forged_entry_is_counted_forged() -> None:
    good = ad(A)
    cases = {
        "price changed": tampered(good.value, price=1),
        "sites changed": tampered(good.value, sites=[[SITE1, 9999, NOW, NOW + HOUR]]),
        "sig flipped": pack({**unpack(good.value),
                             "sig": bytes([unpack(good.value)["sig"][0] ^ 1]) + bytes(63)}),
        "other domain": seal(A, LEASE, TICKET_AD_KIND, body(A), ts=NOW).encode(),
        "wrong signer": sealed(A, node_id=B.node_id).encode(),
        "another key": ad(B, rtype="memory").value,
        "not bytes": good.to_doc(),
        "garbage": b"\xc1\x00",
    }
    for name, raw in cases.items():
        got = parse_ticket_set(container(KEY, [good.value, raw]), NOW)
        assert (got.entries, got.dropped, got.forged) == ((good,), 1, 1), name


def test_fit_refuses_an_advert_for_another_key() -> None:
    with pytest.raises(DhtError) as exc:
        fit_ticket_set(KEY, [ad(A), ad(B, rtype="memory")])
    assert exc.value.value == "wrong_key"


def test_fit_leaves_out_what_would_not_fit() -> None:
    many = [ad(b, url="http://" + "h" * 200 + ".example",
               where=tuple(bytes([0x60 + k]) * 32 for k in range(MAX_SITES)))
            for b in BROKERS[:MAX_TICKET_ADS]]
    value, kept = fit_ticket_set(KEY, many)
    assert len(value) <= MAX_VALUE_BYTES
    assert 0 < len(kept) < len(many)
    assert kept == many[:len(kept)]          # all the same size: a prefix fits
    # one more would not have fit
    assert len(pack({"kind": TICKET_SET_KIND, "key": KEY,
                     "entries": [a.value for a in many[:len(kept) + 1]]})) > MAX_VALUE_BYTES
    assert parse_ticket_set(value, NOW).entries == tuple(kept)


def test_malformed_containers_are_refused() -> None:
    good = ad(A).value
    cases: list[tuple[object, str]] = [
        (container("offers/cpu", [good]), "wrong_key"),
        (container("tickets/CPU", [good]), "bad_type"),
        (container(KEY, {"a": good}), "malformed"),
        (pack({"kind": "dht.offers", "key": KEY, "entries": [good]}), "wrong_kind"),
        (pack({"kind": TICKET_SET_KIND, "key": KEY}), "malformed"),
        (pack([good]), "malformed"),
        ("text", "malformed"),
        (b"\x00" * (MAX_VALUE_BYTES + 1), "too_large"),
    ]
    for value, why in cases:
        with pytest.raises(DhtError) as exc:
            parse_ticket_set(value, NOW)
        assert exc.value.value == why, value


# -- bodies ----------------------------------------------------------------------------

def test_the_plain_body_is_accepted() -> None:
    env = sealed(A)
    got = TicketAd.from_envelope(env, NOW)
    assert got.sites == (SiteAmount(SITE1, 1000, NOW, NOW + HOUR),)
    top = max_capacity("cpu")
    edge = sealed(A, price=MAX_PRICE, sites=[[SITE1, top, 0, 1]])
    assert TicketAd.from_envelope(edge, NOW).sites == (SiteAmount(SITE1, top, 0, 1),)


BAD_BODIES: dict[str, tuple[dict[str, Any], str]] = {
    "sites empty": ({"sites": []}, "malformed"),
    "sites too many": ({"sites": [[bytes([k]) * 32, 1, NOW, NOW + 1]
                                  for k in range(MAX_SITES + 1)]}, "malformed"),
    "sites not a list": ({"sites": {"a": 1}}, "malformed"),
    "sites repeat": ({"sites": [[SITE1, 1, NOW, NOW + 1], [SITE1, 2, NOW, NOW + 2]]},
                     "malformed"),
    "site entry short": ({"sites": [[SITE1, 1, NOW]]}, "malformed"),
    "site entry a map": ({"sites": [{"site": SITE1}]}, "malformed"),
    "site key 31 bytes": ({"sites": [[b"\x01" * 31, 1, NOW, NOW + 1]]}, "malformed"),
    "site key str": ({"sites": [["ab" * 32, 1, NOW, NOW + 1]]}, "malformed"),
    "amount implausible": ({"sites": [[SITE1, max_capacity("cpu") + 1, NOW, NOW + 1]]},
                           "implausible"),
    "amount negative": ({"sites": [[SITE1, -1, NOW, NOW + 1]]}, "malformed"),
    "amount bool": ({"sites": [[SITE1, True, NOW, NOW + 1]]}, "malformed"),
    "window empty": ({"sites": [[SITE1, 1, NOW, NOW]]}, "malformed"),
    "window reversed": ({"sites": [[SITE1, 1, NOW, NOW - 1]]}, "malformed"),
    "window start str": ({"sites": [[SITE1, 1, "0", NOW]]}, "malformed"),
    "price zero": ({"price": 0}, "implausible"),
    "price too high": ({"price": MAX_PRICE + 1}, "implausible"),
    "price str": ({"price": "10"}, "malformed"),
    "key of another type": ({"key": "tickets/memory"}, "wrong_key"),
    "key without prefix": ({"key": "cpu"}, "wrong_key"),
    "type bad": ({"type": "CPU", "key": "tickets/CPU"}, "bad_type"),
    "url empty": ({"url": ""}, "malformed"),
    "url too long": ({"url": "h" * 257}, "malformed"),
    "node_id short": ({"node_id": b"\x01" * 19}, "malformed"),
    "node_id another's": ({"node_id": B.node_id}, "wrong_signer"),
    "expired": ({"expires": NOW}, "expired"),
    "expires too late": ({"expires": NOW + MAX_TTL_US + 1}, "too_long"),
}


@pytest.mark.parametrize("changes,why", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
def test_each_bad_body_is_refused(changes: dict[str, Any], why: str) -> None:
    assert reason(sealed(A, **changes)) == why


def test_bodies_with_fields_missing_or_extra_and_other_kinds_are_refused() -> None:
    full = body(A)
    missing = {k: v for k, v in full.items() if k != "price"}
    assert reason(seal(A, DHT_RECORD, TICKET_AD_KIND, missing, ts=NOW)) == "malformed"
    assert reason(seal(A, DHT_RECORD, TICKET_AD_KIND, {**full, "x": 1}, ts=NOW)) \
        == "malformed"
    assert reason(seal(A, DHT_RECORD, "dht.offer", full, ts=NOW)) == "wrong_kind"
    assert reason(seal(A, DHT_RECORD, TICKET_AD_KIND, full, ts=NOW,
                       to=B.node_id)) == "malformed"
    assert reason(seal(A, LEASE, TICKET_AD_KIND, full, ts=NOW)) == "bad_signature"


def test_make_ticket_ad_refuses_what_the_parser_refuses() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"sites": []}, "malformed"),
        ({"sites": sites(SITE1, SITE1)}, "malformed"),
        ({"sites": sites(*(bytes([k]) * 32 for k in range(MAX_SITES + 1)))}, "malformed"),
        ({"sites": sites(SITE1, amount=max_capacity("memory") + 1),
          "resource_type": "memory"}, "implausible"),
        ({"price": 0}, "implausible"),
        ({"ttl_us": 0}, "expired"),
    ]
    for changes, why in cases:
        kw: dict[str, Any] = {"resource_type": "cpu", "url": URL, "sites": sites(SITE1),
                              "price": 10, "now_us": NOW, "ttl_us": TTL, **changes}
        with pytest.raises(DhtError) as exc:
            make_ticket_ad(A, **kw)
        assert exc.value.value == why, changes
    assert len(ad(A, where=tuple(bytes([k]) * 32 for k in range(MAX_SITES))).sites) \
        == MAX_SITES


# -- one per signer, seniority ---------------------------------------------------------

def test_newest_per_signer_wins() -> None:
    a1, a2, a3 = ad(A, ts=NOW, price=1), ad(A, ts=NOW + 5, price=2), ad(A, ts=NOW + 3)
    b1 = ad(B)
    now = NOW + 10
    assert newest_ads([a1, b1, a2, a3], now) == [a2, b1]   # order: first appearance
    assert newest_ads([a3, a2, a1, b1], now) == [a2, b1]
    assert newest_ads([b1, a1, a3], now) == [b1, a3]


def test_newest_ties_go_to_the_larger_encoding_and_expired_are_left_out() -> None:
    x, y = ad(A, price=5), ad(A, price=6)
    big = max(x, y, key=lambda a: a.value)
    assert newest_ads([x, y], NOW) == [big]
    assert newest_ads([y, x], NOW) == [big]
    short, long = ad(A, ts=NOW + 9, ttl=TTL), ad(A, ts=NOW, ttl=3 * TTL)
    assert newest_ads([short, long], NOW + 9) == [short]
    assert newest_ads([short, long], NOW + 9 + TTL) == [long]   # the newer one expired
    assert newest_ads([short, long], NOW + 3 * TTL) == []


def test_newest_ads_keep_only_signers_meeting_the_puzzle() -> None:
    idents = [Identity(bytes([0x70, i]) + bytes(30)) for i in range(64)]
    good = next(i for i in idents if meets_puzzle(i.node_id, 3))
    bad = next(i for i in idents if not meets_puzzle(i.node_id, 3))
    ads = [ad(bad), ad(good)]
    assert newest_ads(ads, NOW, puzzle_bits=3) == [ad(good)]
    assert newest_ads(ads, NOW) == ads


def test_held_signers_keep_their_places() -> None:
    held = [ad(A), ad(B), ad(C)]
    # a newcomer finds no free place
    assert keep_ads(held, [ad(D, ts=NOW + 1)], NOW + 1, cap=3) == held
    # a held signer's newer advert keeps its place; its older one changes nothing
    newer_b = ad(B, ts=NOW + 2, price=99)
    assert keep_ads(held, [ad(D), newer_b], NOW + 2, cap=3) == [ad(A), newer_b, ad(C)]
    assert keep_ads(held, [ad(B, ts=NOW - 1, price=98)], NOW, cap=3) == held


def test_a_newcomer_takes_a_free_place_in_arrival_order() -> None:
    held = [ad(A, ttl=TTL), ad(B, ttl=3 * TTL), ad(C, ttl=3 * TTL)]
    later = NOW + TTL                                       # A's advert has expired
    d, e = ad(D, ts=later, ttl=TTL), ad(E, ts=later, ttl=TTL)
    assert keep_ads(held, [d, e], later, cap=3) == [held[1], held[2], d]
    assert keep_ads([held[0]], [e, d], NOW, cap=3) == [held[0], e, d]
    assert keep_ads([], [d, e], later, cap=1) == [d]


def test_the_default_cap_is_max_ticket_ads() -> None:
    held = [ad(b) for b in BROKERS[:MAX_TICKET_ADS]]
    newcomers = [ad(b) for b in BROKERS[MAX_TICKET_ADS:MAX_TICKET_ADS + 3]]
    assert keep_ads(held, newcomers, NOW) == held
    assert keep_ads(held[:-1], newcomers, NOW) == [*held[:-1], newcomers[0]]
