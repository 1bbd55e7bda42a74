"""Which of the host's leased TCP ports are forwarded where (docs/design.md section 6,
"Access"), pure.

A ``tcp_port`` is a unique resource (:mod:`p2pmarket.auction.unique`): each tick the
allocation names the account that won each offered port (``winners``: ``tcp_port,N ->
account id``). The rules, in :func:`desired_forwards`:

- port N is forwarded iff an account won ``tcp_port,N``, that account is ``active``,
  and its guest has an address; the forward goes to ``guest:22`` (every port an
  account wins reaches its guest's SSH port);
- a guest address must be an IPv4 address inside the guests' network (by default
  :data:`GUEST_NETWORK`): a forward never reaches the host itself or another network,
  whatever the VMM reported;
- a port the node itself listens on (``reserved``) is never forwarded;
- a port that is not forwarded and has a winner is "waiting", with the reason
  (:data:`NO_ADDRESS`, :data:`NOT_ACTIVE`, :data:`BAD_ADDRESS`, :data:`RESERVED`), for
  the host's status.

Each :class:`Forward` carries the winning account's holder key: only that key may
open a relayed stream to the port (:mod:`p2pmarket.host.portfwd`).

:func:`forward_changes` is the reconciler's decision: from the forwards running now
and those wanted, which ports to stop and which forwards to start. A port whose
forward changed in any field (another account won it, its guest moved) is stopped
and started again, so a new winner never inherits the old holder's connections.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from p2pmarket.auction.accounts import ACTIVE, Account
from p2pmarket.auction.unique import UniqueKeyError, parse_key

TCP_PORT = "tcp_port"
GUEST_SSH_PORT = 22
GUEST_NETWORK = "198.18.0.0/15"     # the project's guest networks lie inside it

NO_ADDRESS = "the guest has no address yet"
NOT_ACTIVE = "the account is not active"
BAD_ADDRESS = "the guest's address is outside the guests' network"
RESERVED = "the node itself listens on this port"


@dataclass(frozen=True)
class Forward:
    """Host port ``port`` forwarded to ``guest:guest_port`` for ``account_id``, whose
    holder's public key is ``holder``."""

    port: int
    account_id: str
    holder: bytes
    guest: str
    guest_port: int = GUEST_SSH_PORT

    def to_doc(self) -> dict[str, object]:
        return {"port": self.port, "account_id": self.account_id,
                "guest": f"{self.guest}:{self.guest_port}"}


ForwardTable = Mapping[int, Forward]


@dataclass(frozen=True)
class Desired:
    """The forwards wanted (port -> forward) and the ports won but not forwarded
    (port -> (account id, reason))."""

    table: dict[int, Forward]
    waiting: dict[int, tuple[str, str]]


@dataclass(frozen=True)
class Changes:
    """What the reconciler does: stop these ports, then start these forwards."""

    stop: tuple[int, ...]
    start: tuple[Forward, ...]

    @property
    def empty(self) -> bool:
        return not self.stop and not self.start


def ports_won(winners: Mapping[str, str]) -> dict[int, str]:
    """``tcp_port`` id keys of an allocation's ``winners`` -> ``{port: account id}``
    (other unique types and malformed keys are left out)."""
    out: dict[int, str] = {}
    for key, account_id in winners.items():
        if not key.startswith(TCP_PORT + ","):
            continue
        try:
            _, lo, hi = parse_key(key)
        except UniqueKeyError:
            continue
        if lo == hi:
            out[lo] = account_id
    return out


MAX_FREE_LISTED = 32


def free_ports(offered: Mapping[str, int], winners: Mapping[str, str]) -> list[int]:
    """The ``tcp_port`` identifiers the host offers (its ``unique`` keys and ranges) that
    nobody holds now, lowest first, at most :data:`MAX_FREE_LISTED`: what a quote tells
    a buyer who wants one port (a range bid would bid on every port of the range)."""
    held = ports_won(winners)
    out: list[int] = []
    for key in sorted(offered):
        try:
            kind, lo, hi = parse_key(key)
        except UniqueKeyError:
            continue
        if kind != TCP_PORT:
            continue
        for port in range(lo, hi + 1):
            if port not in held:
                out.append(port)
                if len(out) >= MAX_FREE_LISTED:
                    return sorted(out)
    return sorted(out)


def guest_address_ok(address: str, network: str = GUEST_NETWORK) -> bool:
    """Whether ``address`` is an IPv4 address inside ``network``."""
    try:
        return ipaddress.IPv4Address(address) in ipaddress.IPv4Network(network)
    except ValueError:
        return False


def desired_forwards(winners: Mapping[str, str], accounts: Mapping[str, Account],
                     guests: Mapping[str, str], *, network: str = GUEST_NETWORK,
                     reserved: Collection[int] = ()) -> Desired:
    """The forwards the rules of the module docstring want, from an allocation's
    ``winners`` (unique id key -> account id), the accounts (id -> record) and the guests'
    addresses (account id -> IPv4 address)."""
    table: dict[int, Forward] = {}
    waiting: dict[int, tuple[str, str]] = {}
    for port, account_id in sorted(ports_won(winners).items()):
        account = accounts.get(account_id)
        address = guests.get(account_id)
        if port in reserved:
            waiting[port] = (account_id, RESERVED)
        elif account is None or account.state != ACTIVE:
            waiting[port] = (account_id, NOT_ACTIVE)
        elif not address:
            waiting[port] = (account_id, NO_ADDRESS)
        elif not guest_address_ok(address, network):
            waiting[port] = (account_id, BAD_ADDRESS)
        else:
            table[port] = Forward(port, account_id, account.holder, address)
    return Desired(table, waiting)


def forward_changes(current: ForwardTable, desired: ForwardTable) -> Changes:
    """Stop the ports running now that are not wanted as they are; start the wanted
    forwards that are not running as they are (both in port order)."""
    stop = tuple(p for p in sorted(current) if desired.get(p) != current[p])
    start = tuple(desired[p] for p in sorted(desired) if current.get(p) != desired[p])
    return Changes(stop, start)


__all__ = ["BAD_ADDRESS", "GUEST_NETWORK", "GUEST_SSH_PORT", "MAX_FREE_LISTED", "NOT_ACTIVE",
           "NO_ADDRESS", "RESERVED", "Changes", "Desired", "Forward", "ForwardTable",
           "desired_forwards", "forward_changes", "free_ports", "guest_address_ok",
           "ports_won"]
