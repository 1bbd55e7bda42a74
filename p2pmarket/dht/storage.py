"""Validating storage for kademlia (docs/design.md section 3).

Every store is checked: the value must be a valid, unexpired record whose key
name hashes (sha1, as kademlia does) to exactly the digest key it is stored
under. Host records obey their ``seq`` and, like offer entries, must come from a node
id that meets the genesis puzzle (``puzzle_bits``, the price of a throw-away key).
Offer sets are merged entry by entry by :func:`~p2pmarket.dht.offers.keep_offers`:
established signers keep their places, newcomers take only free ones (``set_full``
when none is left), entries past the per-prefix cap of their URL hosts rank last.
Evidence sets keep only verified proofs: inline ones are verified on the way in
(by the :data:`~p2pmarket.dht.evidence_records.ProofVerifier` the storage is
given); a hash-only entry the storage has not checked itself is handed to
:attr:`RecordStorage.on_evidence` (the node fetches the body, checks it and then
calls :meth:`RecordStorage.put_evidence`); without that hook it is refused.
Expired values are dropped when read and are never returned, iterated (the stock
package republishes what ``__iter__``/``iter_older_than`` yield) or handed to
new contacts. Refusals are counted in :attr:`RecordStorage.counters`.
:func:`parse_record` decodes and verifies a stored value of any kind.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Container, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from kademlia.storage import IStorage

from p2pmarket.core.clock import Clock, now_us
from p2pmarket.core.identity import meets_puzzle
from p2pmarket.core.wire import WireError, unpack
from p2pmarket.dht.checks import MAX_VALUE_BYTES, DhtError, refusal
from p2pmarket.dht.evidence_records import (
    EVIDENCE_SET_KIND,
    MAX_EVIDENCE,
    EvidenceEntry,
    EvidenceSet,
    ProofVerifier,
    fit_evidence_set,
    merge_evidence,
    parse_evidence_set,
)
from p2pmarket.dht.offerkeep import FRESH_PLACES, HeldOffer, KeptOffers, keep_offers
from p2pmarket.dht.offers import (
    MAX_OFFERS,
    OFFER_SET_KIND,
    OfferEntry,
    OfferSet,
    old_format,
    parse_offer_set,
)
from p2pmarket.dht.prefixes import PrefixPolicy
from p2pmarket.dht.records import HOST_KIND, HostRecord, key_digest, url_host
from p2pmarket.dht.ticketads import (
    TICKET_SET_KIND,
    TicketAd,
    TicketSet,
    fit_ticket_set,
    keep_ads,
    parse_ticket_set,
)

_E = TypeVar("_E", OfferEntry, EvidenceEntry)

DEFAULT_MAX_KEYS = 10_000

EvidenceHook = Callable[[bytes, str, list[EvidenceEntry]], int]
"""``(digest key, key name, unchecked hash-only entries)`` -> how many were scheduled
for checking."""


def parse_record(value: object, now_us: int, proof_verifier: ProofVerifier,
                 known: Mapping[bytes, OfferEntry] | None = None,
                 known_proofs: Container[bytes] = ()
                 ) -> HostRecord | OfferSet | EvidenceSet | TicketSet:
    """A stored value of any kind, verified (the key name it claims is in ``.key``);
    for an evidence set, only the inline entries are verified, with ``proof_verifier``
    (see :func:`parse_evidence_set`)."""
    if not isinstance(value, bytes):
        raise refusal("malformed", "value must be bytes")
    if len(value) > MAX_VALUE_BYTES:
        raise refusal("too_large", f"value larger than {MAX_VALUE_BYTES} bytes")
    try:
        doc = unpack(value, MAX_VALUE_BYTES)
    except WireError:
        raise refusal("malformed", "value is not msgpack") from None
    kind = doc.get("kind") if isinstance(doc, dict) else None
    old_format(kind)
    if kind == OFFER_SET_KIND:
        return parse_offer_set(value, now_us, known)
    if kind == HOST_KIND:
        return HostRecord.from_bytes(value, now_us)
    if kind == EVIDENCE_SET_KIND:
        return parse_evidence_set(value, now_us, proof_verifier, known_proofs)
    if kind == TICKET_SET_KIND:
        return parse_ticket_set(value, now_us)
    raise refusal("unsupported", f"unsupported record kind {kind!r:.40}")


@dataclass
class _Item:
    value: bytes
    stored_us: int
    expires: int
    """The earliest expiry of what the item holds: reaching it triggers a prune."""
    host: HostRecord | None = None
    held: list[HeldOffer] = field(default_factory=list)
    """Offer entries in the set's order (:func:`~p2pmarket.dht.offerkeep.keep_offers`)."""
    evidence: list[EvidenceEntry] = field(default_factory=list)
    key: str = ""
    """The key name (evidence sets, ticket sets)."""
    ads: list[TicketAd] = field(default_factory=list)
    """Brokers' ticket adverts (``tickets/<type>``), in the set's order."""

    @property
    def offers(self) -> list[OfferEntry]:
        return [h.entry for h in self.held]


