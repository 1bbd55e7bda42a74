"""Discovery: Kademlia (the ``kademlia`` package) with signed records and the offer index.

See DESIGN.md section 3. :mod:`.records` (key names, host records),
:mod:`.offers` (the offer index, ranking) and :mod:`.evidence_records` are pure
(formats, validation, merging), :mod:`.storage` validates every store,
:mod:`.routing` fixes the stock routing table and keeps RTTs, :mod:`.protocol`
subclasses the kademlia protocol, :mod:`.lookup` is the iterative lookup,
:mod:`.node` is the service (built from :mod:`.node_base`, :mod:`.node_records`
and :mod:`.node_evidence`), :mod:`.persist` its sqlite state, :mod:`.evidence`
the fetching and checking of large proofs (``evidence/<id>``), :mod:`.market`
the multi-type market query (pure), :mod:`.gateway` the HTTP face for nodes that
cannot send UDP.
"""

from p2pmarket.dht.checks import DhtError
from p2pmarket.dht.evidence_records import EvidenceEntry, evidence_doc
from p2pmarket.dht.node import DhtNode
from p2pmarket.dht.offerquery import MarketHost, market_doc
from p2pmarket.dht.offers import OfferEntry, make_offer_entry, merge_offers, offer_doc, rank_offers
from p2pmarket.dht.records import (
    DocRef,
    HostRecord,
    ResourceAd,
    evidence_key,
    host_doc,
    host_key,
    key_digest,
    make_host_record,
    offers_key,
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
