#!/usr/bin/env python3
"""Workload benchmark: what a buyer's use of a lease costs (issue 13). Sections:

- ``upload``: a ``--upload-mb`` MiB disk image (default 1024: a sparse file of zeros
  behind a real qcow2 header, or with ``--raw`` an MBR-signed raw image) streamed by
  the buyer's client (:func:`p2pmarket.client.imageupload.upload_file`, from the
  file) on 127.0.0.1 to the real upload route (:func:`p2pmarket.host.control.
  upload_route`, with the real :class:`~p2pmarket.host.auctioneer.Auctioneer` and
  :class:`~p2pmarket.host.vmm.libvirt_backend.LibvirtVMM`) in a subprocess of its own
  (this script with ``--serve-upload``), so the host's memory is measured alone. The
  VMM is ``qemu:///system`` with a dir pool under a temporary directory (libvirt's
  ``test:///`` driver cannot take uploads; ``scripts/setup-qemu`` starts libvirtd);
  only disk is bought, so no domain starts. Reported: ``upload_mb_s`` (MiB per second,
  first byte sent to the host's answer) and ``upload_rss_growth_mb`` (the host
  process's peak resident memory during the upload, VmHWM reset through
  /proc/<pid>/clear_refs just before, or VmRSS sampled every 10 ms where that cannot
  be written, minus its VmRSS before). libvirtd writes the file; its memory is not
  counted (reported apart as ``libvirtd_rss_growth_mb`` when it can be read).
- ``boot``: ``--boot-runs`` purchases (default 3) in a market of two in-process nodes
  whose second is a qemu:///system host booting the test guest
  (:mod:`tests.support.guestmarket`: the host's kernel + a busybox/dropbear initramfs,
  QEMU TCG: KVM guests hang on these machines); each: ``buy`` with a fresh ed25519 key
  (the library call of ``p2pmarket buy --ssh-key``), then from the lease granted (the
  purchase returned) to the first successful SSH login through the leased port:
  the key into the seed, the restart, the boot, dropbear. Reported:
  ``boot_to_ssh_s_qemu`` (median), ``boot_to_ssh_s_qemu_runs``.
- ``boot-lxc``: the same with an ``lxc:///`` host (:func:`tests.support.guestmarket.
  lxc_market`) offering the LXC test guest's root archive as the base image
  ``p2pm-test``; from the lease granted to the first SSH login: ``host.use_image`` (the
  archive copied into the account's volume), ``host.set_key``, the root unpacked with
  the key, the container started, dropbear. Reported: ``boot_to_ssh_s_lxc`` (median),
  ``boot_to_ssh_s_lxc_runs``.

    .venv/bin/python scripts/bench/workload.py --json
    .venv/bin/python scripts/bench/workload.py --upload-mb 16 --json      (tiny)

Goals: upload at least 200 MB/s with RSS growth under 20 MB; qemu TCG boot to SSH
under 30 s, LXC under 3 s. The last line printed
is one JSON object (with ``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

MIB = 1024 * 1024
URI = "qemu:///system"


def vm_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def pid_of(name: str) -> int | None:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if (d / "comm").read_text().strip() == name:
                    return int(d.name)
            except OSError:
                continue
    return None


# -- the host process --------------------------------------------------------------

async def serve_upload(pool_dir: str, disk_mib: int, holder_key: bytes) -> None:
    """A host with the real upload route and an account of ``holder_key`` with
    ``disk_mib`` MiB of disk; prints ``{url, host_key, account_id}`` and serves until
    stdin closes."""
    from aiohttp import web

    from p2pmarket.api.rpc import CallContext
    from p2pmarket.auction.accounts import Payment
    from p2pmarket.core.clock import now_us
    from p2pmarket.core.config import Settings
    from p2pmarket.core.identity import Identity
    from p2pmarket.host.accountstore import AccountStore
    from p2pmarket.host.auctioneer import Auctioneer
    from p2pmarket.host.control import control_handlers, upload_route
    from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM
    from tests.support.libvirtclean import forget_domains, remove_pool

    tag = uuid.uuid4().hex[:8]
    vmm = LibvirtVMM(URI, prefix=f"bench-{tag}-", network=None, pool=f"bench-{tag}",
                     pool_path=pool_dir)
    ident = Identity.generate()

    async def accept(payer: bytes, cert: dict[str, Any]) -> Payment:
        return Payment(cert["id"].encode(), int(cert["amount"]))

    store = AccountStore(Path(pool_dir).parent / "host.sqlite")
    auct = Auctioneer(ident, Settings(cpu_mhz=4000, memory_kib=4 * MIB, min_price=1), store,
                      vmm, accept)
    await control_handlers(auct)["host_set_capacity"]({"resource": "disk",
                                                       "amount": f"{disk_mib}MiB"})
    res = await auct.create_account(CallContext(sender=holder_key, ts=now_us()), {
        "payment": {"id": "bench", "amount": 10**9}, "interval_s": 3600,
        "bids": {"disk": f"1,{disk_mib // 2}MiB,{disk_mib}MiB"}})
    app = web.Application()
    app.add_routes([upload_route(auct)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(json.dumps({"url": f"http://127.0.0.1:{port}", "host_key": ident.public_key.hex(),
                      "account_id": res["account_id"]}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await runner.cleanup()
    forget_domains(vmm)   # a disk-only account still gets a machine
    remove_pool(vmm.conn, f"bench-{tag}")
    vmm.close()
    store.close()


# -- the buyer's side ----------------------------------------------------------------

def make_image(path: Path, mib: int, raw: bool) -> None:
    from p2pmarket.auction.imagecheck import blank_qcow2
    size = mib * MIB
    with path.open("wb") as f:
        if raw:
            f.write(bytes(510) + b"\x55\xaa")
        else:
            f.write(blank_qcow2(size))
        f.truncate(size)   # the rest: a sparse run of zeros


async def measure_upload(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from p2pmarket.client.imageupload import local_image, upload_file
    from p2pmarket.core.identity import Identity

    image_path = work / ("image.img" if args.raw else "image.qcow2")
    make_image(image_path, args.upload_mb, args.raw)
    disk_mib = 2 * args.upload_mb + 64
    holder = Identity.generate()
    proc = subprocess.Popen([sys.executable, __file__, "--serve-upload", str(work / "pool"),
                             "--disk-mib", str(disk_mib), "--holder",
                             holder.public_key.hex()],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        hello = json.loads(proc.stdout.readline())
        t0 = time.perf_counter()
        image = await asyncio.to_thread(local_image, image_path)
        hash_s = time.perf_counter() - t0
        libvirtd = pid_of("libvirtd")
        before = vm_kib(proc.pid, "VmRSS")
        hwm = reset_peak(proc.pid)
        lv_before = vm_kib(libvirtd, "VmRSS") if libvirtd else 0
        peak = [before]
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], vm_kib(proc.pid, "VmRSS"))
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        t0 = time.perf_counter()
        reply = await upload_file(holder, hello["url"], bytes.fromhex(hello["host_key"]),
                                  hello["account_id"], image)
        elapsed = time.perf_counter() - t0
        stop.set()
        await sampler
        top = vm_kib(proc.pid, "VmHWM") if hwm else peak[0]
        lv_after = vm_kib(libvirtd, "VmRSS") if libvirtd else 0
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    mb_s = args.upload_mb / elapsed
    growth = (top - before) / 1024
    return {"upload_mb": args.upload_mb, "upload_format": reply.get("format"),
            "upload_mb_s": round(mb_s, 1), "upload_rss_growth_mb": round(growth, 2),
            "upload_s": round(elapsed, 3), "hash_pass_s": round(hash_s, 3),
            "upload_vmm": f"{URI} dir pool", "upload_host_process": "subprocess",
            "upload_rss_method": "VmHWM after clear_refs" if hwm else "VmRSS sampled / 10 ms",
            "libvirtd_rss_growth_mb": round((lv_after - lv_before) / 1024, 2)
            if libvirtd else None,
            "upload_capacity_kib": reply.get("capacity_kib"),
            "upload_goals_met": mb_s >= 200 and growth < 20}


async def boot_runs(m: Any, runs_n: int, bids: list[str], login_s: float,
                    finish: Any, base_image: str | None = None) -> list[float]:
    """``runs_n`` purchases at ``m``'s host, each timed from the lease granted (its
    base image copied in, if named; the key given) to the first SSH login; ``finish``
    (host, purchase) ends each one so the next gets the port."""
    import asyncssh

    from p2pmarket.client.buyer import buy, open_wallet
    from p2pmarket.client.guestaccess import install_key
    from p2pmarket.client.imageupload import install_image
    from tests.support.guestmarket import login

    for node in m.nodes:
        await node.announced.wait()
    buyer = m.wallet("buyer")
    async with open_wallet(m.mint) as (mint, _):
        await mint.mint(10**9)
        await mint.send(buyer.identity().public_key, 10**9, "bench")
    host = m.nodes[1]
    runs: list[float] = []
    for _ in range(runs_n):
        key = asyncssh.generate_private_key("ssh-ed25519")
        report = await buy(buyer, bids, 2_000_000, 3600, 1,
                           only=frozenset({host.identity.node_id}), ssh="require",
                           base_image=base_image)
        if len(report.purchases) != 1:
            raise RuntimeError(f"no lease: {report.errors or report.skipped}")
        granted = time.monotonic()
        lease_id = report.purchases[0].lease.lease_id
        if base_image is not None:
            [put] = await install_image(buyer, [lease_id], base_image)
            if not put.ok:
                raise RuntimeError(f"no image: {put.detail}")
        [outcome] = await install_key(buyer, [lease_id], key.export_public_key().decode())
        access = (outcome.reply or {}).get("access") or {}
        if not outcome.ok or access.get("state") != "forwarded":
            raise RuntimeError(f"no forwarded port: {outcome.detail} {access}")
        await login(int(access["port"]), key, granted + login_s)
        runs.append(round(time.monotonic() - granted, 2))
        await finish(host, buyer, report.purchases[0])
    return runs


async def measure_boot(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from tests.support.guestmarket import qemu_market, skip_reason

    why = skip_reason()
    if why is not None:
        return {"boot_to_ssh_s_qemu": None, "boot_skipped": f"{why}; run scripts/setup-qemu"}

    async def undefine(host: Any, _buyer: Any, purchase: Any) -> None:
        await asyncio.to_thread(host.vmm.undefine, purchase.account_id)

    async with qemu_market(work / "m") as m:
        runs = await boot_runs(m, args.boot_runs, ["cpu:1,0.1,1", "memory:1,128MiB,256MiB"],
                               180, undefine)
    runs_sorted = sorted(runs)
    return {"boot_to_ssh_s_qemu": runs_sorted[len(runs) // 2],
            "boot_to_ssh_s_qemu_runs": runs,
            "boot_goals_met_qemu": runs_sorted[len(runs) // 2] < 30}


async def measure_boot_lxc(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from p2pmarket.client.leases import cancel
    from tests.support.guestmarket import LXC_IMAGE, LXC_URI, lxc_market, skip_reason

    why = skip_reason(LXC_URI)
    if why is not None:
        return {"boot_to_ssh_s_lxc": None, "boot_lxc_skipped": f"{why}; run scripts/setup-qemu"}

    async def cancelled(_host: Any, buyer: Any, purchase: Any) -> None:
        await cancel(buyer, purchase.lease.lease_id)   # frees its port for the next run

    async with lxc_market(work) as m:
        runs = await boot_runs(m, args.boot_runs, ["cpu:1,0.1,1", "memory:1,64MiB,128MiB",
                                                   "disk:1,64MiB,64MiB"],
                               60, cancelled, base_image=LXC_IMAGE)
    median = sorted(runs)[len(runs) // 2]
    return {"boot_to_ssh_s_lxc": median, "boot_to_ssh_s_lxc_runs": runs,
            "boot_goals_met_lxc": median < 3}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    if "upload" in args.sections:
        with tempfile.TemporaryDirectory(prefix="p2pm-workload-") as tmp:
            doc.update(await measure_upload(args, Path(tmp)))
    if "boot" in args.sections:
        with tempfile.TemporaryDirectory(prefix="p2pm-workload-") as tmp:
            doc.update(await measure_boot(args, Path(tmp)))
    if "boot-lxc" in args.sections:
        with tempfile.TemporaryDirectory(prefix="p2pm-workload-") as tmp:
            doc.update(await measure_boot_lxc(args, Path(tmp)))
    return doc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve-upload", metavar="POOL_DIR", help=argparse.SUPPRESS)
    p.add_argument("--disk-mib", type=int, default=2048, help=argparse.SUPPRESS)
    p.add_argument("--holder", default="", help=argparse.SUPPRESS)
    p.add_argument("--upload-mb", type=int, default=1024, help="image size, MiB")
    p.add_argument("--raw", action="store_true", help="a raw image instead of qcow2")
    p.add_argument("--sections", nargs="+", default=["upload", "boot", "boot-lxc"],
                   choices=["upload", "boot", "boot-lxc"], help="which measurements to run")
    p.add_argument("--boot-runs", type=int, default=3, help="purchases booted (boot)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    if args.serve_upload:
        asyncio.run(serve_upload(args.serve_upload, args.disk_mib,
                                 bytes.fromhex(args.holder)))
        return 0
    doc = asyncio.run(run(args))
    if not args.json:
        for k, v in doc.items():
            print(f"{k}: {v}")
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    os.umask(0o022)
    raise SystemExit(main())
