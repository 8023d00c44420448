"""The two receive paths: :class:`KernelRx` (kTLS opens the records; control records
come one per ``recvmsg`` with their type in a cmsg) and :class:`UserRx` (we feed the
socket's bytes to OpenSSL through its memory BIO and take out the plaintext).

Both implement ``_engine.RxPath``. A control record's meaning comes from the pure rules
in ``_post_handshake``; the path carries the action out, reaching TX only through the
engine's ``TxPath`` answers.
"""

from __future__ import annotations

import errno
import os

from OpenSSL import SSL

from . import _linux_tls as uapi
from . import _post_handshake as rules
from . import _records
from ._engine import (
    ALERT_WARNING,
    MAX_RECORD,
    READ_CHUNK,
    Engine,
    deadline_of,
    nonblocking,
    wait,
)
from ._errors import (
    Error,
    KeyUpdateUnsupported,
    TLSAlertError,
    TruncatedStream,
    UnexpectedMessage,
    UsageError,
)
from ._openssl import BaseConnection
from ._splice import Sink
from ._wire import Direction

_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK


class KernelRx:
    """RX in the kernel: application data straight into the caller's buffer where it is
    at least a record long, control records through the engine's scratch buffer."""

    kernel = True

    def __init__(self, engine: Engine) -> None:
        self._e = engine
        self._sock = engine.sock
        self._hs = _records.HandshakeBuffer()

    def recv_into(self, view: memoryview) -> int:
        e = self._e
        while True:
            direct = len(view) >= MAX_RECORD
            target = view if direct else memoryview(e.scratch)
            try:
                n, rtype = uapi.recv_record_into(self._sock, target)
            except OSError as exc:
                raise e.os_error(exc, "receive") from exc
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
                    e.rx_plain += target[m:n]
                return m
            if self._control_record(rtype, bytes(target[:n])):
                return 0

    def splice_to(self, sink: Sink, want: int) -> int:
        """Splice up to *want* bytes of application data (one record or its rest) from the
        kernel into *sink*; how many, or 0 at the end of the stream (close_notify, or TCP
        ended: ``recv_into`` then tells which). A control record at the head of the queue
        makes the splice fail with EINVAL and stays there: it is read and carried out
        here, as by ``recv_into``, and splicing goes on."""
        sock = self._sock
        pipe = sink.pipe()
        deadline = deadline_of(sock)
        while True:
            try:
                n = os.splice(sock.fileno(), pipe.w, min(want, pipe.size), flags=_SPLICE_FLAGS)
            except BlockingIOError:
                wait(sock, write=False, deadline=deadline)
                continue
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise self._e.os_error(exc, "receive") from exc
                n = self._not_spliced(sink)
                if n < 0:
                    continue  # a control record, carried out
                return n
            if n:
                sink.from_pipe(n)
            return n

    def _not_spliced(self, sink: Sink) -> int:
        """Read the record splice refused with ``recvmsg``: a control record is carried
        out (-1, or 0 when it ended the stream); data is written to *sink* (its length)."""
        e = self._e
        target = memoryview(e.scratch)
        # Non-blocking, without Python's poll before it: the record is there, but after a
        # splice refused a KeyUpdate, Linux 7.2 polls the socket as not readable until
        # that record is read (measured), so a socket timeout would wait in vain.
        try:
            with nonblocking(self._sock):
                n, rtype = uapi.recv_record_into(self._sock, target)
        except BlockingIOError:
            wait(self._sock, write=False, deadline=deadline_of(self._sock))
            return -1  # nothing was there after all: splice again
        except OSError as exc:
            raise e.os_error(exc, "receive") from exc
        if rtype is None or rtype == _records.CONTENT_APPLICATION_DATA:
            if n:
                sink.write(target[:n])
            return n  # 0 with no type: TCP ended, for recv_into to judge
        return 0 if self._control_record(rtype, bytes(target[:n])) else -1

    def has_buffered_end(self) -> bool:
        return False

    def drain_once(self, buf: memoryview) -> int:
        return uapi.recv_record_into(self._sock, buf)[0]

    def sequence(self) -> int:
        assert self._e.suite is not None
        return uapi.read_rec_seq(self._sock, uapi.TLS_RX, self._e.suite.name)

    def _transport_eof(self) -> int:
        e = self._e
        e.eof = True
        if e.ragged_eof or e.close_notify_received:
            return 0
        raise e.fatal(
            TruncatedStream("the peer closed TCP without close_notify: data may be cut short"),
            alert=False,
        )

    def _control_record(self, rtype: int, payload: bytes) -> bool:
        """Carry out what one non-data record means; True when it ends the stream."""
        e = self._e
        action = rules.on_record_type(rtype)
        if action is rules.Action.ALERT:
            try:
                level, description = _records.parse_alert(payload)
            except Error as exc:
                raise e.fatal(exc) from exc
            alert_action = rules.on_alert(e.version, level, description)
            if alert_action is rules.Action.END_OF_STREAM:
                e.peer_closed()
                return True
            if alert_action is rules.Action.IGNORE:
                return False
            raise e.fatal(TLSAlertError(level, description), alert=False)
        if action is rules.Action.HANDSHAKE:
            try:
                messages = self._hs.feed(payload)
            except Error as exc:
                raise e.fatal(exc) from exc
            for msg in messages:
                self._handshake_message(msg)
            return False
        raise e.fatal(UnexpectedMessage(f"unexpected record type {rtype} after the handshake"))

    def _handshake_message(self, msg: _records.HandshakeMessage) -> None:
        e = self._e
        action = rules.on_handshake_message(e.version, e.is_server, msg.msg_type)
        if action is rules.Action.TICKET:
            try:
                _records.parse_new_session_ticket_13(msg.body)
            except Error as exc:
                raise e.fatal(exc) from exc
            e.keep_ticket(msg.raw)
            if e.on_ticket is not None:
                e.on_ticket(msg.raw)
        elif action is rules.Action.KEY_UPDATE:
            try:
                requested = _records.parse_key_update(msg.body)
            except Error as exc:
                raise e.fatal(exc) from exc
            self._peer_key_update(requested)
        elif action is rules.Action.REFUSE_RENEGOTIATION:
            if e.tx.kernel and not e.close_notify_sent:
                with e.tx_lock:
                    e.tx.send_alert(ALERT_WARNING, rules.NO_RENEGOTIATION)
        else:
            raise e.fatal(
                UnexpectedMessage(
                    f"unexpected handshake message type {msg.msg_type} after the handshake"
                )
            )

    def _peer_key_update(self, requested: bool) -> None:
        e = self._e
        if e.secrets is None or not e.secrets.has(Direction.RX):
            raise e.fatal(
                KeyUpdateUnsupported(
                    "the peer updated its TLS 1.3 key, and this kernel cannot rekey kernel RX "
                    "(Linux 6.14+ can); wrap() without rx_without_rekey keeps RX in user space"
                )
            )
        e.rekey(Direction.RX)
        if requested:
            with e.tx_lock:
                e.tx.answer_key_update()


