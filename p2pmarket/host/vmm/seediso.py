"""The NoCloud seed as an ISO 9660 image (thin: pycdlib does the format).

The volume is labelled ``cidata`` (what cloud-init's NoCloud source looks
for) and holds the files of :func:`p2pmarket.host.vmm.guest.seed_files` at
its root, under their real names through both Joliet and Rock Ridge (as
``cloud-localds``/``genisoimage -joliet -rock`` write it), with 8.3 ISO 9660
names beside them. The image is a few hundred KiB, built in memory, and
stored as a raw volume of the host's storage pool (:func:`store_seed`).
"""

from __future__ import annotations

import contextlib
import io
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

import libvirt
import pycdlib

from p2pmarket.host.vmm.base import VmmError

LABEL = "cidata"


def _iso_name(name: str) -> str:
    stem = "".join(c for c in name.upper() if c.isalnum())[:8] or "FILE"
    return f"/{stem}.;1"


def seed_iso(files: Mapping[str, bytes]) -> bytes:
    """An ISO 9660 image labelled ``cidata`` with ``files`` (``{name: content}``)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL)
    try:
        seen: set[str] = set()
        for name, data in sorted(files.items()):
            iso_name = _iso_name(name)
            if iso_name in seen:
                raise ValueError(f"two seed files map to {iso_name}")
            seen.add(iso_name)
            iso.add_fp(io.BytesIO(data), len(data), iso_name, rr_name=name,
                       joliet_path=f"/{name}")
        out = io.BytesIO()
        iso.write_fp(out)
        return out.getvalue()
    finally:
        iso.close()


def store_seed(conn: Any, pool: Any, vol_name: str, files: Mapping[str, bytes],
               streams: bool = True) -> str:
    """Write the seed ISO of ``files`` as volume ``vol_name`` (replacing one of that
    name) and return its path. ``streams=False`` (the test driver, which has no
    volume streams) creates the volume without content."""
    data = seed_iso(files)
    with contextlib.suppress(libvirt.libvirtError):
        pool.storageVolLookupByName(vol_name).delete(0)
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = vol_name
    ET.SubElement(root, "capacity", unit="bytes").text = str(len(data))
    ET.SubElement(ET.SubElement(root, "target"), "format", type="raw")
    vol = pool.createXML(ET.tostring(root, encoding="unicode"), 0)
    if not streams:
        return str(vol.path())
    stream = conn.newStream(0)
    try:
        vol.upload(stream, 0, len(data), 0)
        view = memoryview(data)
        while view:
            n = stream.send(bytes(view[:1 << 18]))
            if n <= 0:
                raise VmmError("libvirt stream refused the seed", n)
            view = view[n:]
        stream.finish()
    except (libvirt.libvirtError, VmmError):
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
        with contextlib.suppress(libvirt.libvirtError):
            vol.delete(0)
        raise
    return str(vol.path())
