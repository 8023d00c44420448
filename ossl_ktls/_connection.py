"""KTLSConnection: the socket-like façade of a connection whose record layer lives in
the kernel where it can.

``wrap(conn)`` hands a pyOpenSSL Connection over (``_handover``: handshake, placement
plan, keys, sequence numbers) and returns a :class:`KTLSConnection` over the resulting
``_engine.Engine``. The engine holds the lifecycle and the two direction paths, chosen
once (``_tx.KernelTx``/``UserTx``, ``_rx.KernelRx``/``UserRx``); this class adds the
socket's conventions on top: ``sendall`` and its waits, file objects for ``sendfile``,
``makefile``, timeouts, and pyOpenSSL's read-only information, passed through.

Each direction is either *kernel* (``ktls_tx``/``ktls_rx``) or *user space* (OpenSSL
with memory BIOs, fed by the engine). Every way the kernel could not take over ends in
user space with ``fallback_reason`` set, or in ``KTLSUnavailable`` when the caller said
``require=True``.

TLS 1.3 on kernels that cannot rekey (before 6.14): a peer's KeyUpdate would stop
kernel RX for good, so by default RX stays in user space there (as OpenSSL 3.0 does),
where OpenSSL follows a KeyUpdate by itself; only a KeyUpdate that asks us to rekey TX
is fatal (``KeyUpdateUnsupported``).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, BinaryIO, Literal

from OpenSSL import SSL

if TYPE_CHECKING:
    from cryptography import x509
    from OpenSSL import crypto

from ._engine import READ_CHUNK, Engine, deadline_of, wait
from ._errors import UsageError
from ._handover import Options, hand_over
from ._suites import Suite

TicketCallback = Callable[["KTLSConnection", bytes], None]


class KTLSConnection:
    """A TLS connection whose record layer runs in the kernel where it can.

    Made by :func:`wrap`, not directly. ``ktls_tx``/``ktls_rx`` tell which directions
    the kernel carries; ``fallback_reason`` says, in a sentence, why a direction stayed
    in user space (None when both went to the kernel). The API is the same either way.

    Thread safety: one thread may send while another receives; concurrent senders (or
    receivers) must be serialised by the caller, as with a socket.
    """

    def __init__(self, engine: Engine, *, ticket_callback: TicketCallback | None) -> None:
        self._engine = engine
        self._conn = engine.conn
        self._sock = engine.sock
        if ticket_callback is not None:
            engine.on_ticket = lambda raw: ticket_callback(self, raw)

    # ------------------------------------------------------------------ where things run

    @property
    def ktls_tx(self) -> bool:
        """True when the kernel makes the records we send."""
        return self._engine.tx.kernel

    @property
    def ktls_rx(self) -> bool:
        """True when the kernel opens the records we receive."""
        return self._engine.rx.kernel

    @property
    def fallback_reason(self) -> str | None:
        """Why a requested direction stayed in user space, or an optional setting the
        kernel refused; None when everything requested went to the kernel."""
        return self._engine.fallback_reason

    @property
    def zerocopy_sendfile(self) -> bool:
        """True when kernel TX took TLS_TX_ZEROCOPY_RO (``wrap(zerocopy_sendfile=True)``)."""
        return self._engine.zerocopy_sendfile

    @property
    def tx_record_limit(self) -> int:
        """The most plaintext one record we send may carry (2^14 unless the peer asked
        for less with max_fragment_length or record_size_limit)."""
        return self._engine.tx_record_limit

    @property
    def version(self) -> str:
        """``"1.2"`` or ``"1.3"``."""
        return self._engine.version

    @property
    def suite(self) -> Suite | None:
        """The negotiated suite (None when the kernel knows no such cipher)."""
        return self._engine.suite

    @property
    def key_update_after(self) -> int | None:
        """TLS 1.3 kernel TX: the record count after which a KeyUpdate goes out by
        itself (None: never, as in user space, where OpenSSL keeps its own limits)."""
        return self._engine.tx.key_update_after

    @key_update_after.setter
    def key_update_after(self, value: int | None) -> None:
        self._engine.tx.key_update_after = value

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
        """``SSL.Connection.get_session`` (for resumption; with the newest TLS 1.3 ticket
        kernel RX received, also after ``close()``)."""
        self._engine.relay_tickets()
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
        e = self._engine
        return (
            f"<KTLSConnection {e.state.value} {e.version} {e.suite.name if e.suite else '?'} "
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
        return self._engine.tx.sequence()

    def rx_sequence(self) -> int:
        """The record sequence number the kernel expects next on RX (kernel RX only)."""
        return self._engine.rx.sequence()

    # ------------------------------------------------------------------ sending

    def send(self, data: bytes | bytearray | memoryview, *, more: bool = False) -> int:
        """Send *data*; returns how many bytes were accepted (like ``socket.send``).

        ``more=True`` is MSG_MORE: the record is held open and coalesced with the next
        sends up to 2^14 bytes; a later send without ``more`` (or ``shutdown``/``close``)
        closes it.
        """
        return self._engine.send(memoryview(data).cast("B"), more)

    def sendall(self, data: bytes | bytearray | memoryview, *, more: bool = False) -> None:
        """Send all of *data* (like ``socket.sendall``)."""
        view = memoryview(data).cast("B")
        sent = 0
        deadline = deadline_of(self._sock)
        while sent < len(view) or (not view and sent == 0):
            try:
                sent += self.send(view[sent:], more=more)
            except BlockingIOError:
                wait(self._sock, write=True, deadline=deadline)
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
        self._engine.tx.note_records(records)

    @property
    def tx_backlog(self) -> int:
        """Ciphertext bytes accepted but not yet on the socket (user-space TX only).

        Non-zero only on a non-blocking socket whose send buffer filled up: call
        :meth:`flush` when the socket is writable.
        """
        return self._engine.tx.backlog()

    def flush(self) -> int:
        """Push queued user-space ciphertext to the socket; returns what is still queued.

        On a blocking socket (or one with a timeout) this waits until everything is out.
        With TX in the kernel there is never a backlog.
        """
        return self._engine.flush()

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
        return self._engine.sendfile(file, offset, count)

    def send_stream(self, source: Any, count: int | None = None) -> int:
        """Send what *source* delivers until its end (or *count* bytes); returns the bytes
        sent. The counterpart of :meth:`recvfile`, for a tunnel or proxy.

        *source*: a socket, a pipe, a file, or any object with ``readinto``. With kernel
        TX the bytes go through a pipe by ``splice(2)``, kernel to kernel (each splice
        makes one or more records, the last one closed); otherwise they are copied. The
        end of *source* is not the end of the connection: call :meth:`shutdown` after.

        Raises:
            UsageError: a non-blocking socket, a negative count, no readable source.
            LocalIOError: reading *source* failed: the stream the peer gets would be cut,
                so the connection is reset (no close_notify); ``errno`` is the source's.
            The errors of :meth:`send`. Each error carries ``bytes_sent``: what the
            connection really took.
        """
        return self._engine.send_stream(source, count)

    def send_alert(self, level: int, description: int) -> None:
        """Send a TLS alert record (21) through kernel TX.

        ``send_alert(1, 0)`` is close_notify (prefer :meth:`shutdown`). A fatal alert
        (level 2) ends the connection: the socket is closed after it.
        In user space only close_notify can be sent (OpenSSL has no API for other
        alerts): other alerts raise ``UsageError`` there.
        """
        self._engine.send_alert(level, description)

    def key_update(self, request_peer: bool = False) -> None:
        """Send a TLS 1.3 KeyUpdate and move kernel TX to the next key.

        ``request_peer=True`` asks the peer to update its key too.

        Raises:
            UsageError: not TLS 1.3, or TX is not in the kernel.
            KeyUpdateUnsupported: the kernel cannot rekey (before Linux 6.14).
        """
        self._engine.key_update(request_peer)

    # ------------------------------------------------------------------ receiving

    def recv(self, bufsize: int = READ_CHUNK) -> bytes:
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
        return self._engine.recv_into(view)

    def recvfile(self, file: Any, count: int | None = None) -> int:
        """Write what arrives to *file* until close_notify (or *count* bytes); returns the
        bytes written. The mirror of :meth:`sendfile`.

        *file*: a binary file (written at its position, which is left after the last
        byte), a socket, a pipe, or any object with ``write``. With kernel RX the records
        are decrypted into a pipe and spliced on to *file* by ``splice(2)``, never entering
        Python; control records (tickets, KeyUpdate, alerts, close_notify) are handled
        exactly as by :meth:`recv`. In user space, or where *file* cannot be spliced into
        (``O_APPEND``, no descriptor), the bytes are copied instead.

        A close_notify before *count* bytes ends it early: compare the result. With
        *count*, nothing past it is read from the connection.

        Raises:
            TruncatedStream: TCP ended without close_notify (unless ``ragged_eof``).
            LocalIOError: writing *file* failed (``errno`` is the file's: ENOSPC, EPIPE,
                ...): what was taken off the connection for it is lost, so the connection
                is reset (no close_notify).
            UsageError: a non-blocking socket, a negative count, no writable *file*.
            The errors of :meth:`recv`. Each error carries ``bytes_received``: the bytes
            *file* really took before it.
        """
        return self._engine.recvfile(file, count)

    def pending(self) -> int:
        """Plaintext bytes already received and buffered in user space."""
        return len(self._engine.rx_plain)

    def has_buffered_input(self) -> bool:
        """True when the next ``recv`` answers without reading the socket.

        That is buffered plaintext (:meth:`pending`) or an end of stream (close_notify,
        an alert, a TCP close) already taken off the socket: a select/poll loop must call
        ``recv`` without waiting for the descriptor to become readable.
        """
        return self._engine.has_buffered_input()

    # ------------------------------------------------------------------ closing

    def shutdown(self) -> None:
        """Send close_notify (through the kernel when TX is there), then half-close TCP.

        Any MSG_MORE record still open is sent first. Receiving stays possible. On a
        non-blocking socket in user space, close_notify may join ciphertext still queued
        (``tx_backlog``): the half-close then happens when :meth:`flush` has sent it all.
        """
        self._engine.shutdown()

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
        self._engine.close()

    def abort(self) -> None:
        """Close at once without close_notify: the peer sees a reset, never a clean end.

        For when what was sent is incomplete (a response cut short by a timeout or an
        error): close() would send close_notify, which tells the peer the stream is
        complete. The socket is closed with SO_LINGER 0 (TCP RST), keys are wiped, and
        later calls raise ConnectionClosed.
        """
        self._engine.abort()

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
    half_close: bool = False,
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
        half_close: TLS 1.2: a close_notify from the peer ends its direction only, as
            in TLS 1.3; ours goes at ``shutdown()``/``close()``, and data may still be sent
            until then (a proxy passing a half-close on). By default TLS 1.2 answers the
            peer's close_notify at once (RFC 5246 section 7.2.1).

    Raises:
        NotPrepared: the Connection's Context did not go through ``prepare()``.
        UsageError: not a TCP socket Connection, or already wrapped.
        KTLSUnavailable: ``require=True`` and the kernel cannot take over.
        OpenSSL.SSL.Error: the handshake failed (certificate, protocol): nothing was
            handed over.
    """
    engine = hand_over(
        conn,
        Options(
            tx=tx,
            rx=rx,
            require=require,
            rx_without_rekey=rx_without_rekey,
            rx_expect_no_pad=rx_expect_no_pad,
            zerocopy_sendfile=zerocopy_sendfile,
            ragged_eof=ragged_eof,
            key_update_after=key_update_after,
            half_close=half_close,
        ),
    )
    return KTLSConnection(engine, ticket_callback=ticket_callback)
