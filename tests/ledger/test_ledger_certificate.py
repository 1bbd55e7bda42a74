"""Certificates: offline verification against the genesis committee."""

from __future__ import annotations

from typing import Any

import pytest

from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import pack, unpack
from p2pmarket.ledger.certificate import (
    MAX_NOTARY_SIGS,
    Certificate,
    is_valid,
    notary_sign,
    verify_certificate,
)
from p2pmarket.ledger.chain import Entry
from p2pmarket.ledger.errors import LedgerError


@pytest.fixture
def send_cert(net: Any, chain_of: Any) -> Certificate:
    mint = chain_of(net.mint)
    mint.open()
    mint.mint(50)
    cert: Certificate = net.certify(mint.send(Identity.generate().public_key, 20, "x"), net.mint)
    return cert


def test_quorum_certificate_verifies(net: Any, send_cert: Certificate) -> None:
    verify_certificate(send_cert, net.genesis)
    assert send_cert.valid_signers(net.genesis) == {n.public_key for n in net.notaries[:3]}
    assert send_cert.authenticator.verify()


def test_wire_round_trip(net: Any, send_cert: Certificate) -> None:
    again = Certificate.from_wire(unpack(pack(send_cert.to_wire())))
    assert again == send_cert
    verify_certificate(again, net.genesis)


def test_forged_owner_signature(net: Any, send_cert: Certificate) -> None:
    forged = Certificate(send_cert.entry, bytes(64), send_cert.notary_sigs)
    with pytest.raises(LedgerError, match="owner signature"):
        verify_certificate(forged, net.genesis)


def test_forged_notary_signature_is_not_counted(net: Any, send_cert: Certificate) -> None:
    sigs = list(send_cert.notary_sigs)
    sigs[0] = (sigs[0][0], bytes(64))
    forged = Certificate(send_cert.entry, send_cert.owner_sig, tuple(sigs))
    with pytest.raises(LedgerError, match="quorum") as err:
        verify_certificate(forged, net.genesis)
    assert err.value.value == {"valid": 2, "quorum": 3}
    # a notary signature of another entry does not count either
    other_entry = Entry.from_wire(dict(send_cert.entry.to_wire(), ts=12345))
    other = notary_sign(net.notaries[3], other_entry)
    swapped = Certificate(send_cert.entry, send_cert.owner_sig,
                          (*send_cert.notary_sigs[:2], (net.notaries[3].public_key, other)))
    assert not is_valid(swapped, net.genesis)


def test_too_few_signatures(net: Any, send_cert: Certificate) -> None:
    short = Certificate(send_cert.entry, send_cert.owner_sig, send_cert.notary_sigs[:2])
    assert not is_valid(short, net.genesis)
    empty = Certificate(send_cert.entry, send_cert.owner_sig, ())
    assert not is_valid(empty, net.genesis)


def test_duplicated_notary_signature_counts_once(net: Any, send_cert: Certificate) -> None:
    one = send_cert.notary_sigs[0]
    dup = Certificate(send_cert.entry, send_cert.owner_sig, (one, one, one))
    with pytest.raises(LedgerError, match="quorum") as err:
        verify_certificate(dup, net.genesis)
    assert err.value.value["valid"] == 1
    # merged() keeps one signature per key
    assert len(dup.merged([]).notary_sigs) == 1


def test_unknown_notary_keys_are_ignored(net: Any, send_cert: Certificate) -> None:
    strangers = [Identity.generate() for _ in range(3)]
    sigs = (*send_cert.notary_sigs[:2],
            *((s.public_key, notary_sign(s, send_cert.entry)) for s in strangers))
    cert = Certificate(send_cert.entry, send_cert.owner_sig, sigs)
    assert not is_valid(cert, net.genesis)
    assert cert.valid_signers(net.genesis) == {n.public_key for n in net.notaries[:2]}
    # with a third committee signature it is valid, strangers notwithstanding
    full = cert.merged([(net.notaries[3].public_key,
                         notary_sign(net.notaries[3], send_cert.entry))])
    verify_certificate(full, net.genesis)


@pytest.mark.parametrize("mutate", [
    lambda d: "nope",
    lambda d: {k: v for k, v in d.items() if k != "owner_sig"},
    lambda d: dict(d, extra=1),
    lambda d: dict(d, owner_sig=b"short"),
    lambda d: dict(d, notaries="x"),
    lambda d: dict(d, notaries=[[b"k" * 32]]),
    lambda d: dict(d, notaries=[[b"k" * 31, b"s" * 64]]),
    lambda d: dict(d, notaries=[[b"k" * 32, b"s" * 63]]),
    lambda d: dict(d, notaries=[[b"k" * 32, b"s" * 64]] * (MAX_NOTARY_SIGS + 1)),
    lambda d: dict(d, entry={"seq": 1}),
])
def test_malformed_certificates_are_refused(send_cert: Certificate, mutate: Any) -> None:
    with pytest.raises(LedgerError):
        Certificate.from_wire(mutate(send_cert.to_wire()))
