"""The buyer's image client through a relay to the real upload route: a relayed host
gets the whole image streamed (Content-Length and the signed header end to end), and a
refusal comes back as the host's message. (Stopping the relay's site at the end takes
about 10 s: aiohttp lingers on the refused upload's unread body.)"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from aiohttp import web
from test_auctioneer import ALICE
from test_upload import MIB, World, mbr

from p2pmarket.api.rpc import RpcDispatcher
from p2pmarket.api.server import Site, peer_app
from p2pmarket.client.imageupload import ImageUploadError, local_image, upload_file
from p2pmarket.core.clock import now_us
from p2pmarket.core.identity import Identity
from p2pmarket.host.control import upload_route
from p2pmarket.nat.relay import RelayService
from p2pmarket.nat.relayclient import RelayClient
from p2pmarket.nat.reservation import relayed_url


async def test_an_image_streams_through_a_relay(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.clock.now = now_us()   # the client signs with the wall clock
    aid = await w.account()
    host_site = Site(peer_app(RpcDispatcher(w.ident), [upload_route(w.auct)]))
    host_port = await host_site.start("127.0.0.1", 0)
    relay_id = Identity.generate()
    box: list[str] = []
    service = RelayService(relay_id, lambda: box[0])
    app = web.Application()
    app.add_routes(service.routes())
    relay_site = Site(app)
    box.append(f"http://127.0.0.1:{await relay_site.start('127.0.0.1', 0)}")
    client = RelayClient(w.ident, box[0], relay_id.public_key, f"http://127.0.0.1:{host_port}")
    task = asyncio.ensure_future(client.run())
    try:
        await asyncio.wait_for(client.reserved.wait(), 10)
        url = relayed_url(box[0], w.ident.node_id)
        path = tmp_path / "disk.img"
        data = mbr(12 * MIB)
        path.write_bytes(data)
        sent: list[int] = []
        reply = await upload_file(ALICE, url, w.ident.public_key, aid, local_image(path),
                                  lambda s, _t: sent.append(s))
        assert reply["capacity_kib"] == 12 * 1024 and sent[-1] == len(data)
        assert w.vmm.vols[aid] == (len(data), "raw")
        assert service.status()["bytes_relayed"] >= len(data)
        bad = tmp_path / "notes.txt"
        bad.write_text("hello\n" * 1000)
        with pytest.raises(Exception, match="text file"):
            local_image(bad)   # the client refuses it itself; the host would too
        path.write_bytes(mbr(100 * MIB))   # over the 64 MiB disk: the host says so
        with pytest.raises(ImageUploadError, match="larger than the account's disk"):
            await upload_file(ALICE, url, w.ident.public_key, aid, local_image(path))
        assert w.vmm.vols.get(aid) == (len(data), "raw")   # the old image stays
    finally:
        await client.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)
        await service.close()
        await relay_site.stop()
        await host_site.stop()
        w.close()
