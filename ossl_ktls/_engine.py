"""The engine of one handed-over connection: the state its direction paths share, its
lifecycle, and the operations every façade is built on.

Theory of operation
-------------------
``_handover.hand_over`` finishes the handshake, decides with ``_policy.plan`` where each
direction goes, installs the kernel's keys and builds an :class:`Engine` with one
transmit path and one receive path (``_tx.KernelTx`` or ``_tx.UserTx``,
``_rx.KernelRx`` or ``_rx.UserRx``), chosen once. From then on:

* the engine's public methods (``send``, ``sendfile``, ``recv_into``, ``shutdown``,
  ``close``, ...) check the lifecycle, take the locks and call the path; they never
  branch on where a direction lives;
* a receive path reaches the transmit path only through :class:`TxPath`'s answers
  (``send_alert``, ``answer_key_update``, ``openssl_read_done``), never through a façade;
* every fatal error goes through :meth:`Engine.fatal`: the peer gets the alert when one
  applies, the socket is closed, key material is wiped, and every later call raises
  ``ConnectionClosed`` naming the error.

Façades (``KTLSConnection``, the asyncio transport, the pyOpenSSL-compatible Connection)
use only the public methods and attributes below.

The engine drives OpenSSL through pyOpenSSL's own methods, called on the base class
(``SSL.Connection.recv(conn, n)``): a façade may be a subclass of ``SSL.Connection``
whose overrides route to the engine.

Locks: ``tx_lock`` orders everything that goes out (held across a socket write);
``ssl_lock`` guards the OpenSSL object, which is not thread-safe, and is never held
across a socket call. Lock order: ``tx_lock``, then ``ssl_lock``.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import io
import os
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Protocol

from OpenSSL import SSL

from . import _linux_tls as uapi
from . import _openssl, _records, _splice
from ._errors import (
    ConnectionClosed,
    Error,
    KernelError,
    KeyUpdateUnsupported,
    LocalIOError,
    TLSAlertError,
    UsageError,
    alert_name,
    from_errno,
)
from ._observer import RecordObserver
from ._openssl import BaseConnection
from ._wire import AlertDescription, AlertLevel, Direction

if TYPE_CHECKING:
    from ._relay import TicketSealer
    from ._secrets import TrafficSecrets
    from ._suites import Suite

MAX_RECORD = _records.MAX_PLAINTEXT
READ_CHUNK = 65536
STREAM_CHUNK = 1 << 20  # recvfile/send_stream: the most one splice step asks for
CONTROL_WAIT = 30.0  # seconds a control record (or close()'s backlog) may wait for room

ALERT_WARNING = AlertLevel.WARNING
ALERT_FATAL = AlertLevel.FATAL
HANDSHAKE = _records.CONTENT_HANDSHAKE
CLOSE_NOTIFY = AlertDescription.CLOSE_NOTIFY


class State(enum.Enum):
    """A connection's lifecycle: OPEN, then BROKEN (a fatal error closed the socket; the
    error is kept and raised again, wrapped, by every later call) or CLOSED (``close()``
    or ``abort()``)."""

    OPEN = "open"
    BROKEN = "broken"
    CLOSED = "closed"


class TxPath(Protocol):
    """Where records we send are made: the kernel (``KernelTx``) or OpenSSL over a
    memory BIO, its ciphertext written to the socket by us (``UserTx``).

    Methods that write expect the caller to hold the engine's ``tx_lock``, except
    ``sendfile``, which takes it itself (the user-space loop per chunk)."""

    kernel: bool
    record_limit: int
    key_update_after: int | None

    def send(self, view: memoryview, more: bool) -> int: ...
    def sendfile(self, fd: int, offset: int, count: int) -> int: ...
    def send_pipe(self, pipe: _splice.Pipe, n: int) -> int: ...
    def can_send_alert(self, description: int) -> bool: ...
    def send_alert(self, level: int, description: int) -> None: ...
    def backlog(self) -> int: ...
    def flush(self) -> None: ...
    def half_close(self) -> None: ...
    def key_update(self, request_peer: bool) -> None: ...
    def answer_key_update(self) -> None: ...
    def openssl_read_done(self, key_update_requested: bool) -> None: ...
    def note_records(self, records: int) -> None: ...
    def sequence(self) -> int: ...


class RxPath(Protocol):
    """Where records we receive are opened: the kernel (``KernelRx``) or OpenSSL fed
    from the socket by us (``UserRx``)."""

    kernel: bool

    def recv_into(self, view: memoryview) -> int: ...
    def splice_to(self, sink: _splice.Sink, want: int) -> int: ...
    def has_buffered_end(self) -> bool: ...
    def drain_once(self, buf: memoryview) -> int: ...
    def sequence(self) -> int: ...


def deadline_of(sock: socket.socket) -> float | None:
    """When an operation started now must end by the socket's timeout (None: never)."""
    timeout = sock.gettimeout()
    return None if timeout is None else time.monotonic() + timeout


