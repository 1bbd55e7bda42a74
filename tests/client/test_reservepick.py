"""Which broker and site a reservation goes to (client/reservepick.py): only brokers
advertising every wanted type at one common site, with enough for a window covering
the term; cheapest first, then broker key, then site key. Pure tests."""

from __future__ import annotations

from collections.abc import Sequence

from p2pmarket.broker.policy import HOUR_US, Item, price_of
from p2pmarket.client.reservepick import Candidate, candidates
from p2pmarket.core.identity import Identity
from p2pmarket.dht.ticketads import SiteAmount, TicketAd, make_ticket_ad
from p2pmarket.sharp.claims import Term

NOW = 1_700_000_000_000_000
TTL = 1_500_000_000
TERM = Term(NOW + HOUR_US, NOW + 3 * HOUR_US)
WINDOW = (NOW, NOW + 4 * HOUR_US)
B1, B2, B3, B4 = (Identity(bytes([0x30, i]) + bytes(30)) for i in range(4))
S1, S2, S3 = (bytes([0x90 + i]) * 32 for i in range(3))
WANTS = {"cpu": 2000, "memory": 4096}


def ad(broker: Identity, rtype: str, price: int,
       where: Sequence[tuple[bytes, int] | tuple[bytes, int, int, int]]) -> TicketAd:
    sites = [SiteAmount(w[0], w[1], *(w[2:] if len(w) == 4 else WINDOW)) for w in where]
    return make_ticket_ad(broker, resource_type=rtype, url=f"http://{broker.node_id.hex()}",
                          sites=sites, price=price, now_us=NOW, ttl_us=TTL)


def url(broker: Identity) -> str:
    return f"http://{broker.node_id.hex()}"


def cand(broker: Identity, site: bytes, prices: dict[str, int],
         wants: dict[str, int] = WANTS, term: Term = TERM) -> Candidate:
    items = tuple(Item(site, t, c) for t, c in wants.items())
    return Candidate(broker.public_key, url(broker), site, items,
                     price_of(items, term, prices))


def test_one_common_site_with_every_type() -> None:
    ads = {"cpu": [ad(B1, "cpu", 10, [(S1, 2000), (S2, 5000)])],
           "memory": [ad(B1, "memory", 3, [(S2, 4096), (S3, 99999)])]}
    got = candidates(ads, WANTS, TERM)
    assert got == [cand(B1, S2, {"cpu": 10, "memory": 3})]
    only = got[0]
    assert only.items == (Item(S2, "cpu", 2000), Item(S2, "memory", 4096))
    # the price is the posted prices' (2 h): 2000 * 10 * 2 + 4096 * 3 * 2
    assert only.price == 40_000 + 24_576
    assert only.url == url(B1)


def test_a_broker_missing_a_type_or_a_common_site_is_left_out() -> None:
    ads = {"cpu": [ad(B1, "cpu", 10, [(S1, 9000)]), ad(B2, "cpu", 10, [(S1, 9000)])],
           "memory": [ad(B1, "memory", 3, [(S2, 9000)]), ad(B3, "memory", 3, [(S1, 9000)])]}
    assert candidates(ads, WANTS, TERM) == []
    # one type wanted: each broker with it counts
    got = candidates(ads, {"cpu": 2000}, TERM)
    assert {(c.broker, c.site) for c in got} == {(B1.public_key, S1), (B2.public_key, S1)}


def test_the_amount_must_suffice() -> None:
    for amount, ok in ((2000, True), (1999, False)):
        ads = {"cpu": [ad(B1, "cpu", 10, [(S1, amount)])],
               "memory": [ad(B1, "memory", 3, [(S1, 4096)])]}
        assert bool(candidates(ads, WANTS, TERM)) is ok, amount
    ads = {"cpu": [ad(B1, "cpu", 10, [(S1, 2000)])],
           "memory": [ad(B1, "memory", 3, [(S1, 4095)])]}
    assert candidates(ads, WANTS, TERM) == []


def test_the_window_must_cover_the_term() -> None:
    mem = ad(B1, "memory", 3, [(S1, 9999)])
    windows = {
        (TERM.start, TERM.end): True,                 # exactly the term
        (TERM.start - 1, TERM.end + 1): True,
        (TERM.start + 1, TERM.end): False,            # starts late
        (TERM.start, TERM.end - 1): False,            # ends early
        (TERM.end, TERM.end + HOUR_US): False,        # after
    }
    for (start, end), ok in windows.items():
        ads = {"cpu": [ad(B1, "cpu", 10, [(S1, 2000, start, end)])], "memory": [mem]}
        assert bool(candidates(ads, WANTS, TERM)) is ok, (start, end)


def test_cheapest_first_then_broker_then_site() -> None:
    # B1 cheap at two sites, B2 dearer, B3 as cheap as B1, B4 at one site
    cheap = {"cpu": 10, "memory": 3}
    dear = {"cpu": 11, "memory": 3}
    ads: dict[str, list[TicketAd]] = {"cpu": [], "memory": []}
    for broker, prices, where in ((B2, dear, [S1]), (B1, cheap, [S3, S1]),
                                  (B3, cheap, [S2]), (B4, {"cpu": 1, "memory": 1}, [S3])):
        for t in ("cpu", "memory"):
            ads[t].append(ad(broker, t, prices[t], [(s, 10_000) for s in where]))
    got = candidates(ads, WANTS, TERM)
    tied = sorted([(B1.public_key, S1), (B1.public_key, S3), (B3.public_key, S2)])
    assert got[0] == cand(B4, S3, {"cpu": 1, "memory": 1})
    assert [(c.broker, c.site) for c in got[1:4]] == tied
    assert got[4] == cand(B2, S1, dear)
    assert len(got) == 5
    assert [c.price for c in got] == sorted(c.price for c in got)
    for c in got:
        prices = {t: next(a.price for a in ads[t] if a.broker == c.broker) for t in WANTS}
        assert c.price == price_of(c.items, TERM, prices)


def test_the_price_is_policy_price_of_rounded_up() -> None:
    term = Term(NOW + HOUR_US, NOW + HOUR_US + 1_000_000)      # one second
    wants = {"cpu": 1, "memory": 7}
    ads = {"cpu": [ad(B1, "cpu", 5, [(S1, 10)])],
           "memory": [ad(B1, "memory", 1000, [(S1, 10)])]}
    [got] = candidates(ads, wants, term)
    # cpu: 5/3600 -> 1; memory: 7000/3600 = 1.94 -> 2
    assert got.price == 3 == price_of(got.items, term, {"cpu": 5, "memory": 1000})


def test_adverts_filed_under_another_type_are_ignored() -> None:
    mem_as_cpu = ad(B1, "memory", 1, [(S1, 9999)])
    ads = {"cpu": [mem_as_cpu], "memory": [ad(B1, "memory", 3, [(S1, 9999)])]}
    assert candidates(ads, WANTS, TERM) == []
    ads["cpu"].append(ad(B1, "cpu", 10, [(S1, 2000)]))
    assert candidates(ads, WANTS, TERM) == [cand(B1, S1, {"cpu": 10, "memory": 3})]


def test_no_adverts_no_candidates() -> None:
    assert candidates({}, WANTS, TERM) == []
    assert candidates({"cpu": [], "memory": []}, WANTS, TERM) == []
