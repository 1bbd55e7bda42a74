"""Signature domains (issue 10): a signature made for one purpose never verifies for
another, at every level (raw signatures, the signature cache, envelopes,
authenticators of the two logs, the ident handshake), and the stores that hold
signatures of the older format are refused with a clear error."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from p2pmarket.audit.entry import AuditAuthenticator, AuditEntry, sign_entry
from p2pmarket.audit.evidencestore import EvidenceStore
from p2pmarket.audit.log import AuditLog
from p2pmarket.audit.witnessstore import WitnessStore
from p2pmarket.core import domains
from p2pmarket.core.domains import (
    AUDIT_ENTRY,
    CHAIN_ENTRY,
    DHT_IDENT,
    ENVELOPE,
    LEASE,
    NOTARY_CERT,
    Domain,
    framed,
)
from p2pmarket.core.files import FormatError, open_db
from p2pmarket.core.genesis import Genesis, NotaryInfo
from p2pmarket.core.identity import Identity, verify
from p2pmarket.core.wire import WireError, decode, seal
from p2pmarket.dht.contacts import check_ident, ident_message
from p2pmarket.dht.persist import DhtState
from p2pmarket.ledger.certificate import cert_message, notary_sig_valid
from p2pmarket.ledger.chain import OPEN, ZERO_HASH, Authenticator, Entry, LogAuthenticator
from p2pmarket.ledger.notary import NotaryService
from p2pmarket.ledger.sigcache import SigCache
from p2pmarket.ledger.store import ChainStore

KEY = Identity(b"\x42" * 32)
MESSAGE = b"the same bytes, signed for one purpose"
PAIRS = [pytest.param(a, b, id=f"{a.tag}-as-{b.tag}")
         for a, b in itertools.permutations(domains.ALL, 2)]


def test_the_domains_are_distinct_and_prefix_free() -> None:
    assert len(domains.ALL) == len({d.tag for d in domains.ALL}) >= 9
    for a, b in itertools.permutations(domains.ALL, 2):
        assert not b.head.startswith(a.head)   # framed(a, x) == framed(b, y) needs a == b
    assert framed(LEASE, b"m") == b"p2pmarket/sig/2\x00lease\x00m"


@pytest.mark.parametrize("tag", ["", "Lease", "a\x00b", "x" * 33, "a b", "envelope/"])
def test_bad_tags_are_refused(tag: str) -> None:
    with pytest.raises(ValueError):
        Domain(tag)


def test_signing_needs_a_domain() -> None:
    with pytest.raises(TypeError):
        KEY.sign(b"bare bytes", MESSAGE)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        verify(KEY.public_key, b"bare", MESSAGE, bytes(64))  # type: ignore[arg-type]


@pytest.mark.parametrize("made,checked", PAIRS)
def test_a_signature_verifies_only_in_its_own_domain(made: Domain, checked: Domain) -> None:
    sig = KEY.sign(made, MESSAGE)
    assert verify(KEY.public_key, made, MESSAGE, sig)
    assert not verify(KEY.public_key, checked, MESSAGE, sig)
    cache = SigCache()
    assert cache.verify(KEY.public_key, made, MESSAGE, sig)
    assert not cache.verify(KEY.public_key, checked, MESSAGE, sig)   # not cached across


@pytest.mark.parametrize("made,checked", PAIRS)
def test_an_envelope_verifies_only_in_its_own_domain(made: Domain, checked: Domain) -> None:
    env = seal(KEY, made, "lease", {"x": 1}, ts=1)
    assert decode(env.encode(), made) == env
    with pytest.raises(WireError, match="bad signature"):
        decode(env.encode(), checked)


def test_the_two_logs_authenticators_never_pass_for_each_other() -> None:
    entry = Entry(KEY.public_key, 0, ZERO_HASH, OPEN, {}, 1)
    chain = Authenticator.sign(KEY, entry)
    audit = sign_entry(KEY, AuditEntry(0, ZERO_HASH, "in.genesis", {}, 1))
    assert chain.verify() and audit.verify()
    relabelled_chain = AuditAuthenticator(chain.owner, chain.seq, chain.hash, chain.sig)
    relabelled_audit = Authenticator(audit.owner, audit.seq, audit.hash, audit.sig)
    assert not relabelled_chain.verify() and not relabelled_audit.verify()
    assert relabelled_chain != chain     # one class per log: never equal either
    with pytest.raises(TypeError):
        LogAuthenticator(chain.owner, chain.seq, chain.hash, chain.sig)
    # a chain authenticator is no notary certificate signature of the same entry
    assert not notary_sig_valid(entry, KEY.public_key, chain.sig)
    assert not verify(KEY.public_key, CHAIN_ENTRY,
                      cert_message(entry.owner, entry.seq, entry.hash()),
                      KEY.sign(NOTARY_CERT, cert_message(entry.owner, entry.seq,
                                                         entry.hash())))


def test_an_ident_answer_is_only_an_ident_answer() -> None:
    nonce, requester = b"n" * 16, b"r" * 20
    message = ident_message(nonce, requester)
    good = [KEY.public_key, KEY.sign(DHT_IDENT, message)]
    assert check_ident(good, KEY.node_id, nonce, requester)
    for other in domains.ALL:
        if other != DHT_IDENT:
            bad = [KEY.public_key, KEY.sign(other, message)]
            assert not check_ident(bad, KEY.node_id, nonce, requester)
    # and the ident signature is no signature of anything else: the nonce the asker
    # chooses is framed in the ident domain
    assert not verify(KEY.public_key, ENVELOPE, message, good[1])
    assert not verify(KEY.public_key, AUDIT_ENTRY, message, good[1])


# -- stores that hold signatures ---------------------------------------------------------

GENESIS = Genesis(network="t", mint_key=KEY.public_key, f=0,
                  notaries=(NotaryInfo(KEY.public_key, "n0"),))

STORES: dict[str, tuple[str, str, Callable[[Path], Any]]] = {
    # name in the mark, a table of the older format, how to open one
    "chain": ("chain_owner", "chain", ChainStore),
    "notary": ("nt_chain", "notary", lambda p: NotaryService(KEY, GENESIS, p)),
    "audit log": ("audit", "audit log", lambda p: AuditLog(p, KEY)),
    "witness": ("hosts", "witness", WitnessStore),
    "evidence": ("evidence", "evidence", EvidenceStore),
    "DHT": ("own", "DHT", DhtState),
}


@pytest.mark.parametrize("name", sorted(STORES))
def test_a_store_of_the_older_format_is_refused(tmp_path: Path, name: str) -> None:
    table, store, opener = STORES[name]
    fresh = opener(tmp_path / "new.sqlite")     # a new store is marked ...
    fresh.close()
    again = opener(tmp_path / "new.sqlite")     # ... and opens again
    again.close()
    conn = sqlite3.connect(tmp_path / "new.sqlite")
    assert conn.execute("SELECT version FROM formats WHERE store = ?",
                        (store,)).fetchone() == (2,)
    conn.close()
    # written before the mark: format 1, signatures without domains
    old = open_db(tmp_path / "old.sqlite")
    with old:
        old.execute(f'CREATE TABLE "{table}" (x BLOB)')
    old.close()
    with pytest.raises(FormatError, match=f"{store} store is in format 1.*start a new"):
        opener(tmp_path / "old.sqlite")
    # marked with another format
    other = open_db(tmp_path / "other.sqlite")
    with other:
        other.execute("CREATE TABLE formats (store TEXT PRIMARY KEY, version INTEGER)")
        other.execute("INSERT INTO formats VALUES (?, 3)", (store,))
    other.close()
    with pytest.raises(FormatError, match="format 3"):
        opener(tmp_path / "other.sqlite")
