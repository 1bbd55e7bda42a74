"""Keeping the leased ports in step with the auction: the buyer's way in (issue 13).

After every change of the allocation (a tick, a bid, the owner's settings) the
runner calls :meth:`AccessKeeper.sync`: it asks the VMM for the guests' addresses,
lets the pure rules (:func:`p2pmarket.host.forwardtable.desired_forwards`) decide which
won ``tcp_port`` goes to which guest's port 22, and has
:class:`~p2pmarket.host.portfwd.PortForwards` apply the difference. A relayed host
(behind NAT or a proxy) listens too, on its LAN address, but buyers reach its ports
as streams through its relay (:mod:`p2pmarket.nat.streams`), admitted by the same
table (:meth:`~p2pmarket.host.portfwd.PortForwards.admit`).

:meth:`AccessKeeper.access` is what a lease reply and ``host status`` say about an
account's way in: ``{address, port, reach, state}``, ``state`` ``forwarded`` or the
reason it waits (no port won, no guest address yet, ...), and ``vm``, the machine's
life-cycle state (:func:`vm_state`): ``defining`` (no domain yet), ``uploading`` (its
image is streaming in), ``booting`` (running, its SSH port not answering yet),
``running``, ``stopped``; and ``usage``, what the machine really uses (the
hypervisor's counters, read at most every :data:`USAGE_EVERY_S`; None until read).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from typing import Any

from p2pmarket.auction.accounts import Account
from p2pmarket.host.forwardtable import (
    GUEST_NETWORK,
    GUEST_SSH_PORT,
    desired_forwards,
    ports_won,
)
from p2pmarket.host.portfwd import PortForwards
from p2pmarket.host.vmm.base import VMM, VmInfo, VmmError

log = logging.getLogger(__name__)

NO_PORT = "no tcp_port won"
USAGE_EVERY_S = 5.0
"""How often a sync reads a machine's counters again (for the lease replies)."""
PROBE_S = 0.2
"""How long a sync waits for a guest's SSH port to accept a connection."""


def vm_state(info: VmInfo | None, uploading: bool, guest: str, answering: bool) -> str:
    """The machine's life-cycle state (see the module docstring); pure."""
    if uploading:
        return "uploading"
    if info is None:
        return "defining"
    if info.state != "running":
        return "stopped"
    return "running" if answering or not guest else "booting"


async def answers(address: str, port: int, timeout_s: float = PROBE_S) -> bool:
    """Whether ``address:port`` accepts a TCP connection within ``timeout_s``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


class AccessKeeper:
    """The forwards of one host (see the module docstring).

    ``public_address`` gives the address buyers connect to (the host's advertised
    address) and ``relayed`` whether buyers come through the host's relay instead;
    ``winners`` and ``accounts`` read the runner's current allocation and accounts."""

    def __init__(self, vmm: VMM, forwards: PortForwards,
                 winners: Callable[[], Mapping[str, str]],
                 accounts: Callable[[], Mapping[str, Account]],
                 public_address: Callable[[], str], relayed: Callable[[], bool], *,
                 network: str = GUEST_NETWORK, reserved: Collection[int] = (),
                 guest_port: int = GUEST_SSH_PORT,
                 vm_info: Callable[[str], VmInfo | None] = lambda _aid: None,
                 uploading: Callable[[str], bool] = lambda _aid: False) -> None:
        self.vmm = vmm
        self.forwards = forwards
        self.winners = winners
        self.accounts = accounts
        self.public_address = public_address
        self.relayed = relayed
        self.network = network
        self.reserved = frozenset(reserved)
        self.guest_port = guest_port
        self.vm_info = vm_info
        self.uploading = uploading
        self.usage: dict[str, tuple[float, dict[str, Any]]] = {}
        """Per account, when (monotonic s) its machine's usage was read, and the reading."""
        self.answering: set[str] = set()
        """Accounts whose guest's SSH port answered at the last sync."""
        """The guests' SSH port (22; another only for tests and unusual images)."""
        self.waiting: dict[int, tuple[str, str]] = {}
        self.guests: dict[str, str] = {}
        self._lock = asyncio.Lock()

    async def sync(self) -> None:
        """Bring the forwards in line with the allocation and the guests' addresses."""
        async with self._lock:
            accounts = self.accounts()
            winners = self.winners()
            guests: dict[str, str] = {}
            for aid in sorted(set(ports_won(winners).values())):
                if aid not in accounts:
                    continue
                try:
                    address = await asyncio.to_thread(self.vmm.guest_address, aid)
                except VmmError as exc:
                    log.warning("no guest address for %s: %s", aid, exc.message)
                    continue
                if address:
                    guests[aid] = address
            want = desired_forwards(winners, accounts, guests, network=self.network,
                                    reserved=self.reserved)
            table = want.table if self.guest_port == GUEST_SSH_PORT else {
                p: replace(f, guest_port=self.guest_port) for p, f in want.table.items()}
            await self.forwards.sync(table)
            self.waiting, self.guests = want.waiting, guests
            probes = {aid: answers(ip, self.guest_port) for aid, ip in guests.items()
                      if aid not in self.answering}
            up = dict(zip(probes, await asyncio.gather(*probes.values()), strict=True))
            self.answering = {aid for aid in guests if self._running(aid)
                              and (aid in self.answering or up.get(aid))}
            await self._read_usage(accounts)

    async def _read_usage(self, accounts: Mapping[str, Account]) -> None:
        """Each machine's usage, read again once :data:`USAGE_EVERY_S` old."""
        now = time.monotonic()
        self.usage = {aid: u for aid, u in self.usage.items() if aid in accounts}
        for aid in sorted(accounts):
            if self.vm_info(aid) is None or now - self.usage.get(aid, (-1e9, {}))[0] < \
                    USAGE_EVERY_S:
                continue
            try:
                used = await asyncio.to_thread(self.vmm.usage, aid)
            except VmmError:
                continue
            if used is not None:
                self.usage[aid] = (now, used.to_doc())

    def access(self, account_id: str) -> dict[str, Any]:
        """The account's way in and its machine's state (see the module docstring)."""
        return {**self._way_in(account_id), "vm": vm_state(
            self.vm_info(account_id), self.uploading(account_id),
            self.guests.get(account_id, ""), account_id in self.answering),
            "usage": self.usage.get(account_id, (0.0, None))[1]}

    def _way_in(self, account_id: str) -> dict[str, Any]:
        ports = sorted(p for p, aid in ports_won(self.winners()).items() if aid == account_id)
        table = self.forwards.table
        reach = "relay" if self.relayed() else "direct"
        for port in ports:
            if port in table:
                return {"address": self.public_address(), "port": port, "reach": reach,
                        "guest": self.guests.get(account_id, ""), "state": "forwarded"}
        why = next((self.waiting[p][1] for p in ports if p in self.waiting), NO_PORT)
        return {"address": self.public_address(), "port": ports[0] if ports else 0,
                "reach": reach, "guest": self.guests.get(account_id, ""), "state": why}

    def _running(self, account_id: str) -> bool:
        info = self.vm_info(account_id)
        return info is None or info.state == "running"

    def status(self) -> dict[str, Any]:
        return {"forwards": self.forwards.status(),
                "waiting": [{"port": p, "account_id": aid, "reason": why}
                            for p, (aid, why) in sorted(self.waiting.items())]}

    async def close(self) -> None:
        await self.forwards.close()


__all__ = ["NO_PORT", "AccessKeeper", "answers", "vm_state"]
