"""What a storer keeps of an ``offers/<type>`` set (docs/design.md section 3). Pure: no
I/O, no clock.

The places of a set (:data:`~p2pmarket.dht.offers.MAX_OFFERS`) are scarce, and
anyone can sign offers with throw-away keys and any ``ts`` up to the clock skew
ahead. The signer's ``ts`` therefore orders only one signer's own entries (the
newest wins); across signers the storer ranks by what it saw itself, counting
arrivals (:class:`HeldOffer`: when it first saw the signer, and when the signer's
current envelope arrived):

- **Established places** (``cap - fresh``) go by seniority: the signers this storer
  has held longest, for as long as their entries stay live (a republish keeps the
  place; an entry that lapses loses it). New keys never take an established place
  from anyone: they only fill one that is free.
- **Fresh places** (``fresh``) go to the other signers by the arrival of their
  current envelope, latest first: a host that just (re)published gets in even when
  the established places are full, and a flood of fresh keys can take these places
  but no others.
- Within each part, entries whose URL host's prefix already has ``offers_cap`` ranked
  before them come after all others (:class:`~p2pmarket.dht.prefixes.PrefixPolicy`):
  one network takes more places only while no other network wants them.
- Signers whose node id misses the genesis puzzle are not kept (``puzzle_bits``: on
  a network that sets it, every throw-away key costs that much work).

The container lists the kept entries established first (most senior first), then the
fresh ones in order of arrival, so a storer that hands a set on passes its ranking
along: entries that arrive in one store count as arriving in their order there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from p2pmarket.dht.offers import MAX_OFFERS, OfferEntry, fit_offer_set, merge_offers
from p2pmarket.dht.prefixes import PrefixPolicy
from p2pmarket.dht.records import url_host

FRESH_PLACES = MAX_OFFERS // 3
"""Places of a full set that go to the latest arrivals rather than by seniority."""


@dataclass(frozen=True)
class HeldOffer:
    """An entry a storer holds, with the arrival counts it ranks by."""

    entry: OfferEntry
    first_seen: int
    """The arrival number of the first entry of this signer the storer kept (and has
    held ever since)."""
    arrived: int
    """The arrival number of this very envelope."""


@dataclass(frozen=True)
class KeptOffers:
    """The outcome of :func:`keep_offers`."""

    value: bytes
    """The container, entries in the order described in the module docstring."""
    held: tuple[HeldOffer, ...]
    """The kept entries in that order (the ``held`` of the next merge)."""
    refused: tuple[OfferEntry, ...]
    """Live entries (held before or incoming) that found no place."""
    next_arrival: int
    """The arrival number to give the next incoming entry."""

    @property
    def entries(self) -> list[OfferEntry]:
        return [h.entry for h in self.held]


def _cap_order(items: Iterable[HeldOffer], policy: PrefixPolicy | None,
               seen: dict[str, int]) -> list[HeldOffer]:
    """``items`` in order, those past ``policy.offers_cap`` for their URL host's prefix
    (counting the prefixes already in ``seen``, which is updated) moved last."""
    if policy is None:
        return list(items)
    within: list[HeldOffer] = []
    over: list[HeldOffer] = []
    for item in items:
        prefix = policy.claimed_prefix(url_host(item.entry.url))
        if prefix is not None:
            seen[prefix] = seen.get(prefix, 0) + 1
            if seen[prefix] > policy.offers_cap:
                over.append(item)
                continue
        within.append(item)
    return within + over


def keep_offers(key: str, held: Sequence[HeldOffer], incoming: Iterable[OfferEntry],
                now_us: int, next_arrival: int, *, cap: int = MAX_OFFERS,
                fresh: int = FRESH_PLACES, policy: PrefixPolicy | None = None,
                puzzle_bits: int = 0) -> KeptOffers:
    """Merge ``incoming`` (arriving now, in order, numbered from ``next_arrival``) into
    ``held`` by the rule in the module docstring; keep at most ``cap`` entries that fit
    in one value."""
    counter = next_arrival
    known = {h.entry.node_id: h for h in held}
    arrivals: dict[bytes, int] = {}
    fresh_entries = list(incoming)
    for entry in fresh_entries:
        arrivals.setdefault(entry.node_id, counter)
        counter += 1
    merged = merge_offers([*(h.entry for h in held), *fresh_entries], now_us, puzzle_bits)
    items: list[HeldOffer] = []
    for entry in merged:
        old = known.get(entry.node_id)
        if old is not None and old.entry.expires > now_us:
            arrived = old.arrived if old.entry is entry or old.entry.value == entry.value \
                else arrivals[entry.node_id]
            items.append(HeldOffer(entry, old.first_seen, arrived))
        else:
            items.append(HeldOffer(entry, arrivals[entry.node_id], arrivals[entry.node_id]))
    senior = _cap_order(sorted(items, key=lambda h: h.first_seen), policy, {})
    established = senior[: max(0, cap - fresh)]
    seen: dict[str, int] = {}
    _cap_order(established, policy, seen)   # what the established places already count
    chosen = {h.entry.node_id for h in established}
    rest = sorted((h for h in items if h.entry.node_id not in chosen),
                  key=lambda h: -h.arrived)
    latest = _cap_order(rest, policy, seen)[: max(0, cap - len(established))]
    ranked = [*established, *latest]
    _, fitted = fit_offer_set(key, [h.entry for h in ranked])
    fits = {e.node_id for e in fitted}
    order = [h for h in established if h.entry.node_id in fits] + sorted(
        (h for h in latest if h.entry.node_id in fits), key=lambda h: h.arrived)
    value, _ = fit_offer_set(key, [h.entry for h in order])
    return KeptOffers(value=value, held=tuple(order),
                      refused=tuple(h.entry for h in items if h.entry.node_id not in fits),
                      next_arrival=counter)


def repair_value(key: str, entries: Sequence[OfferEntry], *, cap: int = MAX_OFFERS,
                 policy: PrefixPolicy | None = None) -> tuple[bytes, list[OfferEntry]]:
    """The set a reader sends close nodes that lacked entries: ``entries`` in the order
    given (best supported first), within-cap prefixes first, at most ``cap`` that fit."""
    items = [HeldOffer(e, i, i) for i, e in enumerate(entries)]
    ranked = _cap_order(items, policy, {})[: max(0, cap)]
    return fit_offer_set(key, [h.entry for h in ranked])
