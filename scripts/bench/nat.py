#!/usr/bin/env python3
"""NAT benchmark (issue 11) on the network-namespace testnet: registration by callback,
peer RPC direct and through a relay, and a streamed upload through the relay.

    sudo .venv/bin/python scripts/bench/nat.py --json
    sudo .venv/bin/python scripts/bench/nat.py --calls 20 --registrations 5 --upload-mb 4 --json

Root only (network namespaces and iptables; ``p2pmarket/testnet/netns.py``). It writes
a topology of its own (:data:`TOPOLOGY`) to a temp dir and builds it with
``NetnsTestnet.up(..., start_nodes=False)``: the relay site ``r1`` (public), the host
``hn1`` behind the plain NAT router ``nat1`` (masquerade, nothing gets in), the buyer
``b1`` (public); all in 198.18.0.0/15. Each role is this script run in its site's
namespace (``testnet.popen_in``), each printing JSON lines on stdout:

* ``--serve-relay`` (in r1): one peer app on 0.0.0.0:7400 with a
  :class:`~p2pmarket.nat.relay.RelayService`, a :class:`~p2pmarket.nat.registrar.
  Registrar`, a test RPC ``bench.echo`` and ``PUT /upload`` (hashes its body as it
  streams); prints its pid and key, and its counters when stdin closes.
* ``--serve-host`` (in hn1): its peer app on 0.0.0.0:7400 (``nat.echo`` from
  :func:`~p2pmarket.nat.registration.echo_handlers`, ``bench.echo``, ``PUT /upload``)
  and a :class:`~p2pmarket.nat.relayclient.RelayClient` holding a reservation at r1;
  on ``register N`` on stdin it registers N times with r1's registrar, one at a time.
* ``--measure`` (in b1): RPCs, the upload, then its own N registrations (it answers
  ``nat.echo`` on its own peer app), and prints the figures.

What is measured (MB is MiB, 2**20 bytes; p50/p95 by nearest rank):

* ``register_p50_ms``/``register_p95_ms``: hn1's registrations, from calling
  :func:`~p2pmarket.nat.registration.register` to its checked attestation (the signed
  request, the dial data the registrar asks for, its random delay of 0.05..0.25 s (the
  default, part of what a real registration costs), both callbacks, the signed answer);
  expected class ``nat``. ``register_public_*``: the same from b1 (class ``public``).
  The registrar's rate limits are raised for the bench (:data:`BENCH_LIMITS`): the
  default 12 per peer per minute would refuse a run of 40 from one address.
* ``direct_rpc_p50_ms``: b1 -> r1's own ``bench.echo`` (a public host, one hop);
  ``relayed_rpc_p50_ms``: b1 -> r1 -> hn1's ``bench.echo`` through its reservation.
  :data:`WARMUP` calls each, then ``--calls`` each, alternately, one at a time.
* ``relay_upload_mb_s``: ``--upload-mb`` MiB PUT with Content-Length from a generator
  (never held whole) b1 -> r1 -> hn1's ``/upload``, checked intact by SHA-256;
  ``relay_rss_growth_mb``: r1's peak RSS during it (VmHWM reset through clear_refs just
  before, else RSS sampled every 10 ms) minus its RSS before. Only then an upload
  b1 -> r1's own ``/upload`` (``direct_upload_mb_s``, for reference), so that it cannot
  warm the relay's heap for the measured one.

Goals (``goals_met``): relayed_rpc_p50_ms <= 2 x direct + 2 ms; relay_upload_mb_s >= 100
with relay_rss_growth_mb < 20 (and intact); register_p95_ms < 1000 with every one of
hn1's registrations accepted. The last line printed is one JSON object (``--json``).
Clean-up always: each role's stdin is closed, then it is terminated and killed by pid if
still running, then ``testnet.down()`` and the temp dir removed; the whole run is bounded
by ``--time-limit`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import aiohttp
from aiohttp import web
from relay import block_of, ms, pct, reset_peak, sample_rss, upload, vm_kib

from p2pmarket.api.client import PeerClient
from p2pmarket.api.rpc import CallContext, RpcDispatcher
from p2pmarket.api.server import Site, peer_app
from p2pmarket.core.identity import Identity
from p2pmarket.core.urls import http_url
from p2pmarket.nat.errors import NatError
from p2pmarket.nat.limits import DialLimits
from p2pmarket.nat.registrar import Registrar
from p2pmarket.nat.registration import echo_handlers, register
from p2pmarket.nat.relay import RelayService
from p2pmarket.nat.relayclient import RelayClient
from p2pmarket.testnet.netns import NetnsTestnet

MIB = 1024 * 1024
PORT = 7400
WARMUP = 20
START_S = 20.0                     # a role must be up within this
STOP_S = 5.0                       # a role must exit within this of its stdin closing
BENCH_LIMITS = DialLimits(per_peer_per_min=10_000, total_per_min=20_000)
TOPOLOGY = """\
# scripts/bench/nat.py: a relay, a host behind plain NAT, a buyer (testnet/README.md)
[network]
name = "p2pmarket-bench-nat"
internet = "198.18.0.0/24"

