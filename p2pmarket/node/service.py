"""A node: the one place that wires the services together.

Start order: stores, RPC handlers (notary if the genesis names our key, host
always), the peer and control HTTP servers, the DHT; then in the background the
node opens its own chain with the notaries, publishes its advertisement, and
ticks the auction. ``stop`` undoes it in reverse. Nothing here decides
anything; the decisions live in the rooms' pure cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from p2pmarket.api.client import PeerClient
from p2pmarket.api.rpc import CallContext, Handler, RpcDispatcher
from p2pmarket.api.server import Site, control_app, load_or_create_token, peer_app
from p2pmarket.audit.control import control_handlers as audit_control_handlers
from p2pmarket.audit.evidence import proof_verifier
from p2pmarket.audit.evidencestore import EvidenceStore
from p2pmarket.audit.log import AuditLog
from p2pmarket.audit.sigpool import SignaturePool
from p2pmarket.audit.witness import Peer, WitnessService
from p2pmarket.audit.witnessing import (
    DhtEvidenceSink,
    DhtHostLocator,
    DhtWitnessDirectory,
    EvidenceScreen,
)
from p2pmarket.audit.witnessstore import WitnessStore
from p2pmarket.broker.service import REQUEST_LIMITS as BROKER_LIMITS
from p2pmarket.broker.service import Broker
from p2pmarket.broker.store import BrokerStore
from p2pmarket.core.clock import now_us
from p2pmarket.core.config import DataDir, Settings, load_genesis
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.files import write_atomic
from p2pmarket.core.genesis import ConfigError, Genesis
from p2pmarket.core.identity import Identity
from p2pmarket.core.keyfile import load_or_create_key
from p2pmarket.core.logfmt import use_format
from p2pmarket.core.urls import http_url, own_route
from p2pmarket.dht.gateway import NO_DHT_ADDRESS, GatewayDht, gateway_routes
from p2pmarket.dht.node import DhtNode
from p2pmarket.dht.records import ImageAd, ResourceAd, VmAd
from p2pmarket.history.store import HistoryStore
from p2pmarket.host.access import AccessKeeper
from p2pmarket.host.accountstore import AccountStore
from p2pmarket.host.auctioneer import Auctioneer, domain_prefix
from p2pmarket.host.baseimages import BaseImage, image_handlers, scan_images
from p2pmarket.host.control import control_handlers as host_control_handlers
from p2pmarket.host.control import upload_route
from p2pmarket.host.guestkeys import guest_handlers
from p2pmarket.host.portfwd import PortForwards
from p2pmarket.host.vmm.guest import guest_boot
from p2pmarket.host.vmm.guestnet import guest_network
from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM
from p2pmarket.ledger import notaryrpc
from p2pmarket.ledger.committee import PeerTransport
from p2pmarket.ledger.notary import NotaryService
from p2pmarket.ledger.store import ChainStore
from p2pmarket.ledger.wallet import Wallet
from p2pmarket.metrics.http import metrics_app, metrics_route
from p2pmarket.nat.registrar import Registrar
from p2pmarket.nat.registration import echo_handlers
from p2pmarket.nat.relay import RelayService
from p2pmarket.nat.relaylimits import RelayLimits
from p2pmarket.nat.streams import StreamGate
from p2pmarket.node.addresses import bind, is_wildcard, route_source
from p2pmarket.node.advert import Availability, PriceHistory, moved
from p2pmarket.node.monitor import node_monitor
from p2pmarket.node.payments import RETRY_S, NodePayments
from p2pmarket.node.reach import Advert, ReachKeeper, reach_candidates
from p2pmarket.node.sampler import Sampler
from p2pmarket.web import ui_routes

log = logging.getLogger(__name__)

ADVERT_CHECK_S = 1.0   # cheap: publishes only when a price moved
PRICE_MOVE_PPM = 100_000   # republish the advertisement when a price moves by 10 %
READ_ONLY_HOST_RPCS = frozenset({"status", "lease", "audit_log", "quote"})
AVAILABILITY_SAVE_US = 60_000_000   # a SIGKILL loses at most this much counted uptime


class Node:
    def __init__(self, data_dir: DataDir, settings: Settings, genesis: Genesis,
                 identity: Identity) -> None:
        self.data_dir = data_dir
        self.settings = settings
        self.genesis = genesis
        self.identity = identity
        self.dispatcher = RpcDispatcher(identity)
        self.peers = PeerClient(identity, proxy=settings.http_proxy or None)
        self.peers.route = lambda url: own_route(url, self.url, self.local_url())
        self.evidence = EvidenceStore(data_dir.evidence_db, genesis)
        self.public_host = settings.public_host   # set at start (see :meth:`start`)
        self.dht = DhtNode(identity, genesis, proof_verifier=proof_verifier(genesis),
                           republish_s=settings.republish_seconds, db_path=data_dir.dht_db)
        # behind an HTTP proxy there is no UDP: records go through a public peer's gateway
        self.gateway: GatewayDht | None = None
        if settings.http_proxy:
            base = settings.dht_gateway or (genesis.bootstrap[0].url if genesis.bootstrap
                                            else "")
            if not base:
                raise ConfigError("behind an HTTP proxy a node needs a DHT gateway: set "
                                  "dht_gateway, or name bootstrap peers in the genesis")
            # without a gateway set, every bootstrap peer is one (a cut one is skipped)
            others = [] if settings.dht_gateway else [b.url for b in genesis.bootstrap[1:]]
            self.gateway = GatewayDht(identity, base, proof_verifier=proof_verifier(genesis),
                                      url="", republish_s=settings.republish_seconds,
                                      proxy=settings.http_proxy,
                                      puzzle_bits=genesis.puzzle_bits, fallbacks=others)
        self.records: DhtNode | GatewayDht = self.gateway or self.dht
        """Where our records go and others' come from: the DHT, or the gateway."""
        self.notary: NotaryService | None = None
        if identity.public_key in genesis.notary_keys:
            # notaries refuse new entries from owners with a valid proof against them,
            # held here or published in the DHT
            self.notary = NotaryService(identity, genesis, data_dir.notary_db,
                                        shun=self.evidence.is_exposed,
                                        screen=EvidenceScreen(self.dht, self.evidence).screen)
            self.dispatcher.register_all("notary", notaryrpc.handlers(self.notary),
                                         limits=notaryrpc.REQUEST_LIMITS)
        self.chain = ChainStore(data_dir.ledger_db)
        self.wallet = Wallet(identity, self.chain, genesis, PeerTransport(self.peers))
        self.payments = NodePayments(identity, self.chain, self.wallet)
        self.vmm = LibvirtVMM(settings.vmm_uri, prefix=domain_prefix(identity),
                              guest_network=guest_network(settings),
                              guest_cpuset=settings.guest_cpuset or None)
        self.accounts = AccountStore(data_dir.host_db)
        self.audit = AuditLog(data_dir.audit_db, identity)
        self.auctioneer = Auctioneer(identity, settings, self.accounts, self.vmm,
                                     accept_payment=self.payments.accept, audit=self.audit,
                                     refund_payment=self.payments.refund)
        self.access = AccessKeeper(
            self.vmm, PortForwards(settings.listen_host),
            self.auctioneer.winners, lambda: self.auctioneer.state.accounts,
            lambda: self.public_host, lambda: self.advert is not None and self.advert.client_mode,
            reserved={settings.http_port, settings.dht_port, settings.control_port,
                      settings.metrics_port} - {0},
            vm_info=self.auctioneer.sync.info.get,
            uploading=self.auctioneer.sync.uploading.__contains__)
        self.auctioneer.on_synced = self.access.sync
        self.auctioneer.access_of = self.access.access
        self.auctioneer.publish_evidence = self._publish_conflict
        self.market_changed = asyncio.Event()
        self.dispatcher.register_all("host", {
            name: h if name in READ_ONLY_HOST_RPCS else self._then_readvertise(h)
            for name, h in self.auctioneer.handlers().items()},
            limits=self.auctioneer.request_limits())
        self.base_images: dict[str, BaseImage] = {}   # from settings.images_dir, at start
        self.dispatcher.register_all("host", guest_handlers(self.auctioneer, guest_boot(settings)))
        self.dispatcher.register_all("host", image_handlers(self.auctioneer,
                                                            lambda: self.base_images))
        # a broker (section 10) once enabled (`p2pmarket broker run`); its adverts need UDP
        self.broker = Broker(identity, BrokerStore(data_dir.root / "broker.sqlite"),
                             accept_payment=self.payments.accept,
                             refund_payment=self.payments.refund, pay=self.wallet.send,
                             peers=self.peers, dht=None if self.gateway else self.dht)
        self.dispatcher.register_all("broker", self.broker.handlers(), limits=BROKER_LIMITS)
        self.directory = DhtWitnessDirectory(self.records)   # `own` is set at start
        # the price history and the dashboard's figures (history.sqlite, /ui/)
        self.sampler = Sampler(HistoryStore(data_dir.history_db), self.auctioneer.market_summary,
                               lambda: {a.account_id: dict(a.allocation)
                                        for a in self.auctioneer.accounts()},
                               self.records, identity, self.peers, self.directory, settings)
        self.witness = WitnessService(
            identity, self.peers, self.evidence, directory=self.directory,
            locator=DhtHostLocator(self.records), sink=DhtEvidenceSink(self.records),
            period_s=settings.audit_seconds, store=WitnessStore(data_dir.witness_db),
            genesis=genesis, sigpool=signature_pool(settings.witness_workers))
        self.dispatcher.register_all("witness", self.witness.handlers(),
                                     limits=self.witness.request_limits())
        # reachability (section 7): every node answers callbacks; a node that may serve
        # others is a registrar and a relay (useful once it is public)
        self.dispatcher.register_all("nat", echo_handlers(identity))
        self.registrar = Registrar(identity) if settings.relay else None
        self.relay = RelayService(identity, lambda: self.url, limits=RelayLimits(
            circuit_seconds=settings.relay_circuit_seconds,
            circuit_bytes=settings.relay_circuit_bytes)) if settings.relay else None
        self.advert: Advert | None = None
        self.reach = ReachKeeper(
            identity, self_known=lambda: (self.public_host, self.peer_site.port),
            local_url=self.local_url,
            candidates=lambda: reach_candidates(genesis, self.dht, self.records),
            on_advert=self._on_advert, proxy=settings.http_proxy or None,
            on_stream=StreamGate(identity, self.access.forwards.admit).serve
        ) if settings.nat else None
        self.prices: dict[str, PriceHistory] = {}
        # metrics (docs/monitoring.md): a registry of this node's own, at GET /metrics
        self.monitor = node_monitor(identity.node_id, self.dispatcher, self.dht,
                                    self.auctioneer, self.wallet, self.witness, self.prices,
                                    notary=self.notary, registrar=self.registrar,
                                    relay=self.relay)
        self.metrics_site = (Site(metrics_app(self.monitor.registry))
                             if settings.metrics_port else None)
        self.peer_site = Site(peer_app(self.dispatcher, extra_routes=[
            metrics_route(self.monitor.registry),
            upload_route(self.auctioneer), *gateway_routes(self.dht),
            *ui_routes(lambda: load_or_create_token(data_dir.token), self.control_handlers,
                       settings.dashboard_public),
            *(self.registrar.routes() if self.registrar else ()),
            *(self.relay.routes() if self.relay else ())]))
        self.control_site = Site(control_app(load_or_create_token(data_dir.token),
                                             self.control_handlers()))
        self.advertised = asyncio.Event()   # published at least once, maybe only locally
        self.announced = asyncio.Event()    # published while it had DHT contacts (or none exist)
        self.availability = Availability.resume(_read_json(data_dir.availability), now_us())
        self._availability_saved = 0
        self._published: dict[str, int] = {}
        self._must_publish = False   # a forced publish (our URL moved) has not gone out
        self._tasks: list[asyncio.Task[None]] = []

    async def _publish_conflict(self, agent_id: bytes, proof: bytes) -> None:
        """A SHARP conflict proof (section 10): kept with the node's evidence and stored
        at ``evidence/<agent id>`` in the DHT, like the audit's proofs."""
        self.evidence.add(proof)
        await DhtEvidenceSink(self.records).publish(agent_id, proof)

    # -- lifecycle ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """Our peer URL: what reachability found (our verified address, or our relay's
        URL for us), else the public host and the port the peer API bound."""
        if self.advert is not None:
            return self.advert.url
        return http_url(self.public_host, self.peer_site.port)

    def local_url(self) -> str:
        """Our own peer API from this machine (where relayed requests are replayed)."""
        host = self.settings.listen_host
        return http_url("127.0.0.1" if is_wildcard(host) else host, self.peer_site.port)

    @property
    def dht_address(self) -> tuple[str, int]:
        """Where peers reach our DHT: the public host and the UDP port bound; none (a
        placeholder) when we run the DHT as a client or through a gateway."""
        if self.gateway is not None or (self.advert is not None and self.advert.client_mode):
            return NO_DHT_ADDRESS
        return self.public_host, self.dht.port

    async def _on_advert(self, advert: Advert) -> None:
        """Reachability changed what we advertise: switch the DHT's mode, republish."""
        if not advert.client_mode:
            self.public_host = urlsplit(advert.url).hostname or self.public_host
        self.advert = advert
        self.dht.set_client_mode(advert.client_mode)
        self.dht.url = self.url
        if self.gateway is not None:
            self.gateway.url = self.url
        self.directory.own = Peer(self.identity.node_id, self.identity.public_key, self.url)
        log.info("reachability: advertising %s (%s)", advert.url,
                 "relayed, DHT client" if advert.client_mode else "direct",
                 extra={"event": "node.reachability"})
        if self.advertised.is_set():
            self._must_publish = True    # the advertising loop retries until it is out
            try:
                await self.publish_if_moved(force=True)
            except P2PMarketError as exc:
                log.warning("publishing our new URL failed (retrying): %s", exc.message,
                            extra={"event": "node.advertise_failed"})
                self.market_changed.set()

    async def start(self) -> None:
        """Listen (a bind error is one :class:`ConfigError` line and nothing is left
        listening), then start the background tasks."""
        s = self.settings
        try:
            await bind("peer API (TCP)", s.listen_host, s.http_port,
                        self.peer_site.start(s.listen_host, s.http_port))
            await bind("control API (TCP)", "127.0.0.1", s.control_port,
                        self.control_site.start("127.0.0.1", s.control_port))
            if self.metrics_site is not None:
                await bind("metrics (TCP)", s.listen_host, s.metrics_port,
                           self.metrics_site.start(s.listen_host, s.metrics_port))
            await bind("DHT (UDP)", s.listen_host, s.dht_port,
                        self.dht.start(s.listen_host, s.dht_port))
        except ConfigError:
            if self.metrics_site is not None:
                await self.metrics_site.stop()
            await self.control_site.stop()
            await self.peer_site.stop()
            raise
        if not s.advertise_host and is_wildcard(s.listen_host):
            self.public_host = route_source(
                [b.host for b in self.genesis.bootstrap], s.listen_host)
        self.dht.url = self.url
        if self.gateway is not None:
            self.gateway.url = self.url
            self.gateway.start_republishing()
        self.directory.own = Peer(self.identity.node_id, self.identity.public_key, self.url)
        if s.images_dir:
            self.base_images, skipped = await asyncio.to_thread(scan_images, s.images_dir,
                                                                 self.vmm.image_kind)
            for why in skipped:
                log.warning("base image skipped: %s", why)
        write_atomic(self.data_dir.control, json.dumps({
            "url": f"http://127.0.0.1:{self.control_site.port}",
            "pid": os.getpid(), "node_id": self.identity.node_id.hex(),
        }).encode())
        if self.reach is not None:
            self._tasks.append(asyncio.create_task(self.reach.run(), name="reach"))
        self._tasks += [asyncio.create_task(self.payments.open_chain(), name="open-chain"),
                       asyncio.create_task(self.payments.collect(), name="collect"),
                       asyncio.create_task(self.witness.run(), name="witness"),
                       asyncio.create_task(self._advertise(), name="advertise"),
                       asyncio.create_task(self.broker.run(), name="broker"),
                       asyncio.create_task(self.sampler.run(), name="history"),
                       asyncio.create_task(self.auctioneer.run(), name="auction"),
                       asyncio.create_task(self.monitor.lag.run(), name="loop-lag")]
        log.info("node %s up: rpc %s, dht %s:%d", self.identity.node_id.hex()[:12],
                 self.url, *self.dht_address, extra={"event": "node.up"})

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.data_dir.control.unlink(missing_ok=True)
        if self.registrar is not None:   # open websockets would hold up the site's cleanup
            await self.registrar.close()
        if self.relay is not None:
            await self.relay.close()
        self._save_availability(now_us())
        await self.dht.close()
        if self.gateway is not None:
            await self.gateway.close()
        await self.control_site.stop()
        if self.metrics_site is not None:
            await self.metrics_site.stop()
        await self.peer_site.stop()
        await self.wallet.close()
        await self.peers.close()
        await self.access.close()
        self.vmm.close()
        self.accounts.close()
        self.audit.close()
        self.chain.close()
        if self.notary is not None:
            self.notary.close()
        self.evidence.close()
        self.witness.store.close()
        self.broker.store.close()
        self.sampler.store.close()
        if self.witness.sigpool is not None:   # its workers start only for long segments
            await asyncio.to_thread(self.witness.sigpool.close)

    async def run_until_signalled(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            log.info("shutting down", extra={"event": "node.stopping"})
            await self.stop()

    async def _advertise(self) -> None:
        """Keep our host record and offers current in the DHT.

        A node publishes at once, even with an empty routing table (the first node of
        a network is a DHT of one; peers that join later are handed its records), and
        keeps trying its bootstrap peers while the table is empty. It publishes again
        as soon as it first has contacts, and whenever a price moves.
        """
        peers = [(b.host, b.dht_port) for b in self.genesis.bootstrap
                 if (b.host, b.dht_port) != self.dht_address and self.gateway is None]
        had_contacts = False
        first = True
        while True:
            contacts = self.dht.contact_count() > 0 or self.gateway is not None
            try:
                await self.publish_if_moved(
                    force=(contacts and not had_contacts) or self._must_publish)
                self.advertised.set()
                if contacts or not peers:
                    self.announced.set()
            except P2PMarketError as exc:
                log.warning("advertising failed: %s", exc.message,
                            extra={"event": "node.advertise_failed"})
            had_contacts = contacts
            if now_us() - self._availability_saved > AVAILABILITY_SAVE_US:
                self._save_availability(now_us())
            if first or (peers and not contacts):
                # the first call also rejoins through the contacts saved last run
                first = False
                if await self.dht.bootstrap(peers) == 0 and peers:
                    await asyncio.sleep(RETRY_S[1])
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(ADVERT_CHECK_S):
                        await self.market_changed.wait()
                self.market_changed.clear()

    def _then_readvertise(self, handler: Handler) -> Handler:
        """Wrap a host RPC so a sale shows in the DHT at once, not at the next check."""
        async def wrapped(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
            result = await handler(ctx, args)
            self.market_changed.set()
            return result
        return wrapped

    async def publish_if_moved(self, force: bool = False) -> bool:
        now = now_us()
        summary = self.auctioneer.market_summary()
        for res, info in summary.items():
            self.prices.setdefault(res, PriceHistory()).add(now, info["price"])
        changed = force or not self.advertised.is_set() or any(
            moved(self._published.get(res, 0), info["price"], PRICE_MOVE_PPM)
            for res, info in summary.items())
        if not changed:
            return False
        # an offered resource's price is never below 1 (the root bid); the DHT refuses 0
        ads = {res: ResourceAd(capacity=info["capacity"], price=max(1, info["price"]),
                               hour_avg=self.prices[res].average(now))
               for res, info in summary.items()}
        await self.records.publish_host(ads, availability_ppm=self.availability.ppm(now),
                                        url=self.url, dht=self.dht_address,
                                        reach=self.advert.reach if self.advert else None,
                                        images=[ImageAd(i.name, i.format, i.virtual_size,
                                                        i.sha256)
                                                for i in self.base_images.values()],
                                        vm=VmAd(self.vmm.driver.lower(),
                                                self.settings.vm_default_memory_kib,
                                                self.settings.tcp_ports))
        self._save_availability(now)
        for res, ad in ads.items():
            await self.records.publish_offer(res, ad.capacity, ad.price)
        self._published = {res: info["price"] for res, info in summary.items()}
        self._must_publish = False
        return True

    def _save_availability(self, now: int) -> None:
        self._availability_saved = now
        write_atomic(self.data_dir.availability,
                     json.dumps(self.availability.to_doc(now)).encode())

    # -- control API ---------------------------------------------------------------

    def control_handlers(self) -> dict[str, Any]:
        async def status(args: dict[str, Any]) -> dict[str, Any]:
            return {
                "node_id": self.identity.node_id, "key": self.identity.public_key,
                "url": self.url, "dht_address": list(self.dht_address), "dht_port": self.dht.port,
                "notary": self.notary is not None,
                "reach": self.reach.status() if self.reach is not None else {"class": "off"},
                "registrar": self.registrar.status() if self.registrar else None,
                "relay": self.relay.status() if self.relay else None,
                "ready": self.payments.ready.is_set() and self.advertised.is_set(),
                "balance": self.wallet.balance() if self.payments.ready.is_set() else None,
                "dht_contacts": self.dht.contact_count(),
                "dht": self.dht.metrics(),
                "accounts": len(self.auctioneer.accounts()),
                "market": self.auctioneer.market_summary(),
            }

        async def vms(args: dict[str, Any]) -> dict[str, Any]:
            return {"vms": await self.auctioneer.vm_list()}

        async def accounts(args: dict[str, Any]) -> dict[str, Any]:
            return {"accounts": [self.auctioneer.account_doc(a)
                                 for a in self.auctioneer.accounts()]}

        async def supply(args: dict[str, Any]) -> dict[str, Any]:
            if self.notary is None:
                raise P2PMarketError("this node is not a notary")
            return self.notary.supply()

        async def history(args: dict[str, Any]) -> dict[str, Any]:
            return {"history": self.wallet.history()}

        async def price_history(args: dict[str, Any]) -> dict[str, Any]:
            return self.sampler.history(args)   # one series (node/sampler.py)

        return {"status": status, "vms": vms, "accounts": accounts, "supply": supply,
                "history": history, "price_history": price_history,
                **host_control_handlers(self.auctioneer),
                **audit_control_handlers(self.witness), **self.broker.control_handlers(),
                **self.sampler.control_handlers()}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None


async def run_node(data_dir: DataDir, flags: dict[str, Any]) -> None:
    """``p2pmarket node``: load settings, key and genesis, run until SIGTERM/SIGINT.
    One node per data dir (a lock), and a data dir stays with its network."""
    data_dir.create()
    lock = data_dir.acquire()
    try:
        settings = Settings.load(data_dir.config, flags=flags)
        if not data_dir.config.exists():
            write_atomic(data_dir.config, settings.to_toml().encode())
        genesis = load_genesis(data_dir.genesis)
        data_dir.bind_network(genesis)
        identity = load_or_create_key(data_dir.key, genesis.puzzle_bits)
        use_format(settings.log_format, identity.node_id)
        node = Node(data_dir, settings, genesis, identity)
        await node.run_until_signalled()
    finally:
        os.close(lock)


def signature_pool(workers: int) -> SignaturePool | None:
    """The witness's pool for the setting ``witness_workers`` (see :class:`Settings`)."""
    if workers < 0:
        cores = os.cpu_count() or 1
        workers = cores - 1 if cores > 2 else 0
    return SignaturePool(workers) if workers > 0 else None
