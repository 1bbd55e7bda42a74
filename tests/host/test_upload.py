"""Image upload over HTTP: authenticated by the holder's signed envelope, streamed."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from test_auctioneer import ALICE, BOB, GIB, Clock, FakeBank, ctx

from p2pmarket.core.config import Settings
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import seal
from p2pmarket.host.accountstore import AccountStore
from p2pmarket.host.auctioneer import Auctioneer, domain_prefix
from p2pmarket.host.control import AUTH_HEADER, control_handlers, upload_route
from p2pmarket.host.upload import UPLOAD_KIND
from p2pmarket.host.vmm.base import VolumeInfo
from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM


class StreamingVMM(LibvirtVMM):
    """The test driver, plus volumes kept as byte counts (it cannot upload itself)."""

    def __init__(self, prefix: str) -> None:
        super().__init__("test:///default", prefix=prefix)
        self.vols: dict[str, int] = {}
        self.biggest_chunk = 0

    def upload_volume(self, account_id: str, size: int, chunks: Iterator[bytes]) -> VolumeInfo:
        got = 0
        for chunk in chunks:
            self.biggest_chunk = max(self.biggest_chunk, len(chunk))
            got += len(chunk)
        assert got == size
        self.vols[account_id] = size
        return self.volume(account_id)  # type: ignore[return-value]

    def volume(self, account_id: str) -> VolumeInfo | None:
        size = self.vols.get(account_id)
        if size is None:
            return None
        kib = -(-size // 1024)
        return VolumeInfo(account_id + ".img", "/x/" + account_id, kib, kib, kib)

    def delete_volume(self, account_id: str) -> None:
        self.vols.pop(account_id, None)


def auth(who: Identity, host: Identity, account_id: str, data: bytes, ts: int) -> str:
    body = {"account_id": account_id, "size": len(data), "sha256": hashlib.sha256(data).digest()}
    return seal(who, ENVELOPE, UPLOAD_KIND, body, ts=ts, to=host.node_id).encode().hex()


async def test_upload_streams_into_the_volume(tmp_path: Path) -> None:
    ident = Identity.generate()
    vmm = StreamingVMM(domain_prefix(ident))
    store = AccountStore(tmp_path / "h.sqlite")
    clock, bank = Clock(), FakeBank()
    auct = Auctioneer(ident, Settings(cpu_mhz=4000, memory_kib=4 * GIB, min_price=1), store,
                      vmm, bank.accept, clock)
    await control_handlers(auct)["host_set_capacity"]({"resource": "disk", "amount": "64MiB"})
    res = await auct.create_account(ctx(ALICE), {
        "payment": {"id": "p1", "amount": 10**8}, "interval_s": 600,
        "bids": {"cpu": "1", "memory": "1,64MiB,256MiB", "disk": "1,8MiB,64MiB"}})
    aid = res["account_id"]
    app = web.Application()
    app.add_routes([upload_route(auct)])
    data = bytes(range(256)) * 4096 * 5   # 5 MiB
    async with TestClient(TestServer(app)) as client:
        r = await client.put(f"/host/image/{aid}", data=data, headers={
            AUTH_HEADER: auth(ALICE, ident, aid, data, clock.now)})
        doc: dict[str, Any] = await r.json()
        assert r.status == 200, doc
        assert doc["capacity_kib"] == 5 * 1024
        assert vmm.vols[aid] == len(data) and vmm.biggest_chunk <= 1024 * 1024
        # replay, another holder, a wrong checksum, too big: refused
        r = await client.put(f"/host/image/{aid}", data=data, headers={
            AUTH_HEADER: auth(ALICE, ident, aid, data, clock.now)})
        assert r.status == 401
        r = await client.put(f"/host/image/{aid}", data=data, headers={
            AUTH_HEADER: auth(BOB, ident, aid, data, clock.now + 1)})
        assert r.status == 400 and "no such account" in (await r.json())["error"]
        r = await client.put(f"/host/image/{aid}", data=b"x" * 10, headers={
            AUTH_HEADER: auth(ALICE, ident, aid, b"y" * 10, clock.now + 2)})
        assert r.status == 400 and "checksum" in (await r.json())["error"]
        assert aid not in vmm.vols
        big = b"z" * (70 * 1024 * 1024)
        r = await client.put(f"/host/image/{aid}", data=big, headers={
            AUTH_HEADER: auth(ALICE, ident, aid, big, clock.now + 3)})
        assert r.status == 400 and "larger than" in (await r.json())["error"]
        r = await client.put(f"/host/image/{aid}", data=data, headers={AUTH_HEADER: "zz"})
        assert r.status == 401
    assert auct.sync.usage.get(aid) is None
    for info in vmm.list():
        vmm.undefine(info.account_id)
    vmm.close()
    store.close()
