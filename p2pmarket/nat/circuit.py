"""One end of a relay circuit, shared by the relay (:mod:`p2pmarket.nat.relay`) and the
relayed host (:mod:`p2pmarket.nat.relayclient`): the frames that arrived for it, and
the credit it has for sending DATA (the flow control of :mod:`p2pmarket.nat.frames`).

The link's reader hands every frame for the circuit to :meth:`CircuitEnd.deliver`,
which never waits, so one slow circuit does not hold up the others on the websocket;
what it buffers is bounded by the window. The circuit's own task takes frames with
:meth:`CircuitEnd.receive` and reports DATA it has passed on with
:meth:`CircuitEnd.consumed`, which sends WINDOW grants back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable

from p2pmarket.nat.frames import (
    MAX_DATA,
    MAX_FRAME_BYTES,
    WINDOW_BYTES,
    Data,
    Frame,
    Inflow,
    RelayError,
    Reset,
    Window,
)

Send = Callable[[Frame], Awaitable[None]]
WS_MAX_MSG_SIZE = MAX_FRAME_BYTES + 1   # aiohttp refuses a message of max_msg_size bytes


class CircuitEnd:
    """This side of circuit ``circuit``; ``send`` puts a frame on the link."""

    def __init__(self, circuit: int, send: Send, window: int = WINDOW_BYTES) -> None:
        self.circuit = circuit
        self._send = send
        self.inflow = Inflow(window)
        self.credit = window
        self.error: str | None = None
        self._inbox: deque[Frame] = deque()
        self._arrived = asyncio.Event()
        self._credited = asyncio.Event()

    def deliver(self, frame: Frame) -> str | None:
        """Take a frame from the link (never waits); an error text if the frame breaks
        the protocol (the caller resets the circuit with it)."""
        if isinstance(frame, Window):
            if self.credit + frame.increment > self.inflow.window:
                return "WINDOW grant beyond the window"
            self.credit += frame.increment
            self._credited.set()
            return None
        if isinstance(frame, Reset):
            self.fail(frame.error)
            return None
        if isinstance(frame, Data) and not self.inflow.receive(len(frame.data)):
            return "flow control window exceeded"
        self._inbox.append(frame)
        self._arrived.set()
        return None

    def fail(self, error: str) -> None:
        """Mark the circuit dropped: :meth:`receive` gives a :class:`Reset` with
        ``error`` once the frames already here are taken, senders raise."""
        if self.error is None:
            self.error = error
        self._arrived.set()
        self._credited.set()

    async def receive(self) -> Frame:
        """The next frame for this circuit; a :class:`Reset` once it has failed."""
        while not self._inbox:
            if self.error is not None:
                return Reset(self.circuit, self.error)
            self._arrived.clear()
            await self._arrived.wait()
        return self._inbox.popleft()

    async def consumed(self, n: int) -> None:
        """``n`` bytes of DATA received were passed on: grant them back (batched)."""
        grant = self.inflow.consume(n)
        if grant and self.error is None:
            await self._send(Window(self.circuit, grant))

    async def send(self, frame: Frame) -> None:
        """Put a control frame (OPEN, END, RESPONSE) on the link; :class:`RelayError`
        if the circuit failed."""
        if self.error is not None:
            raise RelayError(self.error, self.circuit)
        await self._send(frame)

    async def send_data(self, data: bytes) -> None:
        """Send ``data`` as DATA frames, each once the receiver has room for it."""
        for start in range(0, len(data), MAX_DATA):
            piece = data[start:start + MAX_DATA]
            while self.error is None and self.credit < len(piece):
                self._credited.clear()
                await self._credited.wait()
            if self.error is not None:
                raise RelayError(self.error, self.circuit)
            self.credit -= len(piece)
            await self._send(Data(self.circuit, piece))

    async def reset(self, error: str) -> None:
        """Drop the circuit here and tell the other end why (if the link still takes
        frames)."""
        first = self.error is None
        self.fail(error)
        if first:
            with contextlib.suppress(ConnectionError, RelayError, RuntimeError):
                await self._send(Reset(self.circuit, error))
