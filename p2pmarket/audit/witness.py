"""PeerReview witnesses for hosts (docs/design.md section 5).

A host's witnesses are the ψ+1 nodes (default 3: :data:`WITNESSES_PER_HOST`) closest
in the DHT to :func:`witness_key` ``= SHA-256("witness" + host id)``. Buyers push
the authenticators the host put in its replies (``witness.push``); every audit
period (default 10 s) each witness fetches the host's log since its last audit
(``host.audit_log``, re-fetching the last entry it audited), and

1. checks the hash chain and the host's signature of the last entry of each
   segment fetched (the chain makes it commit the host to the whole segment), and
   any other entry's signature only where a proof needs it; two different hashes
   the host committed to for one seq -- against an authenticator it was pushed, one
   it audited before, or the chain it holds -- are a proof of inconsistency;
2. replays the inputs through the auctioneer's pure code
   (:class:`~p2pmarket.audit.replay.Replayer`); an output that differs, or a
   buyer's input without the buyer's valid signed request, is a proof of
   non-conformance;
3. if the host does not answer, or its log stops short of an authenticator
   the witness holds, opens a *challenge*: the host is *suspected* until an
   audit gets the log up to that point (an honest host always can);
4. pushes the head it audited to the host's other witnesses, so a host that
   shows different logs to different witnesses is caught.

States: ``trusted``, ``suspected`` (open challenge), ``exposed`` (a valid proof,
kept in the :class:`~p2pmarket.audit.evidencestore.EvidenceStore` and published
through an :class:`~p2pmarket.audit.evidence.EvidenceSink`). An exposed host is
not audited any more.

An entry dated more than the clock tolerance of the RPC layer ahead of the
witness's clock is not taken: the fetch counts as unanswered, so a host whose
clock runs ahead stays suspected until real time catches up with its log (no
third party could check a proof about "the future", so this is a challenge,
not evidence). That entries' times never go backwards is a replay rule.

Fetching pages through the log: the host answers ``host.audit_log`` with as many
entries as fit its byte bound (at least one), and the witness asks again from the
next seq until it has reached the host's head as the first answer named it, or the
highest authenticator it holds, whichever is later (entries logged meanwhile wait
for the next audit). One host's fetch is bounded in time (``fetch_s``, default
:data:`DEFAULT_FETCH_S`): a host too slow to answer counts as unanswered if it gave
nothing, else the audit stops where it got (and the challenge rule decides), so a
slow host never holds up the audit of the others.

Progress is durable (:class:`~p2pmarket.audit.witnessstore.WitnessStore`): pushed
authenticators are stored before ``witness.push`` answers, and each checked
segment is stored with the replay position, so a restarted witness resumes every
audit where it stopped.

This module is the service: the RPCs, the audit round and its I/O (fetching the
log, storing progress, publishing proofs, gossip), and what a buyer does with
authenticators (:func:`push_to_witnesses`). What one audit decides about one host
is pure, in :mod:`p2pmarket.audit.watched`.

RPCs (``dispatcher.register_all("witness", service.handlers(),
limits=service.request_limits())``; the RPC layer's size, signature and replay
guard checks run first):

- ``push {host: key, auths: [[seq, hash, sig], ...] (at most 256), url?: str}``
  -> ``{held, state}``. All authenticators must be the host's valid signatures or
  nothing is taken.
- ``refund {host: key, payment: certificate}`` -> ``{state, refund_id, result}``: a
  certified SEND of the host that pays a refund (its memo names the refund), pushed by
  the buyer who received it (:func:`push_refund_to_witnesses`). The witness checks
  the certificate against the genesis, audits the host first if its log has not
  shown that refund yet (at most once a second per host), and exposes the host
  (proof ``refund_payment``) if the SEND does not pay the refund its log recorded
  exactly; ``result`` is ``exposed``, ``exact`` or ``unknown refund`` (not in the
  log audited).
- ``status {host?: key}`` -> ``{hosts: [STATUS]}`` (see :meth:`WitnessService.status`)
- ``evidence {host: key or node id}`` -> ``{proofs: [bytes]}``
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from p2pmarket.api.rpc import CallContext, Handler
from p2pmarket.auction.accounts import memo_refund_id
from p2pmarket.audit.entry import AuditAuthenticator
from p2pmarket.audit.evidence import EvidenceError, EvidenceSink, verify_proof
from p2pmarket.audit.evidencestore import EvidenceStore
from p2pmarket.audit.sigpool import SignaturePool
from p2pmarket.audit.watched import (
    EXPOSED,
    MAX_PUSH,
    Watched,
    WitnessError,
    check_auths,
    check_host_key,
    read_segment,
)
from p2pmarket.audit.witnessstore import WitnessStore
from p2pmarket.core.clock import US_PER_S, now_us
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import Identity, node_id_of
from p2pmarket.core.wire import WireError
from p2pmarket.ledger.certificate import Certificate, verify_certificate
from p2pmarket.ledger.chain import SEND

log = logging.getLogger(__name__)

DEFAULT_PSI = 2
WITNESSES_PER_HOST = DEFAULT_PSI + 1   # how many witnesses a host has (psi + 1)
DEFAULT_PERIOD_S = 10.0
DEFAULT_FETCH_S = 30.0
SEGMENT = 2000
# request bounds for the RPC layer: a full push (MAX_PUSH authenticators) is ~29 KiB;
# the others take its default
REQUEST_LIMITS = {"push": 128 * 1024}
REFUND_AUDIT_GAP_US = 1_000_000   # witness.refund audits a host at most this often
WITNESS_MEMO_S = 30.0    # how long "we are a witness of this host" is believed unchecked
MAX_WITNESS_MEMO = 10_000


@dataclass(frozen=True)
class Peer:
    node_id: bytes
    key: bytes
    url: str


class WitnessDirectory(Protocol):
    """The DHT, as the witnesses need it."""

    async def closest(self, key: bytes, n: int) -> list[Peer]:
        """The ``n`` nodes nearest ``key`` (a 32-byte hash; compare its first 20 bytes
        with node ids)."""
        ...


class HostLocator(Protocol):
    async def locate(self, host_key: bytes) -> str | None:
        """The host's peer URL (from its DHT host record), or None."""
        ...


