"""PeerReview witnesses for hosts (DESIGN.md section 5).

A host's witnesses are the ψ+1 nodes (default 3) closest in the DHT to
:func:`witness_key` ``= SHA-256("witness" + host id)``. Buyers push the
authenticators the host put in its replies (``witness.push``); every audit
period (default 10 s) each witness fetches the host's log since its last audit
(``host.audit_log``, re-fetching the last entry it audited), and

1. checks every entry's signature and the hash chain; two different hashes
   signed for one seq -- against an authenticator it was pushed, one it audited
   before, or the chain it holds -- are a proof of inconsistency;
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
kept in the :class:`~p2pmarket.audit.evidence.EvidenceStore` and published
through an :class:`~p2pmarket.audit.evidence.EvidenceSink`). An exposed host is
not audited any more.

An entry dated more than the clock tolerance of the RPC layer ahead of the
witness's clock is not taken: the fetch counts as unanswered, so a host whose
clock runs ahead stays suspected until real time catches up with its log (no
third party could check a proof about "the future", so this is a challenge,
not evidence). That entries' times never go backwards is a replay rule.

Progress is durable (:class:`~p2pmarket.audit.witnessstore.WitnessStore`): pushed
authenticators are stored before ``witness.push`` answers, and each checked
segment is stored with the replay position, so a restarted witness resumes every
audit where it stopped.

RPCs (``dispatcher.register_all("witness", service.handlers())``; the RPC
layer's replay guard and signature checks run first):

- ``push {host: key, auths: [[seq, hash, sig], ...] (at most 256), url?: str}``
  -> ``{held, state}``. All authenticators must be the host's valid signatures or
  nothing is taken.
- ``status {host?: key}`` -> ``{hosts: [STATUS]}`` (see :meth:`WitnessService.status`)
- ``evidence {host: key or node id}`` -> ``{proofs: [bytes]}``
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from p2pmarket.api.rpc import CallContext, Handler
from p2pmarket.auction.snapshot import snapshot
from p2pmarket.audit.errors import AuditError
from p2pmarket.audit.evidence import (
    EvidenceError,
    EvidenceSink,
    fork_proof,
    inconsistency_proof,
    nonconformance_proof,
    verify_proof,
)
from p2pmarket.audit.evidencestore import EvidenceStore
from p2pmarket.audit.replay import Replayer, decode_entry
from p2pmarket.audit.witnessstore import WitnessStore
from p2pmarket.core.clock import now_us
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, node_id_of
from p2pmarket.core.wire import DEFAULT_CLOCK_TOLERANCE_US, WireError
from p2pmarket.ledger.chain import HASH_SIZE, Authenticator

log = logging.getLogger(__name__)

DEFAULT_PSI = 2
DEFAULT_PERIOD_S = 10.0
SEGMENT = 2000
MAX_PUSH = 256
MAX_HELD = 4096
TRUSTED, SUSPECTED, EXPOSED = "trusted", "suspected", "exposed"


class WitnessError(AuditError):
    """A refused witness request."""


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


@dataclass
class Watched:
    key: bytes
    url: str | None = None
    replayer: Replayer = field(default_factory=Replayer)
    held: dict[int, Authenticator] = field(default_factory=dict)
    # audited in the segment being checked, not yet in the store (older ones are there)
    unsaved: dict[int, Authenticator] = field(default_factory=dict)
    saved_anchor: int = -1   # first seq of the replay entries the store holds
    challenge: dict[str, Any] | None = None
    proofs: list[bytes] = field(default_factory=list)
    last_audit: int = 0
    error: str = ""

    def __post_init__(self) -> None:
        if self.replayer.host_id is None and self.replayer.seq < 0:
            # buyers' signed requests must be addressed to this host
            self.replayer = Replayer(host=self.key)

    @property
    def state(self) -> str:
        if self.proofs:
            return EXPOSED
        return SUSPECTED if self.challenge is not None else TRUSTED

    def anchor_seq(self) -> int:
        return self.replayer.seq - len(self.replayer.anchor_entries) + 1


def _auths(host: bytes, items: Any) -> list[Authenticator]:
    if not isinstance(items, list) or not 0 < len(items) <= MAX_PUSH:
        raise WitnessError(f"auths must be a list of 1 to {MAX_PUSH} authenticators")
    out = []
    for item in items:
        if not isinstance(item, list) or len(item) != 3:
            raise WitnessError("an authenticator is [seq, hash, sig]")
        seq, h, sig = item
        if isinstance(seq, bool) or not isinstance(seq, int) or not isinstance(h, bytes) \
                or len(h) != HASH_SIZE or not isinstance(sig, bytes) \
                or len(sig) != SIGNATURE_SIZE:
            raise WitnessError("an authenticator is [seq, hash, sig]")
        auth = Authenticator(host, seq, h, sig)
        if not auth.verify():
            raise WitnessError("an authenticator is not signed by the host", seq)
        out.append(auth)
    return out


def _host_key(value: Any) -> bytes:
    if not isinstance(value, bytes) or len(value) != PUBLIC_KEY_SIZE:
        raise WitnessError("host must be a 32-byte public key")
    return value


class WitnessService:
    def __init__(self, identity: Identity, client: PeerCaller, evidence: EvidenceStore,
                 clock: Callable[[], int] = now_us, period_s: float = DEFAULT_PERIOD_S,
                 directory: WitnessDirectory | None = None,
                 locator: HostLocator | None = None, sink: EvidenceSink | None = None,
                 psi: int = DEFAULT_PSI, segment: int = SEGMENT,
                 store: WitnessStore | None = None) -> None:
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
        self.store = store or WitnessStore()
        self.hosts: dict[bytes, Watched] = {}
        for saved in self.store.hosts():
            w = Watched(saved.key, saved.url, saved.replayer,
                        {a.seq: a for a in saved.held}, challenge=saved.challenge,
                        last_audit=saved.last_audit, error=saved.error)
            w.saved_anchor = w.anchor_seq() if w.replayer.anchor_entries else -1
            w.proofs.extend(self.evidence.proofs(saved.key))
            self.hosts[saved.key] = w

    # -- what the node wires --------------------------------------------------------

    def handlers(self) -> dict[str, Handler]:
        return {"push": self.rpc_push, "status": self.rpc_status,
                "evidence": self.rpc_evidence}

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
                log.exception("audit round failed")

    async def audit_all(self) -> None:
        await asyncio.gather(*(self.audit(k) for k in list(self.hosts)))

    def status(self, host: bytes | None = None) -> dict[str, Any]:
        """``{hosts: [{host, host_id, state, audited_seq, head, held, challenge, proofs,
        last_audit, error}]}`` for ``p2pmarket audit status [HOST]``."""
        out = []
        for key, w in sorted(self.hosts.items()):
            if host is not None and host not in (key, node_id_of(key)):
                continue
            proofs = [verify_proof(p).summary() for p in w.proofs]
            out.append({"host": key, "host_id": node_id_of(key), "state": w.state,
                        "audited_seq": w.replayer.seq, "head": w.replayer.head,
                        "held": len(w.held), "challenge": w.challenge, "proofs": proofs,
                        "last_audit": w.last_audit, "error": w.error, "url": w.url})
        if host is not None and not out and self.evidence.is_exposed(host):
            out.append({"host": host, "state": EXPOSED, "proofs": [
                verify_proof(p).summary() for p in self.evidence.proofs(host)]})
        return {"hosts": out}

    # -- RPCs ------------------------------------------------------------------------

    async def rpc_push(self, ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        if not set(args) <= {"host", "auths", "url"} or not {"host", "auths"} <= set(args):
            raise WitnessError("push takes {host, auths, url?}", sorted(map(str, args)))
        host = _host_key(args["host"])
        url = args.get("url")
        if url is not None and (not isinstance(url, str) or not 0 < len(url) <= 256):
            raise WitnessError("url must be a short string")
        auths = _auths(host, args["auths"])
        if self.directory is not None and not await self._is_witness(host):
            raise WitnessError("this node is not a witness of that host")
        w = self.watch(host, url)
        for auth in auths:
            await self.hold(w, auth)
        # durable before the pusher hears we hold them
        self.store.save_held(host, [a for a in auths if w.held.get(a.seq) is a])
        return {"held": len(w.held), "state": w.state}

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
            w = self.hosts[host] = Watched(host, url)
            for proof in self.evidence.proofs(host):
                w.proofs.append(proof)
        elif url and (w.url is None or w.challenge is not None):
            w.url = url
        return w

    async def hold(self, w: Watched, auth: Authenticator) -> None:
        """Take one (verified) authenticator of the host."""
        if auth.seq <= w.replayer.seq:
            mine = self._audited(w, auth.seq)
            if mine is not None and mine.hash != auth.hash:
                await self._expose(w, inconsistency_proof(mine, auth))
            return
        other = w.held.get(auth.seq)
        if other is not None and other.hash != auth.hash:
            await self._expose(w, inconsistency_proof(other, auth))
            return
        if other is None and len(w.held) < MAX_HELD:
            w.held[auth.seq] = auth

    async def _expose(self, w: Watched, proof: bytes) -> None:
        try:
            checked = self.evidence.add(proof)
        except EvidenceError as exc:   # a bug on our side: never accuse without a proof
            log.error("witness built an invalid proof against %s: %s", w.key.hex()[:12],
                      exc.message)
            return
        if proof not in w.proofs:
            w.proofs.append(proof)
            log.warning("host %s exposed: %s (seq %d)", w.key.hex()[:12], checked.rule,
                        checked.seq)
            if self.sink is not None:
                try:
                    await self.sink.publish(checked.host_id, proof)
                except P2PMarketError as exc:
                    log.warning("could not publish evidence: %s", exc.message)

    async def _is_witness(self, host: bytes) -> bool:
        assert self.directory is not None
        peers = await self.directory.closest(witness_key(node_id_of(host)), self.psi + 1)
        return any(p.node_id == self.identity.node_id for p in peers)

    # -- auditing -----------------------------------------------------------------------

    async def audit(self, host: bytes) -> str:
        """One audit of ``host``; returns its state."""
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
            answered = await self._fetch(w, url)
        w.last_audit = now
        if w.proofs:
            return EXPOSED
        if not answered or w.replayer.seq < target:
            if w.challenge is None:
                w.challenge = {"since": max(0, w.replayer.seq), "target": target,
                               "opened": now, "attempts": 0}
            w.challenge["attempts"] += 1
            w.challenge["target"] = max(target, w.challenge["target"])
            if answered:
                w.error = f"the log stops at {w.replayer.seq}, before seq {target}"
        else:
            w.challenge = None
            w.error = ""
            for seq in [s for s in w.held if s <= w.replayer.seq]:
                del w.held[seq]
            self.store.drop_held(host, w.replayer.seq)
            await self._gossip(w)
        self.store.save_meta(host, w.url, w.replayer.seq, w.challenge, w.error, w.last_audit)
        return w.state

    async def _fetch(self, w: Watched, url: str) -> bool:
        """Fetch and check the log up to its head; False if the host did not answer
        properly (a challenge stays open)."""
        since = max(0, w.replayer.seq)
        while True:
            try:
                resp = await self.client.call(url, w.key, "host.audit_log",
                                              {"since": since, "limit": self.segment})
                entries, sigs = resp["entries"], resp["sigs"]
                if not isinstance(entries, list) or not isinstance(sigs, list) or \
                        len(entries) != len(sigs) or len(entries) > self.segment:
                    raise WitnessError("malformed audit log answer")
                head = resp.get("head")
                head_seq = head[0] if isinstance(head, list) and head and \
                    isinstance(head[0], int) else -1
            except (P2PMarketError, KeyError, TypeError) as exc:
                w.error = exc.message if isinstance(exc, P2PMarketError) else "bad answer"
                return False
            try:
                done = await self._check(w, since, entries, sigs)
            except (WireError, WitnessError) as exc:
                w.error = f"bad log segment: {exc.message}"
                return False
            if w.proofs:
                return True
            if not done or not entries or w.replayer.seq >= head_seq:
                return True
            since = w.replayer.seq + 1

    async def _check(self, w: Watched, since: int, entries: list[Any], sigs: list[Any]
                     ) -> bool:
        """Check one segment. Returns False when it must stop (a proof was found).
        What was taken is stored, whatever happens."""
        try:
            return await self._check_entries(w, since, entries, sigs)
        finally:
            self._save(w)

    async def _check_entries(self, w: Watched, since: int, entries: list[Any],
                             sigs: list[Any]) -> bool:
        r = w.replayer
        horizon = self.clock() + DEFAULT_CLOCK_TOLERANCE_US
        for i, (raw, sig) in enumerate(zip(entries, sigs, strict=True)):
            if not isinstance(raw, bytes) or not isinstance(sig, bytes):
                raise WitnessError("entries and sigs must be bytes")
            seq = since + i
            h = hashlib.sha256(raw).digest()
            auth = Authenticator(w.key, seq, h, sig) if len(sig) == SIGNATURE_SIZE else None
            if auth is None or not auth.verify():
                raise WitnessError("an entry is not signed by the host", seq)
            if seq <= r.seq:   # the overlap: an entry audited before
                mine = self._audited(w, seq)
                if mine is not None and mine.hash != h:
                    await self._expose(w, inconsistency_proof(mine, auth))
                    return False
                continue
            if seq != r.seq + 1:
                raise WitnessError("the segment does not start where asked", seq)
            held = w.held.get(seq)
            if held is not None and held.hash != h:
                await self._expose(w, inconsistency_proof(held, auth))
                return False
            doc = decode_entry(raw)
            if doc["ts"] > horizon:
                raise WitnessError("an entry is dated in the future", {
                    "seq": seq, "ts": doc["ts"], "now": horizon - DEFAULT_CLOCK_TOLERANCE_US})
            try:
                fault = r.take(raw)
            except WireError:
                if r.seq >= 0 and doc["seq"] == seq and doc["prev"] != r.head:
                    last = self._audited(w, r.seq)
                    assert last is not None
                    await self._expose(w, fork_proof(last, raw, sig))
                    return False
                raise
            w.unsaved[seq] = auth
            if fault is not None:
                await self._expose(w, self._nonconformance(w, sig, fault.seq, fault.rule))
                return False
        return True

    def _audited(self, w: Watched, seq: int) -> Authenticator | None:
        """The host's authenticator of an entry we audited."""
        return w.unsaved.get(seq) or self.store.audited(w.key, seq)

    def _save(self, w: Watched) -> None:
        if not w.unsaved and w.saved_anchor == w.anchor_seq():
            return
        anchor = w.anchor_seq()
        self.store.save_progress(w.key, w.url, w.replayer, list(w.unsaved.values()),
                                 anchor_changed=anchor != w.saved_anchor)
        w.saved_anchor = anchor
        w.unsaved.clear()

    def _nonconformance(self, w: Watched, sig: bytes, seq: int, rule: str) -> bytes:
        r = w.replayer
        first = decode_entry(r.anchor_entries[0])
        proof = b""
        for full in (False, True):
            snap = None if first["seq"] == 0 or r.anchor_state is None else \
                snapshot(r.anchor_state, payments=full, refunds=full)
            proof = nonconformance_proof(w.key, snap, r.anchor_entries, sig, seq, rule)
            try:
                verify_proof(proof)
                return proof
            except EvidenceError:
                continue
        return proof

    async def _gossip(self, w: Watched) -> None:
        """Tell the host's other witnesses what we audited."""
        if self.directory is None or w.replayer.seq < 0:
            return
        auth = self._audited(w, w.replayer.seq)
        assert auth is not None
        try:
            peers = await self.directory.closest(witness_key(node_id_of(w.key)), self.psi + 1)
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


