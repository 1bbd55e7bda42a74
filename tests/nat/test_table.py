"""The seed's nine-row decision table (note of 9/12/2007), one test a row, and the
cases where the registrar dialled one address once."""

import pytest

from p2pmarket.nat.table import ROWS, Callback, Decision, ReachClass, decide

OK, FAILED, NONE = Callback.OK, Callback.FAILED, Callback.NONE


def test_ok_ok_equal_addresses_accepts_external_public() -> None:
    assert decide(OK, OK, True) == Decision("external", ReachClass.PUBLIC, True)


def test_ok_ok_different_addresses_accepts_external_forwarded() -> None:
    assert decide(OK, OK, False) == Decision("external", ReachClass.FORWARDED, True)


def test_ok_failed_accepts_external_forwarded() -> None:
    assert decide(OK, FAILED, False) == Decision("external", ReachClass.FORWARDED, True)


def test_ok_none_accepts_external_forwarded() -> None:
    assert decide(OK, NONE, False) == Decision("external", ReachClass.FORWARDED, True)


def test_failed_ok_accepts_self_proxied_verified() -> None:
    assert decide(FAILED, OK, False) == Decision("self", ReachClass.PROXIED, True)


def test_failed_failed_rejects() -> None:
    assert decide(FAILED, FAILED, False) is None


def test_failed_none_accepts_self_nat_unverified() -> None:
    assert decide(FAILED, NONE, False) == Decision("self", ReachClass.NAT, False)


def test_none_ok_accepts_self_proxied_verified() -> None:
    assert decide(NONE, OK, False) == Decision("self", ReachClass.PROXIED, True)


def test_none_failed_rejects() -> None:
    assert decide(NONE, FAILED, False) is None


def test_none_none_accepts_self_proxied_unverified() -> None:
    assert decide(NONE, NONE, False) == Decision("self", ReachClass.PROXIED, False)


def test_one_address_failed_rejects_and_none_is_proxied_unverified() -> None:
    assert decide(FAILED, FAILED, True) is None
    assert decide(NONE, NONE, True) == Decision("self", ReachClass.PROXIED, False)


@pytest.mark.parametrize(("external", "self_known"),
                         [(OK, FAILED), (FAILED, OK), (NONE, OK), (OK, NONE)])
def test_one_address_has_one_outcome(external: Callback, self_known: Callback) -> None:
    with pytest.raises(ValueError, match="one outcome"):
        decide(external, self_known, True)


def test_rows_are_the_whole_table_and_decide_follows_them() -> None:
    assert list(ROWS) == [(e, s) for e in (OK, FAILED, NONE) for s in (OK, FAILED, NONE)]
    for (external, self_known), decision in ROWS.items():
        assert decide(external, self_known, False) == decision
    # a verified decision is exactly one where the accepted address answered ok
    for (external, self_known), decision in ROWS.items():
        if decision is not None:
            outcome = external if decision.accept == "external" else self_known
            assert decision.verified == (outcome == OK)


def test_values_are_the_wire_strings() -> None:
    assert [c.value for c in Callback] == ["ok", "failed", "none"]
    assert [c.value for c in ReachClass] == ["public", "forwarded", "nat", "proxied"]
    assert decide(Callback("ok"), Callback("ok"), True) == decide(OK, OK, True)
