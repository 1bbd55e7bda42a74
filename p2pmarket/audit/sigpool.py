"""Checking buyers' signed requests of a log segment across cores, ahead of its replay
(docs/design.md section 5).

The replay is sequential (each input's step needs the state the one before left);
the buyers' request signatures it checks are not: each one's answer depends on the
entry's bytes alone (:func:`p2pmarket.audit.replay.signed_verdict`). A
:class:`SignaturePool` computes those answers for a batch of entries in worker
processes and hands them to the replay as :class:`~p2pmarket.audit.replay.Verdicts`,
which the replay uses instead of checking again: the same faults for the same log.
Small batches (under ``min_batch`` buyer inputs' worth of entries) are not worth the
trip and are left to the replay. A pool that fails (a worker died) gives no
verdicts: the replay checks them itself.

Processes, not threads: PyNaCl's verify releases the GIL, but the envelope's
decoding and re-encoding around it does not (measured in scripts/bench/audit.py:
``sigpool_threads_per_s`` against ``sigpool_procs_per_s``).

This is the I/O side (an executor); the replay stays pure.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from p2pmarket.audit.replay import Verdicts, verdicts_of

if TYPE_CHECKING:   # the executors load with the first batch (an idle node has none)
    from concurrent.futures import Executor

log = logging.getLogger(__name__)

MIN_BATCH = 256      # entries: fewer are checked by the replay itself
CHUNK = 512          # entries sent to a worker at a time


class SignaturePool:
    """``verdicts(raws, host_id)``: the signed-request answers of ``raws`` (entry bytes),
    computed by ``workers`` processes (default: the machine's cores), or ``threads``."""

    def __init__(self, workers: int | None = None, min_batch: int = MIN_BATCH,
                 chunk: int = CHUNK, threads: bool = False) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.min_batch = min_batch
        self.chunk = chunk
        self.threads = threads
        self._pool: Executor | None = None   # started at the first batch worth it

    @property
    def _executor(self) -> Executor:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
            # spawned, not forked: the witness's process runs threads and an event loop
            self._pool = ThreadPoolExecutor(self.workers) if self.threads else \
                ProcessPoolExecutor(self.workers, multiprocessing.get_context("spawn"))
        return self._pool

    def _chunks(self, raws: Sequence[bytes]) -> list[list[bytes]]:
        size = max(1, min(self.chunk, -(-len(raws) // self.workers)))
        return [list(raws[i:i + size]) for i in range(0, len(raws), size)]

    def verdicts(self, raws: Sequence[bytes], host_id: bytes) -> Verdicts:
        """Blocking: for scripts and tests."""
        if len(raws) < self.min_batch:
            return Verdicts(host_id)
        try:
            parts = list(self._executor.map(verdicts_of, self._chunks(raws),
                                            [host_id] * len(raws)))
        except Exception:   # a broken pool: the replay checks them itself
            log.exception("signature pool failed")
            return Verdicts(host_id)
        return Verdicts(host_id, {h: v for part in parts for h, v in part})

    async def averdicts(self, raws: Sequence[bytes], host_id: bytes) -> Verdicts:
        """What the witness awaits before replaying a segment (the event loop runs on)."""
        if len(raws) < self.min_batch:
            return Verdicts(host_id)
        loop = asyncio.get_running_loop()
        try:
            parts = await asyncio.gather(*(
                loop.run_in_executor(self._executor, verdicts_of, chunk, host_id)
                for chunk in self._chunks(raws)))
        except Exception:
            log.exception("signature pool failed")
            return Verdicts(host_id)
        return Verdicts(host_id, {h: v for part in parts for h, v in part})

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


__all__ = ["CHUNK", "MIN_BATCH", "SignaturePool"]