class RecordStorage(IStorage):  # type: ignore[misc]
    """An ``IStorage`` that only keeps valid records. Keys are 20-byte digests;
    ``proof_verifier`` checks the proofs in evidence sets; ``puzzle_bits`` is the
    genesis puzzle every record's node id must meet."""

    def __init__(self, proof_verifier: ProofVerifier, clock: Clock = now_us,
                 max_keys: int = DEFAULT_MAX_KEYS, max_offers: int = MAX_OFFERS,
                 policy: PrefixPolicy | None = None, puzzle_bits: int = 0) -> None:
        self.proof_verifier = proof_verifier
        self.clock = clock
        self.max_keys = max_keys
        self.max_offers = max_offers
        self.policy = policy if policy is not None else PrefixPolicy()
        self.puzzle_bits = puzzle_bits
        self.fresh_places = max_offers * FRESH_PLACES // MAX_OFFERS
        self._arrivals = 0
        self.counters: dict[str, int] = {}
        self.on_evidence: EvidenceHook | None = None
        self.max_evidence = MAX_EVIDENCE
        self._data: OrderedDict[bytes, _Item] = OrderedDict()

    # -- writing --------------------------------------------------------------

    def put(self, dkey: bytes, value: bytes) -> bool:
        """Validate and store (or merge) ``value`` under ``dkey``; False if refused."""
        return self.put_reason(dkey, value) is None

    def put_reason(self, dkey: bytes, value: bytes) -> str | None:
        """:meth:`put`, giving the refusal reason (None when stored)."""
        now = self.clock()
        try:
            if not isinstance(dkey, bytes) or len(dkey) != 20:
                raise DhtError("digest key must be 20 bytes", "malformed")
            held = self._data.get(dkey)
            known = {e.value: e for e in held.offers} if held is not None else None
            proofs = {e.sha256 for e in held.evidence if e.inline} if held is not None \
                else set()
            record = parse_record(value, now, self.proof_verifier, known, proofs)
            if key_digest(record.key) != dkey:
                raise DhtError("record stored under another key's digest", "wrong_key")
            if isinstance(record, HostRecord):
                self._put_host(dkey, record, now)
            elif isinstance(record, EvidenceSet):
                self._put_evidence_set(dkey, record, now)
            elif isinstance(record, TicketSet):
                self._put_ticket_set(dkey, record, now)
            else:
                self._put_offers(dkey, record, now)
        except DhtError as exc:
            self._reject(str(exc.value))
            return str(exc.value)
        self._count("stored")
        return None

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.put(key, value)

    def _make_room(self, dkey: bytes, now: int) -> None:
        if dkey in self._data or len(self._data) < self.max_keys:
            return
        for k in list(self._data):
            self._live(k, now)
        if len(self._data) >= self.max_keys:
            raise DhtError("storage full", "full")

    def _put_host(self, dkey: bytes, record: HostRecord, now: int) -> None:
        if not meets_puzzle(record.node_id, self.puzzle_bits):
            raise DhtError("host id does not meet the genesis puzzle", "puzzle")
        old = self._live(dkey, now)
        prev = old.host if old is not None else None
        if prev is not None and (record.seq < prev.seq or (
                record.seq == prev.seq and record.value != prev.value)):
            raise DhtError("host record seq not newer than the stored one", "stale_seq")
        self._make_room(dkey, now)
        self._data.pop(dkey, None)
        self._data[dkey] = _Item(record.value, now, record.expires, host=record)

    def _put_offers(self, dkey: bytes, offer_set: OfferSet, now: int) -> None:
        if offer_set.dropped:
            self._count("dropped_entries", offer_set.dropped)
        if offer_set.forged:
            raise DhtError("offer set holds forged entries", "forged")
        if not offer_set.entries:
            raise DhtError("offer set holds no valid entry", "empty")
        entries = [e for e in offer_set.entries if meets_puzzle(e.node_id, self.puzzle_bits)]
        self._count("dropped_entries.puzzle", len(offer_set.entries) - len(entries))
        if not entries:
            raise DhtError("no offer signer meets the genesis puzzle", "puzzle")
        old = self._live(dkey, now)
        previous = old.held if old is not None else []
        kept = self._keep(offer_set.key, previous, entries, now)
        placed = {e.node_id for e in kept.entries}
        before = {h.entry.node_id for h in previous}
        self._count("capped_entries", sum(1 for e in kept.refused if e.node_id in before))
        self._count("refused_entries", sum(1 for e in kept.refused if e.node_id not in before))
        if not any(e.node_id in placed for e in entries):
            raise DhtError("offer set full of established entries", "set_full")
        self._make_room(dkey, now)
        self._data.pop(dkey, None)
        self._data[dkey] = _Item(kept.value, now, min(e.expires for e in kept.entries),
                                 held=list(kept.held))

    def _put_ticket_set(self, dkey: bytes, ticket_set: TicketSet, now: int) -> None:
        self._count("dropped_entries", ticket_set.dropped)
        if ticket_set.forged:
            raise DhtError("ticket set holds forged adverts", "forged")
        if not ticket_set.entries:
            raise DhtError("ticket set holds no valid advert", "empty")
        old = self._live(dkey, now)
        previous = old.ads if old is not None else []
        kept = keep_ads(previous, ticket_set.entries, now, cap=self.max_offers,
                        puzzle_bits=self.puzzle_bits)
        if not {a.value for a in ticket_set.entries} & {a.value for a in kept}:
            raise DhtError("ticket set full, or nothing newer in it", "set_full")
        value, kept = fit_ticket_set(ticket_set.key, kept)
        if not kept:
            raise DhtError("ticket set holds no valid advert", "empty")
        self._make_room(dkey, now)
        self._data.pop(dkey, None)
        self._data[dkey] = _Item(value, now, min(a.expires for a in kept), ads=kept,
                                 key=ticket_set.key)

    def ticket_ads(self, dkey: bytes) -> list[TicketAd]:
        item = self._live(dkey, self.clock())
        return [] if item is None else list(item.ads)

    def _keep(self, key: str, held: list[HeldOffer], incoming: list[OfferEntry],
              now: int) -> KeptOffers:
        kept = keep_offers(key, held, incoming, now, self._arrivals, cap=self.max_offers,
                           fresh=self.fresh_places, policy=self.policy,
                           puzzle_bits=self.puzzle_bits)
        self._arrivals = kept.next_arrival
        return kept

    def _put_evidence_set(self, dkey: bytes, evidence: EvidenceSet, now: int) -> None:
        if evidence.dropped:
            self._count("dropped_entries", evidence.dropped)
        for reason in evidence.reasons:
            self._count(f"evidence_rejected.{reason}")
        if evidence.forged:
            raise DhtError("evidence set holds invalid proofs", "forged")
        old = self._live(dkey, now)
        checked = {e.ident for e in old.evidence} if old is not None else set()
        ready = [e for e in evidence.entries if e.inline or e.ident in checked]
        unchecked = [e for e in evidence.entries if not e.inline and e.ident not in checked]
        scheduled = 0
        if unchecked:
            if self.on_evidence is not None:
                scheduled = self.on_evidence(dkey, evidence.key, unchecked)
            if scheduled:
                self._count("evidence_queued", scheduled)
        if ready:
            self.put_evidence(dkey, evidence.key, ready, now)
        elif not scheduled:
            if not evidence.entries:
                raise DhtError("evidence set holds no valid entry", "empty")
            raise DhtError("evidence entries could not be checked", "unchecked")

    def put_evidence(self, dkey: bytes, key: str, entries: list[EvidenceEntry],
                     now: int | None = None) -> list[EvidenceEntry]:
        """Merge *verified* entries (inline proofs checked, hash-only ones whose body was
        fetched and checked) into the set under ``dkey``; return what is kept."""
        now = self.clock() if now is None else now
        if key_digest(key) != dkey:
            raise DhtError("evidence stored under another key's digest", "wrong_key")
        old = self._live(dkey, now)
        previous = old.evidence if old is not None else []
        merged = merge_evidence([*previous, *entries], now, len(previous) + len(entries))
        value, kept = fit_evidence_set(key, self.cap_evidence_prefixes(merged)
                                       [: self.max_evidence])
        if not kept:
            raise DhtError("evidence set holds no entry that fits", "empty")
        self._make_room(dkey, now)
        self._data.pop(dkey, None)
        self._data[dkey] = _Item(value, now, min(e.expires for e in kept), evidence=kept,
                                  key=key)
        return kept

    def cap_evidence_prefixes(self, entries: list[EvidenceEntry]) -> list[EvidenceEntry]:
        """At most ``policy.offers_cap`` hash-only entries served from one network prefix,
        so one network cannot fill a set with proofs it may stop serving."""
        return self._cap_by_prefix(entries, lambda e: e.url or None)

    def _cap_by_prefix(self, entries: list[_E], url_of: Callable[[_E], str | None]
                       ) -> list[_E]:
        """``entries`` in order, dropping (and counting) those past ``policy.offers_cap``
        for the network prefix of their URL's host; entries with no URL are kept."""
        seen: dict[str, int] = {}
        out = []
        for entry in entries:
            url = url_of(entry)
            prefix = self.policy.claimed_prefix(url_host(url)) if url is not None else None
            if prefix is not None:
                seen[prefix] = seen.get(prefix, 0) + 1
                if seen[prefix] > self.policy.offers_cap:
                    self._count("capped_entries")
                    continue
            out.append(entry)
        return out

    # -- reading --------------------------------------------------------------

    def _live(self, dkey: bytes, now: int) -> _Item | None:
        """The item under ``dkey`` with anything expired removed (None if nothing is left)."""
        item = self._data.get(dkey)
        if item is None or item.expires > now:
            return item
        if item.host is not None:
            del self._data[dkey]
            self._count("expired")
            return None
        if item.evidence:
            proofs = [e for e in item.evidence if e.expires > now]
            self._count("expired", len(item.evidence) - len(proofs))
            if not proofs:
                del self._data[dkey]
                return None
            item.value, item.evidence = fit_evidence_set(item.key, proofs)
            item.expires = min(e.expires for e in item.evidence)
            return item
        if item.ads:
            ads = [a for a in item.ads if a.expires > now]
            self._count("expired", len(item.ads) - len(ads))
            if not ads:
                del self._data[dkey]
                return None
            item.value, item.ads = fit_ticket_set(item.key, ads)
            item.expires = min(a.expires for a in item.ads)
            return item
        live = [h for h in item.held if h.entry.expires > now]
        self._count("expired", len(item.held) - len(live))
        if not live:
            del self._data[dkey]
            return None
        kept = self._keep(live[0].entry.key, live, [], now)
        item.value, item.held = kept.value, list(kept.held)
        item.expires = min(e.expires for e in item.offers)
        return item

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        item = self._live(key, self.clock())
        return default if item is None else item.value

    def __getitem__(self, key: bytes) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self.get(key) is not None

    def __len__(self) -> int:
        now = self.clock()
        return sum(1 for k in list(self._data) if self._live(k, now) is not None)

    def __bool__(self) -> bool:  # an empty storage is still a storage
        return True

    def host_record(self, dkey: bytes) -> HostRecord | None:
        item = self._live(dkey, self.clock())
        return None if item is None else item.host

    def offer_entries(self, dkey: bytes) -> list[OfferEntry]:
        item = self._live(dkey, self.clock())
        return [] if item is None else list(item.offers)

    def evidence_entries(self, dkey: bytes) -> list[EvidenceEntry]:
        item = self._live(dkey, self.clock())
        return [] if item is None else list(item.evidence)

    def _items(self) -> list[tuple[bytes, _Item]]:
        now = self.clock()
        out = []
        for k in list(self._data):
            item = self._live(k, now)
            if item is not None:
                out.append((k, item))
        return out

    def iter_older_than(self, seconds_old: float) -> list[tuple[bytes, bytes]]:
        """Unexpired (key, value) pairs stored at least ``seconds_old`` ago."""
        cutoff = self.clock() - int(seconds_old * 1_000_000)
        return [(k, item.value) for k, item in self._items() if item.stored_us <= cutoff]

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter([(k, item.value) for k, item in self._items()])

    # -- counters -------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        if n:
            self.counters[name] = self.counters.get(name, 0) + n

    def _reject(self, reason: str) -> None:
        self._count("rejected")
        self._count(f"rejected.{reason}")

    def count_reject(self, reason: str) -> None:
        """Count a refusal decided outside :meth:`put` (e.g. a malformed RPC)."""
        self._reject(reason)
