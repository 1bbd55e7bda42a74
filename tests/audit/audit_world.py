"""A small world for the audit tests: hosts and witnesses in one process, talking
through real RpcDispatchers (signed envelopes, replay guard) with a fake clock. The
witnesses hold the genesis of the world's notary committee (``world.ledger``), which
certifies the hosts' refund payments (:class:`tests.support.refunds.RefundPayer`)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from p2pmarket.api.rpc import CallContext, RpcDispatcher, make_request, open_reply
from p2pmarket.auction.accounts import Payment
from p2pmarket.auction.snapshot import state_digest
from p2pmarket.auction.steps import REFUND_PAID, step
from p2pmarket.audit.entry import AuditAuthenticator, AuditEntry, sign_entry
from p2pmarket.audit.evidencestore import EvidenceStore
from p2pmarket.audit.log import AuditLog
from p2pmarket.audit.witness import Peer, WitnessService, push_to_witnesses
from p2pmarket.audit.witnessstore import WitnessStore
from p2pmarket.core.config import Settings
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity, node_id_of
from p2pmarket.core.wire import pack, seal, unpack
from p2pmarket.host.accountstore import AccountStore
from p2pmarket.host.auctioneer import Auctioneer, domain_prefix
from p2pmarket.host.runner import paid_body
from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM
from p2pmarket.ledger.certificate import Certificate
from tests.support.chains import Net as Ledger
from tests.support.refunds import RefundPayer

S = 1_000_000
GIB = 1024 * 1024
T0 = 1_700_000_000 * S
BIDS = {"cpu": "1,0,1", "memory": "1,64MiB,1GiB"}
ALICE_BIDS = {"cpu": "1,0,1", "memory": "1,128MiB,2GiB"}


@dataclass
class Clock:
    now: int = T0

    def __call__(self) -> int:
        return self.now


class Unreachable(P2PMarketError):
    pass


@dataclass
class Net:
    """url -> dispatcher; a client signs real requests and checks real replies."""

    clock: Clock
    nodes: dict[str, RpcDispatcher] = field(default_factory=dict)
    down: set[str] = field(default_factory=set)
    tick: int = 0

    def client(self, identity: Identity) -> Client:
        return Client(self, identity)


@dataclass
class Client:
    net: Net
    identity: Identity

    async def call(self, url: str, server_key: bytes, name: str,
                   args: dict[str, Any]) -> dict[str, Any]:
        if url in self.net.down or url not in self.net.nodes:
            raise Unreachable(f"cannot reach {url}", url)
        self.net.tick += 1
        req = make_request(self.identity, node_id_of(server_key), name, args,
                           ts=self.net.clock.now + self.net.tick)
        return open_reply(req, await self.net.nodes[url].dispatch(req), self.identity,
                          server_key)


class FakeBank:
    async def accept(self, payer: bytes, cert: dict[str, Any]) -> Payment:
        if not isinstance(cert.get("amount"), int) or cert["amount"] <= 0:
            raise P2PMarketError("invalid certificate")
        return Payment(str(cert["id"]).encode(), int(cert["amount"]))


def cert(amount: int) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "amount": amount}


class Directory:
    def __init__(self) -> None:
        self.peers: list[Peer] = []

    async def closest(self, key: bytes, n: int) -> list[Peer]:
        return sorted(self.peers, key=lambda p: int.from_bytes(p.node_id, "big")
                      ^ int.from_bytes(key[:20], "big"))[:n]


@dataclass
class HostNode:
    identity: Identity
    auct: Auctioneer
    disp: RpcDispatcher
    url: str
    vmm: LibvirtVMM
    store: AccountStore

    @property
    def key(self) -> bytes:
        return self.identity.public_key


@dataclass
class WitnessNode:
    identity: Identity
    service: WitnessService
    disp: RpcDispatcher
    url: str


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.clock = Clock()
        self.net = Net(self.clock)
        self.directory = Directory()
        self.ledger = Ledger.generate()
        self.hosts: list[HostNode] = []
        self.witnesses: list[WitnessNode] = []

    def host(self, pay_refunds: bool = False) -> HostNode:
        """A host; ``pay_refunds``: it pays refunds with certified SENDs of the world's
        committee (``h.auct.refund_payment`` is then a :class:`RefundPayer`)."""
        ident = Identity.generate()
        n = len(self.hosts)
        store = AccountStore(self.tmp / f"host{n}-{uuid.uuid4().hex[:6]}.sqlite")
        vmm = LibvirtVMM("test:///default", prefix=domain_prefix(ident))
        auct = Auctioneer(ident, Settings(cpu_mhz=4000, memory_kib=4 * GIB, tick_seconds=1.0,
                                          min_price=1), store, vmm, FakeBank().accept,
                          self.clock, audit=AuditLog(":memory:", ident),
                          refund_payment=RefundPayer(ident, self.ledger) if pay_refunds
                          else None)
        disp = RpcDispatcher(ident, clock=self.clock)
        disp.register_all("host", auct.handlers(), limits=auct.request_limits())
        url = f"http://host{n}"
        self.net.nodes[url] = disp
        h = HostNode(ident, auct, disp, url, vmm, store)
        self.hosts.append(h)
        return h

    def witness(self, ident: Identity | None = None, client: Any = None,
                evidence: EvidenceStore | None = None, store: WitnessStore | None = None,
                clock: Any = None) -> WitnessNode:
        """A witness (in-memory stores and the world's clock unless given); one with the
        identity of an earlier one replaces it, at the same URL (a restart)."""
        ident = ident or Identity.generate()
        url = f"http://witness-{ident.node_id.hex()[:8]}"
        service = WitnessService(ident, client or self.net.client(ident),
                                 evidence or EvidenceStore(), clock or self.clock,
                                 directory=self.directory, store=store,
                                 genesis=self.ledger.genesis)
        disp = RpcDispatcher(ident, clock=self.clock)
        disp.register_all("witness", service.handlers(), limits=service.request_limits())
        self.net.nodes[url] = disp
        self.directory.peers = [p for p in self.directory.peers if p.node_id != ident.node_id]
        self.directory.peers.append(Peer(ident.node_id, ident.public_key, url))
        w = WitnessNode(ident, service, disp, url)
        self.witnesses = [x for x in self.witnesses if x.identity != ident] + [w]
        return w

    async def call(self, who: Identity, h: HostNode, name: str, args: dict[str, Any],
                   push: bool = True) -> dict[str, Any]:
        """A buyer's call; the reply's authenticator is pushed to the witnesses."""
        try:
            result = await self.net.client(who).call(h.url, h.key, f"host.{name}", args)
        except P2PMarketError:
            raise
        if push and "audit" in result:
            await push_to_witnesses(self.net.client(who), self.directory, h.key,
                                    [result["audit"]], h.url)
        return result

    async def tick(self, h: HostNode) -> None:
        self.clock.now += S
        await h.auct.tick(self.clock.now)

    async def audit_round(self) -> None:
        self.clock.now += 10 * S
        for w in self.witnesses:
            await w.service.audit_all()

    def close(self) -> None:
        for h in self.hosts:
            for info in h.vmm.list():
                h.vmm.undefine(info.account_id)
            h.vmm.close()
            h.store.close()


def signed_ctx(who: Identity, host: Identity, name: str, args: dict[str, Any], ts: int,
               signer: Identity | None = None, to: bytes | None = None) -> CallContext:
    """The context the RPC layer gives a handler for ``who``'s signed ``host.<name>``
    request (``signer``/``to`` forge it: another key, another addressee)."""
    env = seal(signer or who, ENVELOPE, f"rpc.host.{name}", args, ts=ts,
               to=host.node_id if to is None else to)
    return CallContext(sender=who.public_key, ts=ts, request=env)


# -- cheats ------------------------------------------------------------------------

def overcharge_next_tick(auct: Auctioneer, account_id: str, extra: int = 1) -> None:
    """The host charges ``account_id`` ``extra`` micro-credits too many at its next tick,
    and logs a self-consistent lie (the account's record and the state digest both
    cheated; its book restored from the cheated records)."""
    honest = auct.journal.apply

    def cheat(kind: str, body: Any, now: int) -> Any:
        if kind != "in.tick":
            return honest(kind, body, now)
        auct.journal.apply = honest   # type: ignore[method-assign]
        st = step(auct.state, kind, body, now)
        acc = st.state.accounts[account_id]
        state = replace(st.state, accounts={**st.state.accounts,
                                            account_id: replace(acc, fund=acc.fund - extra)},
                        book=None, book_gen=-1, host_sum=-1, collectable=None)
        doc = dict(st.outputs[0][1])
        doc["state"] = state_digest(state)
        lied = replace(st, state=state, outputs=[("out.tick", doc)])
        auths = auct.audit.append_many([(kind, body, now), ("out.tick", doc, now)])
        auct.journal.commit(lied, auths, now)
        return lied, auths

    auct.journal.apply = cheat   # type: ignore[method-assign]


def rewritten(audit: AuditLog, identity: Identity, seq: int, body: Any) -> AuditLog:
    """A copy of ``audit`` with entry ``seq``'s body replaced and the chain re-signed
    from there on (a host rewriting its history)."""
    out = AuditLog(":memory:", identity)
    items = []
    for entry, _ in audit.entries(0, 1 << 30):
        items.append((entry.kind, body if entry.seq == seq else entry.body, entry.ts))
    out.append_many(items)
    return out


def replace_log(auct: Auctioneer, new: AuditLog) -> None:
    auct.audit = new


def serve_two_logs(h: HostNode, other: AuditLog, to: bytes) -> None:
    """The host answers ``host.audit_log`` from ``other`` to the node ``to``."""
    from p2pmarket.host.auctioneer import audit_log_segment

    real = h.auct.audit_log

    async def audit_log(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        if ctx.sender == to:
            return audit_log_segment(other, args.get("since", 0), args.get("limit", 2000))
        return await real(ctx, args)

    h.disp.handlers["host.audit_log"] = audit_log


def auth_doc(a: AuditAuthenticator) -> dict[str, Any]:
    return a.to_wire()


def sign(identity: Identity, entry: AuditEntry) -> AuditAuthenticator:
    return sign_entry(identity, entry)


def roundtrip(value: Any) -> Any:
    return unpack(pack(value))


async def open_two(world: World, alice: Identity, bob: Identity) -> tuple[HostNode, str]:
    """A new host where ``alice`` and ``bob`` opened accounts, one tick passed and
    ``alice`` raised her cpu bid; returns the host and Alice's account id."""
    h = world.host()
    a = await world.call(alice, h, "create_account", {"payment": cert(10**9),
                                                      "bids": ALICE_BIDS, "interval_s": 3600})
    await world.call(bob, h, "create_account", {"payment": cert(10**8), "bids": BIDS,
                                                "interval_s": 600})
    await world.tick(h)
    await world.call(alice, h, "bid", {"account_id": a["account_id"], "bids": {"cpu": "2"}})
    return h, str(a["account_id"])


def log_refund_paid(auct: Auctioneer, refund_id: str, cert: Certificate,
                    through_step: bool = True) -> None:
    """The host logs refund ``refund_id`` as paid with ``cert``, skipping the runner's
    check that the payment pays the refund (``through_step`` False: not even the pure
    step, which refuses a refund already paid; the entry goes straight into the log)."""
    body = paid_body(refund_id, cert.to_wire())
    if through_step:
        auct.journal.apply(REFUND_PAID, body, auct.now())
    else:
        auct.audit.append(REFUND_PAID, body, auct.now())
