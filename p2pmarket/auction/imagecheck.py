"""What a buyer's disk image is, from its first bytes and its size (pure: no I/O).

The host reads the first :data:`HEAD_BYTES` of an upload (or all of a smaller one)
before it writes anything, and :func:`inspect_image` decides:

- **qcow2** (magic ``QFI\\xfb``): version 2 or 3; the virtual size is the header's
  ``size`` (bytes at offset 24, big-endian). Refused: a backing file (``backing_file_
  offset`` or ``_size`` not 0: it names a path on the host), an external data file
  (incompatible feature bit 2, or header extension ``0x44415441``: a host path too),
  encryption (``crypt_method`` not 0: the host holds no key), a corrupt image
  (incompatible bit 1), unknown incompatible features (bits 5 and up), a
  ``cluster_bits`` outside 9..21, a virtual size of 0, a v3 header shorter than 104
  bytes.
- **raw**: accepted only when the head carries something a disk carries: a boot
  sector or MBR (``55 aa`` at 510), a GPT header (``EFI PART`` at 512), an LVM label
  (``LABELONE`` at 512), an ISO 9660 volume descriptor (``CD001`` at 32769, 34817 or
  36865), an ext2/3/4 superblock (``53 ef`` at 1080), XFS (``XFSB`` at 0), btrfs
  (``_BHRfS_M`` at 65600), squashfs (``hsqs`` at 0), or a head of zeros only (a blank
  disk, or one whose file system starts further in). The virtual size is the byte size.
- everything else is **not a disk image** and refused, with what it looks like when
  that is known: an empty file, an ELF executable, gzip, bzip2, xz, zstd, zip, 7z or
  tar archives, text (no NUL byte in the head, valid UTF-8), other disk formats
  (VMDK, VDI, VHD, VHDX, QED, LUKS: convert them to qcow2 or raw), or none of these
  ("no partition table, file system or qcow2 header").

:func:`check_fits` then checks the image against the account's disk allocation: the
byte size and (qcow2) the virtual size must both fit. Every refusal is an
:class:`ImageError` (a :class:`~p2pmarket.auction.HostError`) with a message and value.

:func:`blank_qcow2` writes an empty, valid qcow2 v3 file's bytes (as ``qemu-img create
-f qcow2`` lays it out), for tests and benchmarks.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from p2pmarket.auction import HostError

HEAD_BYTES = 68 * 1024
"""How much of an image the check reads first (btrfs's superblock ends at 65 672)."""
RAW = "raw"
QCOW2 = "qcow2"
FORMATS = (RAW, QCOW2)
QCOW2_MAGIC = b"QFI\xfb"
_V2 = struct.Struct(">4sIQIIQIIQQIIQ")            # the 72-byte version 2 header
_V3_EXTRA = struct.Struct(">QQQII")               # incompatible .. header_length (to 104)
_KNOWN_INCOMPATIBLE = 0b11111                     # dirty, corrupt, data file, compr., ext L2
_CORRUPT, _DATA_FILE = 1 << 1, 1 << 2
_EXT_DATA_FILE = 0x44415441
MAX_EXTENSIONS = 64

_NOT_IMAGES = (   # (offset, signature, what it is)
    (0, b"\x7fELF", "an ELF executable"), (0, b"\x1f\x8b", "a gzip archive"),
    (0, b"BZh", "a bzip2 archive"), (0, b"\xfd7zXZ\x00", "an xz archive"),
    (0, b"\x28\xb5\x2f\xfd", "a zstd archive"), (0, b"PK\x03\x04", "a zip archive"),
    (0, b"7z\xbc\xaf\x27\x1c", "a 7z archive"), (257, b"ustar", "a tar archive"),
)
_OTHER_FORMATS = (
    (0, b"KDMV", "VMDK"), (64, b"\x7f\x10\xda\xbe", "VDI"), (0, b"conectix", "VHD"),
    (0, b"vhdxfile", "VHDX"), (0, b"QED\x00", "QED"), (0, b"LUKS\xba\xbe", "LUKS"),
)
_RAW_MARKS = (   # (offset, signature, what it is)
    (512, b"EFI PART", "gpt"), (512, b"LABELONE", "lvm"), (32769, b"CD001", "iso9660"),
    (34817, b"CD001", "iso9660"), (36865, b"CD001", "iso9660"), (1080, b"\x53\xef", "ext"),
    (0, b"XFSB", "xfs"), (65600, b"_BHRfS_M", "btrfs"), (0, b"hsqs", "squashfs"),
    (510, b"\x55\xaa", "mbr"),
)


class ImageError(HostError):
    """The uploaded bytes are not an image this host boots, or do not fit."""


@dataclass(frozen=True)
class ImageInfo:
    """What :func:`inspect_image` found: the format the host boots it as (``raw`` or
    ``qcow2``), the size the guest sees (bytes) and the mark it was recognised by
    (``qcow2``, ``gpt``, ``mbr``, ``iso9660``, ``ext``, ``blank``, ...)."""

    format: str
    virtual_size: int
    kind: str


def _at(head: bytes, offset: int, sig: bytes) -> bool:
    return head[offset:offset + len(sig)] == sig


def inspect_image(head: bytes, size: int) -> ImageInfo:
    """The image whose first bytes are ``head`` (``HEAD_BYTES`` of them, or all of an
    image smaller than that) and whose length is ``size``; :class:`ImageError` if the
    host does not take it (see the module docstring)."""
    if size <= 0 or not head:
        raise ImageError("the image is empty", size)
    if len(head) < min(size, HEAD_BYTES):
        raise ImageError("the image's first bytes are missing", len(head))
    if head.startswith(QCOW2_MAGIC):
        return _qcow2(head, size)
    for offset, sig, what in _NOT_IMAGES:
        if _at(head, offset, sig):
            raise ImageError(f"not a disk image: this is {what}", what)
    for offset, sig, what in _OTHER_FORMATS:
        if _at(head, offset, sig):
            raise ImageError(f"{what} images are not taken: convert it to qcow2 or raw "
                             "(qemu-img convert -O qcow2)", what)
    if b"\0" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            raise ImageError("not a disk image: this is a text file", "text")
    for offset, sig, what in _RAW_MARKS:
        if _at(head, offset, sig):
            return ImageInfo(RAW, size, what)
    if not any(head):
        return ImageInfo(RAW, size, "blank")
    raise ImageError("not a disk image: no partition table, file system or qcow2 header "
                     f"in its first {len(head)} bytes", "unknown")


def _qcow2(head: bytes, size: int) -> ImageInfo:
    if len(head) < _V2.size:
        raise ImageError("truncated qcow2 header", len(head))
    (_, version, backing_offset, backing_size, cluster_bits, virtual, crypt, _l1, _l1_off,
     _rc_off, _rc_clusters, _snaps, _snap_off) = _V2.unpack_from(head)
    if version not in (2, 3):
        raise ImageError(f"qcow2 version {version} is not taken (2 or 3)", version)
    if backing_offset or backing_size:
        raise ImageError("the qcow2 image names a backing file (a path on the host): "
                         "refused; flatten it (qemu-img convert -O qcow2)", "backing file")
    if not 9 <= cluster_bits <= 21:
        raise ImageError("qcow2 cluster_bits must be 9..21", cluster_bits)
    if crypt:
        raise ImageError("encrypted qcow2 images are not taken", crypt)
    if virtual <= 0:
        raise ImageError("the qcow2 image's virtual size is 0", virtual)
    ext_at = _V2.size
    if version == 3:
        if len(head) < _V2.size + _V3_EXTRA.size:
            raise ImageError("truncated qcow2 v3 header", len(head))
        incompatible, _compat, _autoclear, _refcount_order, length = \
            _V3_EXTRA.unpack_from(head, _V2.size)
        if not _V2.size + _V3_EXTRA.size <= length <= 1 << cluster_bits:
            raise ImageError("bad qcow2 v3 header length", length)
        if incompatible & _DATA_FILE:
            raise ImageError("the qcow2 image uses an external data file (a path on the "
                             "host): refused", "data file")
        if incompatible & _CORRUPT:
            raise ImageError("the qcow2 image is marked corrupt", "corrupt")
        if incompatible & ~_KNOWN_INCOMPATIBLE:
            raise ImageError("the qcow2 image has unknown incompatible features",
                             incompatible)
        ext_at = length
    _extensions(head, ext_at, 1 << cluster_bits)
    return ImageInfo(QCOW2, virtual, QCOW2)


def _extensions(head: bytes, at: int, cluster: int) -> None:
    """Walk the header extensions (in the first cluster) for an external data file."""
    end = min(len(head), cluster)
    for _ in range(MAX_EXTENSIONS):
        if at + 8 > end:
            return
        kind, length = struct.unpack_from(">II", head, at)
        if kind == 0:
            return
        if kind == _EXT_DATA_FILE:
            raise ImageError("the qcow2 image names an external data file (a path on the "
                             "host): refused", "data file")
        at += 8 + (length + 7) // 8 * 8


def check_fits(info: ImageInfo, size: int, disk_kib: int) -> None:
    """:class:`ImageError` unless both the image's bytes and the size the guest sees fit
    in ``disk_kib`` KiB of leased disk."""
    need = max(size, info.virtual_size)
    if need > disk_kib * 1024:
        raise ImageError("the image is larger than the account's disk allocation",
                         {"size": size, "virtual_size": info.virtual_size,
                          "disk_kib": disk_kib})


def blank_qcow2(virtual_size: int, cluster_bits: int = 16,
                backing_file: str | None = None) -> bytes:
    """An empty qcow2 v3 image of ``virtual_size`` bytes: header, refcount table, one
    refcount block, L1 table (four clusters, as ``qemu-img create`` writes them);
    ``backing_file`` names one (for tests of the refusal)."""
    cluster = 1 << cluster_bits
    l2_span = cluster * (cluster // 8)
    l1_size = max(1, -(-virtual_size // l2_span))
    if l1_size * 8 > cluster:
        raise ValueError("virtual size too large for a one-cluster L1 table")
    out = bytearray(4 * cluster)
    name = (backing_file or "").encode()
    backing_at = 112 if name else 0
    out[:_V2.size] = _V2.pack(QCOW2_MAGIC, 3, backing_at, len(name), cluster_bits,
                              virtual_size, 0, l1_size, 3 * cluster, cluster, 1, 0, 0)
    out[_V2.size:_V2.size + _V3_EXTRA.size] = _V3_EXTRA.pack(0, 0, 0, 4, 104)
    # extensions end at 104 (type 0); the backing file name follows them
    out[112:112 + len(name)] = name
    struct.pack_into(">Q", out, cluster, 2 * cluster)          # refcount table -> block
    for i in range(4):
        struct.pack_into(">H", out, 2 * cluster + 2 * i, 1)    # clusters 0..3 in use
    return bytes(out)
