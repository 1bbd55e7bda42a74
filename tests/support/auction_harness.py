"""The pure auction in memory, for tests: a state and an explicit clock in, outputs out.

:class:`AuctionHarness` drives :func:`p2pmarket.auction.steps.step` as the
auctioneer does, without libvirt, sqlite, an audit log or a bank: the test says
what time it is (:attr:`~AuctionHarness.now`, :meth:`~AuctionHarness.advance`),
makes the inputs (a buyer's RPC with the payment the host credited or refused, a
tick, a settings change, a usage report) and gets each :class:`Step` back.
:attr:`~AuctionHarness.log` keeps every input and output entry ``(kind, body, ts)``
in order, as the audit log would. Requests are not signed: the step does not check
signatures (the replay does, :func:`p2pmarket.auction.steps.check_signed`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from p2pmarket.auction.allocator import DEFAULT_LONG_INTERVAL_US
from p2pmarket.auction.hostconfig import HostConfig
from p2pmarket.auction.hoststeps import SettingsChange, UsageReport, next_tick_at
from p2pmarket.auction.machine import HostState, new_state
from p2pmarket.auction.outcome import Step, error_doc
from p2pmarket.auction.steps import step
from p2pmarket.core.errors import P2PMarketError

S = 1_000_000                 # one second in µs
T0 = 1_700_000_000 * S        # the harness's default start time
HOST_ID = bytes(range(20))    # the host's node id in the state


@dataclass
class AuctionHarness:
    state: HostState
    now: int = T0
    log: list[tuple[str, Any, int]] = field(default_factory=list)

    @classmethod
    def new(cls, cpu_mhz: int = 1000, memory_kib: int = 1_000_000, min_price: int = 1,
            tick_us: int = S, long_us: int = DEFAULT_LONG_INTERVAL_US, now: int = T0,
            host_id: bytes = HOST_ID) -> AuctionHarness:
        """A host offering ``cpu_mhz`` and ``memory_kib`` at ``min_price``, no accounts."""
        config = HostConfig.defaults(cpu_mhz, memory_kib, min_price)
        return cls(new_state(host_id, config, tick_us, long_us), now)

    def advance(self, us: int) -> int:
        """Move the clock on by ``us``; the new time."""
        self.now += us
        return self.now

    @property
    def next_tick_at(self) -> int | None:
        return next_tick_at(self.state)

    def step(self, kind: str, body: Any) -> Step:
        """Take one input at :attr:`now`: the state moves on, the entries are logged."""
        st = step(self.state, kind, body, self.now)
        self.log.append((kind, body, self.now))
        self.log.extend((k, b, self.now) for k, b in st.outputs)
        self.state = st.state
        return st

    def call(self, sender: bytes, name: str, args: Any, *,
             payment: tuple[bytes, int] | None = None,
             payment_error: P2PMarketError | None = None, ts: int | None = None) -> Step:
        """The buyer ``sender``'s RPC ``name``, requested at ``ts`` (default: now), with
        the payment the host credited (``(id, amount)``) or why it refused it."""
        body: dict[str, Any] = {"from": sender, "ts": self.now if ts is None else ts,
                                "args": args}
        if payment is not None:
            body["payment"] = {"id": payment[0], "amount": payment[1]}
        if payment_error is not None:
            body["payment_error"] = error_doc(payment_error)
        return self.step(f"in.{name}", body)

    def tick(self, at: int | None = None) -> Step:
        """A tick at ``at`` (the clock is set to it), or now."""
        if at is not None:
            self.now = at
        return self.step("in.tick", {"now": self.now})

    def settings(self, config: HostConfig | None = None, tick_us: int | None = None,
                 long_us: int | None = None) -> Step:
        """The host owner's new settings (what is not given stays)."""
        change = SettingsChange(config or self.state.config,
                                self.state.tick_us if tick_us is None else tick_us,
                                self.state.long_us if long_us is None else long_us)
        return self.step("in.settings", change.body())

    def usage(self, usage: Mapping[str, tuple[int, int]]) -> Step:
        """The VMM's disk usage report: account -> (used KiB, floor KiB)."""
        return self.step("in.usage", UsageReport(usage).body())

    def kinds(self) -> list[str]:
        """The kinds of the entries logged so far."""
        return [k for k, _, _ in self.log]


__all__ = ["HOST_ID", "T0", "AuctionHarness", "S"]
