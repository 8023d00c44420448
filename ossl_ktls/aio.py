"""asyncio support: kernel TLS for event-loop programs.

Mirrors ``asyncio``'s own API::

    ctx = OpenSSL.SSL.Context(OpenSSL.SSL.TLS_CLIENT_METHOD)   # prepared automatically
    reader, writer = await ossl_ktls.aio.open_connection("example.org", 443, context=ctx)
    writer.get_extra_info("ktls_tx")                           # True: the kernel encrypts
    await loop.sendfile(writer.transport, open("big.iso", "rb"))  # zero-copy with kernel TX
    writer.close(); await writer.wait_closed()                 # close_notify, nothing lost

    server = await ossl_ktls.aio.start_server(handle, "0.0.0.0", 8443, context=server_ctx)

Design
------
* **TCP** comes from the loop's own ``create_connection``/``create_server`` (happy eyeballs,
  ``local_addr``, ``sock=``, ``reuse_port``, backlog, accept-error back-off: all of
  asyncio's options work, and ``start_server`` returns a real :class:`asyncio.Server`). A
  tiny protocol (:class:`_Handoff`) takes each new connection away from asyncio's plain
  TCP transport before it reads anything: it duplicates the descriptor and aborts that
  transport (closing a duplicate sends nothing on the wire).
* **Handshake**: pyOpenSSL on the non-blocking socket; ``WantReadError``/``WantWriteError``
  wait with ``add_reader``/``add_writer``, so the loop never blocks. Then
  :func:`ossl_ktls.wrap` hands the record layer to the kernel (or keeps it in user space,
  same API). ``handshake_timeout`` (60 s) bounds it; cancellation closes the socket.
* **Transport**: :class:`KTLSTransport`, a selector-style transport around the non-blocking
  :class:`~ossl_ktls.KTLSConnection`. Reads go through ``recv_into`` (control records,
  tickets, KeyUpdate, close_notify are handled there, with the synchronous API's rules and
  exceptions), each turn until it would block, so what OpenSSL already holds (plaintext,
  or a close_notify) never waits for the socket to become readable. Writes are queued and
  pushed with ``KTLSConnection.send`` when the socket is writable; write-buffer high/low
  water marks pause/resume the protocol (``drain``); ``pause_reading``/``resume_reading``
  stop/start reading.
* **Pieces of the transport**: :class:`KTLSTransport` itself is what the protocol and
  asyncio see: the read path, the calls into the protocol and the lifecycle (open,
  closing, lost). It delegates to small parts with one job each:
  :class:`~ossl_ktls._aio_write.WriteBuffer` (queued plaintext and the flow control on
  it) and :class:`~ossl_ktls._aio_write.Sender` (the push into the connection, then
  close_notify), both without the loop or the protocol; :class:`_FdWatch` (the
  descriptor's reader and writer in the loop, and its release before the socket
  closes); :class:`_Linger` (the bounded wait for the peer after close_notify); and
  :class:`_NativeSendfile` (the state of the loop's native sendfile). The asyncio
  internals relied on: ``transports._FlowControlMixin`` (the type ``loop.sendfile``'s
  fallback insists on; it reads ``_loop`` and ``_protocol_paused``), what the selector
  loop's native sendfile calls (``_sendfile_compatible``, ``_make_empty_waiter``,
  ``_reset_empty_waiter``, ``_sock``, ``_sock_fd``), and in :class:`_FdWatch` that loop's
  ``_transports`` registry and ``_add_reader`` family.
* **Non-blocking user-space TX**: ``KTLSConnection`` queues the ciphertext the socket
  cannot take yet, in order (also the alerts and KeyUpdate replies OpenSSL produces while
  reading), and its ``shutdown()`` half-closes TCP only once that queue is out; the
  transport watches ``tx_backlog`` and calls ``flush()`` when the socket is writable.
  Kernel TX never has a backlog.
* **Closing**: ``close()`` sends everything queued, then close_notify (through the kernel
  with kernel TX), half-closes TCP, and keeps reading (discarding) until the peer closes
  too or ``shutdown_timeout`` (30 s) passes, so that our closing cannot turn into a TCP
  reset that would destroy data the peer has not read yet; then ``connection_lost(None)``.
  ``abort()`` sends no close_notify (the peer sees a truncated stream). ``write_eof()`` is
  close_notify + half-close (TLS 1.3 keeps the other direction open; a TLS 1.2 peer
  answers close_notify with its own, which ends the connection).
* **sendfile**: ``loop.sendfile(transport, file)``. With kernel TX on a selector loop the
  transport is registered like asyncio's own socket transports and the loop's native path
  runs ``os.sendfile`` on the socket (zero-copy; the kernel makes the records). Without
  kernel TX (or on other loops) asyncio's fallback reads the file and writes it through
  the transport.

Errors are the synchronous API's: pyOpenSSL's ``SSL.Error`` for a failed handshake, then
:class:`ossl_ktls.Error` subclasses (``TruncatedStream``, ``TLSAlertError``, ...) from the
stream reader, ``TimeoutError`` for a handshake that takes too long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import warnings
from asyncio import constants, selector_events, transports, trsock
from collections.abc import Callable, Mapping
from typing import Any, cast

from OpenSSL import SSL

from . import _openssl
from ._aio_write import Sender, WriteBuffer
from ._connection import KTLSConnection, wrap

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "SHUTDOWN_TIMEOUT",
    "KTLSTransport",
    "create_connection",
    "create_server",
    "open_connection",
    "start_server",
]

HANDSHAKE_TIMEOUT = 60.0
SHUTDOWN_TIMEOUT = 30.0

_logger = logging.getLogger(__name__)
_STREAM_LIMIT = 2**16  # asyncio.streams' default
_READ_SIZE = 256 * 1024
_TURN_BYTES = 1024 * 1024  # bytes read or written per callback, then the loop's other work


class _LoopSocket(socket.socket):
    """The non-blocking socket ``wrap()`` gets.

    ``close`` first calls :attr:`on_close`, so the transport takes the descriptor out of the
    event loop before its number is freed (``KTLSConnection`` closes the socket by itself
    after a fatal error).
    """

    def __init__(
        self, family: int = -1, type: int = -1, proto: int = -1, fileno: int | None = None
    ) -> None:
        super().__init__(family, type, proto, fileno)
        self.setblocking(False)
        self.on_close: Callable[[], None] | None = None

    def abandon(self) -> None:
        """FIN now, so nothing more can be sent (what is still queued is dropped)."""
        if self.fileno() >= 0:
            with contextlib.suppress(OSError):
                super().shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        hook, self.on_close = self.on_close, None
        if hook is not None:
            hook()
        super().close()


class _Handoff(asyncio.Protocol):
    """Takes a fresh TCP connection away from asyncio's plain transport, unread.

    The descriptor is duplicated into a :class:`_LoopSocket` and the plain transport is
    aborted (its close of the original descriptor sends nothing: the duplicate keeps the
    connection). *deliver* gets the socket, or the error.
    """

    def __init__(self, deliver: Callable[[_LoopSocket | BaseException], None]) -> None:
        self._deliver = deliver

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # asyncio's transport never starts reading
        result: _LoopSocket | BaseException
        try:
            fd = os.dup(transport.get_extra_info("socket").fileno())
            try:
                result = _LoopSocket(fileno=fd)
            except BaseException:
                os.close(fd)
                raise
        except Exception as exc:
            result = exc
        finally:
            transport.abort()
        self._deliver(result)


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    """Wait until *fd* is readable (or writable)."""
    fut: asyncio.Future[None] = loop.create_future()
    if write:
        loop.add_writer(fd, _set_done, fut)
    else:
        loop.add_reader(fd, _set_done, fut)
    try:
        await fut
    finally:
        if write:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)


async def _handshake(
    loop: asyncio.AbstractEventLoop,
    sock: _LoopSocket,
    context: SSL.Context,
    *,
    server_hostname: str | None,
    server_side: bool,
    timeout: float | None,
    wrap_options: Mapping[str, Any] | None,
) -> KTLSConnection:
    """The TLS handshake without blocking the loop, then the hand-over to the kernel."""
    conn = _openssl.BaseConnection(context, sock)
    if server_side:
        conn.set_accept_state()
    else:
        conn.set_connect_state()
        if server_hostname:
            verify = bool(context.get_verify_mode() & SSL.VERIFY_PEER)
            _openssl.set_peer_name(conn, server_hostname, verify)
    fd = sock.fileno()
    async with asyncio.timeout(timeout):
        while True:
            try:
                conn.do_handshake()
                break
            except SSL.WantReadError:
                await _ready(loop, fd, write=False)
            except SSL.WantWriteError:
                await _ready(loop, fd, write=True)
    return wrap(conn, **(wrap_options or {}))


def _extra_info(k: KTLSConnection, sock: socket.socket) -> dict[str, Any]:
    """What the transport's ``get_extra_info`` knows (read once, at the hand-over)."""
    extra: dict[str, Any] = {
        "socket": trsock.TransportSocket(sock),
        "ssl_object": k.connection,
        "ktls": k,
        "ktls_tx": k.ktls_tx,
        "ktls_rx": k.ktls_rx,
        "ktls_fallback_reason": k.fallback_reason,
        "cipher": (k.get_cipher_name(), k.get_cipher_version(), k.get_cipher_bits()),
    }
    for key, getter in (("sockname", sock.getsockname), ("peername", sock.getpeername)):
        try:
            extra[key] = getter()
        except OSError:
            extra[key] = None
    return extra


