#!/usr/bin/env python3
"""Relay benchmark: peer RPC and a streamed upload, direct and through a relay, on loopback.

    .venv/bin/python scripts/bench/relay.py --json
    .venv/bin/python scripts/bench/relay.py --calls 20 --upload-mb 4 --json   (tiny)

The relay (:class:`p2pmarket.nat.relay.RelayService`) runs in a subprocess of its own
(this script with ``--serve-relay``), so its memory is measured alone; the host (a real
peer app with a test RPC and an upload route hashing its body as it streams, and its
:class:`~p2pmarket.nat.relayclient.RelayClient`) and the buyer run in this process.
127.0.0.1 only.

It makes ``--calls`` RPCs each way, direct and relayed alternately, one at a time after
a warm-up, and reports the medians; then streams an ``--upload-mb`` MiB upload (PUT with
Content-Length, from a generator: never held whole) direct to the host and then through
the relay, checks the host got it intact (SHA-256), and reports the relayed rate and the
relay process's resident-memory growth during the relayed upload: its peak (VmHWM, reset
through /proc/<pid>/clear_refs just before) minus its RSS before, or, where clear_refs
cannot be written, the largest RSS sampled every 10 ms. MB here is MiB (2**20 bytes).
The goals: relayed p50 <= 2 x direct p50 + 2 ms; >= 100 MB/s; RSS growth < 20 MB.
The last line printed is one JSON object (with ``--json``) with at least: calls,
direct_p50_ms, relayed_p50_ms, relay_overhead_ratio, relay_upload_mb_s,
relay_rss_growth_mb, upload_intact.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp
from aiohttp import web

from p2pmarket.api.client import PeerClient
from p2pmarket.api.rpc import CallContext, RpcDispatcher
from p2pmarket.api.server import Site, peer_app
from p2pmarket.core.identity import Identity
from p2pmarket.nat.relay import RelayService
from p2pmarket.nat.relayclient import RelayClient

HOST = "127.0.0.1"
MIB = 1024 * 1024
WARMUP = 20


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else 0.0


def ms(x: float) -> float:
    return round(x * 1000, 3)


# -- the relay process --------------------------------------------------------------

async def serve_relay() -> None:
    """Run a relay on 127.0.0.1 until stdin closes; print {"port", "key"} when up."""
    identity = Identity.generate()
    port_box: list[int] = []
    service = RelayService(identity, lambda: f"http://{HOST}:{port_box[0]}")
    app = web.Application()
    app.add_routes(service.routes())
    site = Site(app)
    port_box.append(await site.start(HOST, 0))
    print(json.dumps({"port": port_box[0], "key": identity.public_key.hex()}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)
    await service.close()
    await site.stop()


def vm_kib(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {name} for pid {pid}")


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# -- the host -----------------------------------------------------------------------

async def start_host(identity: Identity) -> tuple[Site, str]:
    dispatcher = RpcDispatcher(identity)

    async def echo(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return {"echo": args}

    async def upload(request: web.Request) -> web.Response:
        h, n = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(MIB):
            h.update(chunk)
            n += len(chunk)
        return web.json_response({"n": n, "sha256": h.hexdigest()})

    dispatcher.register("bench.echo", echo)
    site = Site(peer_app(dispatcher, [web.put("/upload", upload)]))
    port = await site.start(HOST, 0)
    return site, f"http://{HOST}:{port}"


def block_of(seed: int) -> bytes:
    return hashlib.sha256(seed.to_bytes(8, "big")).digest() * (MIB // 32)


async def upload(http: aiohttp.ClientSession, url: str, mib: int,
                 blocks: list[bytes]) -> tuple[float, dict[str, Any]]:
    async def body() -> Any:
        for i in range(mib):
            yield blocks[i % len(blocks)]

    start = time.perf_counter()
    async with http.put(url + "/upload", data=body(),
                        headers={"Content-Length": str(mib * MIB)}) as resp:
        got = await resp.json()
    return time.perf_counter() - start, got


async def sample_rss(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], vm_kib(pid, "VmRSS"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.01)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    relay_proc = subprocess.Popen([sys.executable, __file__, "--serve-relay"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert relay_proc.stdout is not None and relay_proc.stdin is not None
    try:
        hello = json.loads(relay_proc.stdout.readline())
        relay_url, relay_key = f"http://{HOST}:{hello['port']}", bytes.fromhex(hello["key"])
        host_identity = Identity.generate()
        site, local_url = await start_host(host_identity)
        client = RelayClient(host_identity, relay_url, relay_key, local_url)
        task = asyncio.ensure_future(client.run())
        await asyncio.wait_for(client.reserved.wait(), 10)
        out = {"calls": args.calls, "upload_mb": args.upload_mb,
               "relay_process": "subprocess"}
        out.update(await measure_rpc(args, host_identity, local_url, client.url))
        out.update(await measure_upload(args, local_url, client.url, relay_proc.pid))
        await client.close()
        await asyncio.wait_for(task, 10)
        await site.stop()
        return out
    finally:
        relay_proc.stdin.close()
        try:
            relay_proc.wait(10)
        except subprocess.TimeoutExpired:
            relay_proc.kill()
            relay_proc.wait()


async def measure_rpc(args: argparse.Namespace, host: Identity, direct_url: str,
                      relayed_url: str) -> dict[str, Any]:
    direct: list[float] = []
    relayed: list[float] = []
    async with PeerClient(Identity.generate()) as peers:
        for i in range(WARMUP + args.calls):
            for url, times in ((direct_url, direct), (relayed_url, relayed)):
                start = time.perf_counter()
                got = await peers.call(url, host.public_key, "bench.echo", {"i": i})
                took = time.perf_counter() - start
                assert got == {"echo": {"i": i}}
                if i >= WARMUP:
                    times.append(took)
    d50, r50 = pct(direct, 0.5), pct(relayed, 0.5)
    return {"direct_p50_ms": ms(d50), "relayed_p50_ms": ms(r50),
            "direct_p95_ms": ms(pct(direct, 0.95)), "relayed_p95_ms": ms(pct(relayed, 0.95)),
            "relay_overhead_ratio": round(r50 / d50, 2) if d50 else 0.0,
            "relay_overhead_ms": ms(r50 - d50),
            "rpc_goal_met": r50 <= 2 * d50 + 0.002}


async def measure_upload(args: argparse.Namespace, direct_url: str, relayed_url: str,
                         relay_pid: int) -> dict[str, Any]:
    blocks = [block_of(i) for i in range(8)]
    expected = hashlib.sha256()
    for i in range(args.upload_mb):
        expected.update(blocks[i % len(blocks)])
    async with aiohttp.ClientSession() as http:
        direct_s, got_direct = await upload(http, direct_url, args.upload_mb, blocks)
        before = vm_kib(relay_pid, "VmRSS")
        hwm = reset_peak(relay_pid)
        peak, stop = [before], asyncio.Event()
        sampler = asyncio.ensure_future(sample_rss(relay_pid, peak, stop))
        relayed_s, got = await upload(http, relayed_url, args.upload_mb, blocks)
        stop.set()
        await sampler
    top = vm_kib(relay_pid, "VmHWM") if hwm else peak[0]
    intact = got == got_direct == {"n": args.upload_mb * MIB,
                                   "sha256": expected.hexdigest()}
    rate = args.upload_mb / relayed_s
    growth = (top - before) / 1024
    return {"direct_upload_mb_s": round(args.upload_mb / direct_s, 1),
            "relay_upload_mb_s": round(rate, 1), "upload_intact": intact,
            "relay_rss_before_mb": round(before / 1024, 1),
            "relay_rss_growth_mb": round(growth, 1),
            "relay_rss_method": "VmHWM after clear_refs" if hwm else "VmRSS sampled / 10 ms",
            "upload_goal_met": intact and rate >= 100 and growth < 20}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--upload-mb", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.add_argument("--serve-relay", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.serve_relay:
        asyncio.run(serve_relay())
        return 0
    if not 1 <= args.calls <= 100_000 or not 1 <= args.upload_mb <= 10_000:
        p.error("--calls must be 1..100000 and --upload-mb 1..10000")
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    return 0 if result["upload_intact"] else 1


if __name__ == "__main__":
    sys.exit(main())
