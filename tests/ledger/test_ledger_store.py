"""ChainStore: durable chains of several owners."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from p2pmarket.core.identity import Identity
from p2pmarket.ledger.chain import RECV, SEND, Authenticator, Entry, verify_chain
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.store import ChainStore


def _store_chain(store: ChainStore, net: Any, chain: Any, certify: bool = True) -> None:
    for entry, auth in zip(chain.entries, chain.auths, strict=True):
        assert store.append(entry, auth.sig)
        if certify:
            store.attach(net.certify(entry, chain.ident))


def test_append_attach_and_read_back(tmp_path: Path, net: Any, chain_of: Any) -> None:
    store = ChainStore(tmp_path / "c.db")
    c = chain_of(net.mint)
    c.open()
    c.mint(100)
    c.send(b"\x07" * 32, 40, "rent")
    _store_chain(store, net, c)
    key = c.key
    assert store.entries(key) == c.entries
    assert store.authenticators(key) == c.auths
    head = store.head(key)
    assert head is not None and head.hash() == c.entries[-1].hash()
    assert store.pending(key) is None
    assert store.balance(key) == 60
    cert = store.certificate(key, 2)
    assert cert is not None and cert.entry == c.entries[2]
    assert len(cert.notary_sigs) == 3
    hist = store.history(key)
    assert [h["kind"] for h in hist] == ["OPEN", "MINT", "SEND"]
    assert [h["balance"] for h in hist] == [0, 100, 60]
    assert hist[2]["hash"] == c.entries[2].hash().hex()
    json.dumps(hist)  # the control API sends it as JSON
    assert hist[2]["counterparty"] == (b"\x07" * 32).hex() and hist[2]["memo"] == "rent"
    assert verify_chain(store.entries(key), store.authenticators(key), net.genesis) == 60
    store.close()


def test_pending_entries_are_a_suffix_not_counted_until_certified(
        tmp_path: Path, net: Any, chain_of: Any) -> None:
    store = ChainStore(tmp_path / "c.db")
    c = chain_of(net.mint)
    c.open()
    c.mint(100)
    store.append(c.entries[0], c.auths[0].sig)
    store.attach(net.certify(c.entries[0], c.ident))
    store.append(c.entries[1], c.auths[1].sig)
    pending = store.pending(c.key)
    assert pending == (c.entries[1], c.auths[1].sig)
    assert store.balance(c.key) == 0
    assert store.balance(c.key, include_pending=True) == 100
    assert store.certificate(c.key, 1) is None
    nxt = c.send(b"\x07" * 32, 1)
    chk = c.add("CHECKPOINT", {"balance": 99})
    assert store.append_many([(nxt, c.auths[2].sig), (chk, c.auths[3].sig)]) == 2
    assert store.pending_entries(c.key) == [(e, a.sig) for e, a in
                                            zip(c.entries[1:], c.auths[1:], strict=True)]
    assert store.balance(c.key, include_pending=True) == 99
    assert store.last_checkpoint(c.key) is None
    store.attach_many([net.certify(e, c.ident) for e in c.entries[1:]])
    assert store.pending(c.key) is None and store.balance(c.key) == 99
    checkpoint = store.last_checkpoint(c.key)
    assert checkpoint is not None and checkpoint.entry == chk
    # one bad entry in a group appends none of it
    bad = c.make("MINT", {"amount": 1})
    with pytest.raises(LedgerError, match="signature"):
        store.append_many([(bad, Authenticator.sign(c.ident, bad).sig),
                           (c.make("MINT", {"amount": 2}), bytes(64))])
    assert store.head_seq(c.key) == 3
    store.close()


def test_survives_reopening(tmp_path: Path, net: Any, chain_of: Any) -> None:
    store = ChainStore(tmp_path / "c.db")
    c = chain_of(net.mint)
    c.open()
    c.mint(100)
    store.append(c.entries[0], c.auths[0].sig)
    store.attach(net.certify(c.entries[0], c.ident))
    store.append(c.entries[1], c.auths[1].sig)
    store.close()
    again = ChainStore(tmp_path / "c.db")
    assert again.entries(c.key) == c.entries
    assert again.pending(c.key) == (c.entries[1], c.auths[1].sig)
    again.attach(net.certify(c.entries[1], c.ident))
    assert again.balance(c.key) == 100
    again.close()


def test_refusals(tmp_path: Path, net: Any, chain_of: Any) -> None:
    store = ChainStore(tmp_path / "c.db")
    c = chain_of(net.mint)
    c.open()
    mint = c.mint(100)
    # bad signature, gap, wrong prev
    with pytest.raises(LedgerError, match="signature"):
        store.append(c.entries[0], bytes(64))
    with pytest.raises(LedgerError, match="next"):
        store.append(mint, c.auths[1].sig)
    assert store.append(c.entries[0], c.auths[0].sig)
    store.attach(net.certify(c.entries[0], c.ident))
    bad_prev = Entry(c.key, 1, b"\x05" * 32, "MINT", {"amount": 1}, 1)
    with pytest.raises(LedgerError, match="prev"):
        store.append(bad_prev, Authenticator.sign(c.ident, bad_prev).sig)
    # the same entry again: no-op; a different one at a stored seq: evidence
    assert store.append(c.entries[0], c.auths[0].sig) is False
    assert store.append(mint, c.auths[1].sig)
    other = Entry(c.key, 1, c.entries[0].hash(), "MINT", {"amount": 7}, 1)
    with pytest.raises(LedgerError, match="different") as err:
        store.append(other, Authenticator.sign(c.ident, other).sig)
    assert Authenticator.from_wire(err.value.value["authenticator"]) == c.auths[1]
    # a certificate for an entry not held
    with pytest.raises(LedgerError):
        store.attach(net.certify(other, c.ident))
    assert store.entries(c.key) == c.entries
    store.close()


def test_several_owners_and_received(tmp_path: Path, net: Any, chain_of: Any) -> None:
    store = ChainStore(tmp_path / "c.db")
    mint = chain_of(net.mint)
    alice = chain_of(Identity.generate())
    mint.open()
    mint.mint(10)
    send = mint.send(alice.key, 4, "hi")
    cert = net.certify(send, mint.ident)
    alice.open()
    alice.recv(cert)
    _store_chain(store, net, mint)
    _store_chain(store, net, alice)
    assert set(store.owners()) == {mint.key, alice.key}
    assert store.balance(mint.key) == 6 and store.balance(alice.key) == 4
    assert store.has_received(alice.key, mint.key, send.seq)
    assert not store.has_received(mint.key, mint.key, send.seq)
    hist = store.history(alice.key)[1]
    assert hist["kind"] == RECV and hist["memo"] == "hi" and hist["send_seq"] == send.seq
    assert store.entry(mint.key, 2) == send and store.entry(mint.key, 9) is None
    assert send.kind == SEND
    store.close()


def test_chains_in_the_first_layout_are_refused(tmp_path: Path, net: Any,
                                                chain_of: Any) -> None:
    """The first layout (``chain_entries``) used to be migrated; its owner signatures
    were made without a signature domain, so they no longer verify and the store is
    refused with a clear error, like any store of format 1."""
    from p2pmarket.core.files import FormatError, open_db
    from p2pmarket.core.wire import pack

    c = chain_of(net.mint)
    c.open()
    conn = open_db(tmp_path / "old.db")
    with conn:
        conn.execute("CREATE TABLE chain_entries (owner BLOB, seq INTEGER, entry BLOB, "
                     "owner_sig BLOB)")
        conn.execute("INSERT INTO chain_entries VALUES (?, ?, ?, ?)",
                     (c.key, 0, pack(c.entries[0].to_wire()), c.auths[0].sig))
    conn.close()
    with pytest.raises(FormatError, match=r"chain store is in format 1.*signatures have domains"):
        ChainStore(tmp_path / "old.db")
