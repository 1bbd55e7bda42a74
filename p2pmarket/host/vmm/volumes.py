"""The account's disk volume in the host's libvirt storage pool: the part of
:class:`~p2pmarket.host.vmm.libvirt_backend.LibvirtVMM` that keeps volumes (a mixin
over its connection, lock and names).

A volume is named ``<domain name><suffix>``, the suffix saying its format (``.img``
raw, ``.qcow2`` qcow2, ``.tar``/``.tar.gz`` a container's root: :data:`VOL_SUFFIXES`),
so the format the upload checked is never probed again from bytes the guest may
rewrite. The pool is ``default-pool`` on the test driver, else ``p2pmarket`` (a
directory pool at ``pool_path``), made when first needed. Uploads stream through a
libvirt stream without holding the lock, never more than one chunk in memory.
"""

from __future__ import annotations

import contextlib
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import libvirt

from p2pmarket.host.vmm.base import VmmError, VolumeInfo

RAW, QCOW2, TAR, TAR_GZ = "raw", "qcow2", "tar", "tar.gz"
VOL_SUFFIXES = {RAW: ".img", QCOW2: ".qcow2", TAR: ".tar", TAR_GZ: ".tar.gz"}
"""A volume's name says its format (tar, tar.gz: a container's root file system)."""


def libvirt_message(exc: libvirt.libvirtError) -> str:
    """What libvirt says went wrong, in one line."""
    return str(exc.get_error_message() or exc)


class VolumesMixin:
    """Volumes over ``conn`` (see the module docstring); the class it is mixed into
    sets these attributes and gives :meth:`name_of`."""

    uri: str
    conn: Any
    driver: str
    pool_name: str | None
    pool_path: str
    _lock: threading.RLock

    def name_of(self, account_id: str) -> str:
        raise NotImplementedError

    def _lookup(self, name: str) -> Any:
        raise NotImplementedError

    def _pool(self, create: bool) -> Any:
        if self.pool_name is None:
            if not create:
                return None
            raise VmmError("no storage pool configured", self.uri)
        try:
            pool = self.conn.storagePoolLookupByName(self.pool_name)
        except libvirt.libvirtError:
            if not create:
                return None
            root = ET.Element("pool", type="dir")
            ET.SubElement(root, "name").text = self.pool_name
            ET.SubElement(ET.SubElement(root, "target"), "path").text = self.pool_path
            pool = self.conn.storagePoolDefineXML(ET.tostring(root, encoding="unicode"), 0)
            pool.build(0)
        if not pool.isActive():
            pool.create(0)
        return pool

    def _volume(self, account_id: str) -> Any:
        pool = self._pool(create=False)
        if pool is None:
            return None
        for suffix in VOL_SUFFIXES.values():
            try:
                return pool.storageVolLookupByName(self.name_of(account_id) + suffix)
            except libvirt.libvirtError:
                continue
        return None

    def volume(self, account_id: str) -> VolumeInfo | None:
        with self._lock:
            try:
                vol = self._volume(account_id)
                return None if vol is None else vol_info(vol)
            except libvirt.libvirtError as exc:
                raise VmmError(f"libvirt: {libvirt_message(exc)}", account_id) from None

    def upload_volume(self, account_id: str, size: int, chunks: Iterator[bytes],
                      fmt: str = RAW) -> VolumeInfo:
        if fmt not in VOL_SUFFIXES:
            raise VmmError("unknown image format", fmt)
        name = self.name_of(account_id) + VOL_SUFFIXES[fmt]
        with self._lock:
            try:
                pool = self._pool(create=True)
                dom = self._lookup(self.name_of(account_id))
                if dom is not None and dom.isActive():
                    dom.destroy()   # restarted with the new disk on the next sync
                old = self._volume(account_id)
                if old is not None:
                    old.delete(0)
                root = ET.Element("volume")
                ET.SubElement(root, "name").text = name
                ET.SubElement(root, "capacity", unit="bytes").text = str(max(1, size))
                ET.SubElement(ET.SubElement(root, "target"), "format", type="raw")
                vol = pool.createXML(ET.tostring(root, encoding="unicode"), 0)
            except libvirt.libvirtError as exc:
                raise VmmError(f"libvirt: {libvirt_message(exc)}", name) from None
        # streamed without the lock (the connection is thread-safe): a slow uploader
        # must not hold up every other domain's operations
        stream = self.conn.newStream(0)
        sent = 0
        try:
            vol.upload(stream, 0, size, 0)
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = stream.send(bytes(view))
                    if n <= 0:
                        raise VmmError("libvirt stream refused data", n)
                    view = view[n:]
                    sent += n
                if sent > size:
                    raise VmmError("upload is larger than announced", size)
            if sent != size:
                raise VmmError("upload ended early", {"got": sent, "size": size})
            stream.finish()
            return vol_info(vol)
        except (libvirt.libvirtError, VmmError, OSError) as exc:
            with contextlib.suppress(libvirt.libvirtError):
                stream.abort()
            with contextlib.suppress(libvirt.libvirtError):
                vol.delete(0)
            if isinstance(exc, VmmError):
                raise
            msg = libvirt_message(exc) if isinstance(exc, libvirt.libvirtError) else str(exc)
            raise VmmError(f"upload failed: {msg}", name) from None

    def resize_volume(self, account_id: str, capacity_kib: int) -> VolumeInfo:
        with self._lock:
            try:
                vol = self._volume(account_id)
                if vol is None:
                    raise VmmError("the account has no volume", account_id)
                flags = libvirt.VIR_STORAGE_VOL_RESIZE_SHRINK \
                    if capacity_kib * 1024 < int(vol.info()[1]) else 0
                vol.resize(capacity_kib * 1024, flags)
                return vol_info(vol)
            except libvirt.libvirtError as exc:
                raise VmmError(f"libvirt: {libvirt_message(exc)}", account_id) from None

    def delete_volume(self, account_id: str) -> None:
        with self._lock:
            try:
                vol = self._volume(account_id)
                if vol is not None:
                    vol.delete(0)
            except libvirt.libvirtError as exc:
                raise VmmError(f"libvirt: {libvirt_message(exc)}", account_id) from None


def vol_format(name: str) -> str:
    """The format a volume's name says (``.qcow2``: qcow2, ``.tar``, ``.tar.gz``; else
    raw)."""
    for fmt in (QCOW2, TAR_GZ, TAR):
        if name.endswith(VOL_SUFFIXES[fmt]):
            return fmt
    return RAW


def vol_info(vol: Any) -> VolumeInfo:
    _type, capacity, allocation = vol.info()
    usage = -(-int(allocation) // 1024)
    return VolumeInfo(name=vol.name(), path=vol.path(), capacity_kib=-(-int(capacity) // 1024),
                      usage_kib=usage, floor_kib=usage, format=vol_format(vol.name()))


__all__ = ["QCOW2", "RAW", "TAR", "TAR_GZ", "VOL_SUFFIXES", "VolumesMixin", "libvirt_message",
           "vol_format", "vol_info"]