[sites.r1]                  # the relay and registrar (a public node; no node is started)
role = "notary"
address = "198.18.0.11"

[sites.b1]                  # the buyer, which measures
role = "buyer"
address = "198.18.0.31"

[routers.nat1]              # masquerade; nothing gets in
address = "198.18.0.101"
lan = "198.19.1.0/24"

[sites.hn1]                 # the host
role = "host"
behind = "nat1"
address = "198.19.1.10"
"""


def emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), flush=True)


async def bench_echo(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
    return {"echo": args}


async def hash_upload(request: web.Request) -> web.Response:
    h, n = hashlib.sha256(), 0
    async for chunk in request.content.iter_chunked(MIB):
        h.update(chunk)
        n += len(chunk)
    return web.json_response({"n": n, "sha256": h.hexdigest()})


async def stdin_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


async def registrations(identity: Identity, url: str, key: bytes, self_known: tuple[str, int],
                        n: int, deadline: float) -> dict[str, Any]:
    """``n`` registrations one at a time (fewer if ``deadline`` passes): their times,
    the classes attested and the refusal codes."""
    times: list[float] = []
    classes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for _ in range(n):
        if time.monotonic() > deadline:
            errors["deadline"] += 1
            break
        start = time.perf_counter()
        try:
            reg = await register(identity, url, key, self_known)
        except NatError as exc:
            errors[exc.code] += 1
            continue
        times.append(time.perf_counter() - start)
        classes[f"{reg.attestation.reach_class}"
                f"{'' if reg.attestation.verified else ' unverified'}"] += 1
    return {"ok": len(times), "p50_ms": ms(pct(times, 0.5)), "p95_ms": ms(pct(times, 0.95)),
            "max_ms": ms(max(times, default=0.0)), "classes": dict(classes),
            "errors": dict(errors)}


# -- the roles (each in its own namespace) --------------------------------------------

async def serve_relay(args: argparse.Namespace) -> None:
    identity = Identity.generate()
    url = http_url(args.address, PORT)
    dispatcher = RpcDispatcher(identity)
    dispatcher.register("bench.echo", bench_echo)
    registrar = Registrar(identity, limits=BENCH_LIMITS)
    relay = RelayService(identity, url)
    site = Site(peer_app(dispatcher, [*registrar.routes(), *relay.routes(),
                                      web.put("/upload", hash_upload)]))
    await site.start("0.0.0.0", PORT)
    emit({"pid": os.getpid(), "key": identity.public_key.hex(), "url": url})
    while await stdin_line():
        pass
    emit({"relay": relay.status(), "registrar": registrar.status()})
    await registrar.close()
    await relay.close()
    await site.stop()


async def serve_host(args: argparse.Namespace) -> None:
    identity = Identity.generate()
    relay_key = bytes.fromhex(args.relay_key)
    dispatcher = RpcDispatcher(identity)
    dispatcher.register_all("nat", echo_handlers(identity))
    dispatcher.register("bench.echo", bench_echo)
    site = Site(peer_app(dispatcher, [web.put("/upload", hash_upload)]))
    await site.start("0.0.0.0", PORT)
    client = RelayClient(identity, args.relay_url, relay_key, http_url("127.0.0.1", PORT))
    task = asyncio.ensure_future(client.run())
    try:
        reserved = asyncio.ensure_future(client.reserved.wait())
        await asyncio.wait({task, reserved}, timeout=START_S,
                           return_when=asyncio.FIRST_COMPLETED)
        reserved.cancel()
        if task.done():
            task.result()          # raises RelayLost, the reason
        if not client.reserved.is_set():
            raise RuntimeError(f"no reservation at {args.relay_url} in {START_S} s")
        emit({"key": identity.public_key.hex(), "url": client.url})
        while line := await stdin_line():
            n = int(line.split()[1])
            emit(await registrations(identity, args.relay_url, relay_key,
                                     (args.address, PORT), n,
                                     time.monotonic() + args.time_limit))
    finally:
        await client.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, STOP_S)
        await site.stop()


async def measure(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.time_limit
    identity = Identity.generate()
    dispatcher = RpcDispatcher(identity)
    dispatcher.register_all("nat", echo_handlers(identity))
    site = Site(peer_app(dispatcher))
    await site.start("0.0.0.0", PORT)
    relay_key, host_key = bytes.fromhex(args.relay_key), bytes.fromhex(args.host_key)
    try:
        async with asyncio.timeout(args.time_limit):
            out = await measure_rpc(args.calls, args.relay_url, relay_key,
                                    args.relayed_url, host_key)
            out.update(await measure_upload(args.upload_mb, args.relay_url, args.relayed_url,
                                            args.relay_pid))
            out["public"] = await registrations(identity, args.relay_url, relay_key,
                                                (args.address, PORT), args.registrations,
                                                deadline)
        emit(out)
    finally:
        await site.stop()


async def measure_rpc(calls: int, direct_url: str, direct_key: bytes, relayed_url: str,
                      relayed_key: bytes) -> dict[str, Any]:
    direct: list[float] = []
    relayed: list[float] = []
    async with PeerClient(Identity.generate()) as peers:
        for i in range(WARMUP + calls):
            for url, key, times in ((direct_url, direct_key, direct),
                                    (relayed_url, relayed_key, relayed)):
                start = time.perf_counter()
                got = await peers.call(url, key, "bench.echo", {"i": i})
                took = time.perf_counter() - start
                if got != {"echo": {"i": i}}:
                    raise RuntimeError(f"bench.echo at {url} answered {got!r}")
                if i >= WARMUP:
                    times.append(took)
    d50, r50 = pct(direct, 0.5), pct(relayed, 0.5)
    return {"direct_rpc_p50_ms": ms(d50), "relayed_rpc_p50_ms": ms(r50),
            "direct_rpc_p95_ms": ms(pct(direct, 0.95)),
            "relayed_rpc_p95_ms": ms(pct(relayed, 0.95)),
            "relay_overhead_ratio": round(r50 / d50, 2) if d50 else 0.0,
            "relay_overhead_ms": ms(r50 - d50)}


async def measure_upload(mib: int, direct_url: str, relayed_url: str,
                         relay_pid: int) -> dict[str, Any]:
    blocks = [block_of(i) for i in range(8)]
    expected = hashlib.sha256()
    for i in range(mib):
        expected.update(blocks[i % len(blocks)])
    want = {"n": mib * MIB, "sha256": expected.hexdigest()}
    async with aiohttp.ClientSession() as http:
        before = vm_kib(relay_pid, "VmRSS")
        hwm = reset_peak(relay_pid)
        peak, stop = [before], asyncio.Event()
        sampler = asyncio.ensure_future(sample_rss(relay_pid, peak, stop))
        try:
            relayed_s, got = await upload(http, relayed_url, mib, blocks)
        finally:
            stop.set()
            await sampler
        top = vm_kib(relay_pid, "VmHWM") if hwm else peak[0]
        direct_s, got_direct = await upload(http, direct_url, mib, blocks)
    return {"relay_upload_mb_s": round(mib / relayed_s, 1),
            "relay_rss_growth_mb": round((top - before) / 1024, 1),
            "relay_rss_before_mb": round(before / 1024, 1),
            "relay_rss_method": "VmHWM after clear_refs" if hwm else "VmRSS sampled / 10 ms",
            "upload_intact": got == want, "direct_upload_mb_s": round(mib / direct_s, 1),
            "direct_upload_intact": got_direct == want}


# -- the runner (root namespace) ------------------------------------------------------

class Role:
    """One role's process in a namespace: JSON lines from its stdout, a log of stderr."""

    def __init__(self, net: NetnsTestnet, site: str, argv: list[str], log: Path) -> None:
        self.site, self.log = site, log
        with open(log, "wb") as err:
            self.proc: subprocess.Popen[str] = net.popen_in(
                site, [sys.executable, str(Path(__file__).resolve()), *argv],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        for line in out:
            self.lines.put(line)
        self.lines.put(None)

    def line(self, deadline: float) -> dict[str, Any]:
        """The next JSON line, waiting no longer than ``deadline``."""
        try:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"{self.site}: no answer in time; see {self.tail()}") from None
        if line is None:
            raise RuntimeError(f"{self.site} exited ({self.proc.poll()}): {self.tail()}")
        doc = json.loads(line)
        assert isinstance(doc, dict), line
        return doc

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:]

    def close_stdin(self) -> None:
        """The role's cue to end (the relay prints its counters first)."""
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()

    def stop(self) -> None:
        """Close its stdin (it ends), then terminate and kill it by pid if it does not."""
        self.close_stdin()
        for end in (None, self.proc.terminate, self.proc.kill):
            if end is not None and self.proc.poll() is None:
                end()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_S)
                return


