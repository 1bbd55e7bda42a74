"""A buyer's disk image onto its leased hosts (docs/design.md section 8).

Two sources, told apart by :func:`image_source`: a FILE (a path that exists) or the
NAME of a base image the host offers (its record's ``images``; a name that is no
existing file).

- A file is read twice, never whole in memory: :func:`local_image` reads it in
  :data:`CHUNK` pieces to hash it and checks its head as the host will
  (:func:`~p2pmarket.auction.imagecheck.inspect_image`), so a file that is not a disk
  image fails before anything is paid; :func:`upload_file` then streams it with
  ``PUT <host url>/host/image/<account id>`` (``Content-Length`` the size, header
  ``X-P2PM-Auth`` the hex of an envelope signed by the holder: kind ``host.upload``,
  to the host's node id, body ``{account_id, size, sha256}``), with a progress
  callback ``(sent, total)``. A relayed host's URL is its relay's, so the PUT goes
  through the relay as any request does (a circuit of 256 KiB DATA frames, 1 MiB
  window). A host that does not answer at the lease's URL is looked up in the DHT
  (:func:`~p2pmarket.client.leases.moved_record`) and the upload restarted there.
- A name: ``host.use_image {account_id, name}`` through the same host-call path as
  every lease RPC (:func:`~p2pmarket.client.leases.call_host`); the host copies its
  file into the account's volume.

:func:`put_image` does either for one stored lease (``p2pmarket upload``);
:func:`install_image` for each lease of a purchase (``buy --image``), each outcome
on its own: the leases stay bought whatever the uploads do.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from p2pmarket.api.client import PeerClient, PeerUnreachable
from p2pmarket.auction.imagecheck import HEAD_BYTES, ImageError, ImageInfo, inspect_image
from p2pmarket.auction.resources import BidSpec
from p2pmarket.auction.rootfscheck import inspect_rootfs
from p2pmarket.client.buyer import BuyError, client_net
from p2pmarket.client.leases import call_host, moved_record
from p2pmarket.client.netopts import ClientNet
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.clock import now_us
from p2pmarket.core.domains import ENVELOPE
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity, node_id_of
from p2pmarket.core.wire import seal
from p2pmarket.dht.records import IMAGE_NAME_RE, HostRecord

CHUNK = 1024 * 1024
UPLOAD_KIND = "host.upload"         # as p2pmarket.host.upload
AUTH_HEADER = "X-P2PM-Auth"         # as p2pmarket.host.control
CONNECT_TIMEOUT_S = 10.0
ANSWER_TIMEOUT_S = 300.0            # after the last byte, for the host to finish writing
USE_IMAGE_TIMEOUT_S = 1800.0        # a host copying a 2 GB base image
MAX_ERROR_BYTES = 64 * 1024

UploadProgress = Callable[[int, int], None]   # (bytes sent, total)


class ImageUploadError(P2PMarketError):
    """An image could not be put on a host."""


@dataclass(frozen=True)
class LocalImage:
    """A file checked and hashed by :func:`local_image`."""

    path: Path
    size: int
    sha256: bytes
    info: ImageInfo
    mtime_ns: int


@dataclass(frozen=True)
class ImageOutcome:
    """What became of one lease's image: ``ok``, and the host's answer or the error."""

    lease_id: str
    host_id: str
    ok: bool
    detail: str
    result: Mapping[str, Any] = field(default_factory=dict)


def local_image(path: str | Path) -> LocalImage:
    """Check and hash ``path`` (read in :data:`CHUNK` pieces); :class:`ImageError` if
    it is neither a disk image nor a root file system a host would take,
    :class:`ImageUploadError` if unreadable."""
    p = Path(path)
    try:
        st = p.stat()
        digest = hashlib.sha256()
        with p.open("rb") as f:
            head = f.read(HEAD_BYTES)
            digest.update(head)
            while chunk := f.read(CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise ImageUploadError(f"cannot read the image {p}: {exc.strerror}", str(p)) from None
    return LocalImage(p, st.st_size, digest.digest(), inspect_local(head, st.st_size),
                      st.st_mtime_ns)


def inspect_local(head: bytes, size: int) -> ImageInfo:
    """A buyer's file: a disk image (for qemu hosts), else a root file system tarball
    (kind ``rootfs``, for container hosts); the disk image check's refusal (which
    names what the file is) when it is neither."""
    try:
        return inspect_image(head, size)
    except ImageError as not_disk:
        try:
            return inspect_rootfs(head, size)
        except ImageError:
            raise not_disk from None


def image_source(text: str) -> LocalImage | str:
    """``--image``'s value: a :class:`LocalImage` for an existing file, else the name
    of a host's base image; :class:`ImageUploadError` when it is neither."""
    if Path(text).exists():
        return local_image(text)
    if IMAGE_NAME_RE.match(text):
        return text
    raise ImageUploadError("--image must be an existing file or a base image name "
                           "(lower-case letters, digits, . _ -)", text[:80])


def check_disk_bid(specs: Mapping[str, BidSpec], image: LocalImage) -> None:
    """Before paying: an image needs a disk bid, and an absolute minimum must hold it."""
    spec = specs.get("disk")
    if spec is None:
        raise BuyError("--image needs a disk bid to hold it (e.g. disk:1,2GiB,4GiB)")
    need = max(image.size, image.info.virtual_size)
    low = spec.min
    if low is not None and not low.fraction and low.value * 1024 < need:
        raise BuyError("the disk bid's minimum is smaller than the image",
                       {"min_kib": low.value, "image_bytes": need})


def offers_image(record: HostRecord, name: str) -> bool:
    """Whether the host's record offers the base image ``name``."""
    return record.image(name) is not None


