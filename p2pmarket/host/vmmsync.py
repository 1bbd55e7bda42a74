"""Keeping the hypervisor in line with the auction: the only place that calls the VMM.

Lifecycle: a domain is defined and started on its account's first allocation
(with the host's :class:`~p2pmarket.auction.enforce.VmDefaults` for a resource the
bundle does not bid on), updated live when its spec moves by more than the tolerance
of :func:`p2pmarket.auction.enforce.close_enough`, shut down when the account has
expired or lost the cpu or memory it bid on, and undefined (with its volume) when the account
is closed. What the driver could not enforce is kept per account for the status.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from p2pmarket.auction.accounts import ACTIVE, Account
from p2pmarket.auction.enforce import DomainSpec, VmDefaults, close_enough, domain_spec
from p2pmarket.auction.model import Bid
from p2pmarket.host.vmm.base import VMM, VmInfo, VmmError

log = logging.getLogger(__name__)


class VmmSync:
    def __init__(self, vmm: VMM, defaults: VmDefaults | None = None) -> None:
        self.vmm = vmm
        self.defaults = defaults or VmDefaults()
        self.applied: dict[str, DomainSpec | None] = {}
        self.info: dict[str, VmInfo] = {}
        self.usage: dict[str, tuple[int, int]] = {}   # disk usage, floor (KiB)
        self.closed: set[str] = set()
        self.uploading: set[str] = set()
        """Accounts whose image is streaming in now (for the machine's state)."""
        self.failing: dict[str, str] = {}
        """Per account, the VMM's last error (logged as a warning once, not every tick)."""
        self._lock = asyncio.Lock()

    def wanted(self, account: Account, bids: Mapping[str, Bid],
               capacities: Mapping[str, int]) -> bool:
        return account.state == ACTIVE and domain_spec(
            account.allocation, bids, capacities, self.vmm.max_vcpus,
            self.defaults) is not None

    def disk_usage(self) -> dict[str, tuple[int, int]]:
        return dict(self.usage)

    def forget(self, account_id: str) -> None:
        """Make the next run push the account's spec again (e.g. after a new image)."""
        self.applied.pop(account_id, None)

    async def run(self, accounts: Mapping[str, Account], bids: Mapping[str, Mapping[str, Bid]],
                  capacities: Mapping[str, int],
                  events: Mapping[str, list[dict[str, Any]]]) -> None:
        async with self._lock:
            for aid in sorted(self.closed):
                try:
                    await asyncio.to_thread(self.vmm.undefine, aid)
                except VmmError as exc:
                    log.warning("VMM could not undefine %s: %s", aid, exc.message)
                    continue
                self.closed.discard(aid)
                self.failing.pop(aid, None)
                self.applied.pop(aid, None)
                self.info.pop(aid, None)
                self.usage.pop(aid, None)
            for aid, account in sorted(accounts.items()):
                await self._disk(aid, account, events.get(aid, []))
                want = None if account.state != ACTIVE else domain_spec(
                    account.allocation, bids[aid], capacities, self.vmm.max_vcpus,
                    self.defaults)
                if aid in self.applied and close_enough(self.applied[aid], want):
                    continue
                try:
                    if want is None:
                        await asyncio.to_thread(self.vmm.shutdown, aid)
                        info = await asyncio.to_thread(self.vmm.describe, aid)
                    else:
                        info = await asyncio.to_thread(self.vmm.apply, aid, want)
                except VmmError as exc:
                    # said once per account and message (an account waiting for its
                    # image fails the same way every tick)
                    level = logging.DEBUG if self.failing.get(aid) == exc.message \
                        else logging.WARNING
                    self.failing[aid] = exc.message
                    log.log(level, "VMM failed for account %s: %s", aid, exc.message)
                    continue
                self.failing.pop(aid, None)
                self.applied[aid] = want
                if info is not None:
                    self.info[aid] = info

    async def _disk(self, aid: str, account: Account, events: list[dict[str, Any]]) -> None:
        """Act on the allocator's disk events (seed 6/9)."""
        kinds = {e["kind"] for e in events if e["resource"] == "disk"}
        try:
            if "disk" in account.bids and aid not in self.usage:   # e.g. after a restart
                vol = await asyncio.to_thread(self.vmm.volume, aid)
                if vol is not None:
                    self.usage[aid] = (vol.usage_kib, vol.floor_kib)
            if "disk" not in account.bids or kinds & {"below_min", "disk_delete"}:
                if aid in self.usage or kinds:
                    await asyncio.to_thread(self.vmm.delete_volume, aid)
                    self.usage.pop(aid, None)
            elif "disk_shrink" in kinds:
                vol = await asyncio.to_thread(self.vmm.resize_volume, aid,
                                              account.allocation.get("disk", 0))
                self.usage[aid] = (vol.usage_kib, vol.floor_kib)
        except VmmError as exc:
            log.warning("VMM disk action failed for %s: %s", aid, exc.message)
