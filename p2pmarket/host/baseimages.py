"""A host's named base images (setting ``images_dir``) and ``host.use_image``.

``images_dir`` is a directory of ``NAME.qcow2``, ``NAME.img`` or ``NAME.raw`` files
(on a container host, ``lxc:///``: root file system archives ``NAME.tar``,
``NAME.tar.gz``, checked by :func:`~p2pmarket.auction.rootfscheck.inspect_rootfs`)
(NAME: lower-case letters, digits, ``.``, ``_``, ``-``, 1..48 characters;
:data:`~p2pmarket.dht.records.IMAGE_NAME_RE`'s rule). :func:`scan_images` reads each
(at most :data:`MAX_IMAGES`, by name; other files are skipped with a reason): its
head is checked as an upload's is (:func:`~p2pmarket.auction.imagecheck.inspect_image`),
its SHA-256 computed (a read of the whole file, at start), so the host record can
advertise ``images: [{name, format, virtual_size, sha256}]``.

RPC (register with ``dispatcher.register_all("host", image_handlers(...))``):

- ``host.use_image {account_id, name}`` -> ``{account_id, volume, capacity_kib, format,
  audit, image}``: the account holder asks for the base image ``name`` to be copied
  into its account's disk volume. The copy is an upload from the file
  (:func:`~p2pmarket.host.upload.upload_image`, the same checks: the account's disk
  allocation must hold it; the file's hash must still be the advertised one), streamed
  in :data:`CHUNK` pieces, so it works with any VMM that takes uploads.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p2pmarket.api.rpc import CallContext, Handler
from p2pmarket.auction import HostError
from p2pmarket.auction.imagecheck import HEAD_BYTES, ImageError, inspect_image
from p2pmarket.auction.rootfscheck import inspect_rootfs
from p2pmarket.host.upload import upload_image

if TYPE_CHECKING:
    from p2pmarket.host.auctioneer import Auctioneer

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,47}$")   # as dht.records.IMAGE_NAME_RE
SUFFIXES = (".qcow2", ".img", ".raw")
ROOTFS_SUFFIXES = {".tar.gz": "tar.gz", ".tar": "tar"}
MAX_IMAGES = 8                                          # as dht.records.MAX_IMAGES
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class BaseImage:
    """One base image file: what the record advertises and where it is."""

    name: str
    path: Path
    format: str
    size: int
    virtual_size: int
    sha256: bytes


def _hash(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.digest()


def _split(path: Path, kind: str) -> tuple[str, str | None]:
    """A file's image name and the format its suffix says (None: not an image file)."""
    if kind == "rootfs":
        for suffix, fmt in ROOTFS_SUFFIXES.items():
            if path.name.endswith(suffix):
                return path.name[:-len(suffix)], fmt
        return path.stem, None
    if path.suffix not in SUFFIXES:
        return path.stem, None
    return path.stem, "qcow2" if path.suffix == ".qcow2" else "raw"


def scan_images(directory: str | Path, kind: str = "disk"
                ) -> tuple[dict[str, BaseImage], list[str]]:
    """The base images in ``directory`` by name, and why other files were skipped
    (blocking: it reads every image whole once); ``kind`` the VMM's
    (:attr:`~p2pmarket.host.vmm.base.VMM.image_kind`: ``disk`` or ``rootfs``)."""
    found: dict[str, BaseImage] = {}
    skipped: list[str] = []
    root = Path(directory)
    if not str(directory) or not root.is_dir():
        return found, ([f"{directory}: not a directory"] if str(directory) else [])
    for path in sorted(root.iterdir()):
        stem, fmt = _split(path, kind)
        if fmt is None or not path.is_file():
            continue
        if not NAME_RE.match(stem) or stem in found:
            skipped.append(f"{path.name}: not a usable image name")
            continue
        if len(found) >= MAX_IMAGES:
            skipped.append(f"{path.name}: more than {MAX_IMAGES} images")
            continue
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(HEAD_BYTES)
        try:
            info = inspect_rootfs(head, size) if kind == "rootfs" else \
                inspect_image(head, size)
        except ImageError as exc:
            skipped.append(f"{path.name}: {exc.message}")
            continue
        if info.format != fmt:
            skipped.append(f"{path.name}: its contents are {info.format}")
            continue
        found[stem] = BaseImage(stem, path, info.format, size, info.virtual_size,
                                _hash(path))
    return found, skipped


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    """``path``'s bytes, :data:`CHUNK` at a time, read in a worker thread."""
    f = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk
    finally:
        f.close()


async def use_image(auct: Auctioneer, images: Mapping[str, BaseImage], sender: bytes,
                    args: dict[str, Any]) -> dict[str, Any]:
    """``host.use_image``: copy a base image into the sender's account volume."""
    if not isinstance(args, dict) or set(args) != {"account_id", "name"}:
        raise HostError("use_image takes {account_id, name}")
    account_id, name = args["account_id"], args["name"]
    if not isinstance(account_id, str) or not isinstance(name, str):
        raise HostError("account_id and name must be strings")
    image = images.get(name)
    if image is None:
        raise HostError("this host offers no base image of that name", name[:60])
    result = await upload_image(auct, sender, account_id, image.size, image.sha256,
                                file_chunks(image.path), image=name)
    return {**result, "image": name}


def image_handlers(auct: Auctioneer, images: Callable[[], Mapping[str, BaseImage]]
                   ) -> dict[str, Handler]:
    """``{"use_image": handler}`` for ``dispatcher.register_all("host", ...)``;
    ``images()`` gives the current catalogue."""
    async def handler(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return await use_image(auct, images(), ctx.sender, args)
    return {"use_image": handler}
