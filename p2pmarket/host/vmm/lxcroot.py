"""An LXC guest's root directory on the host (thin: the decisions are in
:mod:`p2pmarket.auction.rootfscheck` and :mod:`.lxcguest`).

:func:`unpack_root` streams the account's root file system archive (tar or tar.gz,
read with :mod:`tarfile` in stream mode: never whole in memory) into a fresh
directory ``ROOT.new``, each member judged by a :class:`RootfsCheck` before it is
written, its owner shifted into the guest's user namespace (uid + ``ids``) and its
setuid/setgid bits dropped; then the mount points libvirt needs
(:data:`~.lxcguest.MOUNT_POINTS`) are made and ``ROOT.new`` renamed to ``ROOT``. A
refused archive leaves no directory behind (:class:`ImageError`).

:func:`install_key` writes the buyer's key as ``ROOT/root/.ssh/authorized_keys``
before every start. The root's contents are the guest's, who may have made
``/root`` or ``/root/.ssh`` a symbolic link to a host path while it ran: every step
opens the next directory relative to the last one with ``O_NOFOLLOW`` (a link found is
removed and a directory made in its place), so nothing is written outside the root.

:func:`remove_root` deletes a root (:func:`shutil.rmtree`, which does not follow the
links inside).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
from pathlib import Path

from p2pmarket.auction.imagecheck import ImageError
from p2pmarket.auction.rootfscheck import (
    DIR,
    FILE,
    HARDLINK,
    SYMLINK,
    Member,
    RootfsCheck,
    normalize,
)
from p2pmarket.host.vmm.lxcguest import AUTHORIZED_KEYS, LXC_INIT, MOUNT_POINTS

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _kind(ti: tarfile.TarInfo) -> str:
    if ti.isreg():
        return FILE
    if ti.isdir():
        return DIR
    if ti.issym():
        return SYMLINK
    if ti.islnk():
        return HARDLINK
    return "chardev" if ti.ischr() else "blockdev" if ti.isblk() else \
        "fifo" if ti.isfifo() else "other"


def unpack_root(archive: str | Path, root: str | Path, limit_bytes: int, ids: int) -> int:
    """Unpack ``archive`` as the root ``root`` (replacing one there); the bytes counted
    against ``limit_bytes`` (see the module docstring)."""
    root = Path(root)
    new = root.with_name(root.name + ".new")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(mode=0o755)
    os.chown(new, ids, ids)
    check = RootfsCheck(limit_bytes)

    def shifted(ti: tarfile.TarInfo, _path: str) -> tarfile.TarInfo:
        m = check.check(Member(ti.name, _kind(ti), ti.mode, ti.size, ti.linkname,
                               ti.uid, ti.gid))
        link = normalize(m.linkname) if m.kind == HARDLINK else m.linkname
        return ti.replace(name=m.name, mode=m.mode, uid=ids + m.uid, gid=ids + m.gid,
                          uname="", gname="", linkname=link, deep=False)

    try:
        with tarfile.open(str(archive), mode="r|*") as tf:
            for ti in tf:
                if not ti.name.strip("./"):   # the root itself: made above
                    check.check(Member(ti.name, _kind(ti), ti.mode, 0, "", ti.uid, ti.gid))
                    continue
                tf.extract(ti, str(new), numeric_owner=True, filter=shifted)
        _mount_points(new, ids)
    except (tarfile.TarError, EOFError, OSError, ImageError) as exc:
        shutil.rmtree(new, ignore_errors=True)
        if isinstance(exc, ImageError):
            raise
        raise ImageError(f"the root file system archive cannot be unpacked: {exc}",
                         str(archive)) from None
    remove_root(root)
    new.rename(root)
    return check.used


def _mount_points(root: Path, ids: int) -> None:
    for rel in MOUNT_POINTS:
        path = root / rel
        try:
            st = path.lstat()
        except FileNotFoundError:
            path.mkdir(mode=0o700 if rel.startswith("root") else 0o755)
            os.lchown(path, ids, ids)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise ImageError(f"the root's /{rel} must be a directory", rel)


def _step(parent: int, name: str, ids: int, mode: int) -> int:
    """The directory ``name`` under the directory fd ``parent``, opened without
    following links (a link or file there is replaced by a new directory)."""
    try:
        st: os.stat_result | None = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent)
        st = None
    if st is None:
        os.mkdir(name, mode, dir_fd=parent)
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
    if st is None:
        os.fchown(fd, ids, ids)
    return fd


def install_key(root: str | Path, keys: bytes, ids: int) -> None:
    """Write ``keys`` as the root's ``/root/.ssh/authorized_keys`` (mode 600, owned by
    the guest's root), never through a link (see the module docstring)."""
    *dirs, leaf = AUTHORIZED_KEYS.split("/")
    fds = [os.open(str(root), _DIR_FLAGS)]
    try:
        for name in dirs:
            fds.append(_step(fds[-1], name, ids, 0o700))
            os.fchmod(fds[-1], 0o700)
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(leaf, dir_fd=fds[-1], follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                os.unlink(leaf, dir_fd=fds[-1])
        fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600,
                     dir_fd=fds[-1])
        try:
            os.fchown(fd, ids, ids)
            os.fchmod(fd, 0o600)
            os.write(fd, keys)
        finally:
            os.close(fd)
    finally:
        for fd in fds:
            os.close(fd)


