"""KTLSConnection: a pyOpenSSL Connection whose record layer lives in the kernel.

Theory of operation
-------------------
``wrap(conn)`` finishes the handshake through pyOpenSSL, then:

1. reads the negotiated version and cipher, and asks ``probe()`` what the kernel takes;
2. derives each direction's key/IV (TLS 1.2: key block from the master secret; TLS 1.3:
   from the traffic secrets the keylog callback caught, advanced once per KeyUpdate
   OpenSSL already processed) and takes the next record sequence number of each
   direction from the message-callback accounting (``_observer``);
3. takes the plaintext OpenSSL already decrypted but nobody read (``conn.pending()``) to
   deliver it first;
4. swaps OpenSSL's socket BIO for memory BIOs (``_openssl.detach_from_socket``). From
   here on OpenSSL never touches the socket by itself: every byte that reaches the wire
   goes through this class, either as plaintext into the kernel or as ciphertext OpenSSL
   produced into its memory BIO (the user-space path);
5. attaches the ``tls`` ULP and installs TLS_TX and/or TLS_RX.

Each direction is then either *kernel* (``ktls_tx``/``ktls_rx``) or *user space*
(OpenSSL with memory BIOs, fed by this class). Every way the kernel could not take
over ends in user space with ``fallback_reason`` set, or in ``KTLSUnavailable`` when the
caller said ``require=True``.

Post-handshake records on kernel RX arrive one per ``recvmsg`` with their type in a
cmsg: alerts, NewSessionTicket (the TLS 1.3 special case: servers send them right after
the handshake, so a client's first kernel read usually finds one), KeyUpdate, and TLS
1.2 HelloRequest. They are handled in ``_control_record``. Every fatal error goes
through ``_fatal``: the socket is closed and every later call raises.

TLS 1.3 on kernels that cannot rekey (before 6.14): a peer's KeyUpdate would stop
kernel RX for good, so by default RX stays in user space there (as OpenSSL 3.0 does),
where OpenSSL follows a KeyUpdate by itself; only a KeyUpdate that asks us to rekey TX
is fatal (``KeyUpdateUnsupported``).
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
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Literal

from OpenSSL import SSL

if TYPE_CHECKING:
    from cryptography import x509
    from OpenSSL import crypto

from . import _linux_tls as uapi
from . import _openssl, _records
from . import _post_handshake as rules
from ._errors import (
    ConnectionClosed,
    Error,
    KeyUpdateUnsupported,
    KTLSUnavailable,
    NotPrepared,
    ProtocolError,
    TLSAlertError,
    TruncatedStream,
    UnexpectedMessage,
    UsageError,
    alert_name,
    from_alerts,
    from_errno,
)
from ._keys import (
    tls12_key_block,
    tls13_next_traffic_secret,
    tls13_traffic_key_iv,
)
from ._observer import RecordObserver
from ._policy import Handshake, Request, plan
from ._suites import Suite, suite_for_openssl_name

TicketCallback = Callable[["KTLSConnection", bytes], None]

_MAX_RECORD = 16384
_ALERT_WARNING, _ALERT_FATAL = 1, 2
_CLOSE_NOTIFY = 0
_NO_RENEGOTIATION = 100
_READ_CHUNK = 65536


_CONTROL_WAIT = 30.0  # seconds a control record may wait for send-buffer room


def _deadline(sock: socket.socket) -> float | None:
    timeout = sock.gettimeout()
    return None if timeout is None else time.monotonic() + timeout


def _wait(sock: socket.socket, *, write: bool, deadline: float | None) -> None:
    """Wait until *sock* is readable/writable, honouring its timeout semantics."""
    timeout = sock.gettimeout()
    if timeout == 0.0:
        raise BlockingIOError(errno.EAGAIN, "operation would block")
    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT if write else select.POLLIN)
    if not poller.poll(None if remaining is None else remaining * 1000):
        raise TimeoutError("timed out")


def _finish_handshake(conn: SSL.Connection, sock: socket.socket) -> None:
    """Run (or confirm) the handshake the way the socket's blocking mode says.

    Blocking sockets block; a socket with a timeout waits up to it (TimeoutError); a
    non-blocking socket lets pyOpenSSL's WantReadError/WantWriteError through, so the
    caller retries ``wrap()`` when the socket is ready, as with ``do_handshake``.
    """
    deadline = _deadline(sock)
    while True:
        try:
            conn.do_handshake()
            return
        except SSL.WantReadError:
            if sock.gettimeout() == 0.0:
                raise
            _wait(sock, write=False, deadline=deadline)
        except SSL.WantWriteError:
            if sock.gettimeout() == 0.0:
                raise
            _wait(sock, write=True, deadline=deadline)


def _from_openssl(
    exc: SSL.Error, operation: str, observer: RecordObserver, marks: tuple[int, int]
) -> Error:
    """Map a pyOpenSSL error of the user-space path to the library's hierarchy.

    From codes: the errno of a system call error, else the alerts the record observer
    saw cross during the failed call (*marks*: the lengths of its ``alerts_read`` and
    ``alerts_written`` before it). Only OpenSSL's "unexpected eof" (a TCP end without
    close_notify, which moves no alert) is recognised by its reason text, which
    pyOpenSSL hands over without the code.
    """
    if isinstance(exc, SSL.SysCallError):
        code = exc.args[0] if exc.args else -1
        if code in (-1, 0):
            return TruncatedStream(f"{operation}: the peer closed TCP without close_notify")
        return from_errno(int(code), operation)
    reasons = [str(r[2]) for r in (exc.args[0] if exc.args else []) if len(r) >= 3]
    text = "; ".join(reasons) or str(exc)
    mapped = from_alerts(
        operation, observer.alerts_read[marks[0] :], observer.alerts_written[marks[1] :], text
    )
    if mapped is not None:
        return mapped
    if "unexpected eof" in text.lower():
        return TruncatedStream(f"{operation}: the peer closed TCP without close_notify")
    return ProtocolError(f"{operation}: {text}")


class State(enum.Enum):
    """A connection's lifecycle: OPEN, then BROKEN (a fatal error closed the socket; the
    error is kept and raised again, wrapped, by every later call) or CLOSED (``close()``
    or ``abort()``)."""

    OPEN = "open"
    BROKEN = "broken"
    CLOSED = "closed"


class KTLSConnection:
    """A TLS connection whose record layer runs in the kernel where it can.

    Made by :func:`wrap`, not directly. ``ktls_tx``/``ktls_rx`` tell which directions
    the kernel carries; ``fallback_reason`` says, in a sentence, why a direction stayed
    in user space (None when both went to the kernel). The API is the same either way.

    Thread safety: one thread may send while another receives; concurrent senders (or
    receivers) must be serialised by the caller, as with a socket.
    """

    ktls_tx: bool
    ktls_rx: bool
    fallback_reason: str | None
    zerocopy_sendfile: bool
    tx_record_limit: int

    def __init__(
        self,
        conn: SSL.Connection,
        sock: socket.socket,
        *,
        ticket_callback: TicketCallback | None,
        ragged_eof: bool,
    ) -> None:
        self._conn = conn
        self._sock = sock
        # The record observer OpenSSL's callbacks feed for this Connection (it lives as
        # long as the Connection; looked up once, not per read).
        self._observer: RecordObserver = _openssl.state_of(conn).observer
        self._ticket_callback = ticket_callback
        self._ragged_eof = ragged_eof
        self.ktls_tx = False
        self.ktls_rx = False
        self.fallback_reason = None
        self.zerocopy_sendfile = False
        self.tx_record_limit = _MAX_RECORD
        self.version = ""
        self.suite: Suite | None = None
        self._is_server = False
        self._rx_plain = bytearray()
        self._more_buf = bytearray()
        self._hs = _records.HandshakeBuffer()
        # One lifecycle state (trio's OK / BROKEN / CLOSED), and why it stopped being OPEN.
        self._state = State.OPEN
        self._error: Error | None = None
        self._eof = False
        self._close_notify_sent = False
        self._close_notify_received = False
        # _tx_lock orders everything that goes out (held across a socket write);
        # _ssl_lock guards the OpenSSL object, which is not thread-safe, and is never held
        # across a socket call. Lock order: _tx_lock, then _ssl_lock.
        self._tx_lock = threading.RLock()
        self._ssl_lock = threading.RLock()
        # User-space TX: ciphertext OpenSSL produced, in order, not yet on the socket.
        self._tx_cipher = bytearray()
        # shutdown() on a non-blocking socket with ciphertext queued: the TCP half-close
        # waits until flush() has put the queue (close_notify last) on the wire.
        self._fin_due = False
        self._scratch = bytearray(_MAX_RECORD + 256)
        self._secrets: dict[str, bytearray] = {}
        self._can_rekey = False
        self._tx_records = 0
        self.key_update_after: int | None = None
        self._alerts_replayed = 0
        self._user_end: str | Error | None = None

    # ------------------------------------------------------------------ info

    # pyOpenSSL's read-only information, passed through unchanged (written out, typed).

    def get_cipher_name(self) -> str | None:
        """The negotiated suite's OpenSSL name (``SSL.Connection.get_cipher_name``)."""
        return self._conn.get_cipher_name()

    def get_cipher_bits(self) -> int | None:
        """``SSL.Connection.get_cipher_bits``."""
        return self._conn.get_cipher_bits()

    def get_cipher_version(self) -> str | None:
        """``SSL.Connection.get_cipher_version``."""
        return self._conn.get_cipher_version()

    def get_protocol_version_name(self) -> str:
        """``SSL.Connection.get_protocol_version_name`` ("TLSv1.3", ...)."""
        return self._conn.get_protocol_version_name()

    def get_protocol_version(self) -> int:
        """``SSL.Connection.get_protocol_version``."""
        return self._conn.get_protocol_version()

    def get_peer_certificate(
        self, *, as_cryptography: bool = False
    ) -> crypto.X509 | x509.Certificate | None:
        """``SSL.Connection.get_peer_certificate`` (an ``X509``, or with
        ``as_cryptography=True`` a ``cryptography`` certificate; None without one)."""
        if as_cryptography:
            return self._conn.get_peer_certificate(as_cryptography=True)
        return self._conn.get_peer_certificate()

    def get_peer_cert_chain(
        self, *, as_cryptography: bool = False
    ) -> list[crypto.X509] | list[x509.Certificate] | None:
        """``SSL.Connection.get_peer_cert_chain``."""
        if as_cryptography:
            return self._conn.get_peer_cert_chain(as_cryptography=True)
        return self._conn.get_peer_cert_chain()

    def get_verified_chain(
        self, *, as_cryptography: bool = False
    ) -> list[crypto.X509] | list[x509.Certificate] | None:
        """``SSL.Connection.get_verified_chain``."""
        if as_cryptography:
            return self._conn.get_verified_chain(as_cryptography=True)
        return self._conn.get_verified_chain()

    def get_certificate(
        self, *, as_cryptography: bool = False
    ) -> crypto.X509 | x509.Certificate | None:
        """``SSL.Connection.get_certificate`` (our own)."""
        if as_cryptography:
            return self._conn.get_certificate(as_cryptography=True)
        return self._conn.get_certificate()

    def get_servername(self) -> bytes | None:
        """``SSL.Connection.get_servername`` (the SNI name)."""
        return self._conn.get_servername()

    def get_alpn_proto_negotiated(self) -> bytes:
        """``SSL.Connection.get_alpn_proto_negotiated``."""
        return self._conn.get_alpn_proto_negotiated()

    def get_session(self) -> SSL.Session | None:
        """``SSL.Connection.get_session`` (for resumption)."""
        return self._conn.get_session()

    def get_context(self) -> SSL.Context:
        """``SSL.Connection.get_context``."""
        return self._conn.get_context()

    def get_app_data(self) -> Any:
        """``SSL.Connection.get_app_data``."""
        return self._conn.get_app_data()

    def get_finished(self) -> bytes | None:
        """``SSL.Connection.get_finished``."""
        return self._conn.get_finished()

    def get_peer_finished(self) -> bytes | None:
        """``SSL.Connection.get_peer_finished``."""
        return self._conn.get_peer_finished()

    def client_random(self) -> bytes | None:
        """``SSL.Connection.client_random``."""
        return self._conn.client_random()

    def server_random(self) -> bytes | None:
        """``SSL.Connection.server_random``."""
        return self._conn.server_random()

    def __repr__(self) -> str:
        state = self._state.value
        return (
            f"<KTLSConnection {state} {self.version} {self.suite.name if self.suite else '?'} "
            f"ktls_tx={self.ktls_tx} ktls_rx={self.ktls_rx}>"
        )

    @property
    def connection(self) -> SSL.Connection:
        """The wrapped pyOpenSSL Connection (for information only: do not do I/O on it)."""
        return self._conn

    def fileno(self) -> int:
        """The socket's file descriptor (for select/selectors/poll)."""
        return self._sock.fileno()

    def gettimeout(self) -> float | None:
        """The socket's timeout (None: blocking, 0.0: non-blocking)."""
        return self._sock.gettimeout()

    def settimeout(self, value: float | None) -> None:
        """Set the socket's timeout; the semantics are those of ``socket.settimeout``."""
        self._sock.settimeout(value)

    def setblocking(self, flag: bool) -> None:
        """``socket.setblocking``."""
        self._sock.setblocking(flag)

    def tx_sequence(self) -> int:
        """The record sequence number the kernel will use next on TX (kernel TX only)."""
        self._require_kernel("tx_sequence", self.ktls_tx)
        assert self.suite is not None
        return uapi.read_rec_seq(self._sock, uapi.TLS_TX, self.suite.name)

    def rx_sequence(self) -> int:
        """The record sequence number the kernel expects next on RX (kernel RX only)."""
        self._require_kernel("rx_sequence", self.ktls_rx)
        assert self.suite is not None
        return uapi.read_rec_seq(self._sock, uapi.TLS_RX, self.suite.name)

    def _require_kernel(self, what: str, flag: bool) -> None:
        if not flag:
            raise UsageError(f"{what}() needs that direction in the kernel")

    # ------------------------------------------------------------------ state

    def _alert_marks(self) -> tuple[int, int]:
        """How many alerts the observer has seen each way (before an OpenSSL call)."""
        obs = self._observer
        return len(obs.alerts_read), len(obs.alerts_written)

    def _check_usable(self) -> None:
        if self._error is not None:
            raise ConnectionClosed(f"connection is closed after an error: {self._error}")
        if self._state is not State.OPEN:
            raise ConnectionClosed()

    def _fatal(self, exc: Error, *, alert: bool = True) -> Error:
        """Record *exc* as fatal, tell the peer when we can, close the socket, return exc."""
        if self._state is State.OPEN:
            self._state, self._error = State.BROKEN, exc
            if alert and exc.alert is not None and not isinstance(exc, TLSAlertError):
                with contextlib.suppress(OSError, Error, SSL.Error):
                    self._send_alert_raw(_ALERT_FATAL, exc.alert)
            self._teardown()
        return exc

    def _teardown(self) -> None:
        self._wipe()
        with contextlib.suppress(OSError):
            self._sock.close()

    def _wipe(self) -> None:
        for buf in self._secrets.values():
            buf[:] = bytes(len(buf))
        self._secrets.clear()
        _openssl.state_of(self._conn).wipe()

    def _os_error(self, exc: OSError, operation: str) -> Exception:
        """Blocking/timeout errors pass through; others are fatal and mapped."""
        if isinstance(exc, (BlockingIOError, TimeoutError, InterruptedError)):
            return exc
        if exc.errno is None:
            return self._fatal(from_errno(errno.EIO, operation))
        return self._fatal(from_errno(exc.errno, operation), alert=exc.errno != errno.EPIPE)

    # ------------------------------------------------------------------ sending

    def send(self, data: bytes | bytearray | memoryview, *, more: bool = False) -> int:
        """Send *data*; returns how many bytes were accepted (like ``socket.send``).

        ``more=True`` is MSG_MORE: the record is held open and coalesced with the next
        sends up to 2^14 bytes; a later send without ``more`` (or ``shutdown``/``close``)
        closes it.
        """
        with self._tx_lock:
            self._check_usable()
            if self._close_notify_sent:
                raise ConnectionClosed("send() after shutdown()")
            view = memoryview(data).cast("B")
            if self.ktls_tx:
                self._maybe_auto_key_update()
                try:
                    n = self._sock.send(view, socket.MSG_MORE if more else 0)
                except OSError as exc:
                    raise self._os_error(exc, "send") from exc
                self._count_tx(n)
                return n
            return self._user_send(view, more)

    def sendall(self, data: bytes | bytearray | memoryview, *, more: bool = False) -> None:
        """Send all of *data* (like ``socket.sendall``)."""
        view = memoryview(data).cast("B")
        sent = 0
        deadline = _deadline(self._sock)
        while sent < len(view) or (not view and sent == 0):
            try:
                sent += self.send(view[sent:], more=more)
            except BlockingIOError:
                _wait(self._sock, write=True, deadline=deadline)
            if not view:
                break

    def sendmsg(self, buffers: list[bytes], *, more: bool = False) -> int:
        """Send several buffers as one stream (all of them); returns the byte count."""
        total = 0
        last = len(buffers) - 1
        for i, buf in enumerate(buffers):
            self.sendall(buf, more=more or i < last)
            total += len(buf)
        return total

    def write(self, data: bytes) -> int:
        """pyOpenSSL-style alias of :meth:`sendall` returning the length."""
        self.sendall(data)
        return len(data)

    def note_records_sent(self, records: int) -> None:
        """Count *records* that the kernel sent from this socket outside this object's own
        calls (an event loop's native ``sendfile`` on the descriptor), so the automatic
        TLS 1.3 KeyUpdate (``key_update_after``) still comes in time."""
        if records > 0:
            self._tx_records += records

    def _count_tx(self, nbytes: int) -> None:
        # An upper bound of the records written: at least one per call.
        self._tx_records += max(1, -(-nbytes // self.tx_record_limit))

    @property
    def tx_backlog(self) -> int:
        """Ciphertext bytes accepted but not yet on the socket (user-space TX only).

        Non-zero only on a non-blocking socket whose send buffer filled up: call
        :meth:`flush` when the socket is writable.
        """
        return len(self._tx_cipher)

    def flush(self) -> int:
        """Push queued user-space ciphertext to the socket; returns what is still queued.

        On a blocking socket (or one with a timeout) this waits until everything is out.
        With TX in the kernel there is never a backlog.
        """
        with self._tx_lock:
            self._check_usable()
            self._push_cipher()
            return len(self._tx_cipher)

    def _nonblocking_socket(self) -> bool:
        return self._sock.gettimeout() == 0.0

    def _collect_output(self) -> None:
        """Move what OpenSSL wrote into the ordered ciphertext queue (holds _ssl_lock)."""
        with self._ssl_lock:
            out = _openssl.pending_output(self._conn)
            if out:
                self._tx_cipher += out

    def _push_cipher(self) -> None:
        """Put queued ciphertext on the socket in order (the caller holds _tx_lock)."""
        self._collect_output()
        if self._nonblocking_socket():
            while self._tx_cipher:
                try:
                    n = self._sock.send(self._tx_cipher)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    raise self._os_error(exc, "send") from exc
                del self._tx_cipher[:n]
        elif self._tx_cipher:
            data = bytes(self._tx_cipher)
            self._tx_cipher.clear()
            try:
                self._sock.sendall(data)
            except OSError as exc:
                raise self._os_error(exc, "send") from exc
        if self._fin_due and not self._tx_cipher:
            self._fin_due = False
            self._half_close()

    def _user_send(self, view: memoryview, more: bool) -> int:
        if self._tx_cipher:
            self._push_cipher()
            if self._tx_cipher:
                # Earlier ciphertext is still queued: accept nothing new (like send()).
                raise BlockingIOError(errno.EAGAIN, "send buffer full (see flush())")
        if more:
            self._more_buf += view
            if len(self._more_buf) < _MAX_RECORD:
                return len(view)
            payload = bytes(self._more_buf)
        else:
            payload = bytes(self._more_buf) + bytes(view)
        self._more_buf.clear()
        self._user_write(payload)
        return len(view)

    def _user_write(self, payload: bytes) -> None:
        """Encrypt through OpenSSL (memory BIO) and put the ciphertext on the socket."""
        marks = self._alert_marks()
        try:
            if payload:
                with self._ssl_lock:
                    self._conn.sendall(payload)
                    self._collect_output()
        except SSL.Error as exc:
            raise self._fatal(_from_openssl(exc, "send", self._observer, marks)) from exc
        self._push_cipher()

    def sendfile(
        self, file: BinaryIO | IO[bytes], offset: int = 0, count: int | None = None
    ) -> int:
        """Send a file; same contract as ``socket.sendfile``. Returns the bytes sent.

        With kernel TX this is zero-copy ``os.sendfile``; otherwise a user-space loop.
        The file position is left after the last byte sent. On an error the exception
        has ``bytes_sent``: what the kernel really accepted before it.

        Raises:
            UsageError: not a regular file, ``count`` past the end of the file, a
                non-blocking socket.
        """
        self._check_usable()
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
            count = available
        elif count > available:
            raise UsageError(
                f"sendfile(): count={count} goes past the end of the file "
                f"({available} bytes from offset {offset})"
            )
        if self._sock.gettimeout() == 0.0:
            raise UsageError("sendfile() needs a blocking socket or one with a timeout")
        if count == 0:
            return 0
        sent = 0
        try:
            if self.ktls_tx:
                sent = self._kernel_sendfile(fd, offset, count)
            else:
                sent = self._user_sendfile(fd, offset, count)
        finally:
            if sent and hasattr(file, "seek"):
                file.seek(offset + sent)
        return sent

    def _kernel_sendfile(self, fd: int, offset: int, count: int) -> int:
        sent = 0
        deadline = _deadline(self._sock)
        with self._tx_lock:
            self._check_usable()
            self._maybe_auto_key_update()
            sockfd = self._sock.fileno()
            while sent < count:
                try:
                    n = os.sendfile(sockfd, fd, offset + sent, min(count - sent, 1 << 30))
                except BlockingIOError:
                    try:
                        _wait(self._sock, write=True, deadline=deadline)
                    except TimeoutError as exc:
                        exc.bytes_sent = sent  # type: ignore[attr-defined]
                        raise
                    continue
                except OSError as exc:
                    err = self._os_error(exc, "sendfile")
                    err.bytes_sent = sent  # type: ignore[attr-defined]  # also builtins
                    raise err from exc
                if n == 0:
                    err2 = Error(f"sendfile(): the file ended after {sent} of {count} bytes")
                    err2.bytes_sent = sent
                    raise err2
                sent += n
                deadline = _deadline(self._sock)  # per wait, like socket.sendfile
                self._count_tx(n)
        return sent

    def _user_sendfile(self, fd: int, offset: int, count: int) -> int:
        sent = 0
        while sent < count:
            chunk = os.pread(fd, min(_READ_CHUNK, count - sent), offset + sent)
            try:
                if not chunk:
                    raise Error(f"sendfile(): the file ended after {sent} of {count} bytes")
                self.sendall(chunk)
            except (OSError, Error) as exc:
                # Only whole chunks that sendall() finished count as sent.
                exc.bytes_sent = sent  # type: ignore[union-attr]
                raise
            sent += len(chunk)
        return sent

    def send_alert(self, level: int, description: int) -> None:
        """Send a TLS alert record (21) through kernel TX.

        ``send_alert(1, 0)`` is close_notify (prefer :meth:`shutdown`). A fatal alert
        (level 2) ends the connection: the socket is closed after it.
        In user space only close_notify can be sent (OpenSSL has no API for other
        alerts): other alerts raise ``UsageError`` there.
        """
        if level not in (_ALERT_WARNING, _ALERT_FATAL) or not 0 <= description <= 255:
            raise UsageError("alert level must be 1 or 2 and description 0..255")
        with self._tx_lock:
            self._check_usable()
            if not self.ktls_tx and description != _CLOSE_NOTIFY:
                raise UsageError("send_alert() of anything but close_notify needs kernel TX")
            self._send_alert_raw(level, description)
            if description == _CLOSE_NOTIFY:
                self._close_notify_sent = True
            if level == _ALERT_FATAL:
                self._state = State.BROKEN
                self._error = Error(f"we sent fatal alert {alert_name(description)}")
                self._teardown()

    def _send_control(self, content_type: int, payload: bytes, operation: str) -> None:
        """Send one control record through kernel TX, whole, whatever the socket mode.

        Control records are often answers sent from the receive path (close_notify,
        KeyUpdate, no_renegotiation), where EAGAIN cannot be handed to the caller without
        losing the answer: on a non-blocking socket, wait for room (up to 30 s).
        """
        deadline = time.monotonic() + _CONTROL_WAIT
        while True:
            try:
                uapi.send_record(self._sock, content_type, payload)
                return
            except (BlockingIOError, InterruptedError):
                if not self._writable_before(deadline):
                    raise self._fatal(
                        from_errno(errno.ETIMEDOUT, f"{operation}: no room in 30 s")
                    ) from None
            except OSError as exc:
                raise self._os_error(exc, operation) from exc

    def _send_alert_raw(self, level: int, description: int) -> None:
        if self.ktls_tx:
            self._send_control(_records.CONTENT_ALERT, bytes([level, description]), "send alert")
            self._count_tx(2)
        elif description == _CLOSE_NOTIFY:
            if self._more_buf:
                self._user_write(bytes(self._more_buf))
                self._more_buf.clear()
            marks = self._alert_marks()
            try:
                with self._ssl_lock:
                    self._conn.shutdown()
                    self._collect_output()
            except SSL.Error as exc:
                raise self._fatal(_from_openssl(exc, "shutdown", self._observer, marks)) from exc
            self._push_cipher()

    # ------------------------------------------------------------------ key update

    def key_update(self, request_peer: bool = False) -> None:
        """Send a TLS 1.3 KeyUpdate and move kernel TX to the next key.

        ``request_peer=True`` asks the peer to update its key too.

        Raises:
            UsageError: not TLS 1.3, or TX is not in the kernel.
            KeyUpdateUnsupported: the kernel cannot rekey (before Linux 6.14).
        """
        with self._tx_lock:
            self._check_usable()
            if self.version != "1.3":
                raise UsageError("KeyUpdate exists only in TLS 1.3")
            if not self.ktls_tx:
                raise UsageError("key_update() needs kernel TX")
            self._tx_key_update(request_peer)

    def _tx_key_update(self, request_peer: bool) -> None:
        if not self._can_rekey or "tx" not in self._secrets:
            raise KeyUpdateUnsupported(
                "this kernel cannot change a TLS 1.3 key on a live socket (Linux 6.14+ can); "
                "the connection cannot update its transmit key"
            )
        assert self.suite is not None
        self._send_control(
            _records.CONTENT_HANDSHAKE, _records.encode_key_update(request_peer), "send KeyUpdate"
        )
        self._advance_secret("tx")
        try:
            uapi.install(self._sock, uapi.TLS_TX, self._state_13("tx", 0))
        except OSError as exc:
            raise self._fatal(
                KeyUpdateUnsupported(f"the kernel refused the new TX key: {exc.strerror}")
            ) from exc
        self._tx_records = 0

    def _maybe_auto_key_update(self) -> None:
        limit = self.key_update_after
        if limit is not None and self.version == "1.3" and self._tx_records >= limit:
            self._tx_key_update(False)

    def _advance_secret(self, direction: str) -> None:
        assert self.suite is not None
        old = self._secrets[direction]
        self._secrets[direction] = bytearray(
            tls13_next_traffic_secret(self.suite.hash_name, bytes(old))
        )
        old[:] = bytes(len(old))

    def _state_13(self, direction: str, seq: int) -> uapi.CryptoState:
        assert self.suite is not None
        key, iv = tls13_traffic_key_iv(
            self.suite.hash_name, bytes(self._secrets[direction]), self.suite.key_len
        )
        return _crypto_state("1.3", self.suite, bytearray(key), bytearray(iv), seq)

    # ------------------------------------------------------------------ receiving

    def recv(self, bufsize: int = _READ_CHUNK) -> bytes:
        """Receive up to *bufsize* bytes; ``b""`` at close_notify (like ``socket.recv``).

        Raises:
            TruncatedStream: TCP ended without close_notify (unless ``ragged_eof``).
            TLSAlertError: the peer sent an alert; BadRecordMAC, RecordOverflow,
                ProtocolError: the stream is corrupt. All of them close the connection.
        """
        if bufsize <= 0:
            return b""
        buf = bytearray(bufsize)
        n = self.recv_into(buf)
        del buf[n:]
        return bytes(buf)

    read = recv

    def recv_into(self, buffer: bytearray | memoryview, nbytes: int = 0) -> int:
        """Receive into *buffer* (like ``socket.recv_into``); 0 means close_notify."""
        view = memoryview(buffer).cast("B")
        if nbytes:
            view = view[:nbytes]
        if not len(view):
            return 0
        if self._rx_plain:
            n = min(len(view), len(self._rx_plain))
            view[:n] = self._rx_plain[:n]
            del self._rx_plain[:n]
            return n
        self._check_usable()
        if self._eof:
            return 0
        if self.ktls_rx:
            return self._kernel_recv_into(view)
        return self._user_recv_into(view)

    def pending(self) -> int:
        """Plaintext bytes already received and buffered in user space."""
        return len(self._rx_plain)

    def has_buffered_input(self) -> bool:
        """True when the next ``recv`` answers without reading the socket.

        That is buffered plaintext (:meth:`pending`) or an end of stream (close_notify,
        an alert, a TCP close) already taken off the socket: a select/poll loop must call
        ``recv`` without waiting for the descriptor to become readable.
        """
        return bool(self._rx_plain) or (
            not self._eof and self._user_end is not None and not self.ktls_rx
        )

    def _kernel_recv_into(self, view: memoryview) -> int:
        while True:
            direct = len(view) >= _MAX_RECORD
            target = view if direct else memoryview(self._scratch)
            try:
                n, rtype = uapi.recv_record_into(self._sock, target)
            except OSError as exc:
                raise self._os_error(exc, "receive") from exc
            if rtype is None:
                if n == 0:
                    return self._transport_eof()
                rtype = _records.CONTENT_APPLICATION_DATA
            if rtype == _records.CONTENT_APPLICATION_DATA:
                if n == 0:
                    continue
                if direct:
                    return n
                m = min(n, len(view))
                view[:m] = target[:m]
                if n > m:
                    self._rx_plain += target[m:n]
                return m
            if self._control_record(rtype, bytes(target[:n])):
                return 0

    def _transport_eof(self) -> int:
        self._eof = True
        if self._ragged_eof or self._close_notify_received:
            return 0
        raise self._fatal(
            TruncatedStream("the peer closed TCP without close_notify: data may be cut short"),
            alert=False,
        )

    def _control_record(self, rtype: int, payload: bytes) -> bool:
        """Carry out what one non-data record from kernel RX means (``_post_handshake``'s
        rules); True when it ends the stream."""
        action = rules.on_record_type(rtype)
        if action is rules.Action.ALERT:
            try:
                level, description = _records.parse_alert(payload)
            except Error as exc:
                raise self._fatal(exc) from exc
            alert_action = rules.on_alert(self.version, level, description)
            if alert_action is rules.Action.END_OF_STREAM:
                self._peer_closed()
                return True
            if alert_action is rules.Action.IGNORE:
                return False
            raise self._fatal(TLSAlertError(level, description), alert=False)
        if action is rules.Action.HANDSHAKE:
            try:
                messages = self._hs.feed(payload)
            except Error as exc:
                raise self._fatal(exc) from exc
            for msg in messages:
                self._post_handshake_message(msg)
            return False
        raise self._fatal(UnexpectedMessage(f"unexpected record type {rtype} after the handshake"))

    def _post_handshake_message(self, msg: _records.HandshakeMessage) -> None:
        action = rules.on_handshake_message(self.version, self._is_server, msg.msg_type)
        if action is rules.Action.TICKET:
            try:
                _records.parse_new_session_ticket_13(msg.body)
            except Error as exc:
                raise self._fatal(exc) from exc
            if self._ticket_callback is not None:
                self._ticket_callback(self, msg.raw)
        elif action is rules.Action.KEY_UPDATE:
            try:
                requested = _records.parse_key_update(msg.body)
            except Error as exc:
                raise self._fatal(exc) from exc
            self._peer_key_update(requested)
        elif action is rules.Action.REFUSE_RENEGOTIATION:
            if self.ktls_tx and not self._close_notify_sent:
                with self._tx_lock:
                    self._send_alert_raw(_ALERT_WARNING, _NO_RENEGOTIATION)
        else:
            raise self._fatal(
                UnexpectedMessage(
                    f"unexpected handshake message type {msg.msg_type} after the handshake"
                )
            )

    def _peer_key_update(self, requested: bool) -> None:
        if not self._can_rekey or "rx" not in self._secrets:
            raise self._fatal(
                KeyUpdateUnsupported(
                    "the peer updated its TLS 1.3 key, and this kernel cannot rekey kernel RX "
                    "(Linux 6.14+ can); wrap() without rx_without_rekey keeps RX in user space"
                )
            )
        self._advance_secret("rx")
        try:
            uapi.install(self._sock, uapi.TLS_RX, self._state_13("rx", 0))
        except OSError as exc:
            raise self._fatal(
                KeyUpdateUnsupported(f"the kernel refused the new RX key: {exc.strerror}")
            ) from exc
        if requested:
            with self._tx_lock:
                if not self.ktls_tx:
                    raise self._fatal(KeyUpdateUnsupported("a KeyUpdate reply needs kernel TX"))
                self._tx_key_update(False)

    def _user_recv_into(self, view: memoryview) -> int:
        # Everything OpenSSL can decrypt from what it was fed goes to _rx_plain at once,
        # so pending() is exact and select() on fileno() never misses buffered data.
        while True:
            self._user_pump()
            if self._rx_plain:
                n = min(len(view), len(self._rx_plain))
                view[:n] = self._rx_plain[:n]
                del self._rx_plain[:n]
                return n
            if self._user_end is not None:
                return self._user_finish()
            try:
                chunk = self._sock.recv(_READ_CHUNK)
            except OSError as exc:
                raise self._os_error(exc, "receive") from exc
            with self._ssl_lock:
                if not chunk:
                    self._conn.bio_shutdown()
                else:
                    self._conn.bio_write(chunk)

    def _user_pump(self) -> None:
        """Decrypt all complete records OpenSSL holds into ``_rx_plain``."""
        while self._user_end is None:
            marks = self._alert_marks()
            try:
                with self._ssl_lock:
                    data = self._conn.recv(_READ_CHUNK)
            except SSL.WantReadError:
                self._after_user_read()
                return
            except SSL.ZeroReturnError:
                self._user_end = "close_notify"
            except SSL.Error as exc:
                self._user_end = _from_openssl(exc, "receive", self._observer, marks)
            else:
                self._rx_plain += data
            self._after_user_read()

    def _peer_closed(self) -> None:
        """close_notify arrived: end of stream; TLS 1.2 answers with its own (RFC 5246 7.2.1)."""
        self._close_notify_received = True
        self._eof = True
        if self.version == "1.2" and not self._close_notify_sent:
            try:
                with self._tx_lock:
                    self._send_alert_raw(_ALERT_WARNING, _CLOSE_NOTIFY)
                self._close_notify_sent = True
            except (OSError, Error):
                pass  # the peer may already be gone; its close_notify was still clean

    def _user_finish(self) -> int:
        """The user-space stream ended (buffered data was delivered first)."""
        end = self._user_end
        if end == "close_notify":
            self._peer_closed()
            return 0
        assert isinstance(end, Error)
        if isinstance(end, TruncatedStream) and self._ragged_eof:
            self._eof = True
            return 0
        raise self._fatal(end, alert=False)

    def _after_user_read(self) -> None:
        """Deal with what OpenSSL did while reading in user space."""
        observer = self._observer
        if observer.peer_key_update_requested:
            observer.peer_key_update_requested = False
            if self.ktls_tx:
                with self._tx_lock:
                    try:
                        self._tx_key_update(False)
                    except KeyUpdateUnsupported as exc:
                        raise self._fatal(
                            KeyUpdateUnsupported(
                                "the peer asked for a TLS 1.3 KeyUpdate, which needs a kernel "
                                "TX rekey this kernel cannot do (Linux 6.14+ can)"
                            ),
                            alert=False,
                        ) from exc
        if not self.ktls_tx:
            self._collect_output()
            if self._tx_cipher:
                with self._tx_lock:
                    self._push_cipher()
            return
        with self._ssl_lock:
            out = _openssl.pending_output(self._conn)
        if not out:
            return
        # OpenSSL wrote under its own (stale) TX state: replay alerts through the kernel.
        new_alerts = observer.alerts_written[self._alerts_replayed :]
        self._alerts_replayed = len(observer.alerts_written)
        for level, description in new_alerts:
            with self._tx_lock:
                self._send_alert_raw(level, description)

    # ------------------------------------------------------------------ closing

    def shutdown(self) -> None:
        """Send close_notify (through the kernel when TX is there), then half-close TCP.

        Any MSG_MORE record still open is sent first. Receiving stays possible. On a
        non-blocking socket in user space, close_notify may join ciphertext still queued
        (``tx_backlog``): the half-close then happens when :meth:`flush` has sent it all.
        """
        with self._tx_lock:
            self._check_usable()
            if not self._close_notify_sent:
                self._send_alert_raw(_ALERT_WARNING, _CLOSE_NOTIFY)
                self._close_notify_sent = True
            if self._tx_cipher:
                self._fin_due = True  # a FIN now would cut off the queue
                return
            self._half_close()

    def _half_close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise self._os_error(exc, "shutdown") from exc

    def close(self) -> None:
        """Close the connection without losing data.

        Sends close_notify if it was not sent yet (flushing an open MSG_MORE record),
        reads and drops what already waits in the receive queue (typically TLS 1.3
        tickets nobody read: closing over unread data makes the kernel send a TCP RST,
        and the peer could lose the tail of our data), then closes the socket and wipes
        any key material kept for rekeying. On a non-blocking socket, user-space
        ciphertext still queued (``tx_backlog``) gets up to 30 s to go out; if it cannot,
        the connection is reset, so the peer never takes a cut stream for a whole one.
        """
        if self._state is State.CLOSED:
            return
        try:
            if self._state is State.OPEN and not self._close_notify_sent:
                self.shutdown()
            if self._tx_cipher and not self._push_backlog():
                self.abort()
                return
        except (OSError, Error, SSL.Error):
            pass
        self._drain()
        self._state = State.CLOSED
        self._teardown()

    def _push_backlog(self) -> bool:
        """Wait (up to 30 s) until the user-space ciphertext queue is on the wire."""
        deadline = time.monotonic() + _CONTROL_WAIT
        while True:
            with self._tx_lock:
                self._push_cipher()
            if not self._tx_cipher:
                return True
            if not self._writable_before(deadline):
                return False

    def _writable_before(self, deadline: float) -> bool:
        """Wait until the socket has send-buffer room; False if *deadline* passes first."""
        remaining = deadline - time.monotonic()
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLOUT)
        return remaining > 0 and bool(poller.poll(remaining * 1000))

    def abort(self) -> None:
        """Close at once without close_notify: the peer sees a reset, never a clean end.

        For when what was sent is incomplete (a response cut short by a timeout or an
        error): close() would send close_notify, which tells the peer the stream is
        complete. The socket is closed with SO_LINGER 0 (TCP RST), keys are wiped, and
        later calls raise ConnectionClosed.
        """
        if self._state is State.CLOSED:
            return
        if self._error is None:
            self._error = ConnectionClosed("the connection was aborted")
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._state = State.CLOSED
        self._teardown()

    def _drain(self) -> None:
        if self._sock.fileno() < 0:
            return
        buf = memoryview(self._scratch)
        # Python waits out a socket timeout before recv even with MSG_DONTWAIT: switch
        # the socket to non-blocking for the drain instead.
        with _nonblocking(self._sock):
            for _ in range(256):
                try:
                    if self.ktls_rx:
                        n, _t = uapi.recv_record_into(self._sock, buf)
                    else:
                        n = self._sock.recv_into(buf)
                except OSError:
                    return
                if n == 0:
                    return

    def __enter__(self) -> KTLSConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def makefile(
        self,
        mode: Literal["r", "w", "rb", "wb", "rw", "rwb"] = "rb",
        buffering: int = -1,
        *,
        encoding: str | None = None,
        newline: str | None = None,
    ) -> IO[Any]:
        """A file object over the connection, like ``socket.makefile``."""
        return _makefile(self, mode, buffering, encoding=encoding, newline=newline)


class _RawIO(io.RawIOBase):
    def __init__(self, conn: KTLSConnection, readable: bool, writable: bool) -> None:
        self._c = conn
        self._r = readable
        self._w = writable

    def readable(self) -> bool:
        return self._r

    def writable(self) -> bool:
        return self._w

    def readinto(self, b: Any) -> int:
        return self._c.recv_into(memoryview(b).cast("B"))

    def write(self, b: Any) -> int:
        self._c.sendall(b)
        return len(memoryview(b))

    def fileno(self) -> int:
        return self._c.fileno()


def _makefile(
    conn: KTLSConnection,
    mode: str,
    buffering: int,
    *,
    encoding: str | None,
    newline: str | None,
) -> IO[Any]:
    if not set(mode) <= {"r", "w", "b"}:
        raise UsageError(f"invalid mode {mode!r} (only r, w, b)")
    reading, writing, binary = "r" in mode, "w" in mode, "b" in mode
    raw = _RawIO(conn, reading, writing)
    if buffering == 0:
        if not binary:
            raise UsageError("unbuffered streams must be binary")
        return raw  # type: ignore[return-value]
    size = io.DEFAULT_BUFFER_SIZE if buffering < 0 else buffering
    buffered: io.BufferedIOBase
    if reading and writing:
        buffered = io.BufferedRWPair(raw, raw, size)
    elif reading:
        buffered = io.BufferedReader(raw, size)
    else:
        buffered = io.BufferedWriter(raw, size)
    if binary:
        return buffered  # type: ignore[return-value]
    return io.TextIOWrapper(buffered, encoding=encoding, newline=newline)  # type: ignore[type-var]


def _crypto_state(
    version: str, suite: Suite, key: bytearray, iv: bytearray, seq: int
) -> uapi.CryptoState:
    """Split a write IV into what the kernel structure wants (see REFERENCE.md)."""
    if suite.salt_len:
        salt = iv[: suite.salt_len]
        # TLS 1.2 GCM/CCM: the iv field is the explicit nonce, unique per record; like
        # OpenSSL, start it at the sequence number (the kernel increments it).
        explicit = bytearray(seq.to_bytes(8, "big"))
        kernel_iv = iv[suite.salt_len :] if version == "1.3" else explicit
    else:
        salt = bytearray()
        kernel_iv = iv
    state = uapi.CryptoState(version, suite.name, key, bytearray(kernel_iv), bytearray(salt), seq)
    return state


_VERSION_NAMES = {"TLSv1.2": "1.2", "TLSv1.3": "1.3"}


def wrap(
    conn: SSL.Connection,
    *,
    tx: bool = True,
    rx: bool = True,
    require: bool = False,
    rx_without_rekey: bool = False,
    rx_expect_no_pad: bool = False,
    zerocopy_sendfile: bool = False,
    ragged_eof: bool = False,
    ticket_callback: TicketCallback | None = None,
    key_update_after: int | None = None,
) -> KTLSConnection:
    """Hand a pyOpenSSL Connection's record layer over to the kernel.

    Works for client and server Connections, before the handshake (it is finished
    here, honouring the socket's blocking mode and timeout) or after it, also after
    application data already went both ways in user space.

    Args:
        tx, rx: which directions to try to move into the kernel.
        require: raise :class:`KTLSUnavailable` instead of falling back to user space
            when a requested direction cannot go to the kernel.
        rx_without_rekey: TLS 1.3 on a kernel that cannot rekey (before 6.14): put RX
            in the kernel anyway. A peer's KeyUpdate then ends the connection with
            :class:`KeyUpdateUnsupported`. Off by default: RX stays in user space there,
            where OpenSSL follows a peer's KeyUpdate.
        rx_expect_no_pad: TLS 1.3 kernel RX: set TLS_RX_EXPECT_NO_PAD (faster when the
            peer does not pad records; padded records are decrypted twice).
        zerocopy_sendfile: kernel TX: set TLS_TX_ZEROCOPY_RO, so that with NIC TLS
            offload ``sendfile`` sends file pages without the kernel copying them (the
            kernel's software path ignores it). The file must not change while it is
            sent: the peer would then fail the record's authentication. Where the kernel
            refuses it, ``fallback_reason`` says so and TX stays in the kernel.
        ragged_eof: read a TCP EOF without close_notify as a clean EOF instead of
            raising :class:`TruncatedStream`.
        ticket_callback: called with each raw TLS 1.3 NewSessionTicket message received
            after the hand-over (client side).
        key_update_after: TLS 1.3 kernel TX: send a KeyUpdate after about this many
            records. Default: half the AEAD usage limit of RFC 8446 section 5.5.

    Raises:
        NotPrepared: the Connection's Context did not go through ``prepare()``.
        UsageError: not a TCP socket Connection, or already wrapped.
        KTLSUnavailable: ``require=True`` and the kernel cannot take over.
        OpenSSL.SSL.Error: the handshake failed (certificate, protocol): nothing was
            handed over.
    """
    if not isinstance(conn, SSL.Connection):
        raise UsageError(f"wrap() takes an OpenSSL.SSL.Connection, not {type(conn).__name__}")
    if getattr(conn, "_ossl_ktls_wrapped", False):
        raise UsageError("this Connection is already wrapped")
    if not _openssl.is_prepared(conn.get_context()):
        raise NotPrepared(
            "the Connection's Context was not prepared: call ossl_ktls.prepare(ctx) "
            "before making Connections from it"
        )
    sock = getattr(conn, "_socket", None)
    if not isinstance(sock, socket.socket):
        raise UsageError("wrap() needs a Connection made over a socket (not memory BIOs)")
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        raise UsageError("kernel TLS needs a TCP socket (AF_INET or AF_INET6, SOCK_STREAM)")

    _finish_handshake(conn, sock)
    conn._ossl_ktls_wrapped = True  # type: ignore[attr-defined]

    k = KTLSConnection(conn, sock, ticket_callback=ticket_callback, ragged_eof=ragged_eof)
    state = _openssl.state_of(conn)
    obs = state.observer
    k._is_server = bool(obs.is_server)
    version = _VERSION_NAMES.get(conn.get_protocol_version_name() or "", "")
    k.version = version
    cipher_name = conn.get_cipher_name() or ""
    suite = suite_for_openssl_name(cipher_name) if version else None
    k.suite = suite

    refused: list[str] = []  # optional settings the kernel did not take
    caps = uapi.probe()
    handshake = Handshake(
        version=version,
        version_name=conn.get_protocol_version_name() or "",
        cipher_name=cipher_name,
        suite=suite,
        is_server=k._is_server,
        resumed=_openssl.session_reused(conn),
        renegotiated=bool(_openssl.total_renegotiations(conn)),
        # Only TLS 1.2 needs the look (TLS 1.3 knows exactly from the observer).
        rx_at_record_boundary=version != "1.2" or _peek_record_boundary(sock),
        observer=obs,
    )
    chosen = plan(handshake, caps, Request(tx, rx, rx_without_rekey))
    reasons = list(chosen.reasons)
    want_tx, want_rx = chosen.tx, chosen.rx
    k.tx_record_limit = chosen.tx_record_limit
    if require and ((tx and not want_tx) or (rx and not want_rx)):
        raise KTLSUnavailable("kernel TLS cannot take over: " + "; ".join(reasons))

    # Plaintext OpenSSL already decrypted is delivered first.
    while conn.pending() > 0:
        k._rx_plain += conn.recv(conn.pending())
    _openssl.detach_from_socket(conn)

    if want_tx or want_rx:
        assert suite is not None
        try:
            cap_refused = _install(k, conn, sock, state, suite, version, want_tx, want_rx, caps)
        except OSError as exc:
            reason = f"the kernel refused the keys ({errno.errorcode.get(exc.errno or 0)})"
            if require:
                raise KTLSUnavailable(f"kernel TLS cannot take over: {reason}") from exc
            reasons.append(reason)
        else:
            if cap_refused is not None:
                if require and tx:
                    raise KTLSUnavailable(f"kernel TLS cannot take over: {cap_refused}")
                reasons.append(cap_refused)
        if want_rx and rx_expect_no_pad and version == "1.3" and k.ktls_rx:
            try:
                uapi.set_u32(sock, uapi.TLS_RX_EXPECT_NO_PAD, 1)
            except OSError:
                refused.append("TLS_RX_EXPECT_NO_PAD not supported by this kernel")
        if zerocopy_sendfile and k.ktls_tx:
            try:
                uapi.set_u32(sock, uapi.TLS_TX_ZEROCOPY_RO, 1)
                k.zerocopy_sendfile = True
            except OSError:
                refused.append("TLS_TX_ZEROCOPY_RO not supported by this kernel")
    if not k._secrets:
        state.wipe()
    if suite is not None and version == "1.3":
        k.key_update_after = (
            key_update_after
            if key_update_after is not None
            else _records.aead_record_limit(suite.name) // 2
        )
    if (tx and not k.ktls_tx) or (rx and not k.ktls_rx):
        k.fallback_reason = "; ".join(reasons + refused) or "not requested"
    elif refused:  # an optional setting the kernel refused
        k.fallback_reason = "; ".join(refused)
    return k


@contextlib.contextmanager
def _nonblocking(sock: socket.socket) -> Iterator[None]:
    """Make *sock* non-blocking for a moment (its timeout is restored after)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)


def _peek_record_boundary(sock: socket.socket) -> bool:
    """Whether the bytes waiting on *sock* (if any) start with a plausible TLS header."""
    try:
        with _nonblocking(sock):
            head = sock.recv(5, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return True
    if not head:
        return True
    if head[0] not in (20, 21, 22, 23):
        return False
    return len(head) < 3 or (head[1] == 3 and head[2] in (1, 2, 3, 4))


def _install(
    k: KTLSConnection,
    conn: SSL.Connection,
    sock: socket.socket,
    state: _openssl.ConnState,
    suite: Suite,
    version: str,
    want_tx: bool,
    want_rx: bool,
    caps: uapi.Capabilities,
) -> str | None:
    """Install the keys of the wanted directions; returns why TX stayed in user space
    when the kernel refused the record size cap (TX is then not installed)."""
    obs = state.observer
    cap_refused: str | None = None
    we, peer = ("server", "client") if k._is_server else ("client", "server")
    tx_seq, rx_seq = obs.next_seq[1], obs.next_seq[0]
    if version == "1.2":
        master = bytearray(conn.master_key() or b"")
        try:
            block = tls12_key_block(
                suite.hash_name,
                bytes(master),
                conn.client_random() or b"",
                conn.server_random() or b"",
                suite.key_len,
                suite.fixed_iv_len_tls12,
            )
        finally:
            master[:] = bytes(len(master))
        keys = {
            "client": (bytearray(block.client_key), bytearray(block.client_iv)),
            "server": (bytearray(block.server_key), bytearray(block.server_iv)),
        }
        tx_state = _crypto_state(version, suite, *keys[we], tx_seq)
        rx_state = _crypto_state(version, suite, *keys[peer], rx_seq)
    else:
        secrets = state.secrets
        if we not in secrets or peer not in secrets:
            raise OSError(errno.ENOKEY, "TLS 1.3 traffic secrets were not captured")
        k._secrets = {"tx": bytearray(secrets[we]), "rx": bytearray(secrets[peer])}
        for _ in range(obs.epoch[1]):
            k._advance_secret("tx")
        for _ in range(obs.epoch[0]):
            k._advance_secret("rx")
        state.wipe()
        tx_state = k._state_13("tx", tx_seq)
        rx_state = k._state_13("rx", rx_seq)
    try:
        uapi.set_ulp(sock)
        if want_tx and k.tx_record_limit < _MAX_RECORD:
            # Before TLS_TX: a refusal then leaves TX to OpenSSL, which honours the limit.
            try:
                uapi.set_tx_max_payload(sock, k.tx_record_limit)
            except OSError as exc:
                want_tx = False
                cap_refused = (
                    f"TX stays in user space: the kernel refused to cap records at "
                    f"{k.tx_record_limit} bytes (TLS_TX_MAX_PAYLOAD_LEN: "
                    f"{errno.errorcode.get(exc.errno or 0, exc.errno)})"
                )
        if want_tx:
            uapi.install(sock, uapi.TLS_TX, tx_state)
            k.ktls_tx = True
        if want_rx:
            uapi.install(sock, uapi.TLS_RX, rx_state)
            k.ktls_rx = True
    finally:
        tx_state.wipe()
        rx_state.wipe()
        if version == "1.3":
            k._can_rekey = caps.rekey
            if not caps.rekey or not (k.ktls_tx or k.ktls_rx):
                k._wipe()
    return cap_refused
