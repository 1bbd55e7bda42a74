"""Canonical encoding, envelopes and the replay guard."""

from dataclasses import replace

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import Envelope, ReplayGuard, WireError, decode, pack, seal, unpack

ALICE = Identity(b"\x01" * 32)
BOB = Identity(b"\x02" * 32)

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=6), values, max_size=6))
def test_pack_is_independent_of_insertion_order(doc: dict) -> None:
    reversed_doc = dict(reversed(list(doc.items())))
    assert pack(doc) == pack(reversed_doc)
    assert unpack(pack(doc)) == doc


def reference_pack(obj: object) -> bytes:
    """The canonical encoding by its definition: every map's keys sorted by their own
    encoding, tuples as lists (what :func:`pack` must give byte for byte)."""
    def canon(o: object) -> object:
        if isinstance(o, list | tuple):
            return [canon(x) for x in o]
        if isinstance(o, dict):
            items = sorted(o.items(), key=lambda kv: msgpack.packb(kv[0], use_bin_type=True))
            return {k: canon(v) for k, v in items}
        return o
    return msgpack.packb(canon(obj), use_bin_type=True)


keys = st.text(max_size=40) | st.integers(-(2**40), 2**40) | st.binary(max_size=6)
wide_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=40)
    | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.tuples(children, children)
    | st.dictionaries(st.text(max_size=300), children, max_size=5)
    | st.dictionaries(keys, children, max_size=5),
    max_leaves=30,
)


@given(wide_values)
def test_pack_is_the_canonical_encoding(value: object) -> None:
    """The fast paths (str keys ordered by UTF-8 length then bytes, exact-type checks)
    give exactly the bytes of sorting every map by its encoded keys."""
    assert pack(value) == reference_pack(value)


def test_pack_sorts_keys_and_turns_tuples_into_lists() -> None:
    assert pack({"b": 1, "a": (1, 2)}) == msgpack.packb({"a": [1, 2], "b": 1})


def test_pack_refuses_floats_and_unknown_types() -> None:
    with pytest.raises(WireError, match="floats"):
        pack({"price": 1.5})
    with pytest.raises(WireError, match="cannot encode"):
        pack({"x": object()})


def test_pack_refuses_floats_inside_lists() -> None:
    with pytest.raises(WireError, match="floats"):
        pack({"x": [1, b"a", [2.0]]})
    assert pack([None, True, 1, "s", b"b"]) == msgpack.packb([None, True, 1, "s", b"b"])


@given(values, st.one_of(st.none(), st.just(BOB.node_id)), st.integers(0, 2**63 - 1))
def test_sealed_envelope_bytes_are_the_canonical_ones(body: object, to: bytes | None,
                                                      ts: int) -> None:
    """seal() splices the body's bytes once; the result equals the generic encoding."""
    env = seal(ALICE, ENVELOPE, "rpc.x", body, ts=ts, to=to)
    plain = Envelope(env.kind, env.sender, env.to, env.ts, env.body, env.sig)
    assert env.encode() == pack(env.to_wire()) == plain.encode()
    assert decode(env.encode(), ENVELOPE) == env   # the signature covers pack(signed_part)
    changed = replace(env, body={"other": 1})  # no stale body bytes after replace()
    assert changed.encode() == pack(changed.to_wire())


def test_seal_refuses_a_bad_header() -> None:
    with pytest.raises(WireError):
        seal(ALICE, ENVELOPE, "rpc.x", {}, ts=1, to="not bytes")  # type: ignore[arg-type]


def test_unpack_refuses_malformed_and_oversize() -> None:
    with pytest.raises(WireError, match="malformed"):
        unpack(b"\xc1")
    with pytest.raises(WireError, match="too large"):
        unpack(b"\x00" * 11, max_bytes=10)


def test_envelope_round_trip_and_signature() -> None:
    env = seal(ALICE, ENVELOPE, "rpc.ping", {"n": 1}, ts=123, to=BOB.node_id)
    back = decode(env.encode(), ENVELOPE)
    assert back == env
    assert back.sender == ALICE.public_key
    assert back.sender_id == ALICE.node_id


