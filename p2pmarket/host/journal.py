"""The auctioneer's write-ahead journal: the pure state kept in step with the audit log
and the account store (docs/design.md section 5).

:meth:`Journal.apply` runs one input through :func:`p2pmarket.auction.steps.step`,
logs the input and its outputs in one durable append to the audit log, then
commits (:meth:`Journal.commit`): it signs the leases of the ``out.lease`` entries
with their authenticators and writes the changed accounts, the new payments and
refunds and the state record (with the seq of the last entry applied) to the store
in one transaction. The audit log is the write-ahead log: at start the journal
restores the state as the store last committed it, then starts a new log with
``in.genesis`` (the state snapshot, so a witness can replay from seq 0) or replays
the logged inputs the store missed (a crash between log and store), and logs an
``in.settings`` when the node's settings changed. A log that starts with a state
snapshot of another version than :data:`~p2pmarket.auction.machine.SNAPSHOT_VERSION`
is refused (:class:`OldLogError`): witnesses would not replay it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import CLOSED, Account
from p2pmarket.auction.allocation import lease_terms, terms_digest
from p2pmarket.auction.hostconfig import HostConfig
from p2pmarket.auction.hoststeps import SettingsChange
from p2pmarket.auction.lease import sign_lease
from p2pmarket.auction.machine import SNAPSHOT_VERSION, HostState, new_state
from p2pmarket.auction.model import AllocEvent
from p2pmarket.auction.outcome import Step
from p2pmarket.auction.seen import from_rows, to_rows
from p2pmarket.auction.snapshot import from_sharp_doc, sharp_doc, snapshot
from p2pmarket.auction.steps import GENESIS, INPUTS, step
from p2pmarket.audit.entry import AuditAuthenticator
from p2pmarket.audit.log import AuditLog
from p2pmarket.core.config import Settings
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import pack
from p2pmarket.host.accountstore import AccountStore

log = logging.getLogger(__name__)

STATE_KEY = "audit.state"


class OldLogError(HostError):
    """The host's audit log was written in an older format than this version replays."""


# called after each commit with the state before and after it
OnCommit = Callable[[HostState, HostState], None]