__all__ = ["DEFAULT_PERIOD_S", "DEFAULT_PSI", "EXPOSED", "SUSPECTED", "TRUSTED",
           "HostLocator", "Peer", "PeerCaller", "Watched", "WitnessDirectory",
           "WitnessError", "WitnessService", "push_to_witnesses", "witness_key"]


async def push_to_witnesses(client: PeerCaller, directory: WitnessDirectory, host_key: bytes,
                            auths: list[dict[str, Any]], host_url: str | None = None,
                            psi: int = DEFAULT_PSI) -> int:
    """What a buyer does with the ``audit`` authenticators of a host's replies: push
    them to the host's witnesses. Returns how many witnesses took them."""
    items = [[a["seq"], a["hash"], a["sig"]] for a in auths if a.get("owner") == host_key]
    if not items:
        return 0
    peers = await directory.closest(witness_key(node_id_of(host_key)), psi + 1)
    took = 0
    for peer in peers:
        args: dict[str, Any] = {"host": host_key, "auths": items[:MAX_PUSH]}
        if host_url:
            args["url"] = host_url
        try:
            await client.call(peer.url, peer.key, "witness.push", args)
            took += 1
        except P2PMarketError as exc:
            log.info("witness %s did not take the authenticators: %s", peer.url, exc.message)
    return took
