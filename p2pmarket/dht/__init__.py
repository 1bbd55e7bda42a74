"""Discovery: Kademlia (the ``kademlia`` package) with signed records and the offer index.

See docs/design.md section 3. The DHT knows no proof format and imports nothing of the
audit: whoever builds a node, a storage or a gateway client passes a
:data:`ProofVerifier` (the audit's :func:`p2pmarket.audit.evidence.proof_host_id`).

Pure (formats, validation, merging; ``now`` comes in as an argument):
:mod:`.checks` (:class:`DhtError` and the checks every record shares),
:mod:`.records` (key names, host records), :mod:`.offershards` (the shards of
the offer index), :mod:`.offers` (its entries and sets, ranking),
:mod:`.evidence_records` (``evidence/<id>`` proofs of misbehaviour),
:mod:`.ratelimit` (token buckets on a monotonic clock).

The rest: :mod:`.storage` validates every store; the protocol is built in three
layers, :mod:`.rpc` (rpcudp's datagrams, RTT timeouts), :mod:`.contacts`
(verified contacts, bans, hand-off) and :mod:`.protocol` (the RPC handlers);
:mod:`.routing` fixes the stock routing table and keeps RTTs; :mod:`.lookup` is
the iterative lookup; :mod:`.node` is the service (built from
:mod:`.node_base`, :mod:`.node_records` and :mod:`.node_evidence`),
:mod:`.persist` its sqlite state, :mod:`.evidence` the fetching and checking of
large proofs; :mod:`.offerquery` the walk over the shards and the multi-type
market query; :mod:`.gateway` the HTTP face for nodes that cannot send UDP.

Exported here: what callers outside the DHT use to run a node and read what it
finds.
"""
from p2pmarket.dht.checks import DhtError
from p2pmarket.dht.evidence_records import EvidenceEntry, ProofVerifier, evidence_doc
from p2pmarket.dht.node import DhtNode
from p2pmarket.dht.offerquery import MarketHost, market_doc
from p2pmarket.dht.offers import OfferEntry, make_offer_entry, merge_offers, offer_doc, rank_offers
from p2pmarket.dht.prefixes import PrefixPolicy
from p2pmarket.dht.records import (
    DocRef,
    HostRecord,
    ResourceAd,
    evidence_key,
    host_doc,
    host_key,
    key_digest,
    make_host_record,
)
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
    "ProofVerifier",
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
    "rank_offers",
]