class _FdWatch:
    """The socket's descriptor in the event loop: which callbacks the loop runs for it.

    At most one reader (the transport's read path, or its linger after close) and the
    writer (*on_writable*) are armed; arming what is armed, or disarming what is not, does
    nothing. On selector loops the descriptor is registered under *owner* like asyncio's
    own socket transports (the loop then refuses ``sock_recv()`` & co. on it, and its
    native sendfile works) and armed through the loop's internal ``_add_reader`` family.
    :meth:`release` takes it out of the loop for good, before the socket is closed; after
    that nothing is armed again.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fd: int,
        owner: asyncio.BaseTransport,
        on_writable: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._owner = owner
        self._on_writable = on_writable
        selector = isinstance(loop, selector_events.BaseSelectorEventLoop)
        self._sel: Any = cast(Any, loop) if selector else None
        if self._sel is not None:
            self._sel._transports[fd] = owner
        self._reader: Callable[[], None] | None = None
        self.writing = False
        self.released = False

    @property
    def selector_loop(self) -> bool:
        """Whether the loop is a selector loop (its native sendfile can use the socket)."""
        return self._sel is not None

    def arm_reader(self, callback: Callable[[], None]) -> None:
        if self.released or self._reader == callback:
            return
        self._reader = callback
        if self._sel is not None:
            self._sel._add_reader(self._fd, callback)
        else:
            self._loop.add_reader(self._fd, callback)

    def disarm_reader(self) -> None:
        if self._reader is None:
            return
        self._reader = None
        if self._sel is not None:
            self._sel._remove_reader(self._fd)
        else:
            self._loop.remove_reader(self._fd)

    def arm_writer(self) -> None:
        if self.released or self.writing:
            return
        self.writing = True
        if self._sel is not None:
            self._sel._add_writer(self._fd, self._on_writable)
        else:
            self._loop.add_writer(self._fd, self._on_writable)

    def disarm_writer(self) -> None:
        if not self.writing:
            return
        self.writing = False
        if self._sel is not None:
            self._sel._remove_writer(self._fd)
        else:
            self._loop.remove_writer(self._fd)

    def release(self) -> None:
        """Take the descriptor out of the loop (before the socket is closed)."""
        if self.released:
            return
        self.disarm_reader()
        self.disarm_writer()
        self.released = True
        if self._sel is not None and self._sel._transports.get(self._fd) is self._owner:
            del self._sel._transports[self._fd]


class _NativeSendfile:
    """The selector loop's native sendfile, which borrows the transport's socket.

    asyncio's ``_sendfile_native`` awaits :meth:`begin`'s future, done once the write
    buffer is empty (the transport calls :meth:`buffer_empty` whenever it is), runs
    ``os.sendfile`` on the socket, then calls :meth:`end`. The kernel made records
    meanwhile that the connection did not see: with TLS 1.3 kernel TX they are counted
    from the TX sequence number before and after, so that the automatic KeyUpdate still
    comes in time. *lost* says whether the connection is gone (then nothing is asked of
    it).
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, k: KTLSConnection, lost: Callable[[], bool]
    ) -> None:
        self._loop = loop
        self._k = k
        self._lost = lost
        self._waiter: asyncio.Future[None] | None = None
        self._seq_mark: int | None = None

    @property
    def running(self) -> bool:
        """Between :meth:`begin` and :meth:`end` (the transport refuses ``write()``)."""
        return self._waiter is not None

    def begin(self, *, buffer_empty: bool) -> asyncio.Future[None]:
        if self._waiter is not None:
            raise RuntimeError("Empty waiter is already set")
        self._waiter = self._loop.create_future()
        if buffer_empty:
            self.buffer_empty()
        return self._waiter

    def buffer_empty(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._k.version == "1.3" and self._k.ktls_tx and not self._lost():
            with contextlib.suppress(Exception):
                self._seq_mark = self._k.tx_sequence()
        waiter.set_result(None)

    def end(self) -> None:
        """After the loop's native sendfile: count its records for the automatic KeyUpdate."""
        self._waiter = None
        mark, self._seq_mark = self._seq_mark, None
        if mark is None or self._lost():
            return
        try:
            records = self._k.tx_sequence() - mark
        except Exception:
            return
        self._k.note_records_sent(records)

    def fail(self) -> None:
        """The connection is lost: a wait for the empty buffer ends in ConnectionError."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("Connection is closed by peer"))


class _Linger:
    """After close_notify: read (and drop) until the peer closes, for at most *timeout* s.

    Closing the socket while the peer still sends would make TCP answer with a reset,
    which can destroy data the peer has not read yet. So the transport waits for the
    peer's end (close_notify, a TCP EOF, or a read error) and only then calls *done*, or
    calls it anyway after *timeout* seconds (None: no limit; 0: no wait). Reading goes
    through *fds* as the socket's reader, into *scratch*, in bounded turns. :meth:`stop`
    (the transport's end, whichever way it came) cancels the timer and further reads.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        k: KTLSConnection,
        fds: _FdWatch,
        scratch: bytearray,
        timeout: float | None,
        done: Callable[[], None],
        owner: object,  # named in the debug log
    ) -> None:
        self._loop = loop
        self._k = k
        self._fds = fds
        self._scratch = scratch
        self._timeout = timeout
        self._done = done
        self._owner = owner
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = False
        self.started = False

    def start(self, *, eof_received: bool) -> None:
        """close_notify is out; *eof_received*: the peer's end came already."""
        self.started = True
        if eof_received or self._timeout == 0:
            self._done()
            return
        if self._timeout is not None:
            self._timer = self._loop.call_later(self._timeout, self._done)
        self._fds.arm_reader(self._ready)
        self._ready()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _ready(self) -> None:
        if self._stopped:
            return
        budget = _TURN_BYTES
        while budget > 0:
            try:
                n = self._k.recv_into(self._scratch)
            except (BlockingIOError, InterruptedError):
                return
            except Exception as exc:
                _logger.debug("%r: error while waiting for the peer to close: %r", self._owner, exc)
                self._done()
                return
            if not n:
                self._done()
                return
            budget -= n
        self._loop.call_soon(self._ready)


class KTLSTransport(transports._FlowControlMixin):
    """An asyncio transport over a non-blocking :class:`~ossl_ktls.KTLSConnection`.

    Made by :func:`create_connection`/:func:`create_server` (and the stream functions), not
    directly. ``get_extra_info`` knows ``peername``, ``sockname``, ``socket``,
    ``ssl_object`` (the pyOpenSSL Connection), ``cipher`` (name, version, secret bits),
    ``ktls_tx``, ``ktls_rx``, ``ktls_fallback_reason`` and ``ktls`` (the KTLSConnection:
    for information and ``key_update()``; do not read or write through it).

    It derives from asyncio's ``_FlowControlMixin`` only because ``loop.sendfile``'s
    fallback requires that type (and reads ``_loop`` and ``_protocol_paused``); the
    mixin's state and methods are not used: flow control is the :class:`WriteBuffer`'s.
    """

    _start_tls_compatible = False

    _extra: dict[str, Any]
    _loop: asyncio.AbstractEventLoop

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        k: KTLSConnection,
        sock: _LoopSocket,
        protocol: asyncio.BaseProtocol,
        *,
        shutdown_timeout: float | None = SHUTDOWN_TIMEOUT,
        waiter: asyncio.Future[None] | None = None,
    ) -> None:
        # Not the mixin's __init__: its marks and pause flag would be unused duplicates.
        transports.Transport.__init__(self, _extra_info(k, sock))
        self._loop = loop
        self._k = k
        self._sock: _LoopSocket | None = sock
        self._sock_fd = sock.fileno()
        self._protocol: Any = None
        self._protocol_connected = False
        self._buffered = False
        self.set_protocol(protocol)
        self._wbuf = WriteBuffer(lambda: k.tx_backlog)
        self._sender = Sender(k, self._wbuf)
        self._paused = False
        self._closing = False
        self._write_eof = False
        self._eof_received = False
        self._conn_lost = 0
        self._dropped_writes = 0
        self._read_scheduled = False
        self._sendfile = _NativeSendfile(loop, k, lambda: bool(self._conn_lost))
        self._scratch = bytearray(_READ_SIZE)
        self._fds = _FdWatch(loop, self._sock_fd, self, self._pump)
        self._linger = _Linger(
            loop, k, self._fds, self._scratch, shutdown_timeout, self._finish, self
        )
        self.set_write_buffer_limits()
        sock.on_close = self._fds.release
        loop.call_soon(self._connection_made, waiter)

    def __repr__(self) -> str:
        state = "closed" if self._conn_lost else "closing" if self._closing else "open"
        return (
            f"<KTLSTransport fd={self._sock_fd} {state} ktls_tx={self._k.ktls_tx} "
            f"ktls_rx={self._k.ktls_rx} bufsize={self.get_write_buffer_size()}>"
        )

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None and sock.fileno() >= 0 and not getattr(self, "_conn_lost", 1):
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            sock.on_close = None
            sock.close()

    # ------------------------------------------------------------------ protocol

    def _connection_made(self, waiter: asyncio.Future[None] | None) -> None:
        if self._conn_lost:
            return
        try:
            self._protocol.connection_made(self)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.connection_made() call failed.")
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
            return
        if self.is_reading():
            self._fds.arm_reader(self._read_ready)
            self._schedule_read()  # wrap() may have kept plaintext OpenSSL decrypted
        if self._k.tx_backlog:
            self._fds.arm_writer()
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol
        self._buffered = isinstance(protocol, asyncio.BufferedProtocol)
        self._protocol_connected = True

    def get_protocol(self) -> asyncio.BaseProtocol:
        protocol: asyncio.BaseProtocol = self._protocol
        return protocol

    def is_closing(self) -> bool:
        return self._closing

    # ------------------------------------------------------------------ reading

    def is_reading(self) -> bool:
        return not self._closing and not self._paused

    def pause_reading(self) -> None:
        if not self.is_reading():
            return
        self._paused = True
        self._fds.disarm_reader()

    def resume_reading(self) -> None:
        if self._closing or not self._paused:
            return
        self._paused = False
        if not self._eof_received:
            self._fds.arm_reader(self._read_ready)
            self._schedule_read()  # OpenSSL may hold data or the end already

    def _schedule_read(self) -> None:
        if not self._read_scheduled:
            self._read_scheduled = True
            self._loop.call_soon(self._read_ready)

    def _read_ready(self) -> None:
        self._read_turn()
        # Reading in user space can queue answers (close_notify, KeyUpdate, alerts) that
        # the socket could not take at once: have the writer push them.
        if self._k.tx_backlog and not self._conn_lost:
            self._fds.arm_writer()

    def _read_turn(self) -> None:
        """Read until the socket would block (bounded: then again on the next loop turn).

        Stopping only at EAGAIN matters: in user space OpenSSL may already hold what
        comes next (buffered plaintext, or the close_notify or alert that ends the
        stream: ``pending()`` does not count those), and the socket will not become
        readable for them.
        """
        self._read_scheduled = False
        budget = _TURN_BYTES
        while budget > 0:
            if not self.is_reading() or self._eof_received or self._conn_lost:
                return
            try:
                if self._buffered:
                    buf = self._protocol.get_buffer(-1)
                    if not len(buf):
                        raise RuntimeError("get_buffer() returned an empty buffer")
                    n = self._k.recv_into(buf)
                else:
                    n = self._k.recv_into(self._scratch)
            except (BlockingIOError, InterruptedError):
                return
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal read error on kTLS transport")
                return
            if not n:
                self._read_eof()
                return
            budget -= n
            try:
                if self._buffered:
                    self._protocol.buffer_updated(n)
                else:
                    self._protocol.data_received(bytes(memoryview(self._scratch)[:n]))
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                self._fatal_error(exc, "Fatal error: protocol.data_received() call failed.")
                return
        if self.is_reading():
            self._schedule_read()

    def _read_eof(self) -> None:
        """close_notify arrived (or a TCP EOF with ``ragged_eof``)."""
        self._eof_received = True
        self._fds.disarm_reader()
        try:
            keep_open = self._protocol.eof_received()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal error: protocol.eof_received() call failed.")
            return
        # TLS 1.2 has no half-close: the library already answered with close_notify.
        if not keep_open or self._k.version == "1.2":
            self.close()

    # ------------------------------------------------------------------ writing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"data argument must be a bytes-like object, not {type(data).__name__!r}"
            )
        if self._write_eof:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._sendfile.running:
            raise RuntimeError("unable to write; sendfile is in progress")
        if not data:
            return
        if self._conn_lost or self._closing:
            self._dropped_writes += 1
            if self._dropped_writes >= constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES:
                _logger.warning("write() on a closed kTLS transport: data dropped")
            return
        self._wbuf.append(data)
        if not self._fds.writing:
            self._pump()
        self._maybe_pause_protocol()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        """close_notify and a TCP half-close, after everything queued."""
        if self._write_eof or self._closing:
            return
        self._write_eof = True
        if not self._fds.writing:
            self._pump()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return self._wbuf.size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._wbuf.low, self._wbuf.high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._wbuf.set_limits(high, low)
        self._maybe_pause_protocol()

    @property
    def _protocol_paused(self) -> bool:
        """asyncio's flow-control flag (``loop.sendfile``'s fallback reads it)."""
        return self._wbuf.paused

    def _maybe_pause_protocol(self) -> None:
        if not self._wbuf.pause_due():
            return
        try:
            self._protocol.pause_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._protocol_error(exc, "protocol.pause_writing() failed")

    def _maybe_resume_protocol(self) -> None:
        if not self._wbuf.resume_due():
            return
        try:
            self._protocol.resume_writing()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._protocol_error(exc, "protocol.resume_writing() failed")

    def _protocol_error(self, exc: BaseException, message: str) -> None:
        self._loop.call_exception_handler(
            {"message": message, "exception": exc, "transport": self, "protocol": self._protocol}
        )

    def _pump(self) -> None:
        """Writer callback: push, then arm or disarm the writer and move the close along."""
        if self._conn_lost:
            return
        try:
            done = self._sender.push(
                budget=_TURN_BYTES, close_notify=self._write_eof or self._closing
            )
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal write error on kTLS transport")
            return
        if self._sendfile.running and not self.get_write_buffer_size():
            self._sendfile.buffer_empty()
        if not done:
            self._fds.arm_writer()
            self._maybe_resume_protocol()
            return
        self._fds.disarm_writer()
        if self._closing:
            if not self._linger.started:
                self._linger.start(eof_received=self._eof_received)
        else:
            self._maybe_resume_protocol()

    # ------------------------------------------------------------------ sendfile

    @property
    def _sendfile_compatible(self) -> constants._SendfileMode:
        """What ``loop.sendfile`` may do: zero-copy with kernel TX on a selector loop."""
        if self._k.ktls_tx and self._fds.selector_loop:
            return constants._SendfileMode.TRY_NATIVE
        return constants._SendfileMode.FALLBACK

    def _make_empty_waiter(self) -> asyncio.Future[None]:
        """Called by the selector loop's native sendfile before it uses the socket."""
        return self._sendfile.begin(buffer_empty=not self.get_write_buffer_size())

    def _reset_empty_waiter(self) -> None:
        """Called by the selector loop's native sendfile when it is done with the socket."""
        self._sendfile.end()

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Send what is queued, then close_notify; connection_lost() once the peer closed."""
        if self._closing:
            return
        self._closing = True
        self._fds.disarm_reader()
        if not self._fds.writing:
            self._pump()

    def abort(self) -> None:
        """Close now: queued data is dropped, no close_notify is sent (the peer sees a reset)."""
        self._force_close(None)

    def _finish(self) -> None:
        """The orderly end: everything was sent, close_notify included."""
        if self._conn_lost:
            return
        self._conn_lost += 1
        self._linger.stop()
        self._fds.release()
        self._close_k()
        self._loop.call_soon(self._call_connection_lost, None)

    def _force_close(self, exc: BaseException | None) -> None:
        if self._conn_lost:
            return
        self._conn_lost += 1
        self._closing = True
        self._linger.stop()
        self._fds.release()
        self._wbuf.clear()
        if self._sock is not None:
            self._sock.abandon()
        self._close_k(orderly=False)
        self._loop.call_soon(self._call_connection_lost, exc)

    def _fatal_error(self, exc: BaseException, message: str) -> None:
        if isinstance(exc, OSError):
            _logger.debug("%r: %s", self, message, exc_info=True)
        else:
            self._protocol_error(exc, message)
        self._force_close(exc)

    def _close_k(self, *, orderly: bool = True) -> None:
        # KTLSConnection.close() would wait (up to 30 s) for user-space ciphertext still
        # queued: never on the event loop. What cannot go now is given up with a reset,
        # as after abort() or a fatal error, which must not end in close_notify either.
        try:
            if orderly and not self._k.tx_backlog:
                self._k.close()
            else:
                self._k.abort()
        except Exception:
            _logger.debug("%r: KTLSConnection.close() failed", self, exc_info=True)
        if self._sock is not None:
            self._sock.close()

    def _call_connection_lost(self, exc: BaseException | None) -> None:
        try:
            if self._protocol_connected:
                self._protocol.connection_lost(exc)
        finally:
            self._sendfile.fail()
            self._sock = None


# ---------------------------------------------------------------------- API


async def create_connection(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str | None = None,
    port: int | str | None = None,
    *,
    context: SSL.Context,
    server_hostname: str | None = None,
    handshake_timeout: float | None = HANDSHAKE_TIMEOUT,
    shutdown_timeout: float | None = SHUTDOWN_TIMEOUT,
    wrap_options: Mapping[str, Any] | None = None,
    **kwds: Any,
) -> tuple[KTLSTransport, asyncio.BaseProtocol]:
    """Like ``loop.create_connection`` with TLS by *context*, record layer in the kernel.

    Args:
        context: a pyOpenSSL client Context (``ossl_ktls.prepare`` is applied).
        server_hostname: the name sent as SNI and, when *context* verifies peers
            (``VERIFY_PEER``), checked against the certificate. Default: *host*; ``""``
            sends no SNI and checks no name.
        handshake_timeout: seconds for the TLS handshake (None: no limit).
        shutdown_timeout: after ``close()`` sent close_notify, how long to wait for the
            peer to close before closing anyway.
        wrap_options: keyword arguments for :func:`ossl_ktls.wrap` (``tx``, ``rx``,
            ``require``, ``ragged_eof``, ``ticket_callback``, ...).
        kwds: passed to ``loop.create_connection`` (``local_addr``, ``sock``,
            ``happy_eyeballs_delay``, ...).

    Raises:
        OpenSSL.SSL.Error: the handshake failed (certificate, name, protocol).
        TimeoutError: the handshake took longer than *handshake_timeout*.
        ossl_ktls.KTLSUnavailable: ``require=True`` in *wrap_options* and no kernel TLS.
    """
    if "ssl" in kwds:
        raise ValueError("ossl_ktls.aio does TLS itself: pass context=, not ssl=")
    if server_hostname is None:
        if host is None:
            raise ValueError("server_hostname is needed when there is no host")
        server_hostname = host
    loop = asyncio.get_running_loop()
    _openssl.prepare(context)
    got: list[_LoopSocket | BaseException] = []
    # (typeshed's overloads want host: str, port: int; asyncio takes what getaddrinfo takes)
    any_loop: Any = loop
    try:
        await any_loop.create_connection(lambda: _Handoff(got.append), host, port, **kwds)
    except BaseException:
        for item in got:
            if isinstance(item, socket.socket):
                item.close()
        raise
    sock = got[0] if got else ConnectionError("the connection was lost before the handshake")
    if isinstance(sock, BaseException):
        raise sock
    try:
        k = await _handshake(
            loop,
            sock,
            context,
            server_hostname=server_hostname,
            server_side=False,
            timeout=handshake_timeout,
            wrap_options=wrap_options,
        )
        protocol = protocol_factory()
        waiter: asyncio.Future[None] = loop.create_future()
        transport = KTLSTransport(
            loop, k, sock, protocol, shutdown_timeout=shutdown_timeout, waiter=waiter
        )
    except BaseException:
        sock.close()
        raise
    try:
        await waiter
    except BaseException:
        transport.abort()
        raise
    return transport, protocol


async def create_server(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str | list[str] | None = None,
    port: int | str | None = None,
    *,
    context: SSL.Context,
    handshake_timeout: float | None = HANDSHAKE_TIMEOUT,
    shutdown_timeout: float | None = SHUTDOWN_TIMEOUT,
    wrap_options: Mapping[str, Any] | None = None,
    **kwds: Any,
) -> asyncio.Server:
    """Like ``loop.create_server`` with TLS by *context*, record layer in the kernel.

    Each accepted connection does its handshake in its own task (a slow or failing client
    delays nobody; failures are logged at debug level and the socket is closed); the
    protocol is made once the connection is handed over. Other arguments as in
    :func:`create_connection`; *kwds* go to ``loop.create_server``.
    """
    if "ssl" in kwds:
        raise ValueError("ossl_ktls.aio does TLS itself: pass context=, not ssl=")
    loop = asyncio.get_running_loop()
    _openssl.prepare(context)
    handshakes: set[asyncio.Task[None]] = set()

    async def serve(sock: _LoopSocket) -> None:
        try:
            k = await _handshake(
                loop,
                sock,
                context,
                server_hostname=None,
                server_side=True,
                timeout=handshake_timeout,
                wrap_options=wrap_options,
            )
            protocol = protocol_factory()
            KTLSTransport(loop, k, sock, protocol, shutdown_timeout=shutdown_timeout)
        except (OSError, SSL.Error) as exc:
            sock.close()
            _logger.debug("kTLS handshake of an incoming connection failed: %r", exc)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, Exception):
                raise
            loop.call_exception_handler(
                {"message": "kTLS server: incoming connection failed", "exception": exc}
            )

    def accepted(item: _LoopSocket | BaseException) -> None:
        if isinstance(item, BaseException):
            _logger.debug("kTLS server: could not take over a connection: %r", item)
            return
        task = loop.create_task(serve(item))
        handshakes.add(task)
        task.add_done_callback(handshakes.discard)

    any_loop: Any = loop
    server: asyncio.Server = await any_loop.create_server(
        lambda: _Handoff(accepted), host, port, **kwds
    )
    return server


async def open_connection(
    host: str | None = None,
    port: int | str | None = None,
    *,
    context: SSL.Context,
    server_hostname: str | None = None,
    limit: int = _STREAM_LIMIT,
    **kwds: Any,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Like ``asyncio.open_connection`` over kernel TLS; *kwds* as in :func:`create_connection`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await create_connection(
        lambda: protocol, host, port, context=context, server_hostname=server_hostname, **kwds
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer


async def start_server(
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
    host: str | list[str] | None = None,
    port: int | str | None = None,
    *,
    context: SSL.Context,
    limit: int = _STREAM_LIMIT,
    **kwds: Any,
) -> asyncio.Server:
    """Like ``asyncio.start_server`` over kernel TLS; *kwds* as in :func:`create_server`."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(factory, host, port, context=context, **kwds)
