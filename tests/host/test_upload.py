"""Image upload over HTTP: authenticated by the holder's signed envelope, checked from
its first bytes (p2pmarket.auction.imagecheck), streamed; a refused image leaves no
volume."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from test_auctioneer import ALICE, BOB, GIB, Clock, FakeBank, ctx

from p2pmarket.auction import HostError
from p2pmarket.auction.imagecheck import blank_qcow2
from p2pmarket.core.config import Settings
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import seal
from p2pmarket.host.accountstore import AccountStore
from p2pmarket.host.auctioneer import Auctioneer, domain_prefix
from p2pmarket.host.control import AUTH_HEADER, control_handlers, upload_route
from p2pmarket.host.upload import UPLOAD_KIND, upload_image
from p2pmarket.host.vmm.base import VmmError, VolumeInfo
from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM

MIB = 1024 * 1024


class StreamingVMM(LibvirtVMM):
    """The test driver, plus volumes kept as byte counts (it cannot upload itself). A
    volume exists from the first byte written (as a real one does), so a failed upload
    must delete it."""

    def __init__(self, prefix: str) -> None:
        super().__init__("test:///default", prefix=prefix)
        self.vols: dict[str, tuple[int, str]] = {}
        self.started = 0
        self.biggest_chunk = 0

    def upload_volume(self, account_id: str, size: int, chunks: Iterator[bytes],
                      fmt: str = "raw") -> VolumeInfo:
        self.started += 1
        got = 0
        for chunk in chunks:
            self.vols[account_id] = (got, fmt)
            self.biggest_chunk = max(self.biggest_chunk, len(chunk))
            got += len(chunk)
        if got != size:
            raise VmmError("upload ended early", {"got": got, "size": size})
        self.vols[account_id] = (size, fmt)
        return self.volume(account_id)  # type: ignore[return-value]

    def volume(self, account_id: str) -> VolumeInfo | None:
        held = self.vols.get(account_id)
        if held is None:
            return None
        kib = -(-held[0] // 1024)
        return VolumeInfo(account_id + ".img", "/x/" + account_id, kib, kib, kib, held[1])

    def delete_volume(self, account_id: str) -> None:
        self.vols.pop(account_id, None)


def mbr(nbytes: int) -> bytes:
    """A raw disk of ``nbytes``: a pattern with a boot signature."""
    data = bytearray(bytes(range(256)) * (nbytes // 256))
    data[510:512] = b"\x55\xaa"
    return bytes(data)


def auth(who: Identity, host: Identity, account_id: str, data: bytes, ts: int,
         size: int | None = None) -> str:
    body = {"account_id": account_id, "size": len(data) if size is None else size,
            "sha256": hashlib.sha256(data).digest()}
    return seal(who, ENVELOPE, UPLOAD_KIND, body, ts=ts, to=host.node_id).encode().hex()


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.ident = Identity.generate()
        self.vmm = StreamingVMM(domain_prefix(self.ident))
        self.store = AccountStore(tmp_path / "h.sqlite")
        self.clock, bank = Clock(), FakeBank()
        self.auct = Auctioneer(self.ident, Settings(cpu_mhz=4000, memory_kib=4 * GIB,
                                                    min_price=1),
                               self.store, self.vmm, bank.accept, self.clock)
        self.ts = self.clock.now

    async def account(self) -> str:
        await control_handlers(self.auct)["host_set_capacity"]({"resource": "disk",
                                                                "amount": "64MiB"})
        res = await self.auct.create_account(ctx(ALICE), {
            "payment": {"id": "p1", "amount": 10**8}, "interval_s": 600,
            "bids": {"cpu": "1", "memory": "1,64MiB,256MiB", "disk": "1,8MiB,64MiB"}})
        return str(res["account_id"])

    async def put(self, client: TestClient[Any, Any], aid: str, data: bytes
                  ) -> tuple[int, dict[str, Any]]:
        self.ts += 1
        r = await client.put(f"/host/image/{aid}", data=data, headers={
            AUTH_HEADER: auth(ALICE, self.ident, aid, data, self.ts)})
        return r.status, await r.json()

    def close(self) -> None:
        for info in self.vmm.list():
            self.vmm.undefine(info.account_id)
        self.vmm.close()
        self.store.close()


def client_of(w: World) -> TestClient[Any, Any]:
    app = web.Application()
    app.add_routes([upload_route(w.auct)])
    return TestClient(TestServer(app))


async def test_upload_streams_into_the_volume(tmp_path: Path) -> None:
    w = World(tmp_path)
    aid = await w.account()
    data = mbr(5 * MIB)
    async with client_of(w) as client:
        status, doc = await w.put(client, aid, data)
        assert status == 200, doc
        assert doc["capacity_kib"] == 5 * 1024 and doc["format"] == "raw"
        assert w.vmm.vols[aid] == (len(data), "raw") and w.vmm.biggest_chunk <= MIB
        # replay, another holder, a wrong checksum, too big: refused
        r = await client.put(f"/host/image/{aid}", data=data, headers={
            AUTH_HEADER: auth(ALICE, w.ident, aid, data, w.ts)})
        assert r.status == 401
        r = await client.put(f"/host/image/{aid}", data=data, headers={
            AUTH_HEADER: auth(BOB, w.ident, aid, data, w.ts + 1)})
        assert r.status == 400 and "no such account" in (await r.json())["error"]
        bad = mbr(MIB)
        r = await client.put(f"/host/image/{aid}", data=bad, headers={
            AUTH_HEADER: auth(ALICE, w.ident, aid, mbr(MIB - 256) + b"y" * 256, w.ts + 2)})
        body = await r.json()
        assert r.status == 400 and "checksum" in body["error"], body
        assert aid not in w.vmm.vols
        big = mbr(70 * MIB)
        r = await client.put(f"/host/image/{aid}", data=big, headers={
            AUTH_HEADER: auth(ALICE, w.ident, aid, big, w.ts + 3)})
        assert r.status == 400 and "larger than" in (await r.json())["error"]
        r = await client.put(f"/host/image/{aid}", data=data, headers={AUTH_HEADER: "zz"})
        assert r.status == 401
    assert w.auct.sync.usage.get(aid) is None
    w.close()


async def test_a_good_qcow2_uploads_as_qcow2(tmp_path: Path) -> None:
    w = World(tmp_path)
    aid = await w.account()
    data = blank_qcow2(32 * MIB)
    async with client_of(w) as client:
        status, doc = await w.put(client, aid, data)
    assert status == 200, doc
    assert doc["format"] == "qcow2" and w.vmm.vols[aid] == (len(data), "qcow2")
    w.close()


@pytest.mark.parametrize(("data", "message"), [
    (blank_qcow2(1024 * MIB), "larger than the account's disk allocation"),
    (blank_qcow2(8 * MIB, backing_file="/etc/shadow"), "backing file"),
    (b"\x7fELF\x02\x01\x01" + bytes(100_000), "this is an ELF executable"),
    (gzip.compress(bytes(200_000)), "this is a gzip archive"),
    (b"#!/bin/sh\necho hello\n" * 4000, "this is a text file"),
    (bytes(range(1, 256)) * 1000, "not a disk image: no partition table"),
])
async def test_a_refused_image_gives_a_clear_error_and_no_volume(
        tmp_path: Path, data: bytes, message: str) -> None:
    w = World(tmp_path)
    aid = await w.account()
    async with client_of(w) as client:
        status, doc = await w.put(client, aid, data)
    assert status == 400 and message in doc["error"], doc
    assert aid not in w.vmm.vols and w.vmm.started == 0   # nothing was written
    w.close()


async def test_an_empty_upload_is_refused(tmp_path: Path) -> None:
    w = World(tmp_path)
    aid = await w.account()
    async with client_of(w) as client:
        w.ts += 1
        r = await client.put(f"/host/image/{aid}", data=b"", headers={
            AUTH_HEADER: auth(ALICE, w.ident, aid, b"", w.ts)})
        doc = await r.json()
    assert r.status == 400 and "size must be a positive integer" in doc["error"], doc
    assert w.vmm.started == 0
    w.close()


async def chunks_of(data: bytes, size: int = 256 * 1024,
                    fail: BaseException | None = None) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]
    if fail is not None:
        raise fail


async def test_a_truncated_upload_deletes_the_partial_volume(tmp_path: Path) -> None:
    w = World(tmp_path)
    aid = await w.account()
    data = mbr(4 * MIB)
    sha = hashlib.sha256(data).digest()
    # the body ends early: after the head, so the volume had been created
    with pytest.raises(HostError, match="ended before the signed size; the volume was "
                                        "deleted") as info:
        await upload_image(w.auct, ALICE.public_key, aid, len(data), sha,
                           chunks_of(data[:MIB]))
    assert info.value.value == {"got": MIB, "size": len(data)}
    assert w.vmm.started == 1 and aid not in w.vmm.vols
    # the caller's connection breaks
    with pytest.raises(HostError, match=r"broke off \(ConnectionResetError\)"):
        await upload_image(w.auct, ALICE.public_key, aid, len(data), sha,
                           chunks_of(data[:2 * MIB], fail=ConnectionResetError("lost")))
    assert aid not in w.vmm.vols
    # it ends within the head: nothing was written at all
    with pytest.raises(HostError, match="nothing was written"):
        await upload_image(w.auct, ALICE.public_key, aid, len(data), sha,
                           chunks_of(data[:1000]))
    assert w.vmm.started == 2 and aid not in w.vmm.vols
    # and the whole image still goes in afterwards
    got = await upload_image(w.auct, ALICE.public_key, aid, len(data), sha, chunks_of(data))
    assert got["capacity_kib"] == 4096 and w.vmm.vols[aid] == (len(data), "raw")
    w.close()


async def test_a_truncated_http_body_leaves_no_volume(tmp_path: Path) -> None:
    """A client that announces more than it sends and hangs up: the handler sees the
    connection break, and the partial volume goes."""
    w = World(tmp_path)
    aid = await w.account()
    data = mbr(4 * MIB)
    done = asyncio.Event()
    seen: list[BaseException] = []
    real = w.vmm.delete_volume

    def delete(account_id: str) -> None:
        real(account_id)
        done.set()
    w.vmm.delete_volume = delete  # type: ignore[method-assign]
    async with client_of(w) as client:
        server = client.server
        w.ts += 1
        head = (f"PUT /host/image/{aid} HTTP/1.1\r\nHost: x\r\n"
                f"Content-Length: {len(data)}\r\n"
                f"{AUTH_HEADER}: {auth(ALICE, w.ident, aid, data, w.ts)}\r\n\r\n").encode()
        _reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(head + data[:2 * MIB])
        await writer.drain()
        writer.close()
        try:
            await asyncio.wait_for(done.wait(), 10)
        except TimeoutError as exc:
            seen.append(exc)
    assert not seen and aid not in w.vmm.vols
    w.close()
