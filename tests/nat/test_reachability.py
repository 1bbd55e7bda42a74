"""What a node believes about itself, on an explicit clock."""

from p2pmarket.core.clock import US_PER_S
from p2pmarket.core.identity import Identity
from p2pmarket.nat.attestation import ATTESTATION_TTL_US, Attestation, open_attestation
from p2pmarket.nat.attestation import make_attestation as make
from p2pmarket.nat.reachability import BACKOFF_US, RECHECK_US, Reachability, Verdict
from p2pmarket.nat.table import ReachClass

NODE = Identity(b"\x21" * 32)
REGISTRARS = [Identity(bytes([0x30 + i]) * 32) for i in range(8)]
T0 = 1_700_000_000_000_000
S = US_PER_S
PUBLIC, NAT = ReachClass.PUBLIC, ReachClass.NAT


def answer(i: int, cls: ReachClass = PUBLIC, host: str = "198.18.0.7", port: int = 8470,
           verified: bool = True, ts: int = T0) -> Attestation:
    return open_attestation(make(REGISTRARS[i], node_id=NODE.node_id, host=host, port=port,
                                 reach_class=cls, verified=verified, ts=ts))


def test_unknown_until_three_agree() -> None:
    r = Reachability()
    assert r.verdict() == Verdict(None, None, None, 0, 0)
    r.add(answer(0), T0)
    r.add(answer(1), T0)
    assert r.verdict() == Verdict(None, None, None, 2, 2)
    assert not r.public
    r.add(answer(2), T0)
    assert r.verdict() == Verdict(PUBLIC, "198.18.0.7", 8470, 3, 3, True)
    assert r.public


def test_class_and_address_must_both_agree() -> None:
    r = Reachability()
    r.add(answer(0), T0)
    r.add(answer(1, port=8471), T0)
    r.add(answer(2, cls=ReachClass.FORWARDED), T0)
    r.add(answer(3, host="198.18.0.8"), T0)
    assert r.verdict() == Verdict(None, None, None, 1, 4)
    r.add(answer(4), T0)
    assert r.verdict() == Verdict(None, None, None, 2, 5)
    r.add(answer(1), T0)                    # registrar 1 changes its answer
    assert r.verdict() == Verdict(PUBLIC, "198.18.0.7", 8470, 3, 5, True)


def test_only_the_last_five_registrars_count() -> None:
    r = Reachability()
    for i in range(3):
        r.add(answer(i, cls=NAT, verified=False), T0)
    assert r.verdict() == Verdict(NAT, "198.18.0.7", 8470, 3, 3, False)
    assert not r.public
    for i in range(3, 6):                   # three newer registrars say public
        r.add(answer(i), T0)
    # registrar 0 dropped: 2 nat, 3 public
    assert [a.registrar for a in r.answers] == [REGISTRARS[i].public_key for i in range(1, 6)]
    assert r.verdict() == Verdict(PUBLIC, "198.18.0.7", 8470, 3, 5, True)


def test_a_registrar_counts_once() -> None:
    r = Reachability()
    for _ in range(5):
        r.add(answer(0), T0)
    assert r.verdict() == Verdict(None, None, None, 1, 1)


def test_forwarded_is_public_proxied_is_not() -> None:
    r = Reachability()
    for i in range(3):
        r.add(answer(i, cls=ReachClass.FORWARDED), T0)
    assert r.public
    for i in range(3):
        r.add(answer(i, cls=ReachClass.PROXIED), T0)
    assert r.verdict().reach_class is ReachClass.PROXIED and not r.public


def test_verified_only_if_every_agreeing_answer_was() -> None:
    r = Reachability()
    r.add(answer(0, cls=ReachClass.PROXIED), T0)
    r.add(answer(1, cls=ReachClass.PROXIED), T0)
    r.add(answer(2, cls=ReachClass.PROXIED, verified=False), T0)
    assert r.verdict() == Verdict(ReachClass.PROXIED, "198.18.0.7", 8470, 3, 3, False)


def test_old_answers_are_dropped() -> None:
    r = Reachability()
    for i in range(3):
        r.add(answer(i), T0 + i)
    r.add(answer(3), T0 + ATTESTATION_TTL_US)     # 0's answer is 3 h old now
    assert r.verdict() == Verdict(PUBLIC, "198.18.0.7", 8470, 3, 3, True)
    r.round_done(T0 + ATTESTATION_TTL_US + 2)
    assert r.verdict() == Verdict(None, None, None, 1, 1)


def test_check_schedule_hourly_after_a_good_round() -> None:
    r = Reachability()
    assert r.next_check_at(T0) == T0                 # never checked: now
    for i in range(3):
        r.add(answer(i), T0 + 5 * S)
    r.round_done(T0 + 6 * S)
    assert r.next_check_at(T0 + 7 * S) == T0 + 6 * S + RECHECK_US
    assert RECHECK_US == 3600 * S


def test_check_schedule_backs_off_while_answers_are_few() -> None:
    r = Reachability()
    now = T0
    expected = [10, 30, 60, 120, 300, 600, 600, 600]
    for step in expected:
        r.round_done(now)
        assert r.next_check_at(now) == now + step * S
        now += step * S
    assert BACKOFF_US[:3] == (10 * S, 30 * S, 60 * S)
    r.add(answer(0), now)
    r.add(answer(1), now)
    r.round_done(now)                                  # still two: backing off further
    assert r.next_check_at(now) == now + 600 * S
    r.add(answer(2), now)
    r.round_done(now)
    assert r.next_check_at(now) == now + RECHECK_US
    for i in range(3):                                 # a good round resets the backoff
        r.add(answer(i, port=9000), now)
    r.add(answer(3), now)
    r.add(answer(4), now)
    r.add(answer(5), now)                              # 0 dropped: 2 + 3 answers kept
    r.round_done(now)
    assert r.next_check_at(now) == now + RECHECK_US


def test_address_change_makes_a_check_due_now() -> None:
    r = Reachability()
    for i in range(3):
        r.add(answer(i), T0)
    r.round_done(T0)
    assert not r.address_changed("198.18.0.7")        # the first report sets it
    assert not r.address_changed("198.18.0.7")
    assert r.next_check_at(T0 + S) == T0 + RECHECK_US
    assert r.address_changed("198.18.0.9")
    assert r.next_check_at(T0 + 2 * S) == T0 + 2 * S
    assert r.verdict() == Verdict(None, None, None, 0, 0)   # the old answers are gone
    r.round_done(T0 + 3 * S)                          # the round found nothing: back off
    assert r.next_check_at(T0 + 3 * S) == T0 + 13 * S
