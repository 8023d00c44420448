"""The asyncio transport's write side, without the event loop or the protocol.

* :class:`WriteBuffer` is the plaintext that ``write()`` queued and the connection has not
  taken yet, and asyncio's write flow control on it: the high/low-water marks and whether
  the protocol is paused. The size it compares with the marks (what
  ``get_write_buffer_size()`` reports) is the queued plaintext plus the connection's
  ciphertext backlog (user-space TX queues what the socket could not take yet).
* :class:`Sender` moves that buffer into the connection, in the only order that keeps the
  stream intact: the ciphertext backlog first, then the queued plaintext (small writes
  joined up to :data:`COALESCE` bytes, at most :data:`SEND_CHUNK` per send), then, once
  everything is out and the transport asks for it, close_notify.

Neither calls anything but the connection: the transport tells the protocol to pause or
resume when :meth:`WriteBuffer.pause_due`/:meth:`WriteBuffer.resume_due` say so, and arms
the writer when :meth:`Sender.push` is not done.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Protocol

__all__ = ["COALESCE", "SEND_CHUNK", "Sender", "Sink", "WriteBuffer"]

SEND_CHUNK = 256 * 1024  # plaintext handed to the kernel/OpenSSL per send
COALESCE = 64 * 1024  # small queued writes are joined up to this (fewer, fuller records)
_DEFAULT_HIGH = 64 * 1024  # asyncio's default high-water mark


class Sink(Protocol):
    """What the write side uses of :class:`~ossl_ktls.KTLSConnection` (non-blocking)."""

    @property
    def tx_backlog(self) -> int:
        """Ciphertext bytes accepted but not yet on the socket."""

    def flush(self) -> int:
        """Push the backlog to the socket; returns what is still queued."""

    def send(self, data: memoryview) -> int:
        """Take plaintext; returns how many bytes were accepted (``BlockingIOError``: none)."""

    def shutdown(self) -> None:
        """close_notify, then the TCP half-close once the backlog is out."""


class WriteBuffer:
    """Plaintext queued for the connection, and the flow-control state on it.

    *backlog* returns the connection's ciphertext backlog, counted in :attr:`size`. The
    marks start at asyncio's defaults (16 KiB, 64 KiB).
    """

    def __init__(self, backlog: Callable[[], int]) -> None:
        self._chunks: collections.deque[memoryview] = collections.deque()
        self._queued = 0
        self._backlog = backlog
        self.low, self.high = _DEFAULT_HIGH // 4, _DEFAULT_HIGH
        #: The protocol was told to pause writing and not yet to resume.
        self.paused = False

    def __bool__(self) -> bool:
        """Whether plaintext is queued (the backlog aside)."""
        return bool(self._chunks)

    @property
    def size(self) -> int:
        """Queued plaintext plus the connection's ciphertext backlog, in bytes."""
        return self._queued + self._backlog()

    # ------------------------------------------------------------------ the queue

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Queue a copy of *data* (the caller may reuse its buffer at once)."""
        chunk = memoryview(bytes(data))
        self._chunks.append(chunk)
        self._queued += len(chunk)

    def next_chunk(self) -> memoryview:
        """What to send next: the head, joined with small writes after it, capped.

        Only when there is something queued. The head stays queued until
        :meth:`consumed` says how much of it was taken.
        """
        buf = self._chunks
        if len(buf[0]) < COALESCE and len(buf) > 1:
            parts = [buf.popleft()]
            size = len(parts[0])
            while buf and size + len(buf[0]) <= COALESCE:
                size += len(buf[0])
                parts.append(buf.popleft())
            buf.appendleft(memoryview(b"".join(parts)))
        return buf[0][:SEND_CHUNK]

    def consumed(self, n: int) -> None:
        """The connection took the first *n* bytes of :meth:`next_chunk`."""
        head = self._chunks[0]
        if n >= len(head):
            self._chunks.popleft()
        else:
            self._chunks[0] = head[n:]
        self._queued -= n

    def clear(self) -> None:
        """Drop everything queued (the transport is aborted)."""
        self._chunks.clear()
        self._queued = 0

    # ------------------------------------------------------------------ flow control

    def set_limits(self, high: int | None = None, low: int | None = None) -> None:
        """asyncio's rules: *high* alone sets low = high // 4, *low* alone high = 4 * low.

        Raises:
            ValueError: not high >= low >= 0 (the marks stay as they were).
        """
        if high is None:
            high = _DEFAULT_HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self.high, self.low = high, low

    def pause_due(self) -> bool:
        """True (and :attr:`paused` set) when the protocol is to be paused now."""
        if self.paused or self.size <= self.high:
            return False
        self.paused = True
        return True

    def resume_due(self) -> bool:
        """True (and :attr:`paused` cleared) when the protocol is to be resumed now."""
        if not self.paused or self.size > self.low:
            return False
        self.paused = False
        return True


class Sender:
    """Moves a :class:`WriteBuffer` into the connection, then close_notify once."""

    def __init__(self, conn: Sink, buffer: WriteBuffer) -> None:
        self._conn = conn
        self._buffer = buffer
        self._shutdown_sent = False

    def push(self, *, budget: int, close_notify: bool) -> bool:
        """Push what is queued (then close_notify, if *close_notify*); True when all is out.

        Stops, returning False, when the socket would block, when the user-space backlog
        is still not out after a flush (a due FIN goes after it), or after *budget* bytes
        of plaintext (the rest on the next call, so that one connection cannot hold up
        the loop). Other errors of the connection propagate.
        """
        conn = self._conn
        while True:
            if conn.tx_backlog and conn.flush():
                return False  # user-space ciphertext still queued (a due FIN after it)
            if self._buffer:
                if budget <= 0:
                    return False  # the writer stays armed: more on the next turn
                try:
                    # Kernel TX: the kernel takes what fits. User space: everything is
                    # encrypted at once; what the socket cannot take waits in tx_backlog.
                    n = conn.send(self._buffer.next_chunk())
                except (BlockingIOError, InterruptedError):
                    return False
                self._buffer.consumed(n)
                budget -= n
                continue
            if close_notify and not self._shutdown_sent:
                try:
                    conn.shutdown()
                except (BlockingIOError, InterruptedError):
                    return False
                self._shutdown_sent = True
                continue
            return True