def upload_auth(identity: Identity, host_key: bytes, account_id: str, size: int,
                sha256: bytes) -> str:
    """The ``X-P2PM-Auth`` header's value."""
    body = {"account_id": account_id, "size": size, "sha256": sha256}
    return seal(identity, ENVELOPE, UPLOAD_KIND, body, ts=now_us(),
                to=node_id_of(host_key)).encode().hex()


def _unchanged(image: LocalImage) -> None:
    try:
        st = image.path.stat()
    except OSError as exc:
        raise ImageUploadError(f"cannot read the image {image.path}: {exc.strerror}",
                               str(image.path)) from None
    if st.st_size != image.size or st.st_mtime_ns != image.mtime_ns:
        raise ImageUploadError("the image file changed since it was checked and hashed",
                               str(image.path))


async def _chunks(image: LocalImage, progress: UploadProgress) -> AsyncIterator[bytes]:
    sent = 0
    f = await asyncio.to_thread(image.path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            sent += len(chunk)
            if sent > image.size:
                break
            yield chunk
            progress(sent, image.size)
    finally:
        f.close()
    if sent != image.size:
        raise ImageUploadError("the image file changed while it was uploaded", str(image.path))


async def upload_file(identity: Identity, url: str, host_key: bytes, account_id: str,
                      image: LocalImage, progress: UploadProgress = lambda _s, _t: None,
                      proxy: str | None = None) -> dict[str, Any]:
    """Stream ``image`` into the account's volume at the host at ``url``. Returns the
    host's answer ``{account_id, volume, capacity_kib, format, audit}``; raises
    :class:`PeerUnreachable` when nothing answered, :class:`ImageUploadError` for a
    refusal (the host's message)."""
    headers = {"Content-Length": str(image.size), "Content-Type": "application/octet-stream",
               AUTH_HEADER: upload_auth(identity, host_key, account_id, image.size,
                                        image.sha256)}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S,
                                    sock_read=ANSWER_TIMEOUT_S)
    target = f"{url.rstrip('/')}/host/image/{account_id}"
    _unchanged(image)
    try:
        async with aiohttp.ClientSession(
                timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)) as http, \
                http.put(target, data=_chunks(image, progress), headers=headers,
                         proxy=proxy) as resp:
            raw = await resp.content.read(MAX_ERROR_BYTES)
            status = resp.status
            try:
                doc = await asyncio.to_thread(_json, raw)
            except ValueError:
                doc = {"error": raw[:200].decode("utf-8", "replace")}
    except ImageUploadError:
        raise
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ImageUploadError):   # our file, not the host
            raise cause from None
        raise PeerUnreachable(f"cannot upload to {url}: {type(exc).__name__}", url) from None
    if status != 200 or not isinstance(doc, dict) or "error" in doc:
        message = doc.get("error") if isinstance(doc, dict) else None
        raise ImageUploadError(f"the host refused the image: {message or f'HTTP {status}'}",
                               doc.get("error_value") if isinstance(doc, dict) else status)
    return doc


def _json(raw: bytes) -> Any:
    return json.loads(raw)


async def put_image(wdir: WalletDir, lease_id: str, source: LocalImage | str,
                    progress: UploadProgress = lambda _s, _t: None,
                    net: ClientNet | None = None) -> dict[str, Any]:
    """Put ``source`` (a checked file, or a base image's name) into the account of the
    stored lease ``lease_id``; returns the host's answer. A host no longer at the
    lease's URL is found in the DHT and the lease's URL updated."""
    record = wdir.leases().get(lease_id)
    if record is None:
        raise BuyError("no such lease in this wallet", lease_id)
    if record.get("closed"):
        raise BuyError("this lease was cancelled", lease_id)
    net = client_net(net)
    host_key = bytes.fromhex(record["host_key"])
    if isinstance(source, str):
        async with PeerClient(wdir.identity(), timeout_s=USE_IMAGE_TIMEOUT_S,
                              proxy=net.proxy) as client:
            reply, record = await call_host(client, wdir, net, record, "host.use_image",
                                            {"account_id": record["account_id"],
                                             "name": source})
        wdir.save_lease(lease_id, record)
        return reply
    try:
        reply = await upload_file(wdir.identity(), record["url"], host_key,
                                  record["account_id"], source, progress, net.proxy)
    except PeerUnreachable:
        moved = await moved_record(wdir, net, record)
        if moved is None:
            raise
        reply = await upload_file(wdir.identity(), moved["url"], host_key,
                                  moved["account_id"], source, progress, net.proxy)
        wdir.save_lease(lease_id, moved)
    return reply


async def install_image(wdir: WalletDir, lease_ids: list[str], source: LocalImage | str,
                        progress: UploadProgress = lambda _s, _t: None,
                        net: ClientNet | None = None) -> list[ImageOutcome]:
    """The post-purchase step of ``buy --image``: :func:`put_image` on each lease, one
    after the other (each a full stream of the file), each outcome on its own."""
    outcomes = []
    for lease_id in lease_ids:
        host_id = node_id_of(bytes.fromhex(wdir.leases()[lease_id]["host_key"])).hex()
        try:
            reply = await put_image(wdir, lease_id, source, progress, net)
        except P2PMarketError as exc:
            outcomes.append(ImageOutcome(lease_id, host_id, False, exc.message))
            continue
        what = f"base image {source}" if isinstance(source, str) else str(source.path)
        outcomes.append(ImageOutcome(lease_id, host_id, True,
                                     f"{what} in volume {reply.get('volume')}", reply))
    return outcomes


__all__ = ["ImageError", "ImageOutcome", "ImageUploadError", "LocalImage", "check_disk_bid",
           "image_source", "install_image", "local_image", "offers_image", "put_image",
           "upload_file"]
