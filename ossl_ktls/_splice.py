"""Plaintext between a connection and another descriptor through a pipe (``splice(2)``).

``recvfile`` writes what a connection receives to a file or socket (a :class:`Sink`);
``send_stream`` sends what a socket, pipe or file delivers (a :class:`Source`). Where the
kernel carries the direction, the bytes go socket -> pipe -> descriptor inside the kernel
and never enter Python: kernel RX decrypts into the pipe (one record per splice; a
non-data record makes the splice fail with EINVAL and stays queued for ``recvmsg``), and
a pipe spliced into a kernel TX socket becomes records there. Where a descriptor cannot be
spliced (an ``O_APPEND`` file, a file object without a descriptor, a kind of file the
kernel refuses), the same calls copy through a buffer instead.

Errors of the *other* descriptor are not the connection's: they come out as
:class:`OutputError` / :class:`InputError`, each carrying the ``OSError``, so the engine
can tell "the disk is full" from "the peer broke the stream" and say which.

Waits honour the descriptor's own mode: a socket with a timeout waits at most that long
for each step (Python's timeout means "no progress for this long"), a blocking one
without end, and never in the kernel: every splice is non-blocking and the waits are
``poll``, so closing a socket from another thread (a tunnel tearing a connection down)
wakes them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import select
import socket
import stat
import time
from typing import Any

PIPE_SIZE = 256 << 10  # asked for; the kernel may give less (pipe-max-size, per-user limits)
_MOVE = os.SPLICE_F_MOVE
_NONBLOCK = os.SPLICE_F_NONBLOCK
# A descriptor the kernel cannot splice into or out of answers one of these at once.
_NOT_SPLICEABLE = (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.EBADF)


class OutputError(Exception):
    """Writing to the sink failed; ``__cause__`` (and ``error``) is the ``OSError``."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class InputError(Exception):
    """Reading the source failed; ``error`` is the ``OSError``."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class Pipe:
    """One anonymous pipe, as large as the kernel lets us make it (up to ``PIPE_SIZE``)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self.size: int = fcntl.fcntl(self.w, fcntl.F_GETPIPE_SZ)

    def read_exactly(self, n: int) -> bytes:
        """Take *n* bytes that are known to be in the pipe."""
        parts = []
        while n:
            chunk = os.read(self.r, n)
            if not chunk:
                raise OSError(errno.EIO, "the pipe held less than was spliced into it")
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        for fd in (self.r, self.w):
            with contextlib.suppress(OSError):
                os.close(fd)