class PeerCaller(Protocol):
    """:class:`p2pmarket.api.client.PeerClient` fits."""

    async def call(self, url: str, server_key: bytes, name: str,
                   args: dict[str, Any]) -> dict[str, Any]: ...


def witness_key(host_id: bytes) -> bytes:
    """Where a host's witnesses are in the DHT: SHA-256("witness" + host id)."""
    return hashlib.sha256(b"witness" + host_id).digest()


async def witnesses_of(directory: WitnessDirectory, host_id: bytes, n: int) -> list[Peer]:
    """A host's ``n`` witnesses: the nodes nearest :func:`witness_key` of its id, the host
    itself left out (it would vouch for its own log)."""
    peers = await directory.closest(witness_key(host_id), n + 1)
    return [p for p in peers if p.node_id != host_id][:n]


class WitnessService:
    def __init__(self, identity: Identity, client: PeerCaller, evidence: EvidenceStore,
                 clock: Callable[[], int] = now_us, period_s: float = DEFAULT_PERIOD_S,
                 directory: WitnessDirectory | None = None,
                 locator: HostLocator | None = None, sink: EvidenceSink | None = None,
                 psi: int = DEFAULT_PSI, segment: int = SEGMENT,
                 store: WitnessStore | None = None, fetch_s: float = DEFAULT_FETCH_S,
                 genesis: Genesis | None = None, sigpool: SignaturePool | None = None
                 ) -> None:
        """``genesis`` (the network's) lets the replay check the notaries' certificates
        of the refunds hosts pay, and is needed for ``witness.refund``. ``sigpool``
        checks the buyers' signed requests of each segment fetched across cores, ahead
        of its replay (without it the replay checks them as it goes)."""
        self.identity = identity
        self.client = client
        self.evidence = evidence
        self.clock = clock
        self.period_s = period_s
        self.directory = directory
        self.locator = locator
        self.sink = sink
        self.psi = psi
        self.segment = segment
        self.fetch_s = fetch_s
        self.store = store or WitnessStore()
        self.genesis = genesis
        self.sigpool = sigpool
        if genesis is not None and evidence.genesis is None:
            evidence.genesis = genesis   # it must take the proofs this witness builds
        self.hosts: dict[bytes, Watched] = {}
        self._locks: dict[bytes, asyncio.Lock] = {}   # one audit of a host at a time
        self._witness_of: dict[bytes, float] = {}     # host -> until when we believe it
        self.heads: dict[bytes, int] = {}   # host -> the head seq its log last named
        self.on_audit: Callable[[str], None] | None = None
        """Monitoring: told the host's state after each audit."""
        for saved in self.store.hosts(genesis):
            ahead = saved.replayer.seq
            w = Watched(saved.key, saved.url, saved.replayer,
                        {a.seq: a for a in saved.held if a.seq > ahead},
                        challenge=saved.challenge, last_audit=saved.last_audit,
                        error=saved.error, genesis=genesis,
                        recheck={a.seq: a for a in saved.held if a.seq <= ahead})
            w.saved_anchor = w.anchor_seq() if w.replayer.anchor_entries else -1
            w.proofs.extend(self.evidence.proofs(saved.key))
            self.hosts[saved.key] = w

    # -- what the node wires --------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        return {"push": self.rpc_push, "status": self.rpc_status,
                "evidence": self.rpc_evidence, "refund": self.rpc_refund}

    @staticmethod
    def request_limits() -> dict[str, int]:
        """For ``dispatcher.register_all("witness", ..., limits=...)``."""
        return dict(REQUEST_LIMITS)

    def is_exposed(self, node: bytes) -> bool:
        """For discovery (skip the host) and NotaryService(shun=...)."""
        return self.evidence.is_exposed(node)

    async def run(self) -> None:
        """Audit every host watched, every period, until cancelled."""
        while True:
            await asyncio.sleep(self.period_s)
            try:
                await self.audit_all()
            except Exception:
                log.exception("audit round failed", extra={"event": "audit.round_failed"})

    async def audit_all(self) -> None:
        await asyncio.gather(*(self.audit(k) for k in list(self.hosts)))

    def status(self, host: bytes | None = None) -> dict[str, Any]:
        """``{hosts: [{host, host_id, state, audited_seq, head, held, challenge, proofs,
        last_audit, error}]}`` for ``p2pmarket audit status [HOST]``."""
        out = []
        for key, w in sorted(self.hosts.items()):
            if host is not None and host not in (key, node_id_of(key)):
                continue
            proofs = [verify_proof(p, genesis=self.genesis).summary() for p in w.proofs]
            out.append({"host": key, "host_id": node_id_of(key), "state": w.state,
                        "audited_seq": w.replayer.seq, "head": w.replayer.head,
                        "held": len(w.held), "confirmed": w.confirmed,
                        "challenge": w.challenge, "proofs": proofs,
                        "last_audit": w.last_audit, "error": w.error, "url": w.url,
                        "overdue_refunds": list(w.overdue)})
        if host is not None and not out and self.evidence.is_exposed(host):
            out.append({"host": host, "state": EXPOSED, "proofs": [
                verify_proof(p, genesis=self.genesis).summary()
                for p in self.evidence.proofs(host)]})
        return {"hosts": out}

    # -- RPCs ------------------------------------------------------------------------

    async def rpc_push(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        if not set(args) <= {"host", "auths", "url"} or not {"host", "auths"} <= set(args):
            raise WitnessError("push takes {host, auths, url?}", sorted(map(str, args)))
        host = check_host_key(args["host"])
        url = args.get("url")
        if url is not None and (not isinstance(url, str) or not 0 < len(url) <= 256):
            raise WitnessError("url must be a short string")
        auths = check_auths(host, args["auths"])
        if self.directory is not None and not await self._is_witness(host):
            raise WitnessError("this node is not a witness of that host")
        w = self.watch(host, url)
        for auth in auths:
            await self.hold(w, auth)
        # durable before the pusher hears we hold them
        self.store.save_held(host, [a for a in auths if w.held.get(a.seq) is a
                                    or w.recheck.get(a.seq) is a])
        return {"held": len(w.held), "state": w.state}

    async def rpc_refund(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        if set(args) != {"host", "payment"}:
            raise WitnessError("refund takes {host, payment}", sorted(map(str, args)))
        host = check_host_key(args["host"])
        cert = self._refund_payment(host, args["payment"])
        if self.directory is not None and not await self._is_witness(host):
            raise WitnessError("this node is not a witness of that host")
        w = self.watch(host)
        rid = memo_refund_id(cert.entry.body.get("memo"))
        state = w.replayer.state
        if not w.proofs and (state is None or state.refunds is None
                             or rid not in state.refunds):
            # the refund may be in the part not audited yet: audit (not more than once
            # a second per host for these pushes)
            wait = REFUND_AUDIT_GAP_US - (self.clock() - w.last_audit)
            if wait > 0:
                await asyncio.sleep(min(wait, REFUND_AUDIT_GAP_US) / US_PER_S)
            await self.audit(host)
        if not w.proofs:
            proof = w.refund_received(cert, self.store.audited)
            if proof is not None:
                await self._expose(w, proof)
                if not w.proofs:   # never accuse without a valid proof
                    raise WitnessError("could not build a valid proof", rid)
                return {"state": w.state, "refund_id": rid, "result": "exposed"}
        if w.proofs:
            return {"state": w.state, "refund_id": rid, "result": "exposed"}
        state = w.replayer.state
        known = state is not None and state.refunds is not None and rid in state.refunds
        return {"state": w.state, "refund_id": rid,
                "result": "exact" if known else "unknown refund"}

    def _refund_payment(self, host: bytes, doc: Any) -> Certificate:
        """A certified SEND of ``host`` whose memo names a refund, or :class:`WitnessError`."""
        if self.genesis is None:
            raise WitnessError("this witness cannot check certificates (no genesis)")
        try:
            cert = Certificate.from_wire(doc)
        except (P2PMarketError, KeyError, TypeError, ValueError, AttributeError):
            raise WitnessError("payment must be a certificate") from None
        entry = cert.entry
        if entry.kind != SEND or entry.owner != host:
            raise WitnessError("payment must be a SEND of that host")
        if memo_refund_id(entry.body.get("memo")) is None:
            raise WitnessError("the SEND's memo names no refund", entry.body.get("memo"))
        try:
            verify_certificate(cert, self.genesis)
        except P2PMarketError as exc:
            raise WitnessError(f"payment is not certified: {exc.message}") from None
        return cert

    async def rpc_status(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        if not set(args) <= {"host"}:
            raise WitnessError("status takes {host?}")
        host = args.get("host")
        if host is not None and not isinstance(host, bytes):
            raise WitnessError("host must be bytes")
        return self.status(host)

    async def rpc_evidence(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        if set(args) != {"host"} or not isinstance(args["host"], bytes):
            raise WitnessError("evidence takes {host}")
        return {"proofs": self.evidence.proofs(args["host"])}

    # -- state ------------------------------------------------------------------------

    def watch(self, host: bytes, url: str | None = None) -> Watched:
        w = self.hosts.get(host)
        if w is None:
            w = self.hosts[host] = Watched(host, url, genesis=self.genesis)
            for proof in self.evidence.proofs(host):
                w.proofs.append(proof)
        elif url and (w.url is None or w.challenge is not None):
            w.url = url
        return w

    async def hold(self, w: Watched, auth: AuditAuthenticator) -> None:
        """Take one (verified) authenticator of the host."""
        proof = w.hold(auth, self.store.audited)
        if proof is not None:
            await self._expose(w, proof)

    async def _expose(self, w: Watched, proof: bytes) -> None:
        try:
            checked = self.evidence.add(proof)
        except EvidenceError as exc:   # a bug on our side: never accuse without a proof
            log.error("witness built an invalid proof against %s: %s", w.key.hex()[:12],
                      exc.message, extra={"event": "audit.bad_proof"})
            return
        if proof not in w.proofs:
            w.proofs.append(proof)
            log.warning("host %s exposed: %s (seq %d)", w.key.hex()[:12], checked.rule,
                        checked.seq, extra={"event": "audit.exposed"})
            if self.sink is not None:
                try:
                    await self.sink.publish(checked.host_id, proof)
                except P2PMarketError as exc:
                    log.warning("could not publish evidence: %s", exc.message,
                                extra={"event": "audit.evidence_unpublished"})

    async def _is_witness(self, host: bytes) -> bool:
        """Whether we are among ``host``'s witnesses; a yes is remembered for
        :data:`WITNESS_MEMO_S` (each push would otherwise cost a DHT lookup), a no never
        (the set may grow to include us)."""
        assert self.directory is not None
        now = time.monotonic()
        if self._witness_of.get(host, 0.0) > now:
            return True
        peers = await witnesses_of(self.directory, node_id_of(host), self.psi + 1)
        yes = any(p.node_id == self.identity.node_id for p in peers)
        if yes:
            if len(self._witness_of) >= MAX_WITNESS_MEMO:
                self._witness_of.clear()
            self._witness_of[host] = now + WITNESS_MEMO_S
        return yes

    # -- auditing -----------------------------------------------------------------------

    async def audit(self, host: bytes) -> str:
        """One audit of ``host`` (after any running one); returns its state."""
        async with self._locks.setdefault(host, asyncio.Lock()):
            state = await self._audit(host)
        if self.on_audit is not None:
            self.on_audit(state)
        return state

    def lags(self) -> dict[bytes, int]:
        """Per host watched and not exposed: the log entries not audited yet (the
        highest seq the host's log named or its buyers pushed, less the last audited)."""
        return {key: max(0, max(self.heads.get(key, -1), max(w.held, default=-1))
                         - w.replayer.seq)
                for key, w in self.hosts.items() if not w.proofs}

    async def _audit(self, host: bytes) -> str:
        w = self.watch(host)
        if w.proofs:
            return EXPOSED
        now = self.clock()
        target = max(w.held, default=-1)
        url = w.url
        if self.locator is not None:
            url = await self.locator.locate(host) or url
        answered = url is not None
        if url is not None:
            w.url = url
            answered = await self._fetch(w, url, target)
        w.last_audit = now
        if w.proofs:
            return EXPOSED
        if w.conclude(now, target, answered):
            self.store.drop_held(host, w.replayer.seq, w.recheck)
            await self._gossip(w)
        self.store.save_meta(host, w.url, w.replayer.seq, w.challenge, w.error, w.last_audit)
        return w.state

    async def _fetch(self, w: Watched, url: str, target: int = -1) -> bool:
        """Fetch and check the log, page by page, up to the head the host names first
        (or ``target``, if later); False if the host did not answer properly, or gave
        nothing in time (a challenge stays open)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.fetch_s
        since = max(0, w.replayer.seq)
        if w.recheck:   # a pushed authenticator to check against the log again
            since = min(since, min(w.recheck))
        start = w.replayer.seq
        goal: int | None = None
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                resp = await asyncio.wait_for(self.client.call(
                    url, w.key, "host.audit_log", {"since": since, "limit": self.segment}),
                    remaining)
                seg = read_segment(resp, self.segment)
            except TimeoutError:
                w.error = f"the host's log did not come within {self.fetch_s:g} s"
                return w.replayer.seq > start
            except (P2PMarketError, KeyError, TypeError) as exc:
                w.error = exc.message if isinstance(exc, P2PMarketError) else "bad answer"
                return False
            try:
                done = await self._check(w, since, seg.entries, seg.sigs)
            except (WireError, WitnessError) as exc:
                w.error = f"bad log segment: {exc.message}"
                return False
            if w.proofs:
                return True
            self.heads[w.key] = max(self.heads.get(w.key, -1), seg.head_seq)
            if goal is None:
                goal = max(seg.head_seq, target)
            if not done or not seg.entries or w.replayer.seq >= goal:
                return True
            since = w.replayer.seq + 1

    async def _check(self, w: Watched, since: int, entries: list[Any], sigs: list[Any]
                     ) -> bool:
        """Check one segment. Returns False when it must stop (a proof was found).
        What was taken is stored, whatever happens."""
        if self.sigpool is not None and all(isinstance(e, bytes) for e in entries):
            w.replayer.verdicts = await self.sigpool.averdicts(entries, node_id_of(w.key))
        try:
            proof = w.check_segment(since, entries, sigs, self.clock(), self.store.audited)
            if proof is None:
                return True
            await self._expose(w, proof)
            return False
        finally:
            w.replayer.verdicts = None
            self._save(w)

    def _save(self, w: Watched) -> None:
        if not w.unsaved and w.saved_anchor == w.anchor_seq():
            return
        anchor = w.anchor_seq()
        self.store.save_progress(w.key, w.url, w.replayer, list(w.unsaved.values()),
                                 anchor_changed=anchor != w.saved_anchor)
        w.saved_anchor = anchor
        w.unsaved.clear()

    async def _gossip(self, w: Watched) -> None:
        """Tell the host's other witnesses what we audited."""
        if self.directory is None or w.replayer.seq < 0:
            return
        auth = w.audited(w.replayer.seq, self.store.audited)
        assert auth is not None
        try:
            peers = await witnesses_of(self.directory, node_id_of(w.key), self.psi + 1)
        except P2PMarketError:
            return
        for peer in peers:
            if peer.node_id == self.identity.node_id:
                continue
            try:
                await self.client.call(peer.url, peer.key, "witness.push", {
                    "host": w.key, "auths": [[auth.seq, auth.hash, auth.sig]],
                    **({"url": w.url} if w.url else {})})
            except P2PMarketError as exc:
                log.debug("witness %s did not take our head: %s", peer.url, exc.message)


async def push_to_witnesses(client: PeerCaller, directory: WitnessDirectory, host_key: bytes,
                            auths: list[dict[str, Any]], host_url: str | None = None,
                            psi: int = DEFAULT_PSI) -> int:
    """What a buyer does with the ``audit`` authenticators of a host's replies: push
    them to the host's witnesses. Returns how many witnesses took them."""
    items = [[a["seq"], a["hash"], a["sig"]] for a in auths if a.get("owner") == host_key]
    if not items:
        return 0
    peers = await witnesses_of(directory, node_id_of(host_key), psi + 1)
    args: dict[str, Any] = {"host": host_key, "auths": items[:MAX_PUSH]}
    if host_url:
        args["url"] = host_url

    async def push(peer: Peer) -> bool:
        try:
            await client.call(peer.url, peer.key, "witness.push", args)
            return True
        except P2PMarketError as exc:
            log.info("witness %s did not take the authenticators: %s", peer.url, exc.message)
            return False

    return sum(await asyncio.gather(*(push(p) for p in peers)))   # all witnesses at once


async def push_refund_to_witnesses(client: PeerCaller, directory: WitnessDirectory,
                                   host_key: bytes, payment: dict[str, Any],
                                   psi: int = DEFAULT_PSI) -> list[dict[str, Any]]:
    """What a buyer does with the certified SEND that paid it a refund: push it to the
    host's witnesses (``witness.refund``), who expose the host if it does not pay the
    refund the host's log recorded exactly. Returns the witnesses' answers."""
    peers = await witnesses_of(directory, node_id_of(host_key), psi + 1)
    answers = []
    for peer in peers:
        try:
            answers.append(await client.call(peer.url, peer.key, "witness.refund",
                                             {"host": host_key, "payment": payment}))
        except P2PMarketError as exc:
            log.info("witness %s did not take the refund payment: %s", peer.url,
                     exc.message)
    return answers


__all__ = ["DEFAULT_FETCH_S", "DEFAULT_PERIOD_S", "DEFAULT_PSI", "REQUEST_LIMITS", "SEGMENT",
           "WITNESSES_PER_HOST", "HostLocator", "Peer", "PeerCaller", "WitnessDirectory",
           "WitnessService", "push_refund_to_witnesses", "push_to_witnesses", "witness_key",
           "witnesses_of"]
