"""The registrar's memory of registrations: nobody squats on a verified address."""

from p2pmarket.nat.registry import MAX_UNVERIFIED_PER_ADDRESS, Registry

A, B, C = b"A" * 20, b"B" * 20, b"C" * 20
HOST, PORT = "198.18.0.7", 8470
TTL = 1000


def test_squatter_refused_while_the_verified_holder_lives() -> None:
    reg = Registry(TTL)
    assert reg.claim(HOST, PORT, A, True, 0)
    assert not reg.claim(HOST, PORT, B, False, 10)
    assert reg.holder(HOST, PORT, 10) == A
    assert reg.claimants(HOST, PORT, 10) == frozenset()
    # other ports and hosts are other addresses
    assert reg.claim(HOST, PORT + 1, B, False, 10)
    assert reg.claim("198.18.0.8", PORT, B, False, 10)


def test_verified_replaces_unverified_and_a_verified_holder() -> None:
    reg = Registry(TTL)
    assert reg.claim(HOST, PORT, A, False, 0)
    assert reg.claim(HOST, PORT, B, False, 1)
    assert reg.claimants(HOST, PORT, 1) == {A, B}
    assert reg.holder(HOST, PORT, 1) is None
    assert reg.claim(HOST, PORT, C, True, 2)
    assert reg.holder(HOST, PORT, 2) == C
    assert reg.claimants(HOST, PORT, 2) == frozenset()
    assert reg.claim(HOST, PORT, A, True, 3)          # the callback proved A is there now
    assert reg.holder(HOST, PORT, 3) == A
    assert not reg.claim(HOST, PORT, C, False, 4)


def test_unverified_never_replaces_verified_not_even_the_holders_own() -> None:
    reg = Registry(TTL)
    assert reg.claim(HOST, PORT, A, True, 0)
    assert reg.claim(HOST, PORT, A, False, 500)      # the holder itself: accepted ...
    assert reg.holder(HOST, PORT, 999) == A
    assert reg.holder(HOST, PORT, TTL) is None       # ... but not refreshed
    assert reg.claimants(HOST, PORT, 999) == frozenset()


def test_expiry_frees_the_address() -> None:
    reg = Registry(TTL)
    assert reg.claim(HOST, PORT, A, True, 0)
    assert reg.holder(HOST, PORT, TTL - 1) == A
    assert not reg.claim(HOST, PORT, B, False, TTL - 1)
    assert reg.holder(HOST, PORT, TTL) is None
    assert reg.claim(HOST, PORT, B, False, TTL)
    assert reg.claimants(HOST, PORT, TTL) == {B}
    assert reg.claimants(HOST, PORT, 2 * TTL) == frozenset()
    assert reg.claim(HOST, PORT, C, False, 2 * TTL)
    assert reg.claimants(HOST, PORT, 2 * TTL) == {C}   # B's expired claim was dropped


def test_a_verified_refresh_extends_the_hold() -> None:
    reg = Registry(TTL)
    reg.claim(HOST, PORT, A, True, 0)
    reg.claim(HOST, PORT, A, True, 900)
    assert reg.holder(HOST, PORT, 1800) == A
    assert not reg.claim(HOST, PORT, B, False, 1800)


def test_bounded_addresses_oldest_dropped() -> None:
    reg = Registry(TTL, capacity=3)
    for port in (1, 2, 3):
        assert reg.claim(HOST, port, A, True, port)
    assert reg.claim(HOST, 1, A, True, 4)            # 1 is the newest now
    assert reg.claim(HOST, 4, B, False, 5)           # 2 is dropped
    assert len(reg) == 3
    assert reg.holder(HOST, 2, 5) is None
    assert [reg.holder(HOST, p, 5) for p in (1, 3)] == [A, A]
    assert reg.claimants(HOST, 4, 5) == {B}


def test_bounded_unverified_claimants_oldest_dropped() -> None:
    reg = Registry(TTL)
    ids = [bytes([i]) * 20 for i in range(MAX_UNVERIFIED_PER_ADDRESS + 2)]
    for t, node in enumerate(ids):
        assert reg.claim(HOST, PORT, node, False, t)
    assert reg.claimants(HOST, PORT, 20) == frozenset(ids[2:])
    assert reg.claim(HOST, PORT, ids[2], False, 21)   # renewed: now the newest
    assert reg.claim(HOST, PORT, b"z" * 20, False, 22)
    assert reg.claimants(HOST, PORT, 22) == frozenset([*ids[2:], b"z" * 20]) - {ids[3]}