def wait(sock: socket.socket, *, write: bool, deadline: float | None) -> None:
    """Wait until *sock* is readable/writable, honouring its timeout semantics."""
    timeout = sock.gettimeout()
    if timeout == 0.0:
        raise BlockingIOError(errno.EAGAIN, "operation would block")
    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT if write else select.POLLIN)
    if not poller.poll(None if remaining is None else remaining * 1000):
        raise TimeoutError("timed out")


def writable_before(sock: socket.socket, deadline: float) -> bool:
    """Wait until *sock* has send-buffer room; False if *deadline* passes first."""
    remaining = deadline - time.monotonic()
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    return remaining > 0 and bool(poller.poll(remaining * 1000))


@contextlib.contextmanager
def nonblocking(sock: socket.socket) -> Iterator[None]:
    """Make *sock* non-blocking for a moment (its timeout is restored after)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)


def sendfile_args(file: BinaryIO | IO[bytes], offset: int, count: int | None) -> tuple[int, int]:
    """Check ``sendfile``'s arguments; returns the descriptor and the byte count.

    Raises:
        UsageError: no descriptor, not a regular file, negative numbers, or ``count``
            past the end of the file.
    """
    try:
        fd = file.fileno()
    except (AttributeError, io.UnsupportedOperation) as exc:
        raise UsageError("sendfile() needs a file with a file descriptor") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise UsageError("sendfile() needs a regular file")
    if offset < 0 or (count is not None and count < 0):
        raise UsageError("offset and count must not be negative")
    available = max(0, st.st_size - offset)
    if count is None:
        return fd, available
    if count > available:
        raise UsageError(
            f"sendfile(): count={count} goes past the end of the file "
            f"({available} bytes from offset {offset})"
        )
    return fd, count


class Engine:
    """One handed-over connection (see the module docstring). Built by ``hand_over``."""

    tx: TxPath
    rx: RxPath

    def __init__(
        self,
        conn: SSL.Connection,
        sock: socket.socket,
        *,
        version: str,
        suite: Suite | None,
        is_server: bool,
        ragged_eof: bool,
    ) -> None:
        self.conn = conn
        self.sock = sock
        # The record observer OpenSSL's callbacks feed for this Connection.
        self.observer: RecordObserver = _openssl.state_of(conn).observer
        self.version = version
        self.suite = suite
        self.is_server = is_server
        self.ragged_eof = ragged_eof
        self.on_ticket: Callable[[bytes], None] | None = None
        self.fallback_reason: str | None = None
        self.zerocopy_sendfile = False
        self.tx_record_limit = MAX_RECORD  # the most plaintext a record we send may carry
        self.secrets: TrafficSecrets | None = None  # TLS 1.3, kernel directions, rekeyable
        # TLS 1.3 client with kernel RX: seals the tickets the kernel receives for OpenSSL.
        self.ticket_sealer: TicketSealer | None = None
        self.unrelayed_ticket: bytes | None = None  # the newest, as received
        self.ticket_record: bytes | None = None  # the newest, sealed, not yet read
        self.state = State.OPEN
        self.error: Error | None = None
        self.tx_lock = threading.RLock()
        self.ssl_lock = threading.RLock()
        self.rx_plain = bytearray()  # plaintext received, not yet read
        self.eof = False
        self.close_notify_sent = False
        self.close_notify_received = False
        # TLS 1.2: answer the peer's close_notify with ours at once (RFC 5246 7.2.1). A
        # pyOpenSSL-style façade leaves it to the caller's shutdown(), as OpenSSL does.
        self.answer_close_notify = True
        # User-space RX: read the socket one record at a time (never past the record being
        # decrypted), so that what is not yet read stays visible to select/epoll, as with
        # OpenSSL on a socket. A pyOpenSSL-style façade needs it; the others read in large
        # chunks and report what they hold (has_buffered_input).
        self.rx_record_at_a_time = False
        self.scratch = bytearray(MAX_RECORD + 256)

    def __repr__(self) -> str:
        return (
            f"<Engine {self.state.value} {self.version} {self.suite.name if self.suite else '?'}"
            f" tx={'kernel' if self.tx.kernel else 'user'}"
            f" rx={'kernel' if self.rx.kernel else 'user'}>"
        )

    # ------------------------------------------------------------------ lifecycle

    def check_usable(self) -> None:
        """Raise ConnectionClosed unless the connection is OPEN."""
        if self.error is not None:
            raise ConnectionClosed(f"connection is closed after an error: {self.error}")
        if self.state is not State.OPEN:
            raise ConnectionClosed()

    def fatal(self, exc: Error, *, alert: bool = True) -> Error:
        """Record *exc* as fatal, tell the peer when we can, close the socket, return exc."""
        if self.state is State.OPEN:
            self.state, self.error = State.BROKEN, exc
            if alert and exc.alert is not None and not isinstance(exc, TLSAlertError):
                with contextlib.suppress(OSError, Error, SSL.Error):
                    if self.tx.kernel:
                        # Kernel RX marks the socket with its error (tls_err_abort: EBADMSG,
                        # EMSGSIZE, ...), and every send fails while it is pending; reading
                        # SO_ERROR clears it, and the alert goes out through kernel TX.
                        self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    self.tx.send_alert(ALERT_FATAL, exc.alert)
            self.teardown()
        return exc

    def os_error(self, exc: OSError, operation: str) -> Exception:
        """Blocking/timeout errors pass through; others are fatal and mapped."""
        if isinstance(exc, (BlockingIOError, TimeoutError, InterruptedError)):
            return exc
        if exc.errno is None:
            return self.fatal(from_errno(errno.EIO, operation))
        return self.fatal(from_errno(exc.errno, operation), alert=exc.errno != errno.EPIPE)

    def alert_marks(self) -> tuple[int, int]:
        """How many alerts the observer has seen each way (taken before an OpenSSL call)."""
        return len(self.observer.alerts_read), len(self.observer.alerts_written)

    def openssl_error(self, exc: SSL.Error, operation: str, marks: tuple[int, int]) -> Error:
        """Map an OpenSSL error of the user-space path (see ``_openssl.map_error``)."""
        return _openssl.map_error(exc, operation, self.observer, marks)

    def teardown(self) -> None:
        self.wipe()
        with contextlib.suppress(OSError):
            self.sock.close()

    def wipe(self) -> None:
        """Zero every secret kept for this connection (ours and the callbacks')."""
        if self.secrets is not None:
            self.secrets.wipe()
        if self.ticket_sealer is not None:
            self._seal_ticket()  # the last one stays ready for get_session(), sealed
            self.ticket_sealer.wipe()
            self.ticket_sealer = None
        _openssl.state_of(self.conn).wipe()

    # TLS 1.3 tickets for OpenSSL (client, kernel RX; see ``_relay``). Only the newest
    # ticket matters (each one replaces the session OpenSSL hands out), and only when
    # someone asks for the session: it is sealed for OpenSSL at the latest when the keys
    # are wiped, and read by OpenSSL when ``get_session()`` is called.

    def keep_ticket(self, message: bytes) -> None:
        """Keep a NewSessionTicket kernel RX received, for ``get_session()``."""
        if self.ticket_sealer is not None:
            self.unrelayed_ticket = message

    def _seal_ticket(self) -> None:
        message, sealer = self.unrelayed_ticket, self.ticket_sealer
        if message is not None and sealer is not None:
            self.unrelayed_ticket = None
            # At OpenSSL's next read sequence number. A record is sealed only to be read at
            # once (here) or when the keys are wiped (no ticket comes after that).
            self.ticket_record = sealer.seal(HANDSHAKE, message)

    def relay_tickets(self) -> None:
        """Let OpenSSL read the newest ticket kernel RX received, so that its session
        (``get_session()``) resumes. Where OpenSSL does not take it, relaying stops and
        nothing else changes: a missing ticket costs a full handshake next time."""
        with self.ssl_lock:
            self._seal_ticket()
            record, self.ticket_record = self.ticket_record, None
            if record is None:
                return
            try:
                BaseConnection.bio_write(self.conn, record)
                try:
                    data = BaseConnection.recv(self.conn, 1)
                except SSL.WantReadError:
                    data = b""
                taken = not data and not _openssl.pending_output(self.conn)
            except SSL.Error:
                taken = False
            if not taken and self.ticket_sealer is not None:
                self.ticket_sealer.wipe()
                self.ticket_sealer = None

    def rekey(self, direction: Direction) -> None:
        """Move kernel *direction* to its next TLS 1.3 traffic secret (a KeyUpdate; the
        caller checked that the secret is kept). A refusal is fatal."""
        assert self.secrets is not None
        self.secrets.advance(direction)
        state = self.secrets.state(direction, 0)
        try:
            uapi.install(self.sock, direction, state)
        except OSError as exc:
            raise self.fatal(
                KeyUpdateUnsupported(
                    f"the kernel refused the new {direction.name} key: {exc.strerror}"
                )
            ) from exc
        finally:
            state.wipe()

    def half_close(self) -> None:
        """The TCP half-close after our close_notify."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise self.os_error(exc, "shutdown") from exc

    def peer_closed(self) -> None:
        """close_notify arrived: end of stream; TLS 1.2 answers with its own (RFC 5246 7.2.1)."""
        self.close_notify_received = True
        self.eof = True
        if self.version == "1.2" and self.answer_close_notify and not self.close_notify_sent:
            try:
                with self.tx_lock:
                    self.tx.send_alert(ALERT_WARNING, CLOSE_NOTIFY)
                self.close_notify_sent = True
            except (OSError, Error):
                pass  # the peer may already be gone; its close_notify was still clean

    # ------------------------------------------------------------------ sending

    def send(self, view: memoryview, more: bool) -> int:
        """Send what the transmit path accepts of *view* now (``socket.send`` semantics)."""
        with self.tx_lock:
            self.check_usable()
            if self.close_notify_sent:
                raise ConnectionClosed("send() after shutdown()")
            return self.tx.send(view, more)

    def send_all(self, view: memoryview) -> int:
        """Send all of *view* (a blocking socket or one with a timeout: no EAGAIN); an
        error carries ``bytes_sent``, what went out of *view* before it."""
        done = 0
        try:
            while done < len(view):
                done += self.send(view[done:], False)
        except (OSError, Error) as exc:
            exc.bytes_sent = done  # type: ignore[union-attr]
            raise
        return done

    def sendfile(self, file: BinaryIO | IO[bytes], offset: int, count: int | None) -> int:
        """``socket.sendfile``'s contract: the file position is left after the last byte
        sent; an error carries ``bytes_sent``, what the peer was really sent before it."""
        self.check_usable()
        fd, count = sendfile_args(file, offset, count)
        if self.sock.gettimeout() == 0.0:
            raise UsageError("sendfile() needs a blocking socket or one with a timeout")
        if count == 0:
            return 0
        sent = 0
        try:
            sent = self.tx.sendfile(fd, offset, count)
        finally:
            if sent and hasattr(file, "seek"):
                file.seek(offset + sent)
        return sent

    def send_stream(self, source: Any, count: int | None) -> int:
        """Send what *source* delivers until its end (or *count* bytes): spliced through a
        pipe into kernel TX where it can, copied otherwise. An error carries
        ``bytes_sent``; a failing source resets the connection (see ``other_side_failed``)."""
        if count is not None and count < 0:
            raise UsageError("count must not be negative")
        if self.sock.gettimeout() == 0.0:
            raise UsageError("send_stream() needs a blocking socket or one with a timeout")
        try:
            src = _splice.Source(source)
        except TypeError as exc:
            raise UsageError(str(exc)) from exc
        sent = 0
        buf: memoryview | None = None
        try:
            while count is None or sent < count:
                want = STREAM_CHUNK if count is None else min(count - sent, STREAM_CHUNK)
                if src.splice:
                    n = src.to_pipe(want)
                    if n is None:
                        continue  # not spliceable: read it from now on
                    if n == 0:
                        break
                    assert src.pipe is not None
                    with self.tx_lock:
                        self.check_usable()
                        if self.close_notify_sent:
                            raise ConnectionClosed("send_stream() after shutdown()")
                        sent += self.tx.send_pipe(src.pipe, n)
                    continue
                if buf is None:
                    buf = memoryview(bytearray(READ_CHUNK))
                n = src.read_into(buf[: min(want, READ_CHUNK)])
                if n == 0:
                    break
                sent += self.send_all(buf[:n])
        except _splice.InputError as exc:
            cut = self.other_side_failed("send_stream(): reading the source", exc.error, sent)
            cut.bytes_sent = sent
            raise cut from exc.error
        except (Error, OSError) as exc:
            exc.bytes_sent = sent + (getattr(exc, "bytes_sent", None) or 0)  # type: ignore[union-attr]
            raise
        finally:
            src.close()
        return sent

    def other_side_failed(self, what: str, exc: OSError, done: int) -> LocalIOError:
        """The file or socket on the other end of ``recvfile``/``send_stream`` failed.

        The stream through this connection is then cut: what was taken off it for the
        output is lost, or the source ended before its end. The connection is reset (no
        close_notify: the peer must never take a cut stream for a whole one), and the
        error names the other side's errno."""
        code = exc.errno or (errno.ETIMEDOUT if isinstance(exc, TimeoutError) else errno.EIO)
        err = LocalIOError(
            f"{what} failed after {done} bytes: {exc.strerror or exc} (errno {code}); "
            "the connection was reset",
            errno=code,
        )
        if self.error is None:
            self.error = err
        self.abort()
        return err

    def send_alert(self, level: int, description: int) -> None:
        """Send an alert record; a fatal one ends the connection."""
        if level not in (ALERT_WARNING, ALERT_FATAL) or not 0 <= description <= 255:
            raise UsageError("alert level must be 1 or 2 and description 0..255")
        with self.tx_lock:
            self.check_usable()
            if not self.tx.can_send_alert(description):
                raise UsageError("send_alert() of anything but close_notify needs kernel TX")
            self.tx.send_alert(level, description)
            if description == CLOSE_NOTIFY:
                self.close_notify_sent = True
            if level == ALERT_FATAL:
                self.state = State.BROKEN
                self.error = Error(f"we sent fatal alert {alert_name(description)}")
                self.teardown()

    def key_update(self, request_peer: bool) -> None:
        """Send a TLS 1.3 KeyUpdate and move TX to the next key."""
        with self.tx_lock:
            self.check_usable()
            if self.version != "1.3":
                raise UsageError("KeyUpdate exists only in TLS 1.3")
            self.tx.key_update(request_peer)

    def flush(self) -> int:
        """Push queued user-space ciphertext; returns what is still queued."""
        with self.tx_lock:
            self.check_usable()
            self.tx.flush()
            return self.tx.backlog()

    def shutdown(self) -> None:
        """Send close_notify, then half-close TCP (when nothing is queued before it)."""
        with self.tx_lock:
            self.send_close_notify()
            self.tx.half_close()

    def send_close_notify(self) -> None:
        """Send close_notify once (after any MSG_MORE record still open); TCP stays open."""
        with self.tx_lock:
            self.check_usable()
            if not self.close_notify_sent:
                self.tx.send_alert(ALERT_WARNING, CLOSE_NOTIFY)
                self.close_notify_sent = True

    # ------------------------------------------------------------------ receiving

    def recv_into(self, view: memoryview) -> int:
        """Receive into *view* (not empty); 0 means the end of the stream."""
        if self.rx_plain:
            n = min(len(view), len(self.rx_plain))
            view[:n] = self.rx_plain[:n]
            del self.rx_plain[:n]
            return n
        self.check_usable()
        if self.eof:
            return 0
        return self.rx.recv_into(view)

    def recvfile(self, target: Any, count: int | None) -> int:
        """Write what arrives to *target* until close_notify (or *count* bytes): spliced
        from kernel RX through a pipe where it can, copied otherwise. Control records are
        read the normal way (``recv_into``). An error carries ``bytes_received``, what
        *target* took; a failing output resets the connection (``other_side_failed``)."""
        if count is not None and count < 0:
            raise UsageError("count must not be negative")
        if self.sock.gettimeout() == 0.0:
            raise UsageError("recvfile() needs a blocking socket or one with a timeout")
        try:
            sink = _splice.Sink(target)
        except TypeError as exc:
            raise UsageError(str(exc)) from exc
        except _splice.OutputError as exc:  # its buffer, before anything was received
            code = exc.error.errno or errno.EIO
            err = KernelError(f"recvfile(): flushing the output failed: {exc}", errno=code)
            err.bytes_received = 0
            raise err from exc.error
        buf: memoryview | None = None
        try:
            while count is None or sink.delivered < count:
                want = STREAM_CHUNK if count is None else count - sink.delivered
                if sink.splice and not self.rx_plain and not self.eof:
                    self.check_usable()
                    if self.rx.splice_to(sink, want):
                        continue
                if buf is None:
                    buf = memoryview(bytearray(READ_CHUNK))
                n = self.recv_into(buf[: min(want, READ_CHUNK)])
                if n == 0:
                    break
                sink.write(buf[:n])
        except _splice.OutputError as exc:
            lost = self.other_side_failed(
                "recvfile(): writing the output", exc.error, sink.delivered
            )
            lost.bytes_received = sink.delivered
            raise lost from exc.error
        except (Error, OSError) as exc:
            exc.bytes_received = sink.delivered  # type: ignore[union-attr]
            raise
        finally:
            sink.close()
        return sink.delivered

    def has_buffered_input(self) -> bool:
        """True when the next receive answers without reading the socket."""
        return bool(self.rx_plain) or (not self.eof and self.rx.has_buffered_end())

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Close without losing data (see ``KTLSConnection.close``)."""
        if self.state is State.CLOSED:
            return
        try:
            if self.state is State.OPEN and not self.close_notify_sent:
                self.shutdown()
            if self.tx.backlog() and not self._push_backlog():
                self.abort()
                return
        except (OSError, Error, SSL.Error):
            pass
        self._drain()
        self.state = State.CLOSED
        self.teardown()

    def abort(self) -> None:
        """Close at once with a TCP reset, never a clean end."""
        if self.state is State.CLOSED:
            return
        if self.error is None:
            self.error = ConnectionClosed("the connection was aborted")
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.state = State.CLOSED
        self.teardown()

    def _push_backlog(self) -> bool:
        """Wait (up to CONTROL_WAIT) until the user-space ciphertext queue is on the wire."""
        deadline = time.monotonic() + CONTROL_WAIT
        while True:
            with self.tx_lock:
                self.tx.flush()
            if not self.tx.backlog():
                return True
            if not writable_before(self.sock, deadline):
                return False

    def _drain(self) -> None:
        """Read and drop what waits in the receive queue (closing over unread data makes
        the kernel send a reset, and the peer could lose the tail of our data)."""
        if self.sock.fileno() < 0:
            return
        buf = memoryview(self.scratch)
        # Python waits out a socket timeout before recv even with MSG_DONTWAIT: switch
        # the socket to non-blocking for the drain instead.
        with nonblocking(self.sock):
            for _ in range(256):
                try:
                    if self.rx.drain_once(buf) == 0:
                        return
                except OSError:
                    return
