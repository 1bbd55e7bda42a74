"""CHECKPOINT entries, segment verification, canonical encoding, equivocation proofs."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import pack
from p2pmarket.ledger.certificate import (
    Certificate,
    committee_quorum,
    verify_certified,
    verify_segment,
)
from p2pmarket.ledger.chain import (
    CHECKPOINT,
    MAX_AMOUNT,
    MINT,
    RECV,
    SEND,
    Authenticator,
    Entry,
    apply,
    auth_message,
    equivocation,
    recv_body,
    verify_chain,
)
from p2pmarket.ledger.errors import LedgerError

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


@settings(max_examples=150, deadline=None)
@given(seq=st.integers(1, 2**62), ts=st.integers(0, 2**63 - 1),
       amount=st.integers(1, MAX_AMOUNT), memo=st.text(max_size=40),
       prev=st.binary(min_size=32, max_size=32),
       kind=st.sampled_from([SEND, MINT, CHECKPOINT]))
def test_fast_encoding_is_the_canonical_one(seq: int, ts: int, amount: int, memo: str,
                                            prev: bytes, kind: str) -> None:
    body: dict[str, Any] = {SEND: {"memo": memo, "amount": amount, "to": OTHER},
                            MINT: {"amount": amount},
                            CHECKPOINT: {"balance": amount}}[kind]
    entry = Entry(KEY, seq, prev, kind, body, ts)
    assert entry.encode() == pack(entry.to_wire())
    assert Entry.decode(entry.encode()) == entry
    assert auth_message(KEY, seq, prev) == pack(["auth", KEY, seq, prev])


def test_recv_encoding_is_canonical(net: Any, chain_of: Any) -> None:
    mint = chain_of(net.mint)
    mint.open()
    mint.mint(10)
    cert = net.certify(mint.send(OTHER, 3, "é"), net.mint)
    recv = Entry(OTHER, 1, bytes(32), RECV, recv_body(cert.entry), 5)
    assert recv.encode() == pack(recv.to_wire())
    assert cert.encode() == pack(cert.to_wire())
    assert Certificate.decode(cert.encode()) == cert
    assert Entry.decode(recv.encode()) == recv


def test_non_canonical_encoding_is_refused() -> None:
    entry = Entry(KEY, 1, bytes(32), MINT, {"amount": 5}, 7)
    shuffled = msgpack.packb(dict(reversed(list(entry.to_wire().items()))), use_bin_type=True)
    assert shuffled != entry.encode()
    with pytest.raises(LedgerError, match="canonical"):
        Entry.decode(shuffled)
    with pytest.raises(LedgerError, match="malformed"):
        Entry.decode(entry.encode()[:-3])  # truncated


@pytest.mark.parametrize("body", [{}, {"balance": -1}, {"balance": MAX_AMOUNT + 1},
                                  {"balance": 1, "x": 2}, {"balance": "1"}])
def test_bad_checkpoint_bodies(body: dict[str, Any]) -> None:
    with pytest.raises(LedgerError):
        Entry(KEY, 3, bytes(32), CHECKPOINT, body, 1)


def test_checkpoint_must_state_the_balance(net: Any, chain_of: Any) -> None:
    c = chain_of(net.mint)
    c.open()
    c.mint(40)
    good = c.make(CHECKPOINT, {"balance": 40})
    assert apply(40, good, net.genesis) == 40
    assert good.amount == 0 and good.delta == 0
    with pytest.raises(LedgerError, match="checkpoint balance"):
        apply(39, good, net.genesis)
    c.add(CHECKPOINT, {"balance": 41})
    with pytest.raises(LedgerError, match="checkpoint balance"):
        verify_chain(c.entries, c.auths, net.genesis)


def _chain_with_checkpoint(net: Any, chain_of: Any) -> tuple[Any, Any, Certificate]:
    mint = chain_of(net.mint)
    alice = chain_of(Identity.generate())
    mint.open()
    mint.mint(100)
    sent = net.certify(mint.send(alice.key, 30), net.mint)
    alice.open()
    alice.recv(sent)
    checkpoint = net.certify(alice.add(CHECKPOINT, {"balance": 30}), alice.ident)
    alice.send(mint.key, 5)
    alice.recv(net.certify(mint.send(alice.key, 7), net.mint))
    return mint, alice, checkpoint


def test_segment_from_a_certified_checkpoint(net: Any, chain_of: Any) -> None:
    _, alice, checkpoint = _chain_with_checkpoint(net, chain_of)
    assert verify_chain(alice.entries, alice.auths, net.genesis) == 32
    k = checkpoint.entry.seq + 1
    assert verify_segment(checkpoint, alice.entries[k:], alice.auths[k:], net.genesis) == 32
    assert verify_segment(checkpoint, [], [], net.genesis) == 30
    # the certificate of the last entry vouches for the whole chain or segment
    head = net.certify(alice.entries[-1], alice.ident)
    assert verify_certified(alice.entries, alice.auths, head, net.genesis) == 32
    assert verify_certified(alice.entries[k:], alice.auths[k:], head, net.genesis,
                            checkpoint=checkpoint) == 32
    with pytest.raises(LedgerError, match="head certificate"):
        verify_certified(alice.entries[:-1], alice.auths[:-1], head, net.genesis)


def test_segment_refusals(net: Any, chain_of: Any) -> None:
    mint, alice, checkpoint = _chain_with_checkpoint(net, chain_of)
    k = checkpoint.entry.seq + 1
    weak = Certificate(checkpoint.entry, checkpoint.owner_sig, checkpoint.notary_sigs[:2])
    with pytest.raises(LedgerError, match="quorum"):
        verify_segment(weak, alice.entries[k:], alice.auths[k:], net.genesis)
    with pytest.raises(LedgerError, match="next"):  # a gap after the checkpoint
        verify_segment(checkpoint, alice.entries[k + 1:], alice.auths[k + 1:], net.genesis)
    not_checkpoint = net.certify(alice.entries[1], alice.ident)
    with pytest.raises(LedgerError, match="CHECKPOINT"):
        verify_segment(not_checkpoint, alice.entries[2:], alice.auths[2:], net.genesis)
    with pytest.raises(LedgerError, match="owners"):
        verify_segment(checkpoint, mint.entries[k:], mint.auths[k:], net.genesis)
    overspend = alice.make(SEND, {"to": mint.key, "amount": 33, "memo": ""})
    with pytest.raises(LedgerError, match="insufficient"):
        verify_segment(checkpoint, [*alice.entries[k:], overspend],
                       [*alice.auths[k:], Authenticator.sign(alice.ident, overspend)],
                       net.genesis)


def test_equivocation_proof(net: Any, chain_of: Any) -> None:
    c = chain_of(net.mint)
    c.open()
    a = c.make(MINT, {"amount": 1})
    b = c.make(MINT, {"amount": 2})
    auth_a, auth_b = Authenticator.sign(net.mint, a), Authenticator.sign(net.mint, b)
    assert equivocation(auth_a, auth_b)
    assert not equivocation(auth_a, auth_a)
    assert not equivocation(auth_a, Authenticator(b.owner, b.seq, b.hash(), bytes(64)))
    moved = Entry(b.owner, 2, b.prev, b.kind, b.body, b.ts)
    assert not equivocation(auth_a, Authenticator.sign(net.mint, moved))


@pytest.mark.parametrize("n,f,quorum", [(1, 0, 1), (4, 1, 3), (7, 2, 5), (5, 1, 4),
                                        (4, 0, 3), (3, 0, 2)])
def test_committee_quorum_makes_quorums_intersect(n: int, f: int, quorum: int) -> None:
    from p2pmarket.core.genesis import Genesis, NotaryInfo

    genesis = Genesis(network="q", mint_key=KEY, f=f,
                      notaries=tuple(NotaryInfo(bytes([i]) * 32, "x") for i in range(n)))
    q = committee_quorum(genesis)
    assert q == quorum
    assert 2 * q - n > f  # two quorums share more than f notaries: an honest one