def _descriptor(obj: Any) -> int | None:
    fileno = getattr(obj, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _timeout(obj: Any) -> float | None:
    return obj.gettimeout() if isinstance(obj, socket.socket) else None


def wait_fd(fd: int, events: int, timeout: float | None) -> None:
    """Wait until *fd* is ready; ``TimeoutError`` after *timeout* seconds (None: never).

    A descriptor closed meanwhile (POLLNVAL) returns at once: the next call on it fails
    with the error that says so."""
    poller = select.poll()
    poller.register(fd, events)
    if not poller.poll(None if timeout is None else max(0.0, timeout) * 1000):
        raise TimeoutError("timed out")


class Sink:
    """Where ``recvfile`` writes: a descriptor (spliced into, or written with ``os.write``)
    or, without one, the object's ``write``. Counts what it delivered (``delivered``): on
    an error, exactly the bytes the output took."""

    def __init__(self, target: Any) -> None:
        self.target = target
        self.delivered = 0
        self.fd = _descriptor(target)
        self._pipe: Pipe | None = None
        self._timeout = _timeout(target)
        self._is_socket = isinstance(target, socket.socket)
        self._spliced = False  # a splice into fd worked: its errors are real ones
        self.splice = False
        if self.fd is None:
            if not callable(getattr(target, "write", None)):
                raise TypeError("recvfile() needs a file, a socket or an object with write()")
            return
        flush = getattr(target, "flush", None)
        if flush is not None and not self._is_socket:
            try:
                flush()  # what its buffer holds goes first; from here on we use the descriptor
            except OSError as exc:
                raise OutputError(exc) from exc
        mode = os.fstat(self.fd).st_mode
        appending = bool(fcntl.fcntl(self.fd, fcntl.F_GETFL) & os.O_APPEND)
        # splice(2) refuses O_APPEND outputs; a directory is no output at all.
        self.splice = not appending and not stat.S_ISDIR(mode)

    def pipe(self) -> Pipe:
        """The pipe a splice into this sink goes through (made on first use)."""
        if self._pipe is None:
            self._pipe = Pipe()
        return self._pipe

    def write(self, view: memoryview) -> None:
        """Deliver all of *view* (a copy), or raise :class:`OutputError`."""
        done = 0
        try:
            while done < len(view):
                if self.fd is None:
                    n = self.target.write(view[done:])
                    n = len(view) - done if n is None else n
                else:
                    try:
                        n = os.write(self.fd, view[done:])
                    except BlockingIOError:
                        wait_fd(self.fd, select.POLLOUT, self._timeout)
                        continue
                done += n
                self.delivered += n
        except OSError as exc:
            raise OutputError(exc) from exc

    def from_pipe(self, n: int) -> None:
        """Move the *n* bytes waiting in :meth:`pipe` to the descriptor, all of them."""
        assert self.fd is not None and self._pipe is not None
        pipe = self._pipe
        try:
            while n:
                try:
                    m = os.splice(pipe.r, self.fd, n, flags=_MOVE | _NONBLOCK)
                except BlockingIOError:
                    wait_fd(self.fd, select.POLLOUT, self._timeout)
                    continue
                except OSError as exc:
                    if exc.errno in _NOT_SPLICEABLE and not self._spliced:
                        # The kernel cannot splice into this kind of output: copy from here on.
                        self.splice = False
                        self.write(memoryview(pipe.read_exactly(n)))
                        return
                    raise
                if m == 0:
                    raise OSError(errno.EIO, "splice moved nothing out of a full pipe")
                n -= m
                self.delivered += m
                self._spliced = True
        except OSError as exc:
            raise OutputError(exc) from exc

    def close(self) -> None:
        """Release the pipe; leave a file object's position after the last byte written."""
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None
        if self.fd is None or self._is_socket:
            return
        seekable = getattr(self.target, "seekable", None)
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            if seekable is not None and seekable():
                self.target.seek(os.lseek(self.fd, 0, os.SEEK_CUR))


class Source:
    """Where ``send_stream`` reads: a descriptor (spliced out of into a pipe, or read with
    ``recv_into``/``readv``) or, without one, the object's ``readinto``."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.fd = _descriptor(source)
        self._timeout = _timeout(source)
        self._is_socket = isinstance(source, socket.socket)
        self.pipe: Pipe | None = None
        self.splice = self.fd is not None
        if self.fd is None and not callable(getattr(source, "readinto", None)):
            raise TypeError("send_stream() needs a socket, a pipe, a file or a readable object")

    def to_pipe(self, want: int) -> int | None:
        """Splice up to *want* bytes into :attr:`pipe`: how many (0 at the end), or None
        when this source cannot be spliced (then :meth:`read_into` from now on)."""
        assert self.fd is not None
        if self.pipe is None:
            self.pipe = Pipe()
        started = time.monotonic()
        try:
            while True:
                try:
                    return os.splice(
                        self.fd, self.pipe.w, min(want, self.pipe.size), flags=_MOVE | _NONBLOCK
                    )
                except BlockingIOError:
                    remaining = None
                    if self._timeout is not None:
                        remaining = self._timeout - (time.monotonic() - started)
                    wait_fd(self.fd, select.POLLIN, remaining)
                except OSError as exc:
                    if exc.errno in _NOT_SPLICEABLE and exc.errno != errno.EBADF:
                        self.splice = False
                        return None
                    raise
        except OSError as exc:
            raise InputError(exc) from exc

    def read_into(self, view: memoryview) -> int:
        """Read up to ``len(view)`` bytes (0 at the end)."""
        try:
            if self._is_socket:
                n: int = self.source.recv_into(view)
                return n
            if self.fd is not None:
                while True:
                    try:
                        return os.readv(self.fd, [view])
                    except BlockingIOError:
                        wait_fd(self.fd, select.POLLIN, self._timeout)
            got = self.source.readinto(view)
            return 0 if got is None else int(got)
        except OSError as exc:
            raise InputError(exc) from exc

    def close(self) -> None:
        if self.pipe is not None:
            self.pipe.close()
            self.pipe = None
