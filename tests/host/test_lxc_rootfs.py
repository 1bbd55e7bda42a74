"""The LXC image rules (pure: :mod:`p2pmarket.auction.rootfscheck`), the container's
domain XML (:mod:`p2pmarket.host.vmm.lxcguest`), and the unpacking of real archives
into a root (:mod:`p2pmarket.host.vmm.lxcroot`; as root, which can shift owners)."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from p2pmarket.auction.enforce import DomainSpec
from p2pmarket.auction.imagecheck import ImageError, blank_qcow2
from p2pmarket.auction.rootfscheck import (
    DIR,
    FILE,
    HARDLINK,
    SYMLINK,
    Member,
    RootfsCheck,
    inspect_rootfs,
    inspect_upload,
)
from p2pmarket.host.vmm.domainxml import DomainPlan
from p2pmarket.host.vmm.guestnet import GuestNetwork
from p2pmarket.host.vmm.lxcguest import id_base, lxc_domain_xml, root_from_xml
from p2pmarket.host.vmm.lxcroot import install_key, unpack_root


def tar_of(*members: tuple[str, str, bytes | str], gz: bool = False) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        for name, kind, data in members:
            ti = tarfile.TarInfo(name)
            if kind == FILE:
                assert isinstance(data, bytes)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
                continue
            ti.type = {DIR: tarfile.DIRTYPE, SYMLINK: tarfile.SYMTYPE,
                       HARDLINK: tarfile.LNKTYPE, "chardev": tarfile.CHRTYPE,
                       "fifo": tarfile.FIFOTYPE}[kind]
            if kind in (SYMLINK, HARDLINK):
                assert isinstance(data, str)
                ti.linkname = data
            tf.addfile(ti)
    return gzip.compress(out.getvalue()) if gz else out.getvalue()


def test_formats_by_magic() -> None:
    plain = tar_of(("etc", DIR, b""))
    assert inspect_rootfs(plain[:4096], len(plain)).format == "tar"
    packed = tar_of(("etc", DIR, b""), gz=True)
    assert inspect_rootfs(packed, len(packed)).format == "tar.gz"
    assert inspect_upload("disk", blank_qcow2(1 << 20), 4 << 16).format == "qcow2"
    for bad, why in ((blank_qcow2(1 << 20), "tar archive"), (b"hello\n", "tar archive"),
                     (gzip.compress(b"x" * 600), "no tar"), (b"\x1f\x8bjunk", "gzip"),
                     (b"", "empty")):
        with pytest.raises(ImageError, match=why):
            inspect_rootfs(bad, max(1, len(bad)))


@pytest.mark.parametrize(("members", "why"), [
    ([Member("/etc/passwd", FILE)], "absolute"),
    ([Member("etc/../../x", FILE)], r"\.\."),
    ([Member("dev/sda", "blockdev")], "block device"),
    ([Member("dev/null", "chardev")], "character device"),
    ([Member("run/p", "fifo")], "FIFO"),
    ([Member("etc", SYMLINK, linkname="/etc"), Member("etc/passwd", FILE)], "symbolic link"),
    ([Member("x", SYMLINK, linkname="/etc/shadow"), Member("x", FILE)], "symbolic link"),
    ([Member("h", HARDLINK, linkname="etc/shadow")], "hard link"),
    ([Member("f", FILE, uid=70000)], "owner"),
    ([Member("big", FILE, size=2 << 20)], "larger than"),
    ([Member("a\0b", FILE)], "NUL"),
])
def test_bad_members_are_refused(members: list[Member], why: str) -> None:
    check = RootfsCheck(1 << 20)
    with pytest.raises(ImageError, match=why):
        for m in members:
            check.check(m)


def test_good_members_pass_with_setuid_dropped() -> None:
    check = RootfsCheck(1 << 20)
    assert check.check(Member("./", DIR, 0o755)).name == ""
    assert check.check(Member("./bin/su", FILE, 0o4755, 10)).mode == 0o755
    assert check.check(Member("bin/sh", SYMLINK, linkname="/bin/busybox")).kind == SYMLINK
    assert check.check(Member("bin/su2", HARDLINK, linkname="./bin/su")).name == "bin/su2"
    assert check.used == 4 * 4096   # every member counts at least one block


def test_the_container_xml() -> None:
    net = GuestNetwork("p2pmlxc-x", "p2pmlxcx0", "198.19.160.0/24")
    plan = DomainPlan(dtype="lxc", name="p2pmlxc-a", spec=DomainSpec(1, 65536, 300, 65536),
                      vcpus=1, max_vcpus=2, network=net.name, mac="52:54:00:01:02:03")
    xml = lxc_domain_xml(plan, "/var/lib/p2pmarket/lxc/p2pmlxc-a", "198.19.160.7", net,
                         id_base("p2pmlxc-a"))
    root = ET.fromstring(xml)
    assert root.get("type") == "lxc" and root.findtext("os/init") == "/sbin/init"
    assert root.findtext("memory") == "65536" and root.findtext("cputune/shares") == "300"
    uid = root.find("idmap/uid")
    assert uid is not None and uid.get("start") == "0" and uid.get("count") == "65536"
    assert int(uid.get("target", "0")) == id_base("p2pmlxc-a") >= 1 << 20
    ip, route = root.find("devices/interface/ip"), root.find("devices/interface/route")
    assert ip is not None and ip.get("address") == "198.19.160.7" and ip.get("prefix") == "24"
    assert route is not None and route.get("gateway") == "198.19.160.1"
    assert root_from_xml(xml) == "/var/lib/p2pmarket/lxc/p2pmlxc-a"
    assert id_base("p2pmlxc-a") != id_base("p2pmlxc-b")


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="shifting owners needs root")


@needs_root
def test_unpack_shifts_owners_and_refuses_bad_archives(tmp_path: Path) -> None:
    good = tmp_path / "good.tar.gz"
    good.write_bytes(tar_of(("sbin", DIR, b""), ("sbin/init", FILE, b"#!/bin/sh\n"),
                            ("bin", DIR, b""), ("bin/sh", SYMLINK, "/sbin/init"), gz=True))
    root = tmp_path / "root"
    assert unpack_root(good, root, 1 << 20, 1 << 20) > 0
    assert (root / "sbin/init").read_bytes() == b"#!/bin/sh\n"
    assert (root / "sbin/init").stat().st_uid == 1 << 20
    assert all((root / d).is_dir() for d in ("proc", "sys", "dev", "tmp", "root/.ssh"))
    for name, data in (("escape", tar_of(("etc", SYMLINK, "/etc"), ("etc/x", FILE, b"1"))),
                       ("device", tar_of(("dev/null", "chardev", b""))),
                       ("climb", tar_of(("../x", FILE, b"1")))):
        bad = tmp_path / f"{name}.tar"
        bad.write_bytes(data)
        with pytest.raises(ImageError):
            unpack_root(bad, tmp_path / name, 1 << 20, 1 << 20)
        assert not (tmp_path / name).exists() and not (tmp_path / f"{name}.new").exists()
    assert not Path("/etc/x").exists()


@needs_root
def test_the_key_is_never_written_through_a_link(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "root").symlink_to(outside)          # the guest's trap
    install_key(root, b"ssh-ed25519 AAAA\n", 1 << 20)
    assert list(outside.iterdir()) == []
    keys = root / "root/.ssh/authorized_keys"
    assert keys.read_bytes() == b"ssh-ed25519 AAAA\n" and keys.stat().st_mode & 0o777 == 0o600
