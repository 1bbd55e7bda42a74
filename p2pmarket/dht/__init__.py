"""Discovery: Kademlia (the ``kademlia`` package) with signed records and the offer index.

See DESIGN.md section 3. :mod:`.records` is pure (formats, validation, merging,
ranking), :mod:`.storage` validates every store, :mod:`.routing` fixes the
stock routing table and keeps RTTs, :mod:`.protocol` subclasses the kademlia
protocol, :mod:`.lookup` is the iterative lookup, :mod:`.node` is the service,
:mod:`.persist` its sqlite state, :mod:`.evidence` the fetching and checking of
large proofs (``evidence/<id>``), :mod:`.market` the multi-type market query
(pure), :mod:`.gateway` the HTTP face for nodes that cannot send UDP.
"""

from p2pmarket.dht.market import MarketHost, market_doc
from p2pmarket.dht.node import DhtNode
from p2pmarket.dht.records import (
    DhtError,
    DocRef,
    EvidenceEntry,
    HostRecord,
    OfferEntry,
    ResourceAd,
    evidence_doc,
    evidence_key,
    host_doc,
    host_key,
    key_digest,
    make_host_record,
    make_offer_entry,
    merge_offers,
    offer_doc,
    offers_key,
    rank_offers,
)
from p2pmarket.dht.routing import PrefixPolicy
from p2pmarket.dht.storage import RecordStorage

__all__ = [
    "DhtError",
    "DhtNode",
    "DocRef",
    "EvidenceEntry",
    "HostRecord",
    "MarketHost",
    "OfferEntry",
    "PrefixPolicy",
    "RecordStorage",
    "ResourceAd",
    "evidence_doc",
    "evidence_key",
    "host_doc",
    "host_key",
    "key_digest",
    "make_host_record",
    "make_offer_entry",
    "market_doc",
    "merge_offers",
    "offer_doc",
    "offers_key",
    "rank_offers",
]
