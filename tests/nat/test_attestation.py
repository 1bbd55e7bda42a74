"""Registrars' attestations: round trip, and every way one can be wrong."""

from typing import Any

import pytest

from p2pmarket.core.domains import ATTESTATION, ENVELOPE
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import pack, seal, unpack
from p2pmarket.dht.records import MAX_ATTESTATION
from p2pmarket.nat.attestation import (
    ATTESTATION_KIND,
    ATTESTATION_TTL_US,
    FUTURE_TOLERANCE_US,
    MAX_ATTESTATION_BYTES,
    make_attestation,
    open_attestation,
)
from p2pmarket.nat.errors import NatError
from p2pmarket.nat.table import ReachClass

REGISTRAR = Identity(b"\x11" * 32)
NODE = Identity(b"\x12" * 32)
OTHER = Identity(b"\x13" * 32)
NOW = 1_700_000_000_000_000


def good(**changes: Any) -> bytes:
    args: dict[str, Any] = {"node_id": NODE.node_id, "host": "198.18.0.7", "port": 8470,
                            "reach_class": ReachClass.PUBLIC, "verified": True, "ts": NOW}
    args.update(changes)
    return make_attestation(REGISTRAR, **args)


def body(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"node_id": NODE.node_id, "addr": ["198.18.0.7", 8470],
                           "class": "public", "verified": True,
                           "registrar": REGISTRAR.public_key, "ts": NOW}
    doc.update(changes)
    return doc


def sealed(doc: Any, *, signer: Identity = REGISTRAR, kind: str = ATTESTATION_KIND,
           to: bytes | None = NODE.node_id, ts: int = NOW, domain: Any = ATTESTATION) -> bytes:
    return seal(signer, domain, kind, doc, ts=ts, to=to).encode()


def refused(data: object, code: str, **kwargs: Any) -> NatError:
    with pytest.raises(NatError) as info:
        open_attestation(data, **kwargs)
    assert info.value.code == code, info.value.message
    return info.value


def test_round_trip() -> None:
    data = good()
    att = open_attestation(data, node_id=NODE.node_id, now=NOW + 1)
    assert (att.node_id, att.host, att.port, att.reach_class, att.verified, att.registrar,
            att.ts) == (NODE.node_id, "198.18.0.7", 8470, ReachClass.PUBLIC, True,
                        REGISTRAR.public_key, NOW)
    assert att.address == ("198.18.0.7", 8470)
    assert att.encode() == data
    assert att.envelope.sender == REGISTRAR.public_key and att.envelope.to == NODE.node_id
    assert unpack(data)["body"]["class"] == "public"


def test_every_class_and_an_ipv6_address_fit_the_dht_bound() -> None:
    assert MAX_ATTESTATION_BYTES == MAX_ATTESTATION
    for cls in ReachClass:
        data = good(reach_class=cls, verified=False,
                    host="ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", port=65535)
        assert len(data) <= MAX_ATTESTATION_BYTES
        att = open_attestation(data)
        assert att.reach_class is cls and att.verified is False
        assert att.host == "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"


def test_make_normalises_the_host() -> None:
    assert open_attestation(good(host="::ffff:198.18.0.9")).host == "198.18.0.9"
    assert open_attestation(good(host="2001:DB8:0::1")).host == "2001:db8::1"


def test_forged_signature() -> None:
    doc = unpack(good())
    doc["sig"] = bytes(64)
    refused(pack(doc), "signature")
    doc = unpack(good())
    doc["body"]["verified"] = False         # tampered after signing
    refused(pack(doc), "signature")


def test_signed_in_another_domain() -> None:
    refused(sealed(body(), domain=ENVELOPE), "signature")


def test_signed_by_someone_who_is_not_the_named_registrar() -> None:
    e = refused(sealed(body(), signer=OTHER), "malformed")
    assert "registrar" in e.message


def test_attestation_for_another_node() -> None:
    e = refused(good(node_id=OTHER.node_id), "node_id", node_id=NODE.node_id)
    assert e.value == OTHER.node_id.hex()


def test_wrong_kind() -> None:
    refused(sealed(body(), kind="nat.other"), "kind")


def test_not_bytes_not_an_envelope_too_long() -> None:
    refused("a string", "malformed")
    refused(bytearray(good()), "malformed")
    refused(b"\xc1", "malformed")
    refused(pack({"a": 1}), "malformed")
    refused(b"\x00" * (MAX_ATTESTATION_BYTES + 1), "too_long")
    refused(sealed(body(pad=b"x" * 400)), "too_long")


@pytest.mark.parametrize("doc", [
    "not a map",
    {k: v for k, v in body().items() if k != "ts"},
    body(extra=1),
    body(node_id=b"short"),
    body(node_id="x" * 20),
    body(addr="198.18.0.7:8470"),
    body(addr=["198.18.0.7"]),
    body(addr=["198.18.0.7", 8470, 1]),
    body(addr=["example.org", 8470]),
    body(addr=["198.18.0.256", 8470]),
    body(addr=["fe80::1%eth0", 8470]),
    body(addr=["::ffff:198.18.0.7", 8470]),     # not the canonical form
    body(addr=["2001:DB8::1", 8470]),
    body(addr=[b"198.18.0.7", 8470]),
    body(addr=["198.18.0.7", 0]),
    body(addr=["198.18.0.7", 65536]),
    body(addr=["198.18.0.7", True]),
    body(addr=["198.18.0.7", "8470"]),
    body(**{"class": "open"}),
    body(**{"class": 1}),
    body(verified=1),
    body(verified=None),
    body(registrar=b"\x00" * 31),
    body(registrar=OTHER.public_key),
    body(ts=NOW + 1),                          # not the envelope's
    body(ts=True),
])
def test_malformed_body(doc: Any) -> None:
    refused(sealed(doc), "malformed")


def test_not_addressed_to_its_node() -> None:
    refused(sealed(body(), to=OTHER.node_id), "malformed")
    refused(sealed(body(), to=None), "malformed")


def test_expired_and_future() -> None:
    data = good()
    assert open_attestation(data, now=NOW + ATTESTATION_TTL_US).ts == NOW
    refused(data, "expired", now=NOW + ATTESTATION_TTL_US + 1)
    refused(data, "expired", now=NOW + 61, max_age_us=60)
    assert open_attestation(data, now=NOW - FUTURE_TOLERANCE_US).ts == NOW
    refused(data, "future", now=NOW - FUTURE_TOLERANCE_US - 1)
    assert open_attestation(data).ts == NOW      # no clock given: no age check


def test_make_refuses_bad_fields() -> None:
    with pytest.raises(NatError):
        good(node_id=b"x")
    with pytest.raises(NatError):
        good(host="example.org")
    with pytest.raises(NatError):
        good(port=0)
    with pytest.raises(ValueError):
        good(reach_class="open")
