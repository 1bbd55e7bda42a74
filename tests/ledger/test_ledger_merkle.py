"""Merkle-batched certificates: one owner signature and one notary signature per batch
root, a certificate per entry that proves consent and quorum offline (docs §4)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmarket.core.domains import NOTARY_CERT
from p2pmarket.core.identity import Identity
from p2pmarket.ledger.certificate import (
    Certificate,
    is_valid,
    root_cert_message,
    verify_certificate,
)
from p2pmarket.ledger.chain import (
    SEND,
    Authenticator,
    Entry,
    equivocation,
    next_entry,
    root_message,
)
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.merkle import (
    MAX_LEAVES,
    OwnerProof,
    audit_path,
    batch_paths,
    leaf_hash,
    node_hash,
    path_length,
    root_from_path,
    tree_root,
)
from p2pmarket.ledger.notaryrpc import handlers
from p2pmarket.ledger.store import ChainStore
from p2pmarket.ledger.wallet import Wallet
from tests.support.local_committee import LocalCommittee

leaves_st = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=MAX_LEAVES)


@settings(max_examples=60, deadline=None)
@given(leaves_st, st.data())
def test_every_path_leads_to_the_root_and_only_from_its_leaf(leaves: list[bytes],
                                                             data: Any) -> None:
    root, paths = batch_paths(leaves)
    assert root == tree_root(leaves)
    i = data.draw(st.integers(0, len(leaves) - 1))
    assert paths[i] == audit_path(leaves, i)
    assert len(paths[i]) == path_length(i, len(leaves)) <= 6
    assert root_from_path(leaves[i], i, len(leaves), paths[i]) == root
    if len(leaves) > 1:
        j = data.draw(st.integers(0, len(leaves) - 1).filter(lambda j: j != i))
        if leaves[j] != leaves[i]:  # another index, or another leaf: another root
            assert root_from_path(leaves[j], i, len(leaves), paths[i]) != root
        bad = [bytes(32), *paths[i][1:]]
        assert paths[i][0] == bad[0] or \
            root_from_path(leaves[i], i, len(leaves), bad) != root
        proof = OwnerProof(bytes(64), i, len(leaves), tuple(paths[i]))
        assert OwnerProof.decode(proof.encode()) == proof


def test_leaves_and_nodes_are_domain_separated() -> None:
    a, b = bytes(32), bytes([1]) * 32
    owner = bytes(32)
    assert leaf_hash(owner, 0, a) != node_hash(owner, (0).to_bytes(8, "big") + a[:24])
    assert tree_root([a]) == a and tree_root([a, b]) == node_hash(a, b)


@pytest.mark.parametrize("data, match", [
    (bytes(63), "at least 64"),
    (bytes(64) + b"\x00\x00", "malformed"),
    (bytes(64) + (0).to_bytes(2, "big") + (1).to_bytes(2, "big"), "at least two"),
    (bytes(64) + (2).to_bytes(2, "big") + (2).to_bytes(2, "big") + bytes(32), "index"),
    (bytes(64) + (0).to_bytes(2, "big") + (MAX_LEAVES + 1).to_bytes(2, "big")
     + bytes(32 * 7), "index or size"),
    (bytes(64) + (0).to_bytes(2, "big") + (2).to_bytes(2, "big") + bytes(64), "path"),
    (bytes(64) + (0).to_bytes(2, "big") + (4).to_bytes(2, "big") + bytes(32), "path"),
])
def test_malformed_proofs_get_a_clear_error(data: bytes, match: str) -> None:
    with pytest.raises(LedgerError, match=match):
        OwnerProof.decode(data)


def _chain(owner: Identity, kinds: list[tuple[str, dict[str, Any]]], ts: int = 1
           ) -> list[Entry]:
    head: Entry | None = None
    out = []
    for kind, body in kinds:
        head = next_entry(owner.public_key, head, kind, body, ts)
        out.append(head)
    return out


def _wallet(c: LocalCommittee, path: Path, ident: Identity | None = None) -> Wallet:
    return Wallet(ident or Identity.generate(), ChainStore(path), c.genesis, c.transport)


async def test_a_batch_is_one_root_and_each_certificate_stands_alone(
        committee4: LocalCommittee, tmp_path: Path) -> None:
    mint = _wallet(committee4, tmp_path / "mint.sqlite", committee4.mint)
    payee = Identity.generate().public_key
    await mint.mint(10**6)
    certs = await mint.send_many([(payee, 1 + i, "m" * 256) for i in range(MAX_LEAVES)])
    proofs = [c.authenticator.proof for c in certs]
    assert {p.sig for p in proofs} == {proofs[0].sig}  # one owner signature
    assert {c.message for c in certs} == {certs[0].message}  # one root the notaries signed
    for cert in certs:
        again = Certificate.decode(cert.encode())
        verify_certificate(again, committee4.genesis)  # offline, fresh: no cache
        assert len(again.encode()) <= 1024  # 256-byte memo, longest path, 3 signatures
    # a batch of one (an interactive payment) is the plain signature
    lone = await mint.send(payee, 5)
    assert lone.authenticator.proof.single and len(lone.owner_sig) == 64
    verify_certificate(lone, committee4.genesis)
    # the wallet verifies its chain and recovers a pruned certificate from the notaries
    assert mint.verify() == mint.balance()
    pruned = certs[3].entry.seq
    assert mint.store.certificate(mint.key, pruned) is None
    recovered = await mint.certificate(pruned)
    assert recovered is not None and is_valid(recovered, committee4.genesis)
    await mint.close()
    mint.store.close()


def test_a_colluding_quorum_cannot_spend_without_the_owner(committee4: LocalCommittee) -> None:
    owner = Identity.generate()
    thief = Identity.generate().public_key
    entries = _chain(owner, [("OPEN", {}), ("RECV", {"from": committee4.mint.public_key,
                                                    "seq": 1, "hash": bytes(32),
                                                    "amount": 10, "memo": ""}),
                             (SEND, {"to": thief, "amount": 10, "memo": ""})])
    honest = Authenticator.sign_batch(owner, entries[:2])
    forged = entries[2]
    # every notary signs a root over the owner's real entries and one it never signed
    leaves = [leaf_hash(e.owner, e.seq, e.hash()) for e in entries]
    root, paths = batch_paths(leaves)
    for owner_sig in (honest[0].proof.sig,  # the owner's real root signature, another root
                      bytes(64)):
        proof = OwnerProof(owner_sig, 2, 3, tuple(paths[2])).encode()
        notaries = tuple((n.public_key, n.sign(NOTARY_CERT, root_cert_message(owner.public_key,
                                                                              root)))
                         for n in committee4.notaries)
        cert = Certificate(forged, proof, notaries)
        with pytest.raises(LedgerError, match="owner signature"):
            verify_certificate(cert, committee4.genesis)
    # the real batch's proofs do not carry over to an entry outside it
    assert honest[1].verify()
    assert not Authenticator.of(forged, honest[1].sig).verify()  # its leaf is not under it


async def test_bad_network_proofs_change_nothing(committee: LocalCommittee) -> None:
    [service] = committee.services.values()
    rpc = handlers(service)
    owner = Identity.generate()
    entries = _chain(owner, [("OPEN", {})] + [("CHECKPOINT", {"balance": 0})] * 3)
    auths = Authenticator.sign_batch(owner, entries)
    good = [a.sig for a in auths]
    long_path = good[0] + bytes(32)
    for sigs in ([long_path, *good[1:]],
                 [good[0][:64] + (7).to_bytes(2, "big") + good[0][66:], *good[1:]]):
        with pytest.raises(LedgerError):
            await rpc["certify_batch"](None, {"entries": [e.encode() for e in entries],  # type: ignore[arg-type]
                                             "sigs": sigs, "certs": [[]] * 4})
        assert service.head(owner.public_key)["seq"] == -1
    # a well-formed proof of another root: the owner's signature does not verify
    other = Authenticator.sign_batch(owner, _chain(owner, [("OPEN", {})] * 1
                                                   + [("CHECKPOINT", {"balance": 0})] * 3, 2))
    mixed = [good[0], other[1].sig, *good[2:]]
    result = await rpc["certify_batch"](None, {"entries": [e.encode() for e in entries],  # type: ignore[arg-type]
                                               "sigs": mixed, "certs": [[]] * 4})
    assert result["sigs"][0] is None and result["errors"][0][0] == 0
    assert "root" in result["errors"][0][1]  # seq 0 alone: its root lacks seq 1
    assert result["sigs"][1] is None and "owner signature" in result["errors"][1][1]
    # half a root: certified (durably) but not signed until the rest comes
    half = await rpc["certify_batch"](None, {"entries": [e.encode() for e in entries[2:]],  # type: ignore[arg-type]
                                             "sigs": good[2:], "certs": [[]] * 2})
    assert half["sigs"] == [None, None]
    whole = await rpc["certify_batch"](None, {"entries": [e.encode() for e in entries],  # type: ignore[arg-type]
                                              "sigs": good, "certs": [[]] * 4})
    assert whole["errors"] == [] and len(set(whole["sigs"])) == 1


async def test_half_a_root_is_signed_once_the_rest_is_certified(
        committee: LocalCommittee) -> None:
    [service] = committee.services.values()
    rpc = handlers(service)
    owner = Identity.generate()
    entries = _chain(owner, [("OPEN", {})] + [("CHECKPOINT", {"balance": 0})] * 4)
    sigs = [a.sig for a in Authenticator.sign_batch(owner, entries)]

    async def certify(lo: int, hi: int) -> dict[str, Any]:
        result: dict[str, Any] = await rpc["certify_batch"](
            None, {"entries": [e.encode() for e in entries[lo:hi]],  # type: ignore[arg-type]
                   "sigs": sigs[lo:hi], "certs": [[]] * (hi - lo)})
        return result

    first = await certify(0, 2)
    assert first["sigs"] == [None, None]
    assert all(e[2]["root_incomplete"] for e in first["errors"])
    assert service.head(owner.public_key)["seq"] == 1  # recorded durably all the same
    rest = await certify(2, 5)
    assert rest["errors"] == [] and len(set(rest["sigs"])) == 1
    again = await certify(0, 2)  # resubmitted: the very signature
    assert again["sigs"] == [rest["sigs"][0]] * 2


async def test_two_roots_at_one_seq_are_fork_evidence_offline(
        committee: LocalCommittee) -> None:
    [service] = committee.services.values()
    rpc = handlers(service)
    owner = Identity.generate()
    base = _chain(owner, [("OPEN", {}), ("CHECKPOINT", {"balance": 0})])
    fork = [base[0], next_entry(owner.public_key, base[0], "CHECKPOINT", {"balance": 0}, 2)]
    assert fork[1] != base[1]
    first = Authenticator.sign_batch(owner, base)
    second = Authenticator.sign_batch(owner, fork)
    ok = await rpc["certify_batch"](None, {"entries": [e.encode() for e in base],  # type: ignore[arg-type]
                                           "sigs": [a.sig for a in first], "certs": [[]] * 2})
    assert ok["errors"] == []
    refused = await rpc["certify_batch"](None, {"entries": [e.encode() for e in fork],  # type: ignore[arg-type]
                                                "sigs": [a.sig for a in second],
                                                "certs": [[]] * 2})
    assert "different entry" in refused["errors"][1][1]
    [(certified, other)] = service.evidence(owner.public_key)
    assert certified == first[1] and other == second[1]
    shipped = [Authenticator.from_wire(a.to_wire()) for a in (certified, other)]
    assert equivocation(*shipped)  # two owner-signed roots, one seq, two entries
    assert not equivocation(shipped[0], first[1])
    # the owner signed the root itself, in the chain entry domain
    assert certified.batch_root is not None
    assert owner.public_key and certified.message() == root_message(owner.public_key,
                                                                     certified.batch_root)
    assert not equivocation(shipped[0], Authenticator(
        owner.public_key, 1, other.hash, owner.sign(NOTARY_CERT, other.message())))
