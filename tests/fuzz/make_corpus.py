"""Write the fuzz seed corpus (tests/fuzz/corpus/<target>/) from real messages.

    PYTHONPATH=. python -m tests.fuzz.make_corpus [--out tests/fuzz/corpus]

It runs a two-node in-process market on 127.0.0.1 (node0 the notary), records every
peer RPC request and every DHT datagram the nodes receive while a buyer is funded,
pays a host, opens an account and asks the usual read-only questions, goes through
SHARP (:mod:`tests.fuzz.sharp_corpus`: a broker's RPCs, redemptions, an anchor), and keeps
the DHT records the nodes end up holding. The control calls are the CLI's; the relay
frames are the codec's own encodings of one frame of each type, the reserve request
signed as a relayed host signs it. Files are named by target, kind and a digest, so
rerunning adds the new messages and keeps regression inputs (``regress-*``) as they
are. Seeds are at most :data:`PER_KIND` per kind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from p2pmarket.client.buyer import open_wallet, resume_pending
from p2pmarket.core.clock import now_us
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import Envelope, pack, unpack
from p2pmarket.nat.frames import (
    Data,
    End,
    Frame,
    Open,
    Reserve,
    Reserved,
    Reset,
    Response,
    Stream,
    Window,
    encode_frame,
)
from p2pmarket.nat.reservation import make_reservation, make_reserve_request
from p2pmarket.nat.streamreq import make_stream_request
from tests.fuzz.sharp_corpus import sharp_seeds

CORPUS = Path(__file__).parent / "corpus"
PER_KIND = 4
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmmHjAr3mmHc3r4s2l0lJmuQcIQqfB3lZTnTLJ71bLd fuzz"
BIDS = {"cpu": "1,0.1,1", "memory": "1,128MiB,256MiB"}


class Sink:
    """Seeds of one target, at most PER_KIND per kind."""

    def __init__(self, root: Path, target: str) -> None:
        self.dir = root / target
        self.dir.mkdir(parents=True, exist_ok=True)
        self.counts: dict[str, int] = {}
        self.bodies: dict[str, Any] = {}   # the last body of each kind (RPC requests)

    def add(self, kind: str, data: bytes, ext: str = "bin") -> None:
        kind = "".join(c if c.isalnum() or c in "._" else "_" for c in kind)[:40]
        if self.counts.get(kind, 0) >= PER_KIND:
            return
        name = f"{kind}-{hashlib.sha256(data).hexdigest()[:12]}.{ext}"
        path = self.dir / name
        if not path.exists():
            path.write_bytes(data)
        self.counts[kind] = self.counts.get(kind, 0) + 1


def rpc_kind(data: bytes) -> str:
    try:
        return str(Envelope.from_wire(unpack(data)).kind)
    except Exception:
        return "unreadable"


def datagram_kind(data: bytes) -> str:
    if data[:1] == b"\x01":
        return "reply"
    try:
        return "request." + str(unpack(data[21:])[0])
    except Exception:
        return "request"


async def market_seeds(root: Path, rpc: Sink, dht: Sink, records: Sink) -> None:
    from tests.market_helpers import local_market  # the tests' in-process market

    async with local_market(root / "m", n=2) as m:
        for node in m.nodes:
            record_rpcs(node, rpc)
            record_datagrams(node, dht)
        host = m.nodes[1]
        buyer = m.wallet("buyer")
        async with open_wallet(m.mint) as (mint, _):
            await mint.mint(50_000_000)
            await mint.send(buyer.identity().public_key, 50_000_000, "mint")
        async with open_wallet(buyer) as (wallet, client):
            await wallet.sync()
            cert = await wallet.send(host.identity.public_key, 7_000_000, "fund")
            key = host.identity.public_key
            with contextlib.suppress(P2PMarketError):   # a refused request is a seed too
                await client.call(host.url, key, "host.quote",
                                  {"bids": BIDS, "interval_s": 600, "nonce": b"\x01" * 16})
            buyer.set_pending(cert.entry.hash().hex(), {
                "host_key": key.hex(), "url": host.url,
                "payment": pack(cert.to_wire()).hex(), "bids": BIDS, "interval_s": 600})
            await resume_pending(buyer)
            [account] = host.auctioneer.accounts()
            aid, bids = account.account_id, rpc.bodies["rpc.host.create_account"]["bids"]
            owner = buyer.identity().public_key
            for name, args in [
                    ("host.status", {}), ("host.audit_log", {"since": 0}),
                    ("host.lease", {"account_id": aid}),
                    ("host.bid", {"account_id": aid, "bids": bids, "replace": True}),
                    ("host.set_key", {"account_id": aid, "ssh_key": SSH_KEY}),
                    ("host.use_image", {"account_id": aid, "name": "debian"}),
                    ("host.refund", {"account_id": aid, "amount": 1_000}),
                    ("witness.status", {}), ("witness.evidence", {"host": key}),
                    ("nat.echo", {})]:
                with contextlib.suppress(P2PMarketError):
                    await client.call(host.url, key, name, args)
            notary = m.nodes[0]
            for name, args in [("notary.head", {"owner": owner}), ("notary.supply", {}),
                               ("notary.inbox", {"owner": owner})]:
                with contextlib.suppress(P2PMarketError):
                    await client.call(notary.url, notary.identity.public_key, name, args)
        await sharp_seeds(m.nodes[0], host, buyer)
        await host.publish_if_moved(force=True)
        for node in m.nodes:
            for _, value in node.dht.storage:
                records.add(str(unpack(value).get("kind", "record")), value)


def record_rpcs(node: Any, sink: Sink) -> None:
    real = node.dispatcher.dispatch

    async def dispatch(data: bytes, peer: tuple[str, int] | None = None) -> bytes:
        sink.add(rpc_kind(data), data)
        with contextlib.suppress(Exception):
            env = Envelope.from_wire(unpack(data))
            sink.bodies[env.kind] = env.body
        return await real(data, peer)

    node.dispatcher.dispatch = dispatch


def record_datagrams(node: Any, sink: Sink) -> None:
    proto = node.dht.protocol
    real: Callable[[bytes, tuple[str, int]], None] = proto.datagram_received

    def received(data: bytes, addr: tuple[str, int]) -> None:
        sink.add(datagram_kind(data), data)
        real(data, addr)

    proto.datagram_received = received


def relay_frames() -> list[tuple[str, Frame]]:
    host, relay, buyer = Identity.generate(), Identity.generate(), Identity.generate()
    now = now_us()
    voucher = make_reservation(relay, url="http://127.0.0.1:9/", node_id=host.node_id,
                               expires=now + 3_600_000_000, ts=now)
    stream = make_stream_request(buyer, host.node_id, "a" * 16, 22, now)
    return [
        ("reserve", Reserve(make_reserve_request(host, relay.node_id, now))),
        ("reserved", Reserved(voucher, now + 3_600_000_000)),
        ("open", Open(1, "POST", "/rpc", "a=1", (("content-type", "application/msgpack"),),
                      True, ("127.0.0.1", 40000))),
        ("open", Open(2, "GET", "/health")),
        ("data", Data(1, b"\x85\xa1v\x02" + bytes(range(64)))),
        ("end", End(1)),
        ("response", Response(1, 200, (("content-type", "application/msgpack"),))),
        ("reset", Reset(1, "the host sent no response")),
        ("reset", Reset(0, "reservation expired")),
        ("window", Window(1, 262144)),
        ("stream", Stream(3, stream, ("127.0.0.1", 40001))),
    ]


CONTROL_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("status", {}), ("vms", {}), ("accounts", {}), ("supply", {}), ("history", {}),
    ("host_status", {}), ("host_set_capacity", {"resource": "cpu", "amount": 4000}),
    ("host_set_min_price", {"resource": "memory", "price": 5}),
    ("host_audit", {"since": 0, "limit": 10}), ("audit_status", {}),
    ("audit_status", {"host": "00" * 20}), ("audit_exposed", {}),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CORPUS)
    out = parser.parse_args(argv).out
    rpc, dht, records = Sink(out, "rpc"), Sink(out, "dht"), Sink(out, "dht_record")
    with tempfile.TemporaryDirectory(prefix="p2pm-corpus-") as tmp:
        asyncio.run(market_seeds(Path(tmp), rpc, dht, records))
    relay = Sink(out, "relay")
    for kind, frame in relay_frames():
        relay.add(kind, encode_frame(frame))
    control = Sink(out, "control")
    for name, args in CONTROL_CALLS:
        control.add(name, json.dumps({"name": name, "args": args}).encode(), "json")
    for sink in (rpc, dht, records, relay, control):
        print(f"{sink.dir.name}: {sorted(sink.counts.items())}")


if __name__ == "__main__":
    main()
