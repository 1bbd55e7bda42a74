"""The test guest: the host's kernel plus a tiny initramfs that accepts SSH logins.

Built offline from Debian packages already on the machine (``scripts/setup-qemu``
installs them): the newest ``/boot/vmlinuz-*``, ``busybox-static`` and
``dropbear-bin`` (the ``dropbear`` binary with the shared libraries ``ldd``
names). The initramfs's ``/init`` loads the kernel modules it needs from
``/lib/modules/<version>`` (virtio-pci, virtio-net, the balloon, ata_piix +
sr_mod for the IDE cdrom, isofs: all modules in Debian's kernel), brings up
``eth0`` by DHCP (busybox ``udhcpc``), mounts the cloud-init NoCloud seed
(``/dev/sr0``, label ``cidata``), installs the seed's ``ssh_authorized_keys``
for root and runs dropbear on port 22 (public keys only, no passwords). It
prints ``P2PM-GUEST-SSH-UP`` on the serial console once dropbear runs.

The result is cached under ``/var/cache/p2pmarket-guest/<hash>/`` where the
hash covers every input (kernel, busybox, dropbear and its libraries, the
modules, the init script), so a second run on the same machine costs nothing.

:func:`build_rootfs` makes the same tree (no kernel, no modules) as the LXC test
guest: a root file system archive whose ``/sbin/init`` runs dropbear in the foreground.

Used by ``tests/host/test_guest.py`` and ``scripts/build-test-guest`` (which the
benchmark can call); run as ``python -m tests.support.testguest`` it prints the
boot settings as JSON. :func:`ssh_login` waits for the guest's SSH and logs in
(asyncssh), the measure of boot to SSH.
"""

from __future__ import annotations

import asyncio
import glob
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE = Path("/var/cache/p2pmarket-guest")
VERSION = "1"
ROOT_MODULES = ("virtio_pci", "virtio_net", "virtio_balloon", "ata_piix", "sr_mod", "isofs")
CMDLINE = "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off"
READY_MARK = "P2PM-GUEST-SSH-UP"

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
for m in $(cat /lib/mods/order); do insmod /lib/mods/$m.ko 2>/dev/null; done
ip link set lo up
i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
ip link set eth0 up
udhcpc -b -i eth0 -s /etc/udhcpc.script -t 30 -T 1 -A 1 >/dev/null 2>&1
mkdir -p /seed
i=0; until mount -t iso9660 -o ro /dev/sr0 /seed 2>/dev/null || [ $i -ge 100 ]; do
  sleep 0.1; i=$((i+1)); done
mkdir -p /root/.ssh
chmod 700 /root /root/.ssh
if [ -f /seed/user-data ]; then
  sed -n 's/^ *- *"\{0,1\}\(\(ssh-\|ecdsa-\)[^"]*\)"\{0,1\} *$/\1/p' /seed/user-data \
    > /root/.ssh/authorized_keys
  chmod 600 /root/.ssh/authorized_keys
  echo "P2PM-GUEST-KEYS $(wc -l < /root/.ssh/authorized_keys)"
else
  echo "P2PM-GUEST-NO-SEED"
fi
dropbear -r /etc/dropbear/dropbear_ed25519_host_key -r /etc/dropbear/dropbear_rsa_host_key \
  -r /etc/dropbear/dropbear_ecdsa_host_key -s -p 22 -E -F &
echo P2PM-GUEST-SSH-UP
while true; do sleep 3600; done
"""

UDHCPC = r"""#!/bin/sh
case "$1" in
  deconfig) ifconfig "$interface" 0.0.0.0 up ;;
  bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
    if [ -n "$router" ]; then
      while route del default gw 0.0.0.0 dev "$interface" 2>/dev/null; do :; done
      for r in $router; do route add default gw "$r" dev "$interface"; break; done
    fi
    echo "P2PM-GUEST-IP $ip" > /dev/console ;;
esac
exit 0
"""


LXC_INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
ip link set lo up
# libvirt gives eth0 its address and route before init runs; DHCP if it did not
i=0; until ip -4 addr show eth0 2>/dev/null | grep -q inet || [ $i -ge 20 ]; do
  sleep 0.05; i=$((i+1)); done
ip -4 addr show eth0 | grep -q inet || udhcpc -i eth0 -s /etc/udhcpc.script -t 10 -T 1 -n -q
echo P2PM-GUEST-SSH-UP
exec dropbear -r /etc/dropbear/dropbear_ed25519_host_key -r /etc/dropbear/dropbear_rsa_host_key \
  -r /etc/dropbear/dropbear_ecdsa_host_key -s -p 22 -E -F
"""


@dataclass(frozen=True)
class TestGuest:
    """Paths of a built guest: what :class:`GuestBoot` needs for direct kernel boot."""

    kernel: str
    initrd: str
    cmdline: str


def _kernel() -> tuple[Path, str]:
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    if not kernels:
        raise RuntimeError("no kernel in /boot: run scripts/setup-qemu")
    path = Path(kernels[-1])
    return path, path.name.split("vmlinuz-", 1)[1]