def remove_root(root: str | Path) -> None:
    """Delete ``root`` and everything in it; no-op when it does not exist."""
    root = Path(root)
    if root.is_symlink():
        root.unlink()
    elif root.exists():
        shutil.rmtree(root)




class LxcRoots:
    """The roots of one host's containers under ``base``: ``base/<domain>/`` the root
    (mode 0700, owned by the guest's root: no host user enters it), ``base/<domain>.key``
    the buyer's authorized_keys, kept outside the root so that a root unpacked again (a
    new image) or a host restart gets the key back.

    ``base`` and every directory above it must be traversable by anyone (``o+x``): the
    container's root, a user of its own namespace, walks that path when libvirt pivots
    into it (a node's data dir, often 0700, will not do; the default is
    ``/var/lib/p2pmarket/lxc``, made 0711). :meth:`ready` checks that, and that the root
    has its ``/sbin/init``, before libvirt is asked to start anything: libvirt 9.0's
    daemon has crashed on a container that failed to start."""

    def __init__(self, base: str | Path) -> None:
        self.base = Path(base)

    def root(self, name: str) -> Path:
        return self.base / name

    def _key_file(self, name: str) -> Path:
        return self.base / f"{name}.key"

    def _ensure_base(self) -> None:
        self.base.mkdir(mode=0o711, parents=True, exist_ok=True)
        os.chmod(self.base, 0o711)
        for where in [self.base, *self.base.parents]:
            if not where.stat().st_mode & stat.S_IXOTH:
                raise ImageError("the containers' root directory must be traversable by "
                                 "their user namespaces (o+x on every directory above it)",
                                 str(where))

    def set_key(self, name: str, keys: bytes, ids: int) -> None:
        """Keep ``keys`` for the guest's next start, and install them now in its root if
        it has one (a running container reads them at its next login; the walk that
        writes them follows no link, so a guest racing it cannot redirect it)."""
        self._ensure_base()
        tmp = self._key_file(name).with_suffix(".key.tmp")
        tmp.write_bytes(keys)
        tmp.replace(self._key_file(name))
        root = self.root(name)
        if root.is_dir() and not root.is_symlink():
            install_key(root, keys, ids)

    def ready(self, name: str, archive: str | None, limit_bytes: int, ids: int) -> Path:
        """The guest's root, unpacked from ``archive`` if it has none yet, with its key
        installed; :class:`ImageError` when there is neither root nor archive."""
        root = self.root(name)
        if not root.is_dir() or root.is_symlink():
            if archive is None:
                raise ImageError("the container has no root file system: put a root file "
                                 "system image (tar or tar.gz) on the lease first", name)
            self._ensure_base()
            unpack_root(archive, root, limit_bytes, ids)
        self._ensure_base()
        os.chmod(root, 0o700)
        key = self._key_file(name)
        if key.is_file():
            install_key(root, key.read_bytes(), ids)
        init = root / LXC_INIT.lstrip("/")
        if not (init.is_symlink() or init.is_file()):
            raise ImageError(f"the root file system has no {LXC_INIT}", name)
        return root

    def drop_root(self, name: str) -> None:
        """Delete the guest's root (a new image replaces it); its key stays."""
        remove_root(self.root(name))
        remove_root(self.root(name + ".new"))

    def forget(self, name: str) -> None:
        """Delete the guest's root and its key."""
        self.drop_root(name)
        self._key_file(name).unlink(missing_ok=True)


__all__ = ["LxcRoots", "install_key", "remove_root", "unpack_root"]