@pytest.mark.parametrize("field,value", [
    ("body", {"n": 2}), ("ts", 124), ("kind", "rpc.pong"), ("to", None),
])
def test_tampered_envelope_fails(field: str, value: object) -> None:
    doc = seal(ALICE, ENVELOPE, "rpc.ping", {"n": 1}, ts=123, to=BOB.node_id).to_wire()
    doc[field] = value
    with pytest.raises(WireError, match="bad signature"):
        decode(pack(doc), ENVELOPE)


def test_envelope_from_someone_else_fails() -> None:
    doc = seal(ALICE, ENVELOPE, "rpc.ping", {}, ts=1).to_wire()
    doc["from"] = BOB.public_key
    with pytest.raises(WireError, match="bad signature"):
        decode(pack(doc), ENVELOPE)


@pytest.mark.parametrize("doc,message", [
    ([1, 2], "must be a map"),
    ({"v": 1}, "fields wrong"),
    ({"v": 9, "kind": "k", "from": b"x" * 32, "to": None, "ts": 1, "body": {}, "sig": b"s" * 64},
     "version"),
    # version 1 envelopes were signed without a domain: refused
    ({"v": 1, "kind": "k", "from": b"x" * 32, "to": None, "ts": 1, "body": {}, "sig": b"s" * 64},
     "unsupported envelope version"),
    ({"v": 2, "kind": "k", "from": b"x" * 31, "to": None, "ts": 1, "body": {}, "sig": b"s" * 64},
     "public key"),
    ({"v": 2, "kind": "k", "from": b"x" * 32, "to": b"t", "ts": 1, "body": {}, "sig": b"s" * 64},
     "node id"),
    ({"v": 2, "kind": "k", "from": b"x" * 32, "to": None, "ts": -1, "body": {}, "sig": b"s" * 64},
     "ts"),
    ({"v": 2, "kind": "", "from": b"x" * 32, "to": None, "ts": 1, "body": {}, "sig": b"s" * 64},
     "kind"),
])
def test_malformed_envelopes(doc: object, message: str) -> None:
    with pytest.raises(WireError, match=message):
        Envelope.from_wire(doc)


NOW = 1_000_000_000_000


def test_replay_guard_refuses_duplicates() -> None:
    guard = ReplayGuard(size=4)
    guard.accept(b"a", NOW, NOW)
    with pytest.raises(WireError, match="replayed"):
        guard.accept(b"a", NOW, NOW)
    guard.accept(b"b", NOW, NOW)  # another sender has its own buffer


def test_replay_guard_accepts_out_of_order_until_full() -> None:
    guard = ReplayGuard(size=3)
    for ts in (NOW + 5, NOW + 2, NOW + 9):
        guard.accept(b"a", ts, NOW)
    # full: oldest kept is NOW+2; anything not newer is refused
    with pytest.raises(WireError, match="older than replay window"):
        guard.accept(b"a", NOW + 1, NOW)
    guard.accept(b"a", NOW + 3, NOW)
    # NOW+2 was pushed out; a replay of it is still refused as too old
    with pytest.raises(WireError):
        guard.accept(b"a", NOW + 2, NOW)


def test_replay_guard_clock_window() -> None:
    guard = ReplayGuard(tolerance_us=1_000)
    with pytest.raises(WireError, match="future"):
        guard.accept(b"a", NOW + 1_001, NOW)
    with pytest.raises(WireError, match="too old"):
        guard.accept(b"a", NOW - 1_001, NOW)
    guard.accept(b"a", NOW + 1_000, NOW)


def test_replay_guard_state_is_bounded() -> None:
    guard = ReplayGuard(size=2, max_senders=3)
    for i in range(10):
        for j in range(5):
            guard.accept(bytes([i]), NOW + j, NOW)
    assert len(guard._seen) == 3
    assert all(len(buf) == 2 for buf in guard._seen.values())
