"""The relay's reservation voucher and the host's reserve request: what opens, and every
way one is refused."""

from __future__ import annotations

import pytest

from p2pmarket.core.domains import ENVELOPE, RESERVATION
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import seal, unpack
from p2pmarket.nat.frames import RelayError
from p2pmarket.nat.reservation import (
    MAX_RESERVATION_BYTES,
    RESERVATION_KIND,
    RESERVATION_S,
    RESERVE_KIND,
    Reservation,
    make_reservation,
    make_reserve_request,
    open_reservation,
    open_reserve_request,
)

S = 1_000_000
NOW = 1_700_000_000 * S
RELAY = Identity(b"\x11" * 32)
HOST = Identity(b"\x22" * 32)
URL = "http://198.18.0.1:8800"


def voucher(**kw: object) -> bytes:
    args: dict[str, object] = {"url": URL, "node_id": HOST.node_id,
                               "expires": NOW + RESERVATION_S * S, "ts": NOW}
    args.update(kw)
    return make_reservation(RELAY, **args)  # type: ignore[arg-type]


def test_a_voucher_opens_to_what_the_relay_granted() -> None:
    got = open_reservation(voucher(), node_id=HOST.node_id, now=NOW + 5)
    assert got == Reservation(relay=RELAY.public_key, url=URL, node_id=HOST.node_id,
                              expires=NOW + 3600 * S, ts=NOW)
    assert got.relayed_url == f"{URL}/relay/{HOST.node_id.hex()}"
    assert open_reservation(voucher()) == got      # no node or time given: not checked
    assert RESERVATION_S == 3600


def test_a_voucher_with_the_longest_url_fits_its_bound() -> None:
    data = voucher(url="https://" + "a" * 192)
    assert len(data) <= MAX_RESERVATION_BYTES
    with pytest.raises(RelayError, match="relay url must be an http"):
        voucher(url="https://" + "a" * 193)


def forged_signature() -> bytes:
    data = bytearray(voucher())
    i = data.index(b"sig") + 6
    data[i] ^= 1
    return bytes(data)


def resealed(body_change: dict[str, object], *, to: bytes | None = None,
             kind: str = RESERVATION_KIND, domain: object = RESERVATION) -> bytes:
    body = {"relay": RELAY.public_key, "url": URL, "node_id": HOST.node_id,
            "expires": NOW + 100, "ts": NOW, **body_change}
    return seal(RELAY, domain, kind, body, ts=NOW,  # type: ignore[arg-type]
                to=HOST.node_id if to is None else to).encode()


@pytest.mark.parametrize(("data", "kw", "error"), [
    (forged_signature(), {}, "bad reservation: bad signature"),
    (resealed({}, domain=ENVELOPE), {}, "bad reservation: bad signature"),
    (resealed({}, kind="nat.other"), {}, "not a reservation"),
    (resealed({"relay": HOST.public_key}), {}, "names a relay other than its signer"),
    (resealed({}, to=RELAY.node_id), {}, "node id differs from its addressee"),
    (resealed({"extra": 1}), {}, "reservation body must be"),
    (resealed({"url": "ftp://x"}), {}, "relay url must be an http"),
    (resealed({"expires": NOW}), {}, "lifetime"),
    (resealed({"expires": NOW + 2 * 86400 * S}), {}, "lifetime"),
    (resealed({"ts": NOW - 1}), {}, "ts differs from its envelope"),
    (voucher(), {"node_id": RELAY.node_id}, "reservation is for another node"),
    (voucher(), {"now": NOW + 3600 * S}, "reservation expired"),
    (voucher(), {"now": NOW - 120 * S}, "reservation from the future"),
    (b"\x00" * 600, {}, "reservation over its size bound"),
    (b"\xc1", {}, "bad reservation: malformed msgpack"),
    ("text", {}, "a reservation must be bytes"),
])
def test_a_bad_voucher_is_refused(data: bytes, kw: dict[str, object], error: str) -> None:
    with pytest.raises(RelayError, match=error):
        open_reservation(data, **kw)  # type: ignore[arg-type]


def test_a_voucher_out_of_bounds_is_not_made() -> None:
    with pytest.raises(RelayError, match="node id must be 20 bytes"):
        voucher(node_id=b"x")
    with pytest.raises(RelayError, match="lifetime"):
        voucher(expires=NOW)
    with pytest.raises(RelayError, match="integer"):
        voucher(ts=1.5)


def test_a_reserve_request_opens_and_its_forgeries_do_not() -> None:
    data = make_reserve_request(HOST, RELAY.node_id, NOW)
    env = open_reserve_request(data, RELAY.node_id)
    assert (env.kind, env.sender_id, env.ts, env.body) == (RESERVE_KIND, HOST.node_id, NOW, {})
    with pytest.raises(RelayError, match="addressed to another relay"):
        open_reserve_request(data, HOST.node_id)
    other = seal(HOST, ENVELOPE, "nat.other", {}, ts=NOW, to=RELAY.node_id).encode()
    with pytest.raises(RelayError, match="not a reserve request"):
        open_reserve_request(other, RELAY.node_id)
    body = seal(HOST, ENVELOPE, RESERVE_KIND, {"x": 1}, ts=NOW, to=RELAY.node_id).encode()
    with pytest.raises(RelayError, match="body must be"):
        open_reserve_request(body, RELAY.node_id)
    domain = seal(HOST, RESERVATION, RESERVE_KIND, {}, ts=NOW, to=RELAY.node_id).encode()
    with pytest.raises(RelayError, match="bad signature"):
        open_reserve_request(domain, RELAY.node_id)
    assert unpack(data)["to"] == RELAY.node_id
