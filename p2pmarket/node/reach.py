"""The node's reachability, kept current (docs/design.md section 7). I/O only: the
decisions are :mod:`p2pmarket.nat.table` (the registrar's) and
:mod:`p2pmarket.nat.reachability` (what the node believes).

:class:`ReachKeeper` runs registration rounds: it asks up to
:data:`~p2pmarket.nat.reachability.KEEP_REGISTRARS` registrars (the notaries, and the
peers whose host records it finds in the DHT) to register the node's self-known
address, and feeds their attestations to a
:class:`~p2pmarket.nat.reachability.Reachability`. Its verdict decides what the node
advertises (:class:`Advert`):

- a class and address at least 3 registrars agree on, verified by their callbacks
  (public; NAT with a port forward; a proxied node whose own address answers): the
  node is dialled there directly, runs the DHT as a full peer, and its record carries
  the agreeing attestations;
- a class nobody could call back (plain NAT, proxied): the node keeps a reservation at a
  relay (:class:`~p2pmarket.nat.relayclient.RelayClient`), advertises the relay's URL
  for it, runs the DHT as a client, and its record carries the attestations and the
  relay's voucher. A lost relay is replaced at once by another candidate (relays that
  failed are skipped for :data:`RELAY_PAUSE_S`);
- unknown (fewer than 3 agree): what it advertised before (at first, its own address).

Behind an HTTP proxy, registration and the relay's websocket go through CONNECT
tunnels (:func:`~p2pmarket.nat.tunnel.connect_tunnel`), since proxies do not upgrade
plain ``ws://``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from p2pmarket.audit.witness import Peer
from p2pmarket.core.clock import US_PER_S, now_us
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import Identity, node_id_of
from p2pmarket.core.urls import http_url
from p2pmarket.dht.node import DhtNode
from p2pmarket.dht.records import HostRecord
from p2pmarket.nat.reachability import KEEP_REGISTRARS, Reachability, Verdict
from p2pmarket.nat.registration import Registration, register
from p2pmarket.nat.relayclient import OnStream, RelayClient
from p2pmarket.nat.tunnel import connect_tunnel

log = logging.getLogger(__name__)

RELAY_PAUSE_S = 300.0      # a relay that failed is not tried again for this long
RELAY_WAIT_S = 10.0        # how long a reservation may take
REGISTER_TIMEOUT_S = 20.0
MAX_REACH_ATTESTATIONS = 3  # a record's reach holds at most 4: 3 attestations + a voucher


@dataclass(frozen=True)
class Advert:
    """What the node advertises: the URL buyers dial, what backs it (attestations and a
    relay voucher, raw), and whether the DHT runs as a client."""

    url: str
    reach: tuple[bytes, ...] = ()
    client_mode: bool = False
    relayed_by: str = ""


Candidates = Callable[[], Awaitable[list[Peer]]]
OnAdvert = Callable[[Advert], Awaitable[None]]


@dataclass
class ReachState:
    """What :meth:`ReachKeeper.status` reports."""

    verdict: Verdict | None = None
    seen: tuple[str, int] | None = None
    attestations: dict[bytes, bytes] = field(default_factory=dict)   # registrar -> raw
    registrations: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    """registrar key -> what its last registration said: url, class, address,
    verified, and the outcomes of its callbacks (external, self)."""
    relay: str = ""
    rounds: int = 0
    errors: list[str] = field(default_factory=list)


class ReachKeeper:
    """See the module docstring. ``self_known()`` gives the (host, port) the node
    believes it has; ``local_url`` reaches its own peer API (relayed circuits are
    replayed there); ``candidates()`` lists registrars and relays; ``on_advert`` is
    awaited whenever what the node should advertise changes."""

    def __init__(self, identity: Identity, *, self_known: Callable[[], tuple[str, int]],
                 local_url: Callable[[], str], candidates: Candidates, on_advert: OnAdvert,
                 proxy: str | None = None, clock: Callable[[], int] = now_us,
                 on_stream: OnStream | None = None) -> None:
        self.identity = identity
        self.on_stream = on_stream
        """Serves buyers' streams to leased ports through our relay (issue 13)."""
        self.self_known = self_known
        self.local_url = local_url
        self.candidates = candidates
        self.on_advert = on_advert
        self.proxy = proxy
        self.clock = clock
        self.book = Reachability()
        self.state = ReachState()
        self.wake = asyncio.Event()
        self._relay_task: asyncio.Task[None] | None = None
        self._relay: RelayClient | None = None
        self._bad_relays: dict[bytes, float] = {}
        self._advert: Advert | None = None
        self._unsent = False     # on_advert failed for self._advert: hand it over again
        self._agreeing_reach: tuple[bytes, ...] = ()   # what backs a relayed advert

    # -- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                await self.round()
                delay = max(0.0, (self.book.next_check_at(self.clock()) - self.clock())
                            / US_PER_S)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self.wake.wait()
                self.wake.clear()
        finally:
            await self._stop_relay()

    async def round(self) -> Verdict:
        """Register with up to 5 candidates at once; then act on the verdict."""
        peers = [p for p in await self.candidates() if p.key != self.identity.public_key]
        random.shuffle(peers)
        peers = peers[:KEEP_REGISTRARS]
        answers = await asyncio.gather(*(self._register(p) for p in peers))
        now = self.clock()
        errors = []
        for peer, answer in zip(peers, answers, strict=True):
            if isinstance(answer, Registration):
                self.book.add(answer.attestation, now)
                self.state.attestations[peer.key] = answer.raw
                self.state.seen = answer.seen
                if self.book.address_changed(answer.seen[0]):
                    self.wake.set()          # our external address moved: check again
                att = answer.attestation
                self.state.registrations[peer.key] = {
                    "registrar": peer.url, "class": att.reach_class.value,
                    "address": [att.host, att.port], "verified": att.verified,
                    "external": answer.external.value, "self": answer.self_known.value}
            else:
                errors.append(f"{peer.url}: {answer}")
        self.book.round_done(now)
        self.state.rounds += 1
        self.state.errors = errors[-KEEP_REGISTRARS:]
        verdict = self.state.verdict = self.book.verdict()
        await self._act(verdict)
        return verdict

    async def _register(self, peer: Peer) -> Registration | str:
        try:
            if self.proxy is None:
                return await register(self.identity, peer.url, peer.key, self.self_known(),
                                      timeout_s=REGISTER_TIMEOUT_S)
            host, port = _host_port(peer.url)
            async with connect_tunnel(self.proxy, host, port) as local:
                return await register(self.identity, local, peer.key, self.self_known(),
                                      timeout_s=REGISTER_TIMEOUT_S)
        except P2PMarketError as exc:
            return exc.message
        except (OSError, TimeoutError) as exc:
            return f"{type(exc).__name__}: {exc}"

    async def _act(self, verdict: Verdict) -> None:
        if verdict.reach_class is None or verdict.host is None or verdict.port is None:
            return                       # unknown: keep what we advertise
        agreeing = self._agreeing(verdict)
        if verdict.verified:
            await self._stop_relay()
            await self._advertise(Advert(http_url(verdict.host, verdict.port), agreeing))
        else:
            self._agreeing_reach = agreeing
            if self._relay_task is None or self._relay_task.done():
                self._relay_task = asyncio.create_task(self._keep_relay(), name="relay")
            elif self._relay is not None and self._relay.reservation is not None:
                await self._advertise_relay(self._relay)

    def _agreeing(self, verdict: Verdict) -> tuple[bytes, ...]:
        raws = []
        for att in self.book.answers:
            if ((att.reach_class, att.host, att.port)
                    == (verdict.reach_class, verdict.host, verdict.port)):
                raw = self.state.attestations.get(att.registrar)
                if raw is not None:
                    raws.append(raw)
        return tuple(raws[:MAX_REACH_ATTESTATIONS])

    async def _advertise(self, advert: Advert) -> None:
        """Hand ``advert`` to ``on_advert`` if it is new. Its failure (a publish that
        did not go out) is logged and ends nothing: the relay we just reserved stays
        held, and the next round hands the advert over again."""
        if advert != self._advert or self._unsent:
            self._advert, self._unsent = advert, True
            try:
                await self.on_advert(advert)
                self._unsent = False
            except (P2PMarketError, OSError, TimeoutError) as exc:
                why = exc.message if isinstance(exc, P2PMarketError) else repr(exc)
                log.warning("advertising %s failed: %s", advert.url, why,
                            extra={"event": "nat.advertise_failed"})
                self.state.errors = [*self.state.errors, f"advertise: {why}"][
                    -KEEP_REGISTRARS:]

    # -- the relay ----------------------------------------------------------------------

    async def _keep_relay(self) -> None:
        """Hold a reservation at some relay; on loss, at once at another one."""
        while True:
            loop = asyncio.get_running_loop()
            relays = [p for p in await self.candidates()
                      if p.key != self.identity.public_key
                      and self._bad_relays.get(p.key, 0.0) <= loop.time()]
            if not relays:
                self.state.relay = ""
                await asyncio.sleep(5.0)
                continue
            random.shuffle(relays)
            for peer in relays:
                await self._serve_relay(peer)
                self._bad_relays[peer.key] = loop.time() + RELAY_PAUSE_S

    async def _serve_relay(self, peer: Peer) -> None:
        client = RelayClient(self.identity, peer.url, peer.key, self.local_url(),
                             proxy=self.proxy, on_stream=self.on_stream)
        self._relay = client
        task = asyncio.create_task(client.run(), name="relay-client")
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(client.reserved.wait()), RELAY_WAIT_S)
            if client.reserved.is_set() and not task.done():
                self.state.relay = peer.url
                await self._advertise_relay(client)
            with contextlib.suppress(P2PMarketError, OSError, TimeoutError):
                await task
            log.warning("relay %s lost; finding another", peer.url,
                        extra={"event": "nat.relay_lost"})
        finally:
            if not task.done():
                await client.close()
                with contextlib.suppress(Exception):
                    await task
            self.state.relay = ""
            self._relay = None

    async def _advertise_relay(self, client: RelayClient) -> None:
        reach = self._agreeing_reach + ((client.reservation,) if client.reservation else ())
        await self._advertise(Advert(client.url, reach, client_mode=True,
                                     relayed_by=client.relay_url))

    async def _stop_relay(self) -> None:
        task, self._relay_task = self._relay_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def status(self) -> dict[str, Any]:
        v = self.state.verdict
        return {
            "class": v.reach_class.value if v is not None and v.reach_class else "unknown",
            "address": [v.host, v.port] if v is not None and v.host else None,
            "verified": bool(v and v.verified),
            "agreeing": v.agreeing if v is not None else 0,
            "answers": v.answers if v is not None else 0,
            "seen": list(self.state.seen) if self.state.seen else None,
            "attestations": len(self.state.attestations),
            "registrations": list(self.state.registrations.values()),
            "relay": self.state.relay,
            "url": self._advert.url if self._advert else None,
            "rounds": self.state.rounds,
            "errors": self.state.errors,
        }


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if not parts.hostname:
        raise P2PMarketError("a peer URL without a host", url)
    return parts.hostname, parts.port or 80


class RecordSource(Protocol):
    async def get_host(self, node_id: bytes) -> HostRecord | None: ...


async def reach_candidates(genesis: Genesis, dht: DhtNode, records: RecordSource,
                           limit: int = 16) -> list[Peer]:
    """Registrars and relays to try: the notaries (public by the network's own design),
    then peers of our DHT routing table (full DHT peers, so likely public) by the URL and
    key in their signed host records; at most ``limit``."""
    peers = {n.key: Peer(node_id_of(n.key), n.key, n.url) for n in genesis.notaries}
    contacts = dht.random_contacts(limit) if dht.contact_count() else []
    found = await asyncio.gather(*(records.get_host(c.id) for c in contacts),
                                 return_exceptions=True)
    for record in found:
        if isinstance(record, HostRecord) and len(peers) < limit:
            key = record.envelope.sender
            if "/relay/" not in record.url:   # a relayed node registers nobody
                peers.setdefault(key, Peer(record.node_id, key, record.url))
    return list(peers.values())