def run(args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.time_limit
    tmp = Path(tempfile.mkdtemp(prefix="p2pm-bench-nat-"))
    roles: list[Role] = []
    try:
        (tmp / "nat.toml").write_text(TOPOLOGY)
        net = NetnsTestnet.up(tmp / "nat.toml", tmp / "net", start_nodes=False)
        try:
            def start(site: str, *argv: str) -> Role:
                roles.append(Role(net, site, [*argv, "--address", net.address(site),
                                              "--time-limit", str(args.time_limit)],
                                  tmp / f"{site}.log"))
                return roles[-1]

            relay = start("r1", "--serve-relay")
            hello = relay.line(min(deadline, time.monotonic() + START_S))
            host = start("hn1", "--serve-host", "--relay-url", hello["url"],
                         "--relay-key", hello["key"])
            reserved = host.line(min(deadline, time.monotonic() + START_S))
            host.send(f"register {args.registrations}\n")
            nat = host.line(deadline)
            buyer = start("b1", "--measure", "--relay-url", hello["url"],
                          "--relay-key", hello["key"], "--relayed-url", reserved["url"],
                          "--host-key", reserved["key"], "--relay-pid", str(hello["pid"]),
                          "--calls", str(args.calls), "--upload-mb", str(args.upload_mb),
                          "--registrations", str(args.registrations))
            measured = buyer.line(deadline)
            relay.close_stdin()
            counters = relay.line(min(deadline, time.monotonic() + STOP_S))
        finally:
            for role in reversed(roles):
                role.stop()
            net.down()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report(args, hello, nat, measured, counters)


def report(args: argparse.Namespace, hello: dict[str, Any], nat: dict[str, Any],
           measured: dict[str, Any], counters: dict[str, Any]) -> dict[str, Any]:
    public = measured.pop("public")
    out: dict[str, Any] = {
        "calls": args.calls, "warmup": WARMUP, "registrations": args.registrations,
        "upload_mb": args.upload_mb,
        "register_p50_ms": nat["p50_ms"], "register_p95_ms": nat["p95_ms"],
        "register_max_ms": nat["max_ms"], "register_ok": nat["ok"],
        "register_classes": nat["classes"], "register_errors": nat["errors"],
        "register_public_p50_ms": public["p50_ms"], "register_public_p95_ms": public["p95_ms"],
        "register_public_ok": public["ok"], "register_public_classes": public["classes"],
        "register_public_errors": public["errors"], **measured,
        "relay_bytes_relayed": counters["relay"].get("bytes_relayed"),
        "registrar_counts": counters["registrar"],
        "relay_pid": hello["pid"], "registrar_limits": vars(BENCH_LIMITS),
        "topology": "r1 198.18.0.11 relay+registrar | hn1 198.19.1.10 behind NAT "
                    "nat1 198.18.0.101 | b1 198.18.0.31 buyer",
    }
    d50, r50 = out["direct_rpc_p50_ms"], out["relayed_rpc_p50_ms"]
    out["goals_met"] = {
        "relayed_rpc": r50 <= 2 * d50 + 2.0,
        "relay_upload": bool(out["upload_intact"]) and out["relay_upload_mb_s"] >= 100
        and out["relay_rss_growth_mb"] < 20,
        "registration": nat["ok"] == args.registrations and out["register_p95_ms"] < 1000,
    }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--registrations", type=int, default=40)
    p.add_argument("--upload-mb", type=int, default=100)
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds, in all")
    p.add_argument("--json", action="store_true")
    for role in ("--serve-relay", "--serve-host", "--measure"):
        p.add_argument(role, action="store_true", help=argparse.SUPPRESS)
    for opt in ("--address", "--relay-url", "--relay-key", "--relayed-url", "--host-key"):
        p.add_argument(opt, help=argparse.SUPPRESS)
    p.add_argument("--relay-pid", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    for flag, role in (("serve_relay", serve_relay), ("serve_host", serve_host),
                       ("measure", measure)):
        if getattr(args, flag):
            asyncio.run(role(args))
            return 0
    if not (1 <= args.calls <= 100_000 and 1 <= args.registrations <= 1000
            and 1 <= args.upload_mb <= 10_000 and 1 <= args.time_limit <= 3600):
        p.error("--calls 1..100000, --registrations 1..1000, --upload-mb 1..10000, "
                "--time-limit 1..3600")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # clean up on SIGTERM too
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>24}: {v}")
    ok = result["upload_intact"] and result["register_ok"] == args.registrations \
        and result["register_public_ok"] == args.registrations
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
