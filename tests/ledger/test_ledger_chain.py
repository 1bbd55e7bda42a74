"""Entries, authenticators and pure chain verification."""

from __future__ import annotations

from typing import Any

import pytest

from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import digest, pack, unpack
from p2pmarket.ledger.certificate import check_receipt
from p2pmarket.ledger.chain import (
    MAX_AMOUNT,
    MINT,
    OPEN,
    RECV,
    SEND,
    ZERO_HASH,
    Authenticator,
    Entry,
    apply,
    recv_body,
    verify_chain,
)
from p2pmarket.ledger.errors import LedgerError

OWNER = bytes(range(32))
OTHER = bytes(range(1, 33))


def test_entry_hash_is_sha256_of_canonical_pack() -> None:
    entry = Entry(OWNER, 1, b"\x01" * 32, SEND, {"to": OTHER, "amount": 5, "memo": "m"}, 7)
    expected = digest(pack({"owner": OWNER, "seq": 1, "prev": b"\x01" * 32, "kind": "SEND",
                            "body": {"memo": "m", "amount": 5, "to": OTHER}, "ts": 7}))
    assert entry.hash() == expected
    assert len(entry.hash()) == 32


def test_entry_wire_round_trip_through_msgpack() -> None:
    entry = Entry(OWNER, 3, b"\x02" * 32, SEND, {"to": OTHER, "amount": 9, "memo": "héllo"}, 99)
    again = Entry.from_wire(unpack(pack(entry.to_wire())))
    assert again == entry
    assert again.hash() == entry.hash()
    assert Entry.decode(entry.encode()).hash() == entry.hash()


@pytest.mark.parametrize("field,value", [
    ("seq", 4), ("prev", b"\x03" * 32), ("ts", 100), ("owner", OTHER),
])
def test_every_field_changes_the_hash(field: str, value: Any) -> None:
    base = {"owner": OWNER, "seq": 3, "prev": b"\x02" * 32, "kind": MINT,
            "body": {"amount": 1}, "ts": 99}
    changed = dict(base, **{field: value})
    assert Entry.from_wire(base).hash() != Entry.from_wire(changed).hash()


def _wire(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"owner": OWNER, "seq": 1, "prev": b"\x01" * 32, "kind": SEND,
                           "body": {"to": OTHER, "amount": 5, "memo": ""}, "ts": 1}
    doc.update(over)
    return doc


@pytest.mark.parametrize("doc", [
    "not a map",
    {"owner": OWNER},
    dict(_wire(), extra=1),
    _wire(owner=b"short"),
    _wire(owner="x" * 32),
    _wire(seq=-1),
    _wire(seq=True),
    _wire(seq=2**63),
    _wire(prev=b"\x01" * 31),
    _wire(ts=-5),
    _wire(ts=1.5),
    _wire(kind="STEAL"),
    _wire(kind=OPEN),  # OPEN only at seq 0
    _wire(seq=0, prev=ZERO_HASH),  # seq 0 must be OPEN
    _wire(seq=0, prev=b"\x01" * 32, kind=OPEN, body={}),  # seq 0 prev must be zero
    _wire(body={"to": OTHER, "amount": 0, "memo": ""}),
    _wire(body={"to": OTHER, "amount": -3, "memo": ""}),
    _wire(body={"to": OTHER, "amount": MAX_AMOUNT + 1, "memo": ""}),
    _wire(body={"to": OTHER, "amount": True, "memo": ""}),
    _wire(body={"to": OTHER, "amount": 5, "memo": "x" * 257}),
    _wire(body={"to": OTHER, "amount": 5}),
    _wire(body={"to": OWNER, "amount": 5, "memo": ""}),  # to oneself
    _wire(body={"to": b"x", "amount": 5, "memo": ""}),
    _wire(kind=MINT, body={"amount": 0}),
    _wire(kind=MINT, body={"amount": 1, "more": 2}),
    _wire(kind=OPEN, seq=0, prev=ZERO_HASH, body={"x": 1}),
    _wire(kind=RECV, body={"from": OTHER, "cert": {}}),
    _wire(kind=RECV, body={"cert": {}}),
    _wire(kind=RECV, body={"from": OTHER, "seq": 0, "hash": bytes(32), "amount": 1, "memo": ""}),
    _wire(kind=RECV, body={"from": OTHER, "seq": 1, "hash": b"x", "amount": 1, "memo": ""}),
    _wire(kind=RECV, body={"from": OTHER, "seq": 1, "hash": bytes(32), "amount": 0, "memo": ""}),
    _wire(kind=RECV, body={"from": OWNER, "seq": 1, "hash": bytes(32), "amount": 1, "memo": ""}),
    _wire(kind=RECV, body={"from": OTHER, "seq": 1, "hash": bytes(32), "amount": 1}),
])
def test_bad_entries_are_refused(doc: Any) -> None:
    with pytest.raises(LedgerError):
        Entry.from_wire(doc)


