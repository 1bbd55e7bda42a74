"""SHARP leases: signed by the host, verified offline."""

from __future__ import annotations

import pytest

from p2pmarket.auction import HostError
from p2pmarket.auction.lease import Lease, ResourceTerm, sign_lease, verify_lease
from p2pmarket.core.domains import DHT_RECORD, ENVELOPE, LEASE
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import Envelope, seal

HOST = Identity(bytes(range(32)))
BUYER = Identity(bytes(32))


def make() -> Lease:
    return Lease("acc1", HOST.node_id, BUYER.public_key,
                 {"cpu": ResourceTerm(400, 4000, 1000), "memory": ResourceTerm(0, 1024, 512)},
                 start=10, end=1_000_010, balance=5000)


def test_sign_and_verify_all_forms() -> None:
    env = sign_lease(HOST, make(), ts=42)
    for form in (env, env.to_wire(), env.encode()):
        lease = verify_lease(form, HOST.public_key)
        assert lease.resources == make().resources
        assert lease.balance == 5000 and lease.holder == BUYER.public_key
        assert lease.signed_at == 42 and lease.audit is None


def test_tampered_lease_fails() -> None:
    doc = sign_lease(HOST, make(), ts=42).to_wire()
    doc["body"]["balance"] = 999_999
    with pytest.raises(HostError, match="invalid lease"):
        verify_lease(doc, HOST.public_key)
    doc = sign_lease(HOST, make(), ts=42).to_wire()
    doc["body"]["resources"]["memory"]["alloc"] = 1024
    with pytest.raises(HostError):
        verify_lease(doc, HOST.public_key)


def test_wrong_host_key_fails() -> None:
    env = sign_lease(HOST, make(), ts=1)
    with pytest.raises(HostError, match="another key"):
        verify_lease(env, BUYER.public_key)


def test_host_must_name_itself() -> None:
    with pytest.raises(HostError):
        sign_lease(BUYER, make(), ts=1)
    # a lease body naming another host, signed by the buyer's key: refused on verify
    env = seal(BUYER, LEASE, "lease", make().body(), ts=1)
    with pytest.raises(HostError, match="host_id"):
        verify_lease(env, BUYER.public_key)


def test_not_a_lease() -> None:
    env = seal(HOST, LEASE, "reply", make().body(), ts=1)
    with pytest.raises(HostError, match="not a lease"):
        verify_lease(env, HOST.public_key)
    # the host's signature of a lease body in another domain (an RPC, a DHT record) is
    # no lease, whatever its kind
    for domain in (ENVELOPE, DHT_RECORD):
        with pytest.raises(HostError, match="bad signature"):
            verify_lease(seal(HOST, domain, "lease", make().body(), ts=1).encode(),
                         HOST.public_key)
    bad = seal(HOST, LEASE, "lease", {"lease_id": "x"}, ts=1)
    with pytest.raises(HostError, match="wrong fields"):
        verify_lease(bad, HOST.public_key)
    with pytest.raises(HostError):
        verify_lease(b"\x00garbage", HOST.public_key)
    assert isinstance(sign_lease(HOST, make(), ts=1), Envelope)
