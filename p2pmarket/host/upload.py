"""Streaming a disk image into an account's storage volume (seed 4/1/2008).

The HTTP body is read chunk by chunk on the event loop and handed to the
VMM's (blocking) upload in a worker thread through a bounded queue, so at most
``QUEUE_CHUNKS + 1`` chunks are in memory whatever the image's size.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import queue
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import ACTIVE

if TYPE_CHECKING:
    from p2pmarket.host.auctioneer import Auctioneer

UPLOAD_KIND = "host.upload"
QUEUE_CHUNKS = 4
_END = b""


async def upload_image(auct: Auctioneer, sender: bytes, account_id: str, size: Any,
                       sha256: Any, chunks: AsyncIterator[bytes]) -> dict[str, Any]:
    """Check the holder's right to ``size`` bytes of disk, then stream ``chunks``."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise HostError("size must be a positive integer (bytes)", repr(size)[:40])
    if not isinstance(sha256, bytes) or len(sha256) != 32:
        raise HostError("sha256 must be 32 bytes")
    account = auct.accounts_by_id().get(account_id)
    if account is None or account.holder != sender:
        raise HostError("no such account of yours", account_id)
    if account.state != ACTIVE:
        raise HostError("the account is not active", account.state)
    have = account.allocation.get("disk", 0)
    need = -(-size // 1024)
    if "disk" not in account.bids or have < need:
        raise HostError("the image is larger than the account's disk allocation",
                        {"size_kib": need, "disk_kib": have})
    auct.audit.append("in.upload", {"from": sender, "account_id": account_id, "size": size,
                                    "sha256": sha256}, auct.now())
    auct.sync.usage.pop(account_id, None)   # the old image is replaced
    q: queue.Queue[bytes] = queue.Queue(maxsize=QUEUE_CHUNKS)
    digest = hashlib.sha256()
    loop = asyncio.get_running_loop()

    def feed() -> Iterator[bytes]:
        while True:
            chunk = q.get()
            if chunk is _END:
                return
            yield chunk

    job = loop.run_in_executor(None, auct.vmm.upload_volume, account_id, size, feed())

    async def put(item: bytes) -> None:
        while not job.done():   # a failed upload stops reading: never block on a dead queue
            try:
                await loop.run_in_executor(None, functools.partial(q.put, item, timeout=0.2))
                return
            except queue.Full:
                continue

    try:
        async for chunk in chunks:
            if job.done():
                break
            digest.update(chunk)
            await put(chunk)
    finally:
        await put(_END)
    vol = await job
    if digest.digest() != sha256:
        await asyncio.to_thread(auct.vmm.delete_volume, account_id)
        raise HostError("image checksum does not match; the volume was deleted",
                        {"expected": sha256.hex(), "got": digest.hexdigest()})
    auct.sync.usage[account_id] = (vol.usage_kib, vol.floor_kib)
    auct.sync.forget(account_id)
    auth = auct.audit.append("out.upload", {"account_id": account_id, "volume": vol.name,
                                            "capacity_kib": vol.capacity_kib}, auct.now())
    await auct.sync_vmm()
    return {"account_id": account_id, "volume": vol.name, "capacity_kib": vol.capacity_kib,
            "audit": auth.to_wire()}
