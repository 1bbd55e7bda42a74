"""A stand-alone notary server: ``python -m tests.support.notary_server``.

Serves one committee member's notary RPCs (prefix ``notary``) over the peer
RPC layer (signed envelopes, replay guard) without the rest of a node: for
the fault tests (a real process to SIGKILL) and the benchmark (one process per
notary). Prints one JSON line ``{"port", "pid"}`` once listening; stops on
SIGTERM or SIGINT.

Profiling: with ``P2PMARKET_PROFILE`` set to a path, the process runs under
cProfile and writes its stats to ``<path>.<pid>`` when it stops (SIGTERM), for
the benchmark (``scripts/bench/ledger.py --profile``).

Fault injection for tests: ``--crash-after N`` SIGKILLs the process right after
its N-th certification commit (the locks are durable, the reply never leaves);
``--crash-before-commit N`` SIGKILLs it inside the N-th commit (nothing of it
is durable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

from p2pmarket.api.rpc import CallContext, Handler, RpcDispatcher
from p2pmarket.api.server import Site, peer_app
from p2pmarket.core.config import load_genesis
from p2pmarket.core.keyfile import load_key
from p2pmarket.ledger import notaryrpc
from p2pmarket.ledger.notary import NotaryService


def _kill_self() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def crash_after(handler: Handler, count: int) -> Handler:
    calls = 0

    async def wrapped(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        result = await handler(ctx, args)
        calls += 1
        if calls >= count:
            _kill_self()
        return result

    return wrapped


async def serve(key_file: Path, genesis_file: Path, db: Path, host: str, port: int,
                crash_after_n: int = 0, crash_before_commit: int = 0) -> None:
    identity = load_key(key_file)
    genesis = load_genesis(genesis_file)
    service = NotaryService(identity, genesis, db)
    if crash_before_commit:
        commits = 0

        def hook() -> None:
            nonlocal commits
            commits += 1
            if commits >= crash_before_commit:
                _kill_self()

        service.before_commit = hook
    handlers = notaryrpc.handlers(service)
    if crash_after_n:
        for name in ("certify", "certify_batch"):
            handlers[name] = crash_after(handlers[name], crash_after_n)
    dispatcher = RpcDispatcher(identity)
    dispatcher.register_all("notary", handlers, limits=notaryrpc.REQUEST_LIMITS)
    site = Site(peer_app(dispatcher))
    bound = await site.start(host, port)
    print(json.dumps({"port": bound, "pid": os.getpid()}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await site.stop()
        service.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.notary_server",
                                     description="Serve one notary's RPCs.")
    parser.add_argument("--key-file", type=Path, required=True)
    parser.add_argument("--genesis", type=Path, required=True)
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--crash-after", type=int, default=0)
    parser.add_argument("--crash-before-commit", type=int, default=0)
    args = parser.parse_args(argv)
    run = partial(asyncio.run, serve(args.key_file, args.genesis, args.db, args.host,
                                     args.port, args.crash_after, args.crash_before_commit))
    profile = os.environ.get("P2PMARKET_PROFILE")
    if not profile:
        run()
        return 0
    import cProfile

    profiler = cProfile.Profile()
    try:
        profiler.runcall(run)
    finally:
        profiler.dump_stats(f"{profile}.{os.getpid()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