def _modules(version: str) -> list[tuple[str, Path]]:
    """The root modules and their dependencies, dependencies first (modules.dep)."""
    base = Path(f"/lib/modules/{version}")
    deps: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        name = re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", "", target.rsplit("/", 1)[-1])
        paths[name] = target
        deps[name] = [re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", "", d.rsplit("/", 1)[-1])
                      for d in rest.split()]
    order: list[str] = []

    def visit(name: str, depth: int) -> None:
        if name in order or name not in paths or depth > 32:
            return
        for dep in reversed(deps[name]):   # modules.dep lists the nearest dependency first
            visit(dep, depth + 1)
        order.append(name)

    for root in ROOT_MODULES:
        visit(root, 0)
    return [(name, base / paths[name]) for name in order]


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    return data


def _libraries(binary: str) -> list[str]:
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def cpio(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A newc cpio archive of ``{path: (mode, data)}``, parents before children."""
    out = bytearray()
    entries = [*sorted(files.items(), key=lambda kv: kv[0].count("/")),
               ("TRAILER!!!", (0, b""))]
    for ino, (name, (mode, data)) in enumerate(entries, 1):
        raw = name.encode() + b"\0"
        head = "070701" + "".join(f"{v:08x}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0))
        out += head.encode() + raw
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _add(files: dict[str, tuple[int, bytes]], path: str, mode: int, data: bytes) -> None:
    path = path.lstrip("/")
    parts = path.split("/")
    for i in range(1, len(parts)):
        files.setdefault("/".join(parts[:i]), (0o40755, b""))
    files[path] = (mode, data)


def _host_key(where: Path, kind: str) -> bytes:
    """A dropbear host key made on the host (key generation under TCG is slow).
    All three kinds: dropbear 2022.83 offers every algorithm and fails on a
    missing key."""
    key = where / f"hostkey-{kind}"
    subprocess.run(["dropbearkey", "-t", kind, "-f", str(key)], capture_output=True,
                   check=True, timeout=60)
    data = key.read_bytes()
    key.unlink()
    return data


def _inputs() -> tuple[Path, str, str, str, list[tuple[str, Path]], list[str]]:
    kernel, version = _kernel()
    busybox = shutil.which("busybox") or "/bin/busybox"
    dropbear = shutil.which("dropbear") or "/usr/sbin/dropbear"
    for what, path in (("busybox (busybox-static)", busybox),
                       ("dropbear (dropbear-bin)", dropbear)):
        if not os.path.exists(path):
            raise RuntimeError(f"no {what}: run scripts/setup-qemu")
    return kernel, version, busybox, dropbear, _modules(version), _libraries(dropbear)


def build(cache: Path = CACHE) -> TestGuest:
    """Build the guest (or find it in the cache) and return its boot settings."""
    kernel, _version, busybox, dropbear, modules, libs = _inputs()
    digest = hashlib.sha256(VERSION.encode() + INIT.encode() + UDHCPC.encode())
    for path in [str(kernel), busybox, dropbear, *libs, *(str(p) for _, p in modules)]:
        digest.update(path.encode() + b"\0" + Path(path).read_bytes())
    where = cache / digest.hexdigest()[:16]
    done = TestGuest(str(where / "vmlinuz"), str(where / "initrd.gz"), CMDLINE)
    if (where / "initrd.gz").exists() and (where / "vmlinuz").exists():
        return done
    cache.mkdir(mode=0o755, parents=True, exist_ok=True)
    os.chmod(cache, 0o755)
    tmp = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
    try:
        files: dict[str, tuple[int, bytes]] = {}
        for d in ("proc", "sys", "dev", "seed", "tmp", "etc/dropbear"):
            _add(files, d, 0o40755, b"")
        _add(files, "root", 0o40700, b"")
        _add(files, "init", 0o100755, INIT.encode())
        _add(files, "bin/busybox", 0o100755, Path(busybox).read_bytes())
        _add(files, "bin/dropbear", 0o100755, Path(dropbear).read_bytes())
        for lib in libs:
            _add(files, lib, 0o100755, Path(lib).read_bytes())
        for name, path in modules:
            _add(files, f"lib/mods/{name}.ko", 0o100644, _module_bytes(path))
        _add(files, "lib/mods/order", 0o100644, " ".join(n for n, _ in modules).encode())
        _add(files, "etc/udhcpc.script", 0o100755, UDHCPC.encode())
        _add(files, "etc/passwd", 0o100644, b"root:x:0:0:root:/root:/bin/sh\n")
        _add(files, "etc/group", 0o100644, b"root:x:0:\n")
        _add(files, "etc/shells", 0o100644, b"/bin/sh\n")
        for kind in ("ed25519", "rsa", "ecdsa"):
            _add(files, f"etc/dropbear/dropbear_{kind}_host_key", 0o100600,
                 _host_key(tmp, kind))
        (tmp / "initrd.gz").write_bytes(gzip.compress(cpio(files), 6))
        shutil.copyfile(kernel, tmp / "vmlinuz")
        for name in ("vmlinuz", "initrd.gz"):
            os.chmod(tmp / name, 0o644)
        os.chmod(tmp, 0o755)
        try:
            tmp.rename(where)
        except OSError:   # built at the same time by another run: keep theirs
            if not (where / "initrd.gz").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return done


def _tar(files: dict[str, tuple[int, bytes]]) -> bytes:
    """A gzip'd tar of ``{path: (mode, data)}`` (directories: mode 0o40xxx), owned by
    root, parents before children."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=6) as tf:
        for name, (mode, data) in sorted(files.items(), key=lambda kv: kv[0]):
            ti = tarfile.TarInfo(name)
            ti.mode, ti.mtime = mode & 0o7777, 0
            if stat.S_ISDIR(mode):
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return out.getvalue()


def build_rootfs(cache: Path = CACHE) -> Path:
    """The LXC test guest: the initramfs's busybox + dropbear tree without kernel or
    modules, as a root file system archive (``rootfs.tar.gz``) whose ``/sbin/init`` is
    :data:`LXC_INIT` (the network as libvirt configured it, else DHCP; dropbear in the
    foreground). Cached like :func:`build`; returns the archive's path."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    dropbear = shutil.which("dropbear") or "/usr/sbin/dropbear"
    for what, path in (("busybox (busybox-static)", busybox),
                       ("dropbear (dropbear-bin)", dropbear)):
        if not os.path.exists(path):
            raise RuntimeError(f"no {what}: run scripts/setup-qemu")
    libs = _libraries(dropbear)
    digest = hashlib.sha256(b"lxc" + VERSION.encode() + LXC_INIT.encode() + UDHCPC.encode())
    for path in [busybox, dropbear, *libs]:
        digest.update(path.encode() + b"\0" + Path(path).read_bytes())
    where = cache / f"lxc-{digest.hexdigest()[:16]}"
    archive = where / "rootfs.tar.gz"
    if archive.exists():
        return archive
    cache.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
    try:
        files: dict[str, tuple[int, bytes]] = {}
        for d in ("proc", "sys", "dev", "tmp", "run", "etc/dropbear", "sbin"):
            _add(files, d, 0o40755, b"")
        _add(files, "root", 0o40700, b"")
        _add(files, "sbin/init", 0o100755, LXC_INIT.encode())
        _add(files, "bin/busybox", 0o100755, Path(busybox).read_bytes())
        _add(files, "bin/dropbear", 0o100755, Path(dropbear).read_bytes())
        for lib in libs:
            _add(files, lib, 0o100755, Path(lib).read_bytes())
        _add(files, "etc/udhcpc.script", 0o100755, UDHCPC.encode())
        _add(files, "etc/passwd", 0o100644, b"root:x:0:0:root:/root:/bin/sh\n")
        _add(files, "etc/group", 0o100644, b"root:x:0:\n")
        _add(files, "etc/shells", 0o100644, b"/bin/sh\n")
        for kind in ("ed25519", "rsa", "ecdsa"):
            _add(files, f"etc/dropbear/dropbear_{kind}_host_key", 0o100600,
                 _host_key(tmp, kind))
        (tmp / "rootfs.tar.gz").write_bytes(_tar(files))
        os.chmod(tmp / "rootfs.tar.gz", 0o644)
        os.chmod(tmp, 0o755)
        try:
            tmp.rename(where)
        except OSError:   # built at the same time by another run: keep theirs
            if not archive.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return archive


async def _banner(address: str, timeout: float = 1.0) -> None:
    """Wait (at most ``timeout``) for an SSH banner on port 22: a cheap probe while
    the guest boots (an unanswered ARP would hold a full connect for seconds)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(address, 22), timeout)
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line.startswith(b"SSH-"):
            raise OSError(f"not an SSH server: {line[:40]!r}")
    finally:
        writer.close()


async def ssh_login(address: str, key: Any, deadline: float,
                    command: str = "echo hello; head -1 /proc/cpuinfo; ip -4 addr show eth0"
                    ) -> tuple[float, str]:
    """Log in as root with asyncssh ``key`` as soon as the guest answers and run
    ``command``; returns (monotonic time of the login, its output). A refused key
    raises ``asyncssh.PermissionDenied`` at once; no answer by ``deadline``
    (monotonic) raises AssertionError."""
    import asyncssh  # a test extra: only what logs in needs it

    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            await _banner(address)
            async with asyncssh.connect(address, username="root", client_keys=[key],
                                        known_hosts=None, connect_timeout=20) as conn:
                when = time.monotonic()
                result = await conn.run(command, check=True, timeout=20)
                return when, str(result.stdout)
        except asyncssh.PermissionDenied:
            raise
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            last = exc
            await asyncio.sleep(0.5)   # the guest is still booting: try again
    raise AssertionError(f"no SSH login before the deadline: {last!r}")


if __name__ == "__main__":
    guest = build(Path(sys.argv[1]) if len(sys.argv) > 1 else CACHE)
    print(json.dumps({"kernel": guest.kernel, "initrd": guest.initrd,
                      "cmdline": guest.cmdline}))
