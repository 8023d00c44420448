"""The two transmit paths: :class:`KernelTx` (kTLS makes the records) and :class:`UserTx`
(OpenSSL makes them into a memory BIO; we put its ciphertext on the socket in order).

Both implement ``_engine.TxPath``. Besides the façade's sends they answer the receive
path: an alert (close_notify in TLS 1.2, no_renegotiation, a fatal alert), a KeyUpdate
the peer asked for, and whatever OpenSSL wrote while reading in user space.
"""

from __future__ import annotations

import errno
import os
import socket
import time

from OpenSSL import SSL

from . import _engine, _openssl, _records
from . import _linux_tls as uapi
from ._engine import CLOSE_NOTIFY, MAX_RECORD, READ_CHUNK, Engine
from ._errors import Error, KeyUpdateUnsupported, UsageError, from_errno
from ._openssl import BaseConnection
from ._splice import Pipe
from ._wire import Direction


def _file_ended(sent: int, count: int) -> Error:
    err = Error(f"sendfile(): the file ended after {sent} of {count} bytes")
    err.bytes_sent = sent
    return err


class KernelTx:
    """TX in the kernel: plaintext goes into the socket, the kernel makes the records.

    Counts the records it may have written (an upper bound: at least one per call) for
    the automatic TLS 1.3 KeyUpdate after ``key_update_after`` records."""

    kernel = True

    def __init__(self, engine: Engine, record_limit: int, key_update_after: int | None) -> None:
        self._e = engine
        self._sock = engine.sock
        self.record_limit = record_limit
        self.key_update_after = key_update_after
        self._records = 0
        # OpenSSL's own output while reading in user space is dropped (it is under a stale
        # key); the alerts in it are sent again through the kernel, from this mark on.
        self._alerts_replayed = len(engine.observer.alerts_written)

    def send(self, view: memoryview, more: bool) -> int:
        self._maybe_auto_key_update()
        try:
            n = self._sock.send(view, socket.MSG_MORE if more else 0)
        except OSError as exc:
            raise self._e.os_error(exc, "send") from exc
        self._count(n)
        return n

    def sendfile(self, fd: int, offset: int, count: int) -> int:
        """Zero-copy ``os.sendfile``; an error carries ``bytes_sent``, what the kernel took."""
        sent = 0
        sock = self._sock
        deadline = _engine.deadline_of(sock)
        with self._e.tx_lock:
            self._e.check_usable()
            self._maybe_auto_key_update()
            sockfd = sock.fileno()
            while sent < count:
                try:
                    n = os.sendfile(sockfd, fd, offset + sent, min(count - sent, 1 << 30))
                except BlockingIOError:
                    try:
                        _engine.wait(sock, write=True, deadline=deadline)
                    except TimeoutError as exc:
                        exc.bytes_sent = sent  # type: ignore[attr-defined]
                        raise
                    continue
                except OSError as exc:
                    err = self._e.os_error(exc, "sendfile")
                    err.bytes_sent = sent  # type: ignore[attr-defined]  # also builtins
                    raise err from exc
                if n == 0:
                    raise _file_ended(sent, count)
                sent += n
                deadline = _engine.deadline_of(sock)  # per wait, like socket.sendfile
                self._count(n)
        return sent

    def send_pipe(self, pipe: Pipe, n: int) -> int:
        """Splice the *n* bytes waiting in *pipe* into the socket (the kernel makes the
        records; the last splice closes its record); an error carries ``bytes_sent``."""
        sock = self._sock
        self._maybe_auto_key_update()
        done = 0
        deadline = _engine.deadline_of(sock)
        while done < n:
            try:
                m = os.splice(pipe.r, sock.fileno(), n - done, flags=os.SPLICE_F_MOVE)
            except BlockingIOError:
                try:
                    _engine.wait(sock, write=True, deadline=deadline)
                except TimeoutError as exc:
                    exc.bytes_sent = done  # type: ignore[attr-defined]
                    raise
                continue
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP) and done == 0:
                    # This kernel cannot splice into TLS: send the pipe's bytes the usual way.
                    return self._e.send_all(memoryview(pipe.read_exactly(n)))
                err = self._e.os_error(exc, "send")
                err.bytes_sent = done  # type: ignore[attr-defined]  # also builtins
                raise err from exc
            done += m
            self._count(m)
            deadline = _engine.deadline_of(sock)
        return done

    def can_send_alert(self, description: int) -> bool:
        return True

    def send_alert(self, level: int, description: int) -> None:
        self._send_control(_records.CONTENT_ALERT, bytes([level, description]), "send alert")
        self._count(2)
        if description == CLOSE_NOTIFY:
            # The kernel sent it, not OpenSSL: tell OpenSSL, or it takes the connection for
            # one that ended uncleanly and, when the Connection is freed, makes its session
            # non-resumable (ssl_clear_bad_session), also the one get_session() handed out.
            e = self._e
            with e.ssl_lock:
                state = BaseConnection.get_shutdown(e.conn)
                BaseConnection.set_shutdown(e.conn, state | SSL.SENT_SHUTDOWN)

    def backlog(self) -> int:
        return 0

    def flush(self) -> None:
        pass

    def half_close(self) -> None:
        self._e.half_close()

    def key_update(self, request_peer: bool) -> None:
        e = self._e
        if e.secrets is None or not e.secrets.has(Direction.TX):
            raise KeyUpdateUnsupported(
                "this kernel cannot change a TLS 1.3 key on a live socket (Linux 6.14+ can); "
                "the connection cannot update its transmit key"
            )
        self._send_control(
            _records.CONTENT_HANDSHAKE, _records.encode_key_update(request_peer), "send KeyUpdate"
        )
        e.rekey(Direction.TX)
        self._records = 0

    def answer_key_update(self) -> None:
        try:
            self.key_update(False)
        except KeyUpdateUnsupported as exc:
            raise self._e.fatal(
                KeyUpdateUnsupported(
                    "the peer asked for a TLS 1.3 KeyUpdate, which needs a kernel "
                    "TX rekey this kernel cannot do (Linux 6.14+ can)"
                ),
                alert=False,
            ) from exc

    def openssl_read_done(self, key_update_requested: bool) -> None:
        e = self._e
        if key_update_requested:
            with e.tx_lock:
                self.answer_key_update()
        with e.ssl_lock:
            out = _openssl.pending_output(e.conn)
        if not out:
            return
        # OpenSSL wrote under its own (stale) TX state: replay its alerts through the kernel.
        written = e.observer.alerts_written
        new_alerts = written[self._alerts_replayed :]
        self._alerts_replayed = len(written)
        for level, description in new_alerts:
            with e.tx_lock:
                self.send_alert(level, description)

    def note_records(self, records: int) -> None:
        if records > 0:
            self._records += records

    def sequence(self) -> int:
        assert self._e.suite is not None
        return uapi.read_rec_seq(self._sock, uapi.TLS_TX, self._e.suite.name)

    def _count(self, nbytes: int) -> None:
        self._records += max(1, -(-nbytes // self.record_limit))

    def _maybe_auto_key_update(self) -> None:
        limit = self.key_update_after
        if limit is not None and self._e.version == "1.3" and self._records >= limit:
            self.key_update(False)

    def _send_control(self, content_type: int, payload: bytes, operation: str) -> None:
        """Send one control record whole, whatever the socket mode.

        Control records are often answers sent from the receive path (close_notify,
        KeyUpdate, no_renegotiation), where EAGAIN cannot be handed to the caller without
        losing the answer: on a non-blocking socket, wait for room (up to 30 s).
        """
        deadline = time.monotonic() + _engine.CONTROL_WAIT
        while True:
            try:
                uapi.send_record(self._sock, content_type, payload)
                return
            except (BlockingIOError, InterruptedError):
                if not _engine.writable_before(self._sock, deadline):
                    raise self._e.fatal(
                        from_errno(errno.ETIMEDOUT, f"{operation}: no room in 30 s")
                    ) from None
            except OSError as exc:
                raise self._e.os_error(exc, operation) from exc


class UserTx:
    """TX in user space: OpenSSL encrypts into its memory BIO, and the ciphertext joins
    one ordered queue that this path puts on the socket.

    On a non-blocking socket the queue may not go out at once (``backlog``): ``send``
    then accepts nothing new until ``flush`` emptied it, and the TCP half-close after
    close_notify waits for it too (a FIN would cut the queue off)."""

    kernel = False
    record_limit = MAX_RECORD  # OpenSSL fragments by itself (also to a negotiated limit)
    key_update_after: int | None = None

    def __init__(self, engine: Engine) -> None:
        self._e = engine
        self._sock = engine.sock
        self._cipher = bytearray()  # ciphertext OpenSSL produced, in order, not yet sent
        self._more = bytearray()  # MSG_MORE plaintext held for one record
        self._fin_due = False

    def send(self, view: memoryview, more: bool) -> int:
        if self._cipher:
            self.flush()
            if self._cipher:
                # Earlier ciphertext is still queued: accept nothing new (like send()).
                raise BlockingIOError(errno.EAGAIN, "send buffer full (see flush())")
        if more:
            self._more += view
            if len(self._more) < MAX_RECORD:
                return len(view)
            payload = bytes(self._more)
        else:
            payload = bytes(self._more) + bytes(view)
        self._more.clear()
        self._write(payload)
        return len(view)

    def sendfile(self, fd: int, offset: int, count: int) -> int:
        """A read-and-send loop; only whole chunks that went out count as sent."""
        sent = 0
        while sent < count:
            chunk = os.pread(fd, min(READ_CHUNK, count - sent), offset + sent)
            try:
                if not chunk:
                    raise _file_ended(sent, count)
                view = memoryview(chunk)
                done = 0
                while done < len(view):  # sendfile needs a blocking socket: no EAGAIN
                    done += self._e.send(view[done:], False)
            except (OSError, Error) as exc:
                exc.bytes_sent = sent  # type: ignore[union-attr]
                raise
            sent += len(chunk)
        return sent

    def send_pipe(self, pipe: Pipe, n: int) -> int:
        return self._e.send_all(memoryview(pipe.read_exactly(n)))

    def can_send_alert(self, description: int) -> bool:
        return description == CLOSE_NOTIFY  # OpenSSL has no API for other alerts

    def send_alert(self, level: int, description: int) -> None:
        if description != CLOSE_NOTIFY:
            return
        if self._more:
            self._write(bytes(self._more))
            self._more.clear()
        e = self._e
        marks = e.alert_marks()
        try:
            with e.ssl_lock:
                BaseConnection.shutdown(e.conn)
                self._collect()
        except SSL.Error as exc:
            raise e.fatal(e.openssl_error(exc, "shutdown", marks)) from exc
        self.flush()

    def backlog(self) -> int:
        return len(self._cipher)

    def flush(self) -> None:
        """Put queued ciphertext on the socket in order (the caller holds tx_lock)."""
        self._collect()
        if self._sock.gettimeout() == 0.0:
            while self._cipher:
                try:
                    n = self._sock.send(self._cipher)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    raise self._e.os_error(exc, "send") from exc
                del self._cipher[:n]
        elif self._cipher:
            data = bytes(self._cipher)
            self._cipher.clear()
            try:
                self._sock.sendall(data)
            except OSError as exc:
                raise self._e.os_error(exc, "send") from exc
        if self._fin_due and not self._cipher:
            self._fin_due = False
            self._e.half_close()

    def half_close(self) -> None:
        if self._cipher:
            self._fin_due = True  # a FIN now would cut off the queue
        else:
            self._e.half_close()

    def key_update(self, request_peer: bool) -> None:
        raise UsageError("key_update() needs kernel TX")

    def answer_key_update(self) -> None:
        raise self._e.fatal(KeyUpdateUnsupported("a KeyUpdate reply needs kernel TX"))

    def openssl_read_done(self, key_update_requested: bool) -> None:
        # OpenSSL answered a KeyUpdate (or wrote an alert) itself: send what it wrote.
        self._collect()
        if self._cipher:
            with self._e.tx_lock:
                self.flush()

    def note_records(self, records: int) -> None:
        pass  # no automatic KeyUpdate in user space: OpenSSL keeps its own limits

    def sequence(self) -> int:
        raise UsageError("tx_sequence() needs that direction in the kernel")

    def _collect(self) -> None:
        """Move what OpenSSL wrote into the ordered ciphertext queue."""
        e = self._e
        with e.ssl_lock:
            out = _openssl.pending_output(e.conn)
            if out:
                self._cipher += out

    def _write(self, payload: bytes) -> None:
        """Encrypt through OpenSSL (memory BIO) and put the ciphertext on the socket."""
        e = self._e
        marks = e.alert_marks()
        try:
            if payload:
                with e.ssl_lock:
                    BaseConnection.sendall(e.conn, payload)
                    self._collect()
        except SSL.Error as exc:
            raise e.fatal(e.openssl_error(exc, "send", marks)) from exc
        self.flush()
