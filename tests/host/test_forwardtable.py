"""The forward table's rules (pure): which leased ports go where, and what the reconciler
stops and starts."""

from __future__ import annotations

from p2pmarket.auction.accounts import ACTIVE, CLOSED, EXPIRED, Account
from p2pmarket.host.forwardtable import (
    BAD_ADDRESS,
    NO_ADDRESS,
    NOT_ACTIVE,
    RESERVED,
    Forward,
    desired_forwards,
    forward_changes,
    guest_address_ok,
    ports_won,
)

A, B = b"A" * 32, b"B" * 32


def account(aid: str, holder: bytes, state: str = ACTIVE) -> Account:
    return Account(aid, holder, fund=1, interval_end_us=10, created_us=0, state=state)


def test_ports_won_takes_only_tcp_port_ids() -> None:
    winners = {"tcp_port,30000": "a", "tcp_port,30001": "b", "ipv4_address,198.18.0.5": "a",
               "tcp_port,bogus": "a", "tcp_port,30002-30003": "a", "cpu": "a"}
    assert ports_won(winners) == {30000: "a", 30001: "b"}


def test_a_won_port_of_an_active_account_with_a_guest_address_is_forwarded_to_22() -> None:
    winners = {"tcp_port,30000": "a", "tcp_port,30001": "a", "tcp_port,30002": "b"}
    accounts = {"a": account("a", A), "b": account("b", B)}
    got = desired_forwards(winners, accounts, {"a": "198.19.200.10", "b": "198.19.200.11"})
    assert got.table == {
        30000: Forward(30000, "a", A, "198.19.200.10", 22),
        30001: Forward(30001, "a", A, "198.19.200.10", 22),
        30002: Forward(30002, "b", B, "198.19.200.11", 22)}
    assert got.waiting == {}


def test_ports_not_forwarded_say_why() -> None:
    winners = {"tcp_port,1": "none", "tcp_port,2": "exp", "tcp_port,3": "closed",
               "tcp_port,4": "noaddr", "tcp_port,5": "lo", "tcp_port,6": "lan",
               "tcp_port,7": "junk", "tcp_port,8": "ok", "tcp_port,9": "ok"}
    accounts = {"exp": account("exp", A, EXPIRED), "closed": account("closed", A, CLOSED),
                "noaddr": account("noaddr", A), "lo": account("lo", A),
                "lan": account("lan", A), "junk": account("junk", A), "ok": account("ok", B)}
    guests = {"exp": "198.19.200.2", "lo": "127.0.0.1", "lan": "192.0.2.1",
              "junk": "not an address", "ok": "198.19.200.9"}
    got = desired_forwards(winners, accounts, guests, reserved={9})
    assert got.table == {8: Forward(8, "ok", B, "198.19.200.9")}
    assert got.waiting == {1: ("none", NOT_ACTIVE), 2: ("exp", NOT_ACTIVE),
                           3: ("closed", NOT_ACTIVE), 4: ("noaddr", NO_ADDRESS),
                           5: ("lo", BAD_ADDRESS), 6: ("lan", BAD_ADDRESS),
                           7: ("junk", BAD_ADDRESS), 9: ("ok", RESERVED)}


def test_the_guest_network_is_configurable() -> None:
    assert guest_address_ok("198.19.200.7")
    assert guest_address_ok("198.19.200.7", "198.19.200.0/24")
    assert not guest_address_ok("198.19.201.7", "198.19.200.0/24")
    assert not guest_address_ok("::1")
    got = desired_forwards({"tcp_port,30000": "a"}, {"a": account("a", A)},
                           {"a": "198.19.201.7"}, network="198.19.200.0/24")
    assert got.table == {} and got.waiting == {30000: ("a", BAD_ADDRESS)}


def test_changes_stop_what_moved_and_start_what_is_new() -> None:
    old = {1: Forward(1, "a", A, "198.19.200.2"), 2: Forward(2, "a", A, "198.19.200.2"),
           3: Forward(3, "b", B, "198.19.200.3")}
    new = {1: Forward(1, "a", A, "198.19.200.2"),        # unchanged
           2: Forward(2, "b", B, "198.19.200.3"),        # another winner
           3: Forward(3, "b", B, "198.19.200.4"),        # its guest moved
           4: Forward(4, "b", B, "198.19.200.3")}        # new
    changes = forward_changes(old, new)
    assert changes.stop == (2, 3)
    assert changes.start == (new[2], new[3], new[4])
    assert forward_changes(new, new).empty
    assert forward_changes(new, {}).stop == (1, 2, 3, 4)


def test_a_cancelled_lease_frees_its_port_for_the_next_winner() -> None:
    accounts = {"a": account("a", A), "b": account("b", B)}
    guests = {"a": "198.19.200.2", "b": "198.19.200.3"}
    before = desired_forwards({"tcp_port,30000": "a"}, accounts, guests).table
    del accounts["a"]                                   # cancelled: the account is gone
    freed = desired_forwards({}, accounts, guests).table
    after = desired_forwards({"tcp_port,30000": "b"}, accounts, guests).table
    assert forward_changes(before, freed).stop == (30000,)
    assert forward_changes(freed, after).start == (Forward(30000, "b", B, "198.19.200.3"),)
