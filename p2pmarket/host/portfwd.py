"""The host's port forwards (docs/design.md section 6, "Access"): each leased
``tcp_port`` on the host's public address piped to its guest's SSH port.

:class:`PortForwards` runs the forward table :mod:`p2pmarket.host.forwardtable`
decides: :meth:`PortForwards.sync` applies the difference between the forwards running
and a new table (:func:`~p2pmarket.host.forwardtable.forward_changes`), so the node
calls it whenever the allocation or a guest's address changes. A running forward
listens on ``bind_host:port`` (when the host has a public bind address; a relayed host
gives None and serves its ports only as relayed streams) and pipes each connection
to ``guest:22``:

- bounded buffers: a pump reads at most :attr:`PortLimits.chunk` bytes, writes them
  and waits for the other side to drain before reading again (backpressure: a slow
  reader stalls its sender, never grows a buffer);
- half-close: a side's EOF is passed on as EOF (``write_eof``); the connection closes
  once both directions ended, or at once when either side breaks;
- limits: at most :attr:`PortLimits.per_port` connections at once per port and
  :attr:`PortLimits.total` in all (relayed streams count too); a connection over a
  limit is closed at once; the guest must accept within
  :attr:`PortLimits.connect_timeout_s`;
- stop: a port lost or freed (the account outbid, expired, closed) stops its
  listener and cancels every connection task of the port, relayed ones included,
  before a new winner's forward starts, so the port can be bound again at once.

A listener that cannot bind (the port taken by something else) is kept in the table
with its error (``status``) and tried again at the next :meth:`PortForwards.sync`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from p2pmarket.core.errors import P2PMarketError
from p2pmarket.host.forwardtable import Changes, Forward, forward_changes

log = logging.getLogger(__name__)


class PortForwardError(P2PMarketError):
    """A refused relayed stream, or a forward that could not be set up."""


@dataclass(frozen=True)
class PortLimits:
    per_port: int = 16
    total: int = 256
    connect_timeout_s: float = 5.0
    chunk: int = 64 * 1024


@dataclass
class Running:
    """One forward in force: its listener (None: not listening) and connection tasks."""

    forward: Forward
    server: asyncio.Server | None = None
    error: str | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    accepted: int = 0
    refused: int = 0


async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, chunk: int) -> int:
    """Copy ``src`` to ``dst``, a ``chunk`` at a time, each written and drained before the
    next read; at ``src``'s EOF pass the EOF on. The bytes copied; raises on a broken
    side."""
    n = 0
    while data := await src.read(chunk):
        dst.write(data)
        await dst.drain()
        n += len(data)
    if dst.can_write_eof() and not dst.is_closing():
        dst.write_eof()
    return n


async def splice(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 b: tuple[asyncio.StreamReader, asyncio.StreamWriter], chunk: int) -> None:
    """Pipe two connections both ways until both directions ended or either side broke;
    then close both (a broken side first aborts the other)."""
    ab = asyncio.ensure_future(pump(a[0], b[1], chunk))
    ba = asyncio.ensure_future(pump(b[0], a[1], chunk))
    try:
        pending: set[asyncio.Future[int]] = {ab, ba}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(t.exception() is not None for t in done):
                break
    finally:
        for task in (ab, ba):
            task.cancel()
        await asyncio.gather(ab, ba, return_exceptions=True)
        broken = any(t.done() and not t.cancelled() and t.exception() is not None
                     for t in (ab, ba))
        for writer in (a[1], b[1]):
            await close_writer(writer, abort=broken)


async def close_writer(writer: asyncio.StreamWriter, abort: bool = False) -> None:
    if abort:
        writer.transport.abort()
    else:
        writer.close()
    with contextlib.suppress(OSError, RuntimeError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


class PortForwards:
    """The forwards in force; see the module docstring."""

    def __init__(self, bind_host: str | None, limits: PortLimits | None = None) -> None:
        self.bind_host = bind_host
        self.limits = limits or PortLimits()
        self.running: dict[int, Running] = {}

    @property
    def table(self) -> dict[int, Forward]:
        return {port: run.forward for port, run in self.running.items()}

    def connections(self) -> int:
        return sum(len(run.tasks) for run in self.running.values())

    async def sync(self, table: Mapping[int, Forward]) -> Changes:
        """Make ``table`` the forwards in force: stop the ports no longer wanted as they
        are (their connections cancelled), start the new ones, retry listeners that
        could not bind. The changes made."""
        changes = forward_changes(self.table, table)
        for port in changes.stop:
            await self._stop(self.running.pop(port))
        for fwd in changes.start:
            self.running[fwd.port] = Running(fwd)
        for run in self.running.values():
            if self.bind_host is not None and run.server is None:
                await self._listen(run)
        return changes

    async def close(self) -> None:
        """Stop every forward."""
        await self.sync({})

    def status(self) -> list[dict[str, object]]:
        return [{**run.forward.to_doc(), "listening": run.server is not None,
                 "error": run.error, "connections": len(run.tasks),
                 "accepted": run.accepted, "refused": run.refused}
                for _, run in sorted(self.running.items())]

    async def admit(self, holder: bytes, account_id: str, port: int) -> tuple[str, int]:
        """A relayed stream from ``holder`` for ``account_id``'s ``port``: where to
        connect it (the guest's address and port). The calling task is counted as one of
        the port's connections and is cancelled when the port stops. Raises
        :class:`PortForwardError` if the port is not forwarded, is leased to another
        account or key, or is at its connection limit."""
        run = self.running.get(port)
        if run is None:
            raise PortForwardError("this host forwards no such port", port)
        fwd = run.forward
        if fwd.holder != holder or fwd.account_id != account_id:
            raise PortForwardError("the port is not leased to this account and key",
                                   {"port": port, "account_id": account_id})
        task = asyncio.current_task()
        assert task is not None
        self._admit(run, task)
        return fwd.guest, fwd.guest_port

    def _admit(self, run: Running, task: asyncio.Task[None]) -> None:
        if len(run.tasks) >= self.limits.per_port or self.connections() >= self.limits.total:
            run.refused += 1
            raise PortForwardError("too many connections to this port",
                                   {"port": run.forward.port, "limit": self.limits.per_port})
        run.tasks.add(task)
        task.add_done_callback(run.tasks.discard)
        run.accepted += 1

    async def _listen(self, run: Running) -> None:
        port = run.forward.port

        async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # a stopped port cancels this task: end it quietly (Python 3.11's stream
            # callback logs a cancelled client task as an error)
            with contextlib.suppress(asyncio.CancelledError):
                await self._serve(run, reader, writer)

        try:
            run.server = await asyncio.start_server(accepted, self.bind_host, port,
                                                    limit=self.limits.chunk)
            run.error = None
        except OSError as exc:
            run.error = f"cannot listen on {self.bind_host}:{port}: {exc.strerror or exc}"
            log.warning("port forward %d: %s", port, run.error)

    async def _serve(self, run: Running, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        try:
            self._admit(run, task)
        except PortForwardError:
            await close_writer(writer, abort=True)
            return
        fwd = run.forward
        try:
            async with asyncio.timeout(self.limits.connect_timeout_s):
                guest = await asyncio.open_connection(fwd.guest, fwd.guest_port,
                                                      limit=self.limits.chunk)
        except (OSError, TimeoutError) as exc:
            log.info("port %d: guest %s:%d not reachable: %s", fwd.port, fwd.guest,
                     fwd.guest_port, type(exc).__name__)
            await close_writer(writer, abort=True)
            return
        except asyncio.CancelledError:
            await close_writer(writer, abort=True)
            raise
        await splice((reader, writer), guest, self.limits.chunk)

    async def _stop(self, run: Running) -> None:
        if run.server is not None:
            run.server.close()
        tasks = list(run.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if run.server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.server.wait_closed(), 2.0)
            run.server = None


__all__ = ["PortForwardError", "PortForwards", "PortLimits", "Running", "close_writer",
           "pump", "splice"]
