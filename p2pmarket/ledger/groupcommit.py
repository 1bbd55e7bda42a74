"""Group commit: requests that arrive while one transaction commits share the next.

A :class:`GroupCommit` runs functions of a transaction's state (for the notary,
a :class:`p2pmarket.ledger.notarystate.Tx`) through one ``transaction`` callable:
whatever was queued when the committer gets to run goes into one transaction
(one fsync), and each request gets its own result. If the group's transaction
fails, its requests are retried one by one, so one bad request fails alone.
Stopped (the task cancelled), it fails every request still waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from p2pmarket.ledger.errors import LedgerError

log = logging.getLogger(__name__)

S = TypeVar("S")
T = TypeVar("T")


class GroupCommit(Generic[S]):
    """The queue and the committer task in front of ``transaction`` (which runs one
    function of the state ``S`` in one durable transaction and returns its result)."""

    def __init__(self, transaction: Callable[[Callable[[S], Any]], Any]) -> None:
        self.transaction = transaction
        self._queue: list[tuple[Callable[[S], Any], asyncio.Future[Any]]] = []
        self._committer: asyncio.Task[None] | None = None
        self.groups = 0  # transactions committed for groups

    async def run(self, fn: Callable[[S], T]) -> T:
        """Run ``fn`` in the next group transaction; its result."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append((fn, fut))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_groups())
        return await fut

    @property
    def waiting(self) -> int:
        """Requests queued for the next group transaction (monitoring: the queue depth)."""
        return len(self._queue)

    def close(self) -> None:
        if self._committer is not None:
            self._committer.cancel()

    async def _commit_groups(self) -> None:
        group: list[tuple[Callable[[S], Any], asyncio.Future[Any]]] = []
        try:
            await asyncio.sleep(0)  # let requests that arrived together join
            while self._queue:
                group, self._queue = self._queue, []
                self.groups += 1
                self._commit_group(group)
                group = []
                await asyncio.sleep(0)
        except BaseException:  # stopping: nobody may wait for an answer forever
            for _, fut in (*group, *self._queue):
                if not fut.done():
                    fut.set_exception(LedgerError("notary stopped", "stopped"))
            self._queue = []
            raise

    def _commit_group(self, group: list[tuple[Callable[[S], Any], asyncio.Future[Any]]]
                      ) -> None:
        fns = [fn for fn, _ in group]

        def run_all(state: S) -> list[Any]:
            return [fn(state) for fn in fns]

        try:
            results = self.transaction(run_all)
        except Exception:  # one request broke the group: run each on its own
            log.exception("notary group failed; retrying its requests one by one")
            for fn, fut in group:
                try:
                    result = self.transaction(fn)
                except Exception as exc:
                    if not fut.done():
                        fut.set_exception(exc)
                else:
                    if not fut.done():
                        fut.set_result(result)
            return
        for (_, fut), result in zip(group, results, strict=True):
            if not fut.done():
                fut.set_result(result)