def test_decode_refuses_garbage() -> None:
    with pytest.raises(LedgerError):
        Entry.decode(b"\xc1\xc1")


def test_authenticator_signs_owner_seq_hash() -> None:
    ident = Identity.generate()
    entry = Entry(ident.public_key, 0, ZERO_HASH, OPEN, {}, 1)
    auth = Authenticator.sign(ident, entry)
    assert auth.verify() and auth.matches(entry)
    assert Authenticator.from_wire(unpack(pack(auth.to_wire()))) == auth
    forged = Authenticator(auth.owner, auth.seq, auth.hash, bytes(64))
    assert not forged.verify()
    with pytest.raises(LedgerError):
        forged.check()
    # a signature for seq 0 does not cover seq 1
    moved = Authenticator(auth.owner, 1, auth.hash, auth.sig)
    assert not moved.verify()
    with pytest.raises(LedgerError):
        Authenticator.sign(Identity.generate(), entry)
    with pytest.raises(LedgerError):
        Authenticator.from_wire({"owner": auth.owner, "seq": 0, "hash": auth.hash})


def test_valid_chain_verifies_to_its_balance(net: Any, chain_of: Any) -> None:
    mint = chain_of(net.mint)
    alice = chain_of(Identity.generate())
    mint.open()
    mint.mint(100)
    send = mint.send(alice.key, 30, "pay")
    cert = net.certify(send, net.mint)
    alice.open()
    alice.recv(cert)
    alice.send(mint.key, 10)
    assert verify_chain(mint.entries, mint.auths, net.genesis) == 70
    assert verify_chain(alice.entries, alice.auths, net.genesis) == 20
    assert verify_chain([], [], net.genesis) == 0


def test_broken_prev_is_refused(net: Any, chain_of: Any) -> None:
    c = chain_of(net.mint)
    c.open()
    c.mint(5)
    bad = Entry(c.key, 2, b"\x09" * 32, MINT, {"amount": 1}, 1)
    c.entries.append(bad)
    c.auths.append(Authenticator.sign(net.mint, bad))
    with pytest.raises(LedgerError, match="prev"):
        verify_chain(c.entries, c.auths, net.genesis)


def test_wrong_seq_is_refused(net: Any, chain_of: Any) -> None:
    c = chain_of(net.mint)
    c.open()
    skipped = Entry(c.key, 2, c.entries[0].hash(), MINT, {"amount": 1}, 1)
    c.entries.append(skipped)
    c.auths.append(Authenticator.sign(net.mint, skipped))
    with pytest.raises(LedgerError, match="next") as err:
        verify_chain(c.entries, c.auths, net.genesis)
    assert err.value.value == {"expected": 1, "got": 2}


def test_bad_or_mismatched_authenticator_is_refused(net: Any, chain_of: Any) -> None:
    c = chain_of(net.mint)
    c.open()
    c.mint(5)
    forged = list(c.auths)
    forged[1] = Authenticator(c.key, 1, c.entries[1].hash(), bytes(64))
    with pytest.raises(LedgerError, match="signature"):
        verify_chain(c.entries, forged, net.genesis)
    swapped = [c.auths[1], c.auths[0]]
    with pytest.raises(LedgerError, match="match"):
        verify_chain(c.entries, swapped, net.genesis)
    with pytest.raises(LedgerError):
        verify_chain(c.entries, c.auths[:1], net.genesis)


