"""``evidence/<node id>`` records: proofs of misbehaviour anyone may add, kept only when
they verify (docs/design.md sections 3 and 5). Proofs are built with the real builders of
:mod:`p2pmarket.audit.evidence`: inconsistency proofs (two signed authenticators for
one seq, ~300 bytes, stored inline) and non-conformance proofs over a padded audit log
(~9 KB, stored as ``{sha256, size, url}`` and fetched over HTTP)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from aiohttp import web
from dht_helpers import NOW, FakeClock, Swarm, make_genesis, serve, wait_for
from kademlia.node import Node

from p2pmarket.auction.hostconfig import HostConfig
from p2pmarket.auction.machine import new_state
from p2pmarket.auction.snapshot import snapshot
from p2pmarket.audit.entry import AuditAuthenticator
from p2pmarket.audit.evidence import (
    inconsistency_proof,
    nonconformance_proof,
    proof_host_id,
    verify_proof,
)
from p2pmarket.audit.log import AuditLog
from p2pmarket.audit.replay import replay
from p2pmarket.core.domains import AUDIT_ENTRY
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import pack, unpack
from p2pmarket.dht import DhtNode
from p2pmarket.dht.checks import MAX_VALUE_BYTES, DhtError
from p2pmarket.dht.evidence_records import (
    EVIDENCE_TTL_US,
    INLINE_PROOF_BYTES,
    MAX_EVIDENCE,
    EvidenceEntry,
    fit_evidence_set,
    make_evidence_entry,
    merge_evidence,
    parse_evidence_set,
)
from p2pmarket.dht.gateway import GatewayClient, GatewayDht, gateway_routes
from p2pmarket.dht.records import evidence_key, key_digest
from p2pmarket.dht.storage import RecordStorage, parse_record
from p2pmarket.ledger.chain import auth_message

HOST = Identity(b"\x5e" * 32)
OTHER = Identity(b"\x6f" * 32)


def signed(ident: Identity, seq: int, digest: bytes) -> AuditAuthenticator:
    return AuditAuthenticator(ident.public_key, seq, digest,
                              ident.sign(AUDIT_ENTRY, auth_message(ident.public_key, seq, digest)))


def small_proof(ident: Identity = HOST, seq: int = 7) -> bytes:
    """Two different entries signed for one seq: an inconsistency proof (inline size)."""
    return inconsistency_proof(signed(ident, seq, os.urandom(32)),
                               signed(ident, seq, os.urandom(32)))


def large_proof(ident: Identity = HOST, pad: int = 8) -> bytes:
    """A non-conformance proof over the host's own signed log: in.genesis, read-only
    entries, then an entry no rule allows (~1 KB a pad entry; > INLINE_PROOF_BYTES)."""
    log = AuditLog(":memory:", ident)
    state = new_state(ident.node_id, HostConfig({"cpu": 4000}, {"cpu": 1}, {}), 1_000_000,
                      3600 * 1_000_000)
    log.append("in.genesis", snapshot(state), 1)
    for i in range(pad):
        log.append("out.status", {"pad": os.urandom(500).hex()}, 2 + i)
    log.append("out.bogus", {}, 100)
    raws = [row[1] for row in log.raw(0, 1000)]
    fault = replay(raws).fault
    assert fault is not None
    auth = log.authenticator(log.head[0])
    assert auth is not None
    proof = nonconformance_proof(ident.public_key, None, raws, auth.sig, fault.seq, fault.rule)
    log.close()
    assert len(proof) > INLINE_PROOF_BYTES
    return proof


def forged_signature(proof: bytes) -> bytes:
    doc = unpack(proof)
    seq, digest, sig = doc["b"]
    doc["b"] = [seq, digest, bytes([sig[0] ^ 1]) + sig[1:]]
    return pack(doc)


def inline_set(node_id: bytes, *proofs: bytes, expires: int | None = None) -> bytes:
    """An evidence container written by hand (no checks: forgeries too)."""
    exp = NOW + EVIDENCE_TTL_US if expires is None else expires
    return pack({"kind": "dht.evidence", "key": evidence_key(node_id),
                 "entries": [{"proof": p, "expires": exp} for p in proofs]})


def ref_set(node_id: bytes, proof: bytes, url: str, expires: int) -> bytes:
    return pack({"kind": "dht.evidence", "key": evidence_key(node_id),
                 "entries": [{"sha256": hashlib.sha256(proof).digest(), "size": len(proof),
                              "url": url, "expires": expires}]})


# -- records and storage (pure) ------------------------------------------------------

def test_entries_inline_when_small_hash_only_when_large() -> None:
    small, large = small_proof(), large_proof()
    entry = make_evidence_entry(HOST.node_id, small, proof_host_id, now_us=NOW)
    assert entry.inline and entry.proof == small and entry.expires == NOW + EVIDENCE_TTL_US
    with pytest.raises(DhtError) as err:
        make_evidence_entry(HOST.node_id, large, proof_host_id, now_us=NOW)
    assert err.value.value == "no_url"
    ref = make_evidence_entry(HOST.node_id, large, proof_host_id, now_us=NOW, url="http://127.0.0.1:8000")
    assert not ref.inline and ref.size == len(large)
    assert ref.fetch_url == f"http://127.0.0.1:8000/dht/evidence/{ref.sha256.hex()}"
    value, kept = fit_evidence_set(evidence_key(HOST.node_id), [entry, ref])
    assert kept == [entry, ref] and len(value) <= MAX_VALUE_BYTES
    parsed = parse_record(value, NOW, proof_host_id)
    assert isinstance(parsed, type(parse_evidence_set(value, NOW, proof_host_id)))
    assert parsed.key == evidence_key(HOST.node_id)
    assert parse_evidence_set(value, NOW, proof_host_id).entries == (entry, ref)
    for bad in (forged_signature(small), small_proof(OTHER), b"\x80"):
        with pytest.raises(DhtError):
            make_evidence_entry(HOST.node_id, bad, proof_host_id, now_us=NOW)


def test_parse_refuses_forged_and_malformed_entries() -> None:
    good = small_proof()
    parsed = parse_evidence_set(
        inline_set(HOST.node_id, good, forged_signature(good), small_proof(OTHER)), NOW,
        proof_host_id)
    assert [e.proof for e in parsed.entries] == [good]
    assert parsed.forged == 2 and sorted(parsed.reasons) == ["bad_proof", "wrong_host"]
    # expired or too long entries are dropped as innocent (clocks differ)
    late = parse_evidence_set(inline_set(HOST.node_id, good, expires=NOW - 1), NOW, proof_host_id)
    assert late.entries == () and late.dropped == 1 and late.forged == 0
    far = parse_evidence_set(inline_set(HOST.node_id, good, expires=NOW + 2 * EVIDENCE_TTL_US),
                             NOW, proof_host_id)
    assert far.entries == () and far.forged == 0
    # a hash-only entry for a proof small enough to go inline is malformed
    small_ref = ref_set(HOST.node_id, good, "http://127.0.0.1:1", NOW + 10**9)
    assert parse_evidence_set(small_ref, NOW, proof_host_id).reasons == ("malformed",)
    bad_url = ref_set(HOST.node_id, large_proof(pad=6), "file:///etc/passwd", NOW + 10**9)
    assert parse_evidence_set(bad_url, NOW, proof_host_id).reasons == ("malformed",)
    for value in (pack({"kind": "dht.evidence", "key": "evidence/zz", "entries": []}),
                  pack({"kind": "dht.evidence", "key": "host/" + "a" * 40, "entries": []}),
                  pack([1])):
        with pytest.raises(DhtError):
            parse_evidence_set(value, NOW, proof_host_id)


def test_merge_dedups_by_hash_caps_and_prefers_inline() -> None:
    proofs = [small_proof(seq=i) for i in range(MAX_EVIDENCE + 3)]
    entries = [make_evidence_entry(HOST.node_id, p, proof_host_id, now_us=NOW) for p in proofs]
    again = make_evidence_entry(HOST.node_id, proofs[0], proof_host_id, now_us=NOW + 5)
    ref = make_evidence_entry(HOST.node_id, large_proof(), proof_host_id, now_us=NOW, url="http://h:1")
    merged = merge_evidence([ref, *entries, again], NOW)
    assert len(merged) == MAX_EVIDENCE and ref not in merged
    assert len({e.sha256 for e in merged}) == MAX_EVIDENCE
    assert merged == sorted(merged, key=EvidenceEntry.priority)
    assert merge_evidence([entries[0], again], NOW) == [again]   # the later expiry wins
    assert merge_evidence([again, entries[0]], NOW) == [again]
    assert merge_evidence([ref, entries[0]], NOW) == [entries[0], ref]   # inline first
    assert merge_evidence(entries, NOW + EVIDENCE_TTL_US) == []          # expired


def test_storage_keeps_verified_proofs_only(clock: FakeClock) -> None:
    storage = RecordStorage(proof_host_id, clock)
    key = evidence_key(HOST.node_id)
    dkey = key_digest(key)
    good = small_proof()
    assert storage.put_reason(dkey, inline_set(HOST.node_id, good)) is None
    held = storage.get(dkey)
    # forged proofs are refused, counted and change nothing
    assert storage.put_reason(dkey, inline_set(HOST.node_id, forged_signature(good))) == "forged"
    assert storage.put_reason(dkey, inline_set(HOST.node_id, small_proof(OTHER))) == "forged"
    assert storage.put_reason(key_digest(evidence_key(OTHER.node_id)),
                              inline_set(HOST.node_id, small_proof())) == "wrong_key"
    assert storage.get(dkey) == held
    assert storage.counters["rejected.forged"] == 2
    assert storage.counters["evidence_rejected.bad_proof"] == 1
    assert storage.counters["evidence_rejected.wrong_host"] == 1
    # the same proof again is one entry; the set is capped
    assert storage.put(dkey, inline_set(HOST.node_id, good))
    assert len(storage.evidence_entries(dkey)) == 1
    for i in range(MAX_EVIDENCE + 2):
        assert storage.put(dkey, inline_set(HOST.node_id, small_proof(seq=100 + i)))
    assert len(storage.evidence_entries(dkey)) == MAX_EVIDENCE
    assert len(storage.get(dkey) or b"") <= MAX_VALUE_BYTES
    # hash-only entries it has not checked: refused without a fetcher, queued with one
    large = large_proof()
    value = ref_set(HOST.node_id, large, "http://127.0.0.1:9", NOW + 10**9)
    assert storage.put_reason(dkey, value) == "unchecked"
    queued: list[EvidenceEntry] = []

    def fetcher(dkey: bytes, key: str, entries: list[EvidenceEntry]) -> int:
        queued.extend(entries)
        return len(entries)

    storage.on_evidence = fetcher
    assert storage.put_reason(dkey, value) is None and len(queued) == 1
    assert all(e.inline for e in storage.evidence_entries(dkey))
    # once checked (by the node), the entry goes in ahead of nothing: inline ones first
    storage.max_evidence = MAX_EVIDENCE + 1
    kept = storage.put_evidence(dkey, key, queued)
    assert kept[-1] == queued[0]
    # ... and the same (hash, url) again needs no new fetch
    assert storage.put_reason(dkey, value) is None and len(queued) == 1
    # entries expire (30 days), never earlier
    clock.advance(EVIDENCE_TTL_US / 1e6 - 60)
    assert storage.evidence_entries(dkey)
    clock.advance(120)
    assert storage.get(dkey) is None


# -- over the network ----------------------------------------------------------------

async def test_small_proof_published_by_one_node_is_found_by_another(swarm: Swarm) -> None:
    nodes = await swarm.grow(6)
    proof = small_proof()
    acks = await nodes[1].publish_evidence(HOST.node_id, proof)
    assert acks >= 4
    found = await nodes[4].get_evidence(HOST.node_id)
    assert found == [proof]
    checked = verify_proof(found[0], HOST.node_id)
    assert checked.type == "inconsistency" and checked.host == HOST.public_key
    assert await nodes[4].get_evidence(OTHER.node_id) == []
    # dedup: publishing it again changes nothing
    await nodes[2].publish_evidence(HOST.node_id, proof)
    assert await nodes[5].get_evidence(HOST.node_id) == [proof]
    # a bad proof is refused before it leaves
    with pytest.raises(DhtError) as err:
        await nodes[1].publish_evidence(HOST.node_id, forged_signature(proof))
    assert err.value.value == "bad_proof"
    with pytest.raises(DhtError) as err:
        await nodes[1].publish_evidence(OTHER.node_id, proof)
    assert err.value.value == "wrong_host"


async def test_large_proof_goes_by_hash_and_url_and_is_fetched(swarm: Swarm) -> None:
    nodes = await swarm.grow(5)
    publisher = nodes[1]
    runner, base = await serve(gateway_routes(publisher))
    publisher.url = base
    try:
        proof = large_proof()
        digest = hashlib.sha256(proof).digest()
        acks = await publisher.publish_evidence(HOST.node_id, proof)
        assert acks >= 3                     # accepted for checking
        dkey = key_digest(evidence_key(HOST.node_id))
        storers = [n for n in nodes if n is not publisher]
        # storers fetch the body, check it and only then keep the entry
        await wait_for(lambda: sum(bool(n.storage.evidence_entries(dkey))
                                   for n in storers) >= 3)
        fetched = [n for n in storers if n.metrics().get("evidence_fetched")]
        assert len(fetched) >= 3
        entry = fetched[0].storage.evidence_entries(dkey)[0]
        assert not entry.inline and entry.sha256 == digest and entry.url == base
        assert fetched[0].evidence_body(digest) == proof       # kept, servable again
        assert len(fetched[0].storage.get(dkey) or b"") < 400   # the DHT value is small
        # a reader that holds nothing fetches it over HTTP and checks it
        reader = await swarm.add()
        reader.storage.on_evidence = lambda d, k, es: 0        # not as a storer
        got = await reader.get_evidence(HOST.node_id)
        assert got == [proof] and verify_proof(got[0], HOST.node_id).type == "nonconformance"
        assert reader.evidence_body(digest) == proof
        # the gateway serves bodies it holds, and only those
        client = GatewayClient(base, proof_verifier=proof_host_id)
        try:
            async with client.session.get(f"{base}/dht/evidence/{digest.hex()}") as resp:
                assert resp.status == 200 and await resp.read() == proof
            async with client.session.get(f"{base}/dht/evidence/{'00' * 32}") as resp:
                assert resp.status == 404
            async with client.session.get(f"{base}/dht/evidence/xyz") as resp:
                assert resp.status == 400
            # a proxied node reads (and checks) evidence through the gateway
            small = small_proof()
            await nodes[3].publish_evidence(HOST.node_id, small)
            assert await client.get_evidence(HOST.node_id) == [small, proof]
        finally:
            await client.close()
    finally:
        await runner.cleanup()


async def test_forged_proofs_are_refused_counted_and_change_nothing(swarm: Swarm) -> None:
    nodes = await swarm.grow(4)
    target = nodes[2]
    good = small_proof()
    await nodes[1].publish_evidence(HOST.node_id, good)
    key = evidence_key(HOST.node_id)
    dkey = key_digest(key)
    await wait_for(lambda: bool(target.storage.evidence_entries(dkey)))
    before = target.storage.get(dkey)
    contact = Node(target.node_id, *target.address)
    expires = target.clock() + EVIDENCE_TTL_US

    async def attacker() -> DhtNode:
        node = DhtNode(Identity.generate(), swarm.genesis, proof_verifier=proof_host_id,
                       rpc_timeout=1.0)
        await node.start()
        swarm.nodes.append(node)
        return node

    # a bad signature, then a valid proof about another host under this key
    for value, reason in ((inline_set(HOST.node_id, forged_signature(small_proof()),
                                      expires=expires), "bad_proof"),
                          (inline_set(HOST.node_id, small_proof(OTHER), expires=expires),
                           "wrong_host")):
        evil = await attacker()
        ok, accepted = await evil.protocol.call_store(contact, dkey, value)
        assert ok and accepted is False
        assert target.metrics()[f"evidence_rejected.{reason}"] == 1
        assert target.protocol.is_banned(evil.node_id, evil.address)
    assert target.metrics()["rejected.forged"] == 2
    assert target.storage.get(dkey) == before

    # a hash-only entry whose url serves other bytes: accepted for checking, then refused
    large = large_proof()
    tampered = bytearray(large)
    tampered[-5] ^= 1
    served = {"body": bytes(tampered)}

    async def lying(request: web.Request) -> web.Response:
        return web.Response(body=served["body"])

    runner, base = await serve([web.get("/dht/evidence/{sha256}", lying)])
    try:
        evil = await attacker()
        value = ref_set(HOST.node_id, large, base, expires)
        ok, accepted = await evil.protocol.call_store(contact, dkey, value)
        assert ok and accepted is True
        await wait_for(lambda: target.metrics().get("rejected.evidence_mismatch", 0) == 1)
        assert target.storage.get(dkey) == before
        # the same (hash, url) is not fetched again at once
        await evil.protocol.call_store(contact, dkey, value)
        assert target.metrics()["rejected.evidence_failed_recently"] == 1
        # a body that matches its hash but accuses another host
        other = large_proof(OTHER)
        served["body"] = other
        value = ref_set(HOST.node_id, other, base, expires)
        ok, accepted = await evil.protocol.call_store(contact, dkey, value)
        assert ok and accepted is True
        await wait_for(lambda: target.metrics().get("rejected.evidence_wrong_host", 0) == 1)
        assert target.storage.get(dkey) == before
        # a reader ignores such entries too, and still finds the good proof
        assert await nodes[3].get_evidence(HOST.node_id) == [good]
    finally:
        await runner.cleanup()


async def test_evidence_set_is_capped_and_deduplicated(swarm: Swarm) -> None:
    nodes = await swarm.grow(4)
    proofs = [small_proof(seq=i) for i in range(MAX_EVIDENCE + 2)]
    for i, proof in enumerate(proofs):
        await nodes[i % 4].publish_evidence(HOST.node_id, proof)
    await nodes[0].publish_evidence(HOST.node_id, proofs[0])   # again
    found = await nodes[3].get_evidence(HOST.node_id)
    assert len(found) == MAX_EVIDENCE and len(set(found)) == MAX_EVIDENCE
    assert set(found) <= set(proofs)
    dkey = key_digest(evidence_key(HOST.node_id))
    for node in nodes:
        assert len(node.storage.evidence_entries(dkey)) <= MAX_EVIDENCE
        assert len(node.storage.get(dkey) or b"") <= MAX_VALUE_BYTES


async def test_published_proofs_survive_a_restart_and_are_republished(tmp_path: Path) -> None:
    genesis = make_genesis()
    swarm = Swarm(genesis)
    try:
        nodes = await swarm.grow(3)
        ident = Identity.generate()
        db = tmp_path / "dht.sqlite"
        node = DhtNode(ident, genesis, proof_verifier=proof_host_id, db_path=db, rpc_timeout=1.0)
        await node.start()
        runner, base = await serve(gateway_routes(node))
        node.url = base
        await node.bootstrap([nodes[0].address])
        large, small = large_proof(), small_proof()
        await node.publish_evidence(HOST.node_id, large)
        await node.publish_evidence(HOST.node_id, small)
        await node.close()
        again = DhtNode(ident, genesis, proof_verifier=proof_host_id, db_path=db, rpc_timeout=1.0)
        await again.start()
        swarm.nodes.append(again)
        assert again.evidence_body(hashlib.sha256(large).digest()) == large
        assert again.metrics()["evidence_own"] == 2
        await runner.cleanup()
        runner, base = await serve(gateway_routes(again))
        again.url = base
        reader = await swarm.add()
        reader.storage.on_evidence = lambda d, k, es: 0
        await again.bootstrap([nodes[0].address])   # restored: republishes its proofs
        await wait_for(lambda: again.storage.evidence_entries(
            key_digest(evidence_key(HOST.node_id))) != [])
        await wait_for(lambda: len(nodes[1].storage.evidence_entries(
            key_digest(evidence_key(HOST.node_id)))) == 2)
        assert sorted(await reader.get_evidence(HOST.node_id)) == sorted([large, small])
        await runner.cleanup()
    finally:
        await swarm.close()


async def test_proxied_node_publishes_evidence_through_a_gateway(swarm: Swarm) -> None:
    nodes = await swarm.grow(4)
    runner, base = await serve(gateway_routes(nodes[0]))
    proxied = GatewayDht(Identity.generate(), base, proof_verifier=proof_host_id, url="http://127.0.0.1:9")
    try:
        proof = small_proof()
        assert await proxied.publish_evidence(HOST.node_id, proof) >= 1
        assert await nodes[3].get_evidence(HOST.node_id) == [proof]
        assert await proxied.get_evidence(HOST.node_id) == [proof]
    finally:
        await proxied.close()
        await runner.cleanup()
