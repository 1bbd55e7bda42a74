"""Images onto leased hosts (issue 13), in-process markets on 127.0.0.1: ``buy --image
NAME`` picks only hosts offering the base image and the host copies it; a file larger
than the client's chunk is streamed (with progress) into the lease's volume; a file
that is no disk image, or a disk bid too small for it, fails before anything is paid;
``upload`` refused keeps the lease and says so; ``buy`` refused gives the lease
back. The hosts' VMM keeps volumes as byte
counts (libvirt's test driver takes no uploads)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from p2pmarket.auction.imagecheck import blank_qcow2
from p2pmarket.cli.main import parser
from p2pmarket.client import imageupload
from p2pmarket.client.buyer import BuyError, buy, open_wallet
from p2pmarket.client.imageupload import (
    ImageUploadError,
    install_image,
    local_image,
    put_image,
)
from p2pmarket.host.baseimages import scan_images
from p2pmarket.host.vmm.base import VmmError, VolumeInfo
from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM
from p2pmarket.node.service import Node
from tests.client.test_lease_money import ready
from tests.client.test_quote_before_pay import BUDGET, FUNDS, funded
from tests.market_helpers import LocalMarket, local_market

MIB = 1024 * 1024
BIDS = ["cpu:1,0.1,1", "memory:1,128MiB,256MiB", "disk:1,16MiB,64MiB"]


class CountingVMM(LibvirtVMM):
    """test:///default plus volumes kept as (bytes, format, sha256)."""

    def __init__(self, prefix: str) -> None:
        super().__init__("test:///default", prefix=prefix)
        self.vols: dict[str, tuple[int, str, str]] = {}

    def upload_volume(self, account_id: str, size: int, chunks: Iterator[bytes],
                      fmt: str = "raw") -> VolumeInfo:
        got, digest = 0, hashlib.sha256()
        for chunk in chunks:
            got += len(chunk)
            digest.update(chunk)
        if got != size:
            raise VmmError("upload ended early", got)
        self.vols[account_id] = (size, fmt, digest.hexdigest())
        return self.volume(account_id)  # type: ignore[return-value]

    def volume(self, account_id: str) -> VolumeInfo | None:
        held = self.vols.get(account_id)
        if held is None:
            return None
        kib = -(-held[0] // 1024)
        return VolumeInfo(account_id + ".img", "/x", kib, kib, kib, held[1])

    def delete_volume(self, account_id: str) -> None:
        self.vols.pop(account_id, None)


def counting(node: Node) -> CountingVMM:
    vmm = CountingVMM(node.vmm.prefix)   # type: ignore[attr-defined]
    node.vmm = node.auctioneer.vmm = node.auctioneer.sync.vmm = vmm
    return vmm


async def offer(m: LocalMarket, images: Path | None) -> list[CountingVMM]:
    """Disk on every host, the base images of ``images`` on the last; republished."""
    vmms = []
    for node in m.nodes:
        vmms.append(counting(node))
        auct = node.auctioneer
        await auct.set_config(auct.config.with_capacity("disk", "64MiB"))
    if images is not None:
        m.nodes[-1].base_images, skipped = scan_images(images)
        assert skipped == ["junk.img: not a disk image: this is a text file"]
    for node in m.nodes:
        await node.publish_if_moved(force=True)
    return vmms


def images_dir(root: Path) -> Path:
    root.mkdir()
    (root / "tiny.qcow2").write_bytes(blank_qcow2(32 * MIB))
    (root / "junk.img").write_text("not an image\n" * 100)
    return root


async def test_buy_with_a_base_image_name_buys_only_from_hosts_offering_it(
        tmp_path: Path) -> None:
    async with local_market(tmp_path / "m", n=3) as m:
        vmms = await offer(m, images_dir(tmp_path / "images"))
        await ready(m)
        wallet = await funded(m)
        with pytest.raises(BuyError, match="with the base image nope"):
            await buy(wallet, BIDS, BUDGET, 3600, max_hosts=3, base_image="nope")
        report = await buy(wallet, BIDS, BUDGET, 3600, max_hosts=3, base_image="tiny")
        [bought] = report.purchases
        assert bought.host.node_id == m.nodes[-1].identity.node_id
        assert [i.name for i in bought.host.record.images] == ["tiny"]
        [outcome] = await install_image(wallet, [bought.lease.lease_id], "tiny")
        assert outcome.ok, outcome
        assert outcome.result["format"] == "qcow2" and outcome.result["image"] == "tiny"
        size, fmt, sha = vmms[-1].vols[bought.account_id]
        assert (size, fmt) == (4 * 64 * 1024, "qcow2")
        assert sha == hashlib.sha256(blank_qcow2(32 * MIB)).hexdigest()
        # a name the host does not offer: the lease stays, the outcome says why
        [bad] = await install_image(wallet, [bought.lease.lease_id], "other")
        assert not bad.ok and "offers no base image" in bad.detail
        assert bought.lease.lease_id in wallet.leases()


async def test_a_file_streams_into_the_lease_and_bad_files_fail_before_paying(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imageupload, "CHUNK", 256 * 1024)
    image = tmp_path / "disk.img"
    data = bytearray(bytes(range(256)) * (3 * MIB // 256 + 7))
    data[510:512] = b"\x55\xaa"
    image.write_bytes(bytes(data))
    elf = tmp_path / "tool"
    elf.write_bytes(b"\x7fELF" + bytes(MIB))
    async with local_market(tmp_path / "m", n=2) as m:
        vmms = await offer(m, None)
        await ready(m)
        wallet = await funded(m)
        host = m.nodes[-1].identity.node_id.hex()
        base = ["--wallet", str(wallet.root), "--budget", "5", "--host", host]
        # refused before paying: not an image, a disk bid too small, no disk bid
        for extra, bids, message in [
                (["--image", str(elf)], BIDS, "this is an ELF executable"),
                (["--image", str(image)], [*BIDS[:2], "disk:1,1MiB,64MiB"],
                 "minimum is smaller than the image"),
                (["--image", str(image)], BIDS[:2], "needs a disk bid"),
                (["--image", "Not A Name"], BIDS, "existing file or a base image name")]:
            args = parser().parse_args(["buy", *base, *extra, *bids])
            with pytest.raises(Exception, match=message):
                await args.run(args)
        assert wallet.leases() == {}
        # bought with the file: streamed in chunks smaller than it, progress shown
        args = parser().parse_args(["buy", *base, "--json", "--image", str(image), *BIDS])
        code = await args.run(args)
        doc = json.loads(capsys.readouterr().out)
        assert code == 0, doc
        [img] = doc["images"]
        assert img["ok"] and img["format"] == "raw", img
        [purchase] = doc["purchases"]
        aid = purchase["account_id"]
        assert vmms[-1].vols[aid] == (len(data), "raw", hashlib.sha256(data).hexdigest())
        sent: list[tuple[int, int]] = []
        lease_id = purchase["lease"]["lease_id"]
        reply = await put_image(wallet, lease_id, local_image(image),
                                lambda s, t: sent.append((s, t)))
        assert reply["capacity_kib"] == -(-len(data) // 1024)
        assert len(sent) == -(-len(data) // (256 * 1024)) and sent[-1] == (len(data),
                                                                             len(data))
        # a file that changed after its hash: refused before sending, the lease is kept
        checked = local_image(image)
        image.write_bytes(bytes(data[:-1]) + b"x")
        with pytest.raises(ImageUploadError, match="changed since it was checked"):
            await put_image(wallet, lease_id, checked)
        assert lease_id in wallet.leases()
        # `p2pmarket upload` with an image the lease's disk cannot hold
        big = tmp_path / "big.qcow2"
        big.write_bytes(blank_qcow2(1024 * MIB) + bytes(8 * MIB))   # refused at its head
        args = parser().parse_args(["upload", "--wallet", str(wallet.root), lease_id,
                                    str(big)])
        assert await args.run(args) == 1
        out = capsys.readouterr()
        assert out.err.count("\n") == 1 and out.err.startswith("error: ")
        assert "larger than the account's disk allocation; the lease is kept" in out.err


class RefusingVMM(CountingVMM):
    """A host whose disk will not take the image (as a full pool would say)."""

    def upload_volume(self, account_id: str, size: int, chunks: Iterator[bytes],
                      fmt: str = "raw") -> VolumeInfo:
        raise VmmError("the storage pool is full", account_id)


async def test_a_lease_whose_image_does_not_go_in_is_given_back(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every purchase yields a machine or its money comes back: the host refuses the
    upload after the payment, so ``buy`` cancels the lease and the refund arrives;
    ``--keep-failed`` keeps the lease instead."""
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(510) + b"\x55\xaa" + bytes(MIB))
    async with local_market(tmp_path / "m", n=2) as m:
        await offer(m, None)
        node = m.nodes[-1]
        node.vmm = node.auctioneer.vmm = node.auctioneer.sync.vmm = RefusingVMM(
            node.vmm.prefix)   # type: ignore[attr-defined]
        await ready(m)
        wallet = await funded(m)
        base = ["buy", "--wallet", str(wallet.root), "--budget", "5", "--host",
                node.identity.node_id.hex(), "--json", "--image", str(image)]
        args = parser().parse_args([*base, *BIDS])
        code = await args.run(args)
        doc = json.loads(capsys.readouterr().out)
        [purchase] = doc["purchases"]
        [img] = doc["images"]
        [gone] = doc["cancelled"]
        assert code == 1 and not img["ok"] and "storage pool is full" in img["detail"]
        assert gone["lease_id"] == purchase["lease"]["lease_id"] == img["lease_id"]
        assert gone["status"] == "done" and gone["why"].startswith("the image did not go in")
        paid = purchase["paid"]
        assert 0 <= paid - gone["refunded"] < paid // 100, (paid, gone)   # seconds of use
        assert wallet.leases()[gone["lease_id"]].get("closed") == "yes"
        async with open_wallet(wallet) as (w, _):
            assert w.balance() == FUNDS - paid + gone["refunded"]
        # --keep-failed: the lease stays open, nothing is refunded
        args = parser().parse_args([*base, "--keep-failed", *BIDS])
        assert await args.run(args) == 1
        doc = json.loads(capsys.readouterr().out)
        [purchase] = doc["purchases"]
        assert doc["cancelled"] == [] and not doc["images"][0]["ok"]
        assert "closed" not in wallet.leases()[purchase["lease"]["lease_id"]]


def test_a_root_file_system_tarball_is_an_image_for_container_hosts(tmp_path: Path) -> None:
    """A buyer's tar goes only to lxc hosts, a disk image only to the others."""
    import io
    import tarfile
    from types import SimpleNamespace

    from p2pmarket.cli.buy import image_kind_of
    from p2pmarket.client.buyer import boots
    from p2pmarket.dht.records import HostRecord, VmAd

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("sbin/init")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"#!\n"))
    rootfs = tmp_path / "root.tar.gz"
    rootfs.write_bytes(buf.getvalue())
    disk = tmp_path / "disk.qcow2"
    disk.write_bytes(blank_qcow2(MIB))
    got = local_image(rootfs)
    assert (got.info.format, got.info.kind) == ("tar.gz", "rootfs")
    assert image_kind_of(got) == "rootfs" and image_kind_of(local_image(disk)) == "disk"
    assert image_kind_of("debian-12") == "" and image_kind_of(None) == ""

    def record(driver: str | None) -> HostRecord:
        vm = None if driver is None else VmAd(driver, 262144, "")
        return SimpleNamespace(vm=vm)   # type: ignore[return-value]   # boots reads .vm

    assert boots(record("lxc"), "rootfs") and not boots(record("lxc"), "disk")
    assert boots(record("qemu"), "disk") and not boots(record("qemu"), "rootfs")
    assert boots(record(None), "disk")
    junk = tmp_path / "notes.txt"
    junk.write_text("hello\n" * 100)
    with pytest.raises(Exception, match="not a disk image: this is a text file"):
        local_image(junk)