def test_negative_balance_is_refused(net: Any, chain_of: Any) -> None:
    c = chain_of(net.mint)
    c.open()
    c.mint(5)
    c.send(OTHER, 6)
    with pytest.raises(LedgerError, match="insufficient") as err:
        verify_chain(c.entries, c.auths, net.genesis)
    assert err.value.value == {"balance": 5, "amount": 6}


def test_mint_by_non_mint_key_is_refused(net: Any, chain_of: Any) -> None:
    c = chain_of(Identity.generate())
    c.open()
    c.mint(5)
    with pytest.raises(LedgerError, match="mint"):
        verify_chain(c.entries, c.auths, net.genesis)


def test_double_recv_is_refused(net: Any, chain_of: Any) -> None:
    mint = chain_of(net.mint)
    alice = chain_of(Identity.generate())
    mint.open()
    mint.mint(100)
    cert = net.certify(mint.send(alice.key, 30), net.mint)
    alice.open()
    alice.recv(cert)
    alice.recv(cert)
    with pytest.raises(LedgerError, match="already received"):
        verify_chain(alice.entries, alice.auths, net.genesis)
    assert verify_chain(alice.entries[:2], alice.auths[:2], net.genesis) == 30


def test_recv_needs_a_valid_certificate(net: Any, chain_of: Any) -> None:
    mint = chain_of(net.mint)
    alice = chain_of(Identity.generate())
    mint.open()
    mint.mint(100)
    send = mint.send(alice.key, 30)
    weak = net.certify(send, net.mint, signers=net.notaries[:2])  # quorum is 3
    alice.open()
    recv = alice.recv(weak)
    with pytest.raises(LedgerError, match="quorum"):
        check_receipt(recv, weak, net.genesis)
    # the balance rules leave the SEND certificate to check_receipt, run by its holder
    assert apply(0, recv, net.genesis) == 30
    check_receipt(recv, net.certify(send, net.mint), net.genesis)
    # the chain alone does not carry the SEND certificate: the RECV's own does
    assert verify_chain(alice.entries, alice.auths, net.genesis) == 30


def test_recv_must_match_the_send_it_names(net: Any, chain_of: Any) -> None:
    mint = chain_of(net.mint)
    mint.open()
    mint.mint(100)
    cert = net.certify(mint.send(OTHER, 30), net.mint)
    bob = chain_of(Identity.generate())
    bob.open()
    with pytest.raises(LedgerError, match="another owner"):
        check_receipt(bob.make(RECV, recv_body(cert.entry)), cert, net.genesis)
    mine = net.certify(mint.send(bob.key, 7, "m"), net.mint)
    good = recv_body(mine.entry)
    check_receipt(bob.make(RECV, good), mine, net.genesis)
    for name, value in (("from", OTHER), ("seq", 9), ("hash", bytes(32)), ("amount", 8),
                        ("memo", "x")):
        with pytest.raises(LedgerError, match="does not match") as err:
            check_receipt(bob.make(RECV, {**good, name: value}), mine, net.genesis)
        assert err.value.value == name
    with pytest.raises(LedgerError, match="SEND"):
        minted = net.certify(mint.entries[1], net.mint)  # a MINT's certificate
        check_receipt(bob.make(RECV, good), minted, net.genesis)
    with pytest.raises(LedgerError, match="oneself"):
        bob.make(RECV, {**good, "from": bob.key})
    with pytest.raises(LedgerError, match="wrong fields"):  # the old, embedding form
        bob.make(RECV, {"from": OTHER, "cert": mine.to_wire()})


def test_chain_mixing_owners_is_refused(net: Any, chain_of: Any) -> None:
    a = chain_of(net.mint)
    b = chain_of(Identity.generate())
    a.open()
    b.open()
    other = Entry(b.key, 1, a.entries[0].hash(), SEND, {"to": OTHER, "amount": 1, "memo": ""}, 1)
    with pytest.raises(LedgerError, match="owners"):
        verify_chain([a.entries[0], other], [a.auths[0], Authenticator.sign(b.ident, other)],
                     net.genesis)


def test_apply_caps_balances(net: Any) -> None:
    entry = Entry(net.mint.public_key, 1, b"\x01" * 32, MINT, {"amount": MAX_AMOUNT}, 1)
    assert apply(0, entry, net.genesis) == MAX_AMOUNT
    with pytest.raises(LedgerError, match="maximum"):
        apply(1, entry, net.genesis)