class UserRx:
    """RX in user space: the one memory-BIO pump. Everything OpenSSL can decrypt from
    what it was fed goes to the engine's plaintext buffer at once, so ``pending()`` is
    exact and select() on the descriptor never misses buffered data; the stream's end
    (close_notify, an error) is kept until that plaintext was read."""

    kernel = False

    def __init__(self, engine: Engine) -> None:
        self._e = engine
        self._sock = engine.sock
        self._end: str | Error | None = None
        self._splitter: _records.RecordSplitter | None = None

    def recv_into(self, view: memoryview) -> int:
        e = self._e
        while True:
            self._pump()
            if e.rx_plain:
                n = min(len(view), len(e.rx_plain))
                view[:n] = e.rx_plain[:n]
                del e.rx_plain[:n]
                return n
            if self._end is not None:
                return self._finish()
            size = self._read_size()
            try:
                chunk = self._sock.recv(size)
            except OSError as exc:
                raise e.os_error(exc, "receive") from exc
            if self._splitter is not None:
                self._splitter.feed(chunk)
                while self._splitter.next_record() is not None:
                    pass
            with e.ssl_lock:
                if not chunk:
                    BaseConnection.bio_shutdown(e.conn)
                else:
                    BaseConnection.bio_write(e.conn, chunk)

    def splice_to(self, sink: Sink, want: int) -> int:
        return 0  # OpenSSL opens the records: everything goes the normal way

    def has_buffered_end(self) -> bool:
        return self._end is not None

    def _read_size(self) -> int:
        """How much to read from the socket: a large chunk, or (``rx_record_at_a_time``)
        what completes the current record header or body."""
        if not self._e.rx_record_at_a_time:
            return READ_CHUNK
        if self._splitter is None:
            self._splitter = _records.RecordSplitter(tls13=self._e.version == "1.3")
        try:
            return self._splitter.need()
        except Error:
            # Not a record header: let OpenSSL read it and report it in its own words.
            self._e.rx_record_at_a_time = False
            return READ_CHUNK

    def drain_once(self, buf: memoryview) -> int:
        return self._sock.recv_into(buf)

    def sequence(self) -> int:
        raise UsageError("rx_sequence() needs that direction in the kernel")

    def _pump(self) -> None:
        """Decrypt all complete records OpenSSL holds into the plaintext buffer."""
        e = self._e
        while self._end is None:
            marks = e.alert_marks()
            try:
                with e.ssl_lock:
                    data = BaseConnection.recv(e.conn, READ_CHUNK)
            except SSL.WantReadError:
                self._after_read()
                return
            except SSL.ZeroReturnError:
                self._end = "close_notify"
            except SSL.Error as exc:
                self._end = e.openssl_error(exc, "receive", marks)
            else:
                e.rx_plain += data
            self._after_read()

    def _after_read(self) -> None:
        """Hand TX what OpenSSL did while reading (a KeyUpdate to answer, records it wrote)."""
        observer = self._e.observer
        requested = observer.peer_key_update_requested
        if requested:
            observer.peer_key_update_requested = False
        self._e.tx.openssl_read_done(requested)

    def _finish(self) -> int:
        """The stream ended (buffered data was delivered first)."""
        e = self._e
        end = self._end
        if end == "close_notify":
            e.peer_closed()
            return 0
        assert isinstance(end, Error)
        if isinstance(end, TruncatedStream) and e.ragged_eof:
            e.eof = True
            return 0
        raise e.fatal(end, alert=False)
