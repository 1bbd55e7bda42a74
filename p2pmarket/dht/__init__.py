"""Discovery: Kademlia (the ``kademlia`` package) with signed records and the offer index.

See DESIGN.md section 3. :mod:`.records` is pure (formats, validation,
merging, ranking), :mod:`.storage` validates every store, :mod:`.protocol`
subclasses the kademlia protocol and does lookups, :mod:`.node` is the service.
"""

from p2pmarket.dht.node import DhtNode
from p2pmarket.dht.records import (
    DhtError,
    HostRecord,
    OfferEntry,
    ResourceAd,
    evidence_key,
    host_key,
    key_digest,
    make_host_record,
    make_offer_entry,
    merge_offers,
    offers_key,
    rank_offers,
)
from p2pmarket.dht.storage import RecordStorage

__all__ = [
    "DhtError",
    "DhtNode",
    "HostRecord",
    "OfferEntry",
    "RecordStorage",
    "ResourceAd",
    "evidence_key",
    "host_key",
    "key_digest",
    "make_host_record",
    "make_offer_entry",
    "merge_offers",
    "offers_key",
    "rank_offers",
]
