"""What a buyer's container root file system image is, and which of its members the
host unpacks (pure: no I/O). The LXC counterpart of :mod:`.imagecheck`.

An **LXC image** is a root file system as a POSIX tar archive (ustar, GNU or pax),
optionally gzip-compressed: ``tar`` or ``tar.gz``. The host unpacks it into a
directory of its own per account, which becomes the container's ``/``; its
``/sbin/init`` is the container's first process, and the host writes the buyer's key
into ``/root/.ssh/authorized_keys`` before start (docs/design.md section 6).

:func:`inspect_rootfs` decides the format from the first bytes (as an upload's head
is checked before anything is written): ``ustar`` at offset 257 (tar), or the gzip
magic ``1f 8b`` whose first decompressed block carries ``ustar`` at 257 (tar.gz);
anything else (a disk image, another archive, text) is refused with what it is.

:class:`RootfsCheck` then judges every member in archive order, before it is
written (:meth:`RootfsCheck.check`, one :class:`Member` at a time). Refused, each with an
:class:`~.imagecheck.ImageError` naming the member:

- names that are absolute, contain ``..`` or a NUL, are longer than 4096 bytes (a
  component longer than 255), or are not valid UTF-8;
- device nodes (character, block), FIFOs and anything else but regular files,
  directories, symbolic links and hard links;
- a member below, or replacing, a symbolic link of the archive (writing it would
  follow the link out of the root);
- a hard link whose target is not a regular file met earlier in the archive;
- an owner outside the container's ids (uid or gid 65536 and up: the user
  namespace maps 0..65535 only);
- more than :data:`MAX_MEMBERS` members, or an unpacked size over the limit (the
  leased disk): each file counts its size rounded up to 4 KiB, every other member
  4 KiB.

Symbolic link targets may be absolute or climb: they are resolved inside the
container, never by the host (which refuses to write through them). Setuid and
setgid bits are dropped (:attr:`Member.mode` gives the mode the host writes); the
container runs in a user namespace, so its root is no user of the host's.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from p2pmarket.auction.imagecheck import ImageError, ImageInfo, inspect_image

TAR, TAR_GZ = "tar", "tar.gz"
ROOTFS_FORMATS = (TAR, TAR_GZ)
MAX_MEMBERS = 200_000
MAX_NAME = 4096
MAX_COMPONENT = 255
ID_COUNT = 65536          # the container's uids and gids: 0..65535
BLOCK = 4096

FILE, DIR, SYMLINK, HARDLINK = "file", "dir", "symlink", "hardlink"
KINDS = (FILE, DIR, SYMLINK, HARDLINK)
_SETID = 0o6000
_GZIP = b"\x1f\x8b"


@dataclass(frozen=True)
class Member:
    """One archive member as the check sees it: its name (as in the archive), its kind
    (:data:`KINDS`, or what else it is: ``chardev``, ``blockdev``, ``fifo``,
    ``other``), permission bits, size, link target, owner."""

    name: str
    kind: str
    mode: int = 0o644
    size: int = 0
    linkname: str = ""
    uid: int = 0
    gid: int = 0


def inspect_rootfs(head: bytes, size: int) -> ImageInfo:
    """The root file system image whose first bytes are ``head`` and whose length is
    ``size``: format ``tar`` or ``tar.gz``, kind ``rootfs``; :class:`ImageError` when it
    is none (see the module docstring)."""
    if size <= 0 or not head:
        raise ImageError("the image is empty", size)
    if head.startswith(_GZIP):
        try:
            inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 1024)
        except zlib.error:
            raise ImageError("not a root file system: a broken gzip stream", "gzip") from None
        if _is_tar(inner):
            return ImageInfo(TAR_GZ, size, "rootfs")
        raise ImageError("not a root file system: a gzip file that holds no tar archive",
                         "gzip")
    if _is_tar(head):
        return ImageInfo(TAR, size, "rootfs")
    raise ImageError("not a root file system: a container host takes a tar archive of "
                     "the root (tar or tar.gz)", "not tar")


def inspect_upload(kind: str, head: bytes, size: int) -> ImageInfo:
    """The check a host of ``kind`` makes of an image's head: ``rootfs`` (containers)
    :func:`inspect_rootfs`, else :func:`~.imagecheck.inspect_image`."""
    return inspect_rootfs(head, size) if kind == "rootfs" else inspect_image(head, size)


def _is_tar(block: bytes) -> bool:
    return block[257:262] == b"ustar"


def normalize(name: str) -> str:
    """A member's path relative to the root (``./etc/x/`` -> ``etc/x``; ``.`` -> ``""``);
    :class:`ImageError` when it is absolute, climbs or is malformed."""
    if "\0" in name:
        raise ImageError("a member's name holds a NUL byte", name[:200])
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME:
        raise ImageError("a member's name is too long", name[:200])
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ImageError("a member's name is not UTF-8", name[:200]) from None
    if name.startswith("/"):
        raise ImageError("a member has an absolute name", name[:200])
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError("a member's name climbs out of the root ('..')", name[:200])
    if any(len(p.encode()) > MAX_COMPONENT for p in parts):
        raise ImageError("a member's name has a component over 255 bytes", name[:200])
    return "/".join(parts)


@dataclass
class RootfsCheck:
    """The members of one archive, judged in order against ``limit_bytes`` of disk."""

    limit_bytes: int
    members: int = 0
    used: int = 0
    _symlinks: set[str] = field(default_factory=set)
    _files: set[str] = field(default_factory=set)

    def check(self, m: Member) -> Member:
        """The member as the host writes it (name normalized, setuid/setgid dropped),
        or :class:`ImageError`."""
        name = normalize(m.name)
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise ImageError(f"the archive has more than {MAX_MEMBERS} members",
                             MAX_MEMBERS)
        if m.kind not in KINDS:
            what = {"chardev": "a character device", "blockdev": "a block device",
                    "fifo": "a FIFO"}.get(m.kind, "not a file, directory or link")
            raise ImageError(f"a member is {what}: refused (the container gets its "
                             "devices from the host)", name[:200])
        if not name and m.kind != DIR:
            raise ImageError("a member that is not a directory names the root", m.name[:200])
        parts = name.split("/")
        for i in range(1, len(parts) + 1):
            if "/".join(parts[:i]) in self._symlinks:
                raise ImageError("a member lies below or replaces a symbolic link of the "
                                 "archive: refused", name[:200])
        if not (0 <= m.uid < ID_COUNT and 0 <= m.gid < ID_COUNT):
            raise ImageError("a member's owner is outside the container's ids (0..65535)",
                             {"name": name[:200], "uid": m.uid, "gid": m.gid})
        if m.size < 0 or (m.kind != FILE and m.size):
            raise ImageError("a member's size is wrong for its kind", name[:200])
        if m.kind == HARDLINK:
            target = normalize(m.linkname)
            if target not in self._files:
                raise ImageError("a hard link's target is not a file met earlier in the "
                                 "archive", {"name": name[:200], "target": target[:200]})
        if m.kind == SYMLINK and (not m.linkname or "\0" in m.linkname
                                  or len(m.linkname) > MAX_NAME):
            raise ImageError("a symbolic link has no usable target", name[:200])
        self.used += -(-m.size // BLOCK) * BLOCK if m.kind == FILE else BLOCK
        if self.used > self.limit_bytes:
            raise ImageError("the unpacked root file system is larger than the account's "
                             "disk allocation", {"limit": self.limit_bytes,
                                                 "at_least": self.used})
        if m.kind == SYMLINK:
            self._symlinks.add(name)
        self._files.discard(name)
        if m.kind == FILE:
            self._files.add(name)
        return Member(name, m.kind, m.mode & 0o7777 & ~_SETID, m.size, m.linkname,
                      m.uid, m.gid)


__all__ = ["DIR", "FILE", "HARDLINK", "ID_COUNT", "ROOTFS_FORMATS", "SYMLINK", "TAR",
           "TAR_GZ", "Member", "RootfsCheck", "inspect_rootfs", "inspect_upload", "normalize"]