class Journal:
    """The host's state, its audit log and its account store, kept in step."""

    def __init__(self, identity: Identity, store: AccountStore, audit: AuditLog,
                 now: Callable[[], int], on_commit: OnCommit, config: HostConfig,
                 tick_us: int, long_us: int) -> None:
        """The state as the store last committed it (``config`` and the tick lengths
        where it saved none); :meth:`start` brings it up to the log."""
        self.identity = identity
        self.store = store
        self.audit = audit
        self.now = now   # the time for the next entry
        self.on_commit = on_commit
        self.leases: dict[str, dict[str, Any]] = {}   # account -> signed lease (wire)
        # told the allocator's events of each step committed (the runner's note_events)
        self.on_events: Callable[[tuple[AllocEvent, ...]], None] | None = None
        self.state = self._restore(config, tick_us, long_us)

    def apply(self, kind: str, body: Any, now: int) -> tuple[Step, list[AuditAuthenticator]]:
        """Step, log input and outputs in one durable append, then commit the state."""
        st = step(self.state, kind, body, now)
        auths = self.audit.append_many([(kind, body, now)]
                                       + [(k, b, now) for k, b in st.outputs])
        self.commit(st, auths, now)
        return st, auths

    def commit(self, st: Step, auths: list[AuditAuthenticator], now: int) -> None:
        """Make ``st`` (logged as ``auths``: its input's, then its outputs') the state."""
        old, new = self.state, st.state
        leases = dict(self.leases)
        lease_auths = [a for (k, _), a in zip(st.outputs, auths[1:], strict=True)
                       if k == "out.lease"]
        for aid, auth in zip(st.leases, lease_auths, strict=True):
            terms = replace(lease_terms(new, new.accounts[aid]), audit=auth.to_wire())
            leases[aid] = sign_lease(self.identity, terms, ts=now).to_wire()
        rows: list[Account] = []
        before = old.accounts
        for aid, a in new.accounts.items():   # identity: a step keeps what it did not change
            if before.get(aid) is not a or leases.get(aid) is not self.leases.get(aid):
                rows.append(replace(a, lease=leases.get(aid)))
        for aid in old.accounts:
            if aid not in new.accounts:   # closed
                a = old.accounts[aid]
                rows.append(replace(a, state=CLOSED, fund=0, contingency=0, bids={},
                                    allocation={}, lease=leases.pop(aid, None)))
        payments = [] if new.payments_hash == old.payments_hash or new.payments is None \
            or old.payments is None else \
            [(pid, aid, amount) for pid, (aid, amount)
             in list(new.payments.items())[len(old.payments):]]
        refunds = [] if new.refunds_hash == old.refunds_hash or new.refunds is None \
            or old.refunds is None else list(new.refunds.values())[len(old.refunds):]
        settings: dict[str, Any] = {STATE_KEY: state_doc(new, auths[-1].seq)}
        if new.config != old.config:
            settings.update(capacities=new.config.capacities,
                            min_prices=new.config.min_prices, unique=new.config.unique,
                            reservable=new.config.reservable,
                            anchor_prices=new.config.anchor_prices)
        self.store.commit(rows, payments, refunds, settings, st.paid)
        self.leases = leases
        self.state = new
        self.on_commit(old, new)
        if st.events and self.on_events is not None:
            self.on_events(st.events)

    # -- start -------------------------------------------------------------------------

    def start(self, config: HostConfig, tick_us: int, long_us: int) -> None:
        """Start a new log with the state, or replay what the store missed; then log
        the settings ``config``, ``tick_us``, ``long_us`` if they are not the state's."""
        saved = self.store.settings().get(STATE_KEY)
        applied = int(saved["seq"]) if isinstance(saved, dict) else -1
        head = self.audit.head[0]
        if head >= 0:
            first = self.audit.entries(0, 1)
            body = first[0][0].body if first and first[0][0].kind == GENESIS else None
            if isinstance(body, dict) and body.get("v") != SNAPSHOT_VERSION:
                raise OldLogError(
                    f"the audit log starts with a state snapshot of version {body.get('v')}"
                    f"; this version writes version {SNAPSHOT_VERSION} and its witnesses "
                    "replay no other. Start the host anew: move audit.sqlite and "
                    "host.sqlite aside (pay the buyers of the old accounts back first)",
                    {"version": body.get("v"), "expected": SNAPSHOT_VERSION})
        if head < 0:
            auth = self.audit.append(GENESIS, snapshot(self.state), self.now())
            self.store.commit([], [], [], {STATE_KEY: state_doc(self.state, auth.seq)})
        elif applied < head and saved is None:
            log.warning("the audit log predates write-ahead logging (no in.genesis): "
                        "witnesses cannot replay it; move audit.sqlite aside to start anew")
        elif applied < head:
            self._catch_up(applied + 1)
        elif applied > head:
            log.warning("the audit log (head %d) is behind the account store (%d)",
                        head, applied)
        if (config, tick_us, long_us) != (self.state.config, self.state.tick_us,
                                          self.state.long_us):
            self.apply("in.settings", SettingsChange(config, tick_us, long_us).body(),
                       self.now())

    def _restore(self, config: HostConfig, tick_us: int, long_us: int) -> HostState:
        saved = self.store.settings().get(STATE_KEY)
        rows = self.store.all()
        live = {a.account_id: a for a in rows if a.state != CLOSED}
        self.leases = {aid: dict(a.lease) for aid, a in live.items() if a.lease is not None}
        leased = {}
        for aid, env in self.leases.items():
            body = dict(env.get("body", {}))
            body["audit"] = None
            leased[aid] = terms_digest(body)
        state = new_state(self.identity.node_id, config, tick_us, long_us)
        if isinstance(saved, dict):
            state = replace(state, tick_us=int(saved["tick_us"]), long_us=int(saved["long_us"]),
                            last_tick=int(saved["last_tick"]), ticks=int(saved.get("ticks", 0)),
                            usage={str(k): (int(u), int(f)) for k, u, f in saved["usage"]},
                            requests=from_rows(saved.get("requests", [])))
            if "sharp" in saved:
                state = replace(state, **from_sharp_doc(saved["sharp"]))
        state = replace(state, accounts={aid: replace(a, lease=None) for aid, a in live.items()},
                        leased=leased, payments={}, refunds={}, paid={})
        return state.with_payments(self.store.payments()).with_refunds(
            [replace(r, status="pending", result=None) for r in self.store.refunds()]
        ).with_paid(self.store.refunds_paid())

    def _catch_up(self, since: int) -> None:
        """Re-apply the logged inputs the store missed (a crash between log and store)."""
        entries = self.audit.entries(since, 1 << 30)
        k = 0
        while k < len(entries):
            entry, _ = entries[k]
            if entry.kind not in INPUTS:
                k += 1
                continue
            st = step(self.state, entry.kind, entry.body, entry.ts)
            outs = entries[k + 1:k + 1 + len(st.outputs)]
            if [(e.kind, pack(e.body)) for e, _ in outs] != \
                    [(kd, pack(b)) for kd, b in st.outputs]:
                log.error("audit log entry %d does not replay to its logged outputs",
                          entry.seq)
            auths = [a for _, a in entries[k:k + 1 + len(st.outputs)]]
            if len(auths) == 1 + len(st.outputs):
                self.commit(st, auths, entry.ts)
            k += 1 + len(st.outputs)


def state_doc(state: HostState, seq: int) -> dict[str, Any]:
    """The state record the store keeps besides the accounts, payments and refunds."""
    return {"seq": seq, "last_tick": state.last_tick, "ticks": state.ticks,
            "tick_us": state.tick_us,
            "long_us": state.long_us,
            "usage": [[k, u, f] for k, (u, f) in sorted(state.usage.items())],
            "requests": to_rows(state.requests), "sharp": sharp_doc(state)}


def saved_config(store: AccountStore, settings: Settings) -> HostConfig:
    """The host's settings: the node's defaults, overridden by those saved in the store."""
    return HostConfig.defaults(settings.cpu_mhz, settings.memory_kib, settings.min_price,
                               settings.tcp_ports).updated(store.settings())


__all__ = ["STATE_KEY", "Journal", "OldLogError", "OnCommit", "saved_config", "state_doc"]
