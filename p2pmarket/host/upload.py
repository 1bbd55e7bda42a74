"""Streaming a disk image into an account's storage volume (seed 4/1/2008).

The HTTP body is read chunk by chunk on the event loop and handed to the
VMM's (blocking) upload in a worker thread through a bounded queue, so at most
``QUEUE_CHUNKS + 1`` chunks are in memory whatever the image's size.

Before anything is written, the first :data:`~p2pmarket.auction.imagecheck.HEAD_BYTES`
are read and checked (:mod:`p2pmarket.auction.imagecheck`, or for a container host
:mod:`p2pmarket.auction.rootfscheck`: the format, and that the bytes and the guest's
size fit the account's disk; a root archive's unpacked size is checked as it is
unpacked); a refused image creates no
volume and leaves the account's old one as it was. Once writing has begun, a body
that ends early (fewer bytes than the signed ``size``: the caller's connection
broke) or whose SHA-256 is not the signed one deletes the new volume. Each refusal
is a :class:`~p2pmarket.auction.HostError` with a message and value.

The audit log records ``in.upload {from, account_id, size, sha256, format}`` once the
head is accepted (``image: NAME`` too for a host's base image) and ``out.upload
{account_id, volume, capacity_kib}`` once the volume holds the image.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import queue
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import ACTIVE
from p2pmarket.auction.imagecheck import HEAD_BYTES, ImageInfo, check_fits
from p2pmarket.auction.rootfscheck import inspect_upload

if TYPE_CHECKING:
    from p2pmarket.host.auctioneer import Auctioneer

UPLOAD_KIND = "host.upload"
QUEUE_CHUNKS = 4
_END = b""


class Truncated(HostError):
    """The body ended before the signed size."""


async def upload_image(auct: Auctioneer, sender: bytes, account_id: str, size: Any,
                       sha256: Any, chunks: AsyncIterator[bytes],
                       image: str | None = None) -> dict[str, Any]:
    """Check the holder's right to ``size`` bytes of disk and the image's head, then
    stream ``chunks`` into the account's volume (``image``: the base image's name, for
    the log). Returns ``{account_id, volume, capacity_kib, format, audit}``."""
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
    stream = aiter(chunks)
    head = await read_head(stream, min(size, HEAD_BYTES), size)
    info = inspect_upload(auct.vmm.image_kind, head[:HEAD_BYTES], size)
    check_fits(info, size, have)
    logged = {"from": sender, "account_id": account_id, "size": size, "sha256": sha256,
              "format": info.format}
    auct.audit.append("in.upload", {**logged, "image": image} if image else logged,
                      auct.now())
    auct.sync.usage.pop(account_id, None)   # the old image is replaced
    auct.sync.uploading.add(account_id)
    try:
        vol = await write_volume(auct, account_id, size, sha256, info, head, stream)
    finally:
        auct.sync.uploading.discard(account_id)
    auct.sync.usage[account_id] = (vol.usage_kib, vol.floor_kib)
    auct.sync.forget(account_id)
    # the size the guest sees, from the header checked above: libvirt re-probes a new
    # volume's capacity in a thread of its own after the upload, so vol.capacity_kib
    # may still be the file's size here
    capacity_kib = -(-info.virtual_size // 1024)
    auth = auct.audit.append("out.upload", {"account_id": account_id, "volume": vol.name,
                                            "capacity_kib": capacity_kib}, auct.now())
    await auct.sync_vmm()
    return {"account_id": account_id, "volume": vol.name, "capacity_kib": capacity_kib,
            "format": info.format, "audit": auth.to_wire()}


async def read_head(stream: AsyncIterator[bytes], want: int, size: int) -> bytes:
    """The first chunks of ``stream`` until they hold ``want`` bytes (maybe more);
    :class:`Truncated` if it ends (or breaks) first."""
    parts: list[bytes] = []
    got = 0
    while got < want:
        try:
            chunk = await anext(stream)
        except StopAsyncIteration:
            raise Truncated("the upload ended before the signed size; nothing was written",
                            {"got": got, "size": size}) from None
        except Exception as exc:   # a broken body, however it breaks
            raise Truncated(f"the upload broke off ({type(exc).__name__}); nothing was "
                            "written", {"got": got, "size": size}) from None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


async def write_volume(auct: Auctioneer, account_id: str, size: int, sha256: bytes,
                       info: ImageInfo, head: bytes, rest: AsyncIterator[bytes]) -> Any:
    """Stream ``head`` then ``rest`` into the account's new volume through the VMM;
    the volume is deleted if fewer than ``size`` bytes come or their hash is not
    ``sha256``."""
    q: queue.Queue[bytes] = queue.Queue(maxsize=QUEUE_CHUNKS)
    digest = hashlib.sha256()
    loop = asyncio.get_running_loop()

    def feed() -> Iterator[bytes]:
        while True:
            chunk = q.get()
            if chunk is _END:
                return
            yield chunk

    job = loop.run_in_executor(None, auct.vmm.upload_volume, account_id, size, feed(),
                               info.format)

    async def put(item: bytes) -> None:
        while not job.done():   # a failed upload stops reading: never block on a dead queue
            try:
                await loop.run_in_executor(None, functools.partial(q.put, item, timeout=0.2))
                return
            except queue.Full:
                continue

    async def abandon() -> None:
        await put(_END)
        with contextlib.suppress(Exception):
            await job
        await asyncio.to_thread(auct.vmm.delete_volume, account_id)

    got, ended, broke = 0, False, None
    try:
        chunk = head
        while not job.done():
            digest.update(chunk)
            got += len(chunk)
            await put(chunk)
            try:
                chunk = await anext(rest)
            except StopAsyncIteration:
                ended = True
                break
            except Exception as exc:   # a broken body, however it breaks
                broke = type(exc).__name__
                break
    except BaseException:
        # cancelled (a server may cancel the handler when the caller hangs up): the
        # VMM's job is ended and what it wrote deleted, whatever happens to this task
        await asyncio.shield(abandon())
        raise
    await put(_END)
    try:
        vol = await job
    except HostError:
        await asyncio.to_thread(auct.vmm.delete_volume, account_id)
        if broke or (ended and got < size):
            raise _truncated(got, size, broke) from None
        raise
    if got < size:   # a VMM that took fewer bytes than announced
        await asyncio.to_thread(auct.vmm.delete_volume, account_id)
        raise _truncated(got, size, broke)
    if digest.digest() != sha256:
        await asyncio.to_thread(auct.vmm.delete_volume, account_id)
        raise HostError("image checksum does not match; the volume was deleted",
                        {"expected": sha256.hex(), "got": digest.hexdigest()})
    return vol


def _truncated(got: int, size: int, broke: str | None) -> Truncated:
    how = f"broke off ({broke})" if broke else "ended"
    return Truncated(f"the upload {how} before the signed size; the volume was deleted",
                     {"got": got, "size": size})
