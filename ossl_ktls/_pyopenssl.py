"""Connection: pyOpenSSL's ``SSL.Connection``, with the record layer moved into the
kernel as soon as the handshake is complete.

Theory of operation
-------------------
Until the handshake completes, every method is pyOpenSSL's own. The handshake may
complete in ``do_handshake()`` or inside the first ``recv``/``send`` (a lazy handshake,
as cheroot and pyftpdlib do it); after the first such call that succeeds, the
Connection is handed over (``_handover.hand_over_if_kernel``) when the kernel takes at
least one direction. From then on the data methods run on the engine and translate its
outcomes back into pyOpenSSL's: ``WantReadError``/``WantWriteError`` on a socket that
would block, ``ZeroReturnError`` at close_notify, ``SysCallError(-1, "Unexpected EOF")``
at a TCP end without close_notify, ``SysCallError(errno, name)`` for a reset, and
``SSL.Error`` with OpenSSL's own reason strings for alerts and bad records.

Where the kernel takes nothing (no kTLS, a cipher it lacks, a memory-BIO Connection, a
Context that made Connections before ossl_ktls saw it), nothing is handed over and the
Connection is plain pyOpenSSL; the reason goes to the ``ossl_ktls`` logger and to
``fallback_reason``.

A socket with a timeout behaves as in pyOpenSSL: its descriptor is non-blocking, so
pyOpenSSL raises WantReadError/WantWriteError instead of waiting; the data methods here
do the same.

Writes follow OpenSSL's rule for ``SSL_write``: a write that could not be put on the
wire completely raises ``WantWriteError``, and the caller repeats it with the same
buffer; it then returns the whole length once everything is out. (With TX in the
kernel, a non-blocking ``send`` returns what the kernel accepted, like a socket.)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from collections.abc import Iterator
from typing import IO, Any, BinaryIO

from OpenSSL import SSL
from OpenSSL._util import ffi, lib

from . import _openssl
from ._engine import ALERT_FATAL, MAX_RECORD, READ_CHUNK, Engine, nonblocking, sendfile_args
from ._errors import (
    BadRecordMAC,
    ConnectionClosed,
    DecodeError,
    Error,
    KernelError,
    RecordOverflow,
    TLSAlertError,
    TruncatedStream,
    UnexpectedMessage,
    UsageError,
)
from ._handover import Options, hand_over_if_kernel

__all__ = ["Connection", "patch", "patched", "unpatch"]

log = logging.getLogger("ossl_ktls")

_ERR_LIB_SSL = 20
_SSL_AD_REASON_OFFSET = 1000  # OpenSSL: an alert's reason code is 1000 + its description
# OpenSSL reason codes (ssl/sslerr.h) of the errors the kernel paths report.
# A record the kernel refused is reported as OpenSSL's record layer (3.2 and later)
# reports it: the reason, then SSL_R_RECORD_LAYER_FAILURE. (OpenSSL may put an entry of
# its crypto provider before them, "cipher operation failed", for some ciphers and not
# others; the kernel's AEAD has no such entry to give.)
_RECORD_LAYER_FAILURE = 313  # SSL_R_RECORD_LAYER_FAILURE
_REASONS_OF: dict[type[Error], tuple[int, ...]] = {
    BadRecordMAC: (281, _RECORD_LAYER_FAILURE),  # SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC
    RecordOverflow: (150, _RECORD_LAYER_FAILURE),  # SSL_R_ENCRYPTED_LENGTH_TOO_LONG
    DecodeError: (271,),  # SSL_R_BAD_LENGTH
    UnexpectedMessage: (244,),  # SSL_R_UNEXPECTED_MESSAGE
}
_PROTOCOL_IS_SHUTDOWN = 207  # SSL_R_PROTOCOL_IS_SHUTDOWN


def _reason(code: int) -> tuple[str, str, str]:
    """One entry of pyOpenSSL's error list, as OpenSSL itself words it."""
    packed = (_ERR_LIB_SSL << 23) | code
    lib_name = lib.ERR_lib_error_string(packed)
    reason = lib.ERR_reason_error_string(packed)
    return (
        ffi.string(lib_name).decode() if lib_name != ffi.NULL else "SSL routines",
        "",
        ffi.string(reason).decode() if reason != ffi.NULL else f"reason({code})",
    )


def _as_pyopenssl(exc: BaseException, *, writing: bool, broken: bool) -> BaseException:
    """The exception pyOpenSSL would raise for what the engine raised (*broken*: the
    connection already ended with an error)."""
    cause = exc.__cause__
    if isinstance(exc, Error) and isinstance(cause, SSL.Error):
        # OpenSSL itself said it (user-space RX or TX): its own words, as pyOpenSSL's.
        return type(cause)(*cause.args)
    if isinstance(exc, (BlockingIOError, InterruptedError, TimeoutError)):
        return SSL.WantWriteError() if writing else SSL.WantReadError()
    if isinstance(exc, TruncatedStream):
        return SSL.SysCallError(-1, "Unexpected EOF")
    if isinstance(exc, TLSAlertError):
        return SSL.Error([_reason(_SSL_AD_REASON_OFFSET + exc.description)])
    if isinstance(exc, KernelError) and exc.errno is not None:
        return SSL.SysCallError(exc.errno, errno.errorcode.get(exc.errno))
    if isinstance(exc, ConnectionClosed):
        # After a fatal error OpenSSL has nothing more to say (an empty error queue);
        # after our own shutdown() a write is "protocol is shutdown".
        return SSL.Error([_reason(_PROTOCOL_IS_SHUTDOWN)] if writing and not broken else [])
    if isinstance(exc, Error) and not isinstance(exc, UsageError):
        codes = _REASONS_OF.get(type(exc))
        if codes is None:
            return SSL.Error([("SSL routines", "", str(exc))])
        return SSL.Error([_reason(code) for code in codes])
    return exc


class Connection(SSL.Connection):
    """``OpenSSL.SSL.Connection`` with the record layer in the kernel after the handshake.

    Same constructor, methods and exceptions as pyOpenSSL's. Its Context is prepared
    (``ossl_ktls.prepare``) at the first Connection made from it. Extras for programs
    that opt in: :meth:`sendfile`, ``ktls_tx``, ``ktls_rx``, ``fallback_reason``.
    """

    def __init__(self, context: SSL.Context, socket: socket.socket | None = None) -> None:
        reason: str | None = None
        if socket is None:
            reason = "a memory-BIO Connection: its record layer is the caller's"
        elif isinstance(context, SSL.Context) and not _openssl.is_prepared(context):
            if getattr(context, "_used", False):
                reason = (
                    "its Context made Connections before ossl_ktls saw it "
                    "(prepare() must come before the first Connection)"
                )
            else:
                _openssl.prepare(context)
        super().__init__(context, socket)
        self._ktls: Engine | None = None
        self._ktls_reason = reason
        self._ktls_decided = reason is not None
        # A user-space write accepted into the ciphertext queue but not yet on the wire:
        # its length, returned when the caller repeats the write and the queue is empty.
        self._ktls_owed = 0
        if reason is not None and socket is not None:
            log.info("stays in user space: %s", reason)

    # ------------------------------------------------------------------ where things run

    @property
    def ktls_tx(self) -> bool:
        """True once the kernel makes the records this Connection sends."""
        return self._ktls is not None and self._ktls.tx.kernel

    @property
    def ktls_rx(self) -> bool:
        """True once the kernel opens the records this Connection receives."""
        return self._ktls is not None and self._ktls.rx.kernel

    @property
    def fallback_reason(self) -> str | None:
        """Why a direction is not in the kernel (None before the handshake completed, or
        when both are)."""
        if self._ktls is not None:
            return self._ktls.fallback_reason
        return self._ktls_reason

    @property
    def tx_record_limit(self) -> int:
        """The most plaintext one record we send may carry (2^14 unless the peer asked for
        less)."""
        return self._ktls.tx_record_limit if self._ktls is not None else MAX_RECORD

    def note_records_sent(self, records: int) -> None:
        """Count records the kernel sent from this socket outside this object (a caller's
        own ``os.sendfile`` on the descriptor), for the automatic TLS 1.3 KeyUpdate."""
        if self._ktls is not None:
            self._ktls.tx.note_records(records)

    def _ktls_hand_over(self) -> None:
        """After a call that needed the completed handshake: hand over, once."""
        if self._ktls_decided:
            return
        self._ktls_decided = True
        try:
            outcome = hand_over_if_kernel(self, Options())
        except UsageError as exc:  # not a TCP socket, and the like
            outcome = str(exc)
        if isinstance(outcome, str):
            self._ktls_reason = outcome
            log.info("stays in user space: %s", outcome)
        else:
            self._ktls = outcome
            outcome.answer_close_notify = False  # shutdown() is the caller's, as in OpenSSL
            outcome.rx_record_at_a_time = True  # unread records stay visible to epoll
            log.info(
                "kernel TLS %s %s: TX %s, RX %s%s",
                outcome.version,
                outcome.suite.name if outcome.suite else "?",
                "kernel" if outcome.tx.kernel else "user space",
                "kernel" if outcome.rx.kernel else "user space",
                f" ({outcome.fallback_reason})" if outcome.fallback_reason else "",
            )

    @contextlib.contextmanager
    def _ktls_call(self, *, writing: bool) -> Iterator[Engine]:
        """Run an engine call with pyOpenSSL's blocking rules and exceptions."""
        engine = self._ktls
        assert engine is not None
        sock = engine.sock
        try:
            if sock.gettimeout() not in (None, 0.0):
                # pyOpenSSL over a socket with a timeout never waits (its fd is
                # non-blocking): neither do we.
                with nonblocking(sock):
                    yield engine
            else:
                yield engine
        except (OSError, Error) as exc:
            mapped = _as_pyopenssl(exc, writing=writing, broken=engine.error is not None)
            if mapped is exc:
                raise
            raise mapped from exc

    # ------------------------------------------------------------------ handshake

    def do_handshake(self) -> None:
        if self._ktls is not None:
            return
        super().do_handshake()
        self._ktls_hand_over()

    # ------------------------------------------------------------------ sending

    def send(self, buf: Any, flags: int = 0) -> int:
        if self._ktls is None:
            n = super().send(buf, flags)
            self._ktls_hand_over()
            return n
        return self._ktls_write(memoryview(buf).cast("B"), whole=False)

    write = send

    def sendall(self, buf: Any, flags: int = 0) -> int:
        if self._ktls is None:
            n = super().sendall(buf, flags)
            self._ktls_hand_over()
            return n
        return self._ktls_write(memoryview(buf).cast("B"), whole=True)

    def _ktls_write(self, view: memoryview, *, whole: bool) -> int:
        with self._ktls_call(writing=True) as engine:
            if self._ktls_owed:
                # The caller repeats a write whose bytes are already queued (SSL_write's
                # rule: same buffer again); it is done once the queue is on the wire.
                engine.flush()
                if engine.tx.backlog():
                    raise BlockingIOError(errno.EAGAIN, "ciphertext still queued")
                owed, self._ktls_owed = self._ktls_owed, 0
                return owed
            sent = 0
            while True:
                sent += engine.send(view[sent:], False)
                if engine.tx.backlog():  # user-space TX queued what the socket refused
                    self._ktls_owed = len(view)
                    raise BlockingIOError(errno.EAGAIN, "ciphertext queued")
                if sent >= len(view):
                    return sent
                if not whole and engine.sock.gettimeout() == 0.0:
                    return sent  # kernel TX took part of it: a socket's partial send

    def sendfile(
        self, file: BinaryIO | IO[bytes], offset: int = 0, count: int | None = None
    ) -> int:
        """Send a file (an extra: pyOpenSSL has none), with ``socket.sendfile``'s contract.

        Zero copy with TX in the kernel; otherwise read-and-send through OpenSSL. Needs
        the handshake completed and a blocking socket (or one with a timeout).
        """
        if self._ktls is not None:
            with self._ktls_call(writing=True) as engine:
                return engine.sendfile(file, offset, count)
        if not self._ktls_decided:
            raise UsageError("sendfile() needs the handshake completed first")
        fd, count = sendfile_args(file, offset, count)
        sent = 0
        while sent < count:
            chunk = os.pread(fd, min(READ_CHUNK, count - sent), offset + sent)
            if not chunk:
                break
            super().sendall(chunk)
            sent += len(chunk)
        if sent and hasattr(file, "seek"):
            file.seek(offset + sent)
        return sent

    # ------------------------------------------------------------------ receiving

    def recv(self, bufsiz: int, flags: int | None = None) -> bytes:
        if self._ktls is None:
            data = super().recv(bufsiz, flags)
            self._ktls_hand_over()
            return data
        buf = bytearray(bufsiz)
        n = self._ktls_read(memoryview(buf), flags)
        del buf[n:]
        return bytes(buf)

    read = recv

    def recv_into(self, buffer: Any, nbytes: int | None = None, flags: int | None = None) -> int:
        if self._ktls is None:
            n = super().recv_into(buffer, nbytes, flags)
            self._ktls_hand_over()
            return n
        view = memoryview(buffer).cast("B")
        if nbytes is not None:
            view = view[: min(nbytes, len(view))]
        return self._ktls_read(view, flags)

    def _ktls_read(self, view: memoryview, flags: int | None) -> int:
        if not len(view):
            return 0
        with self._ktls_call(writing=False) as engine:
            n = engine.recv_into(view)
            if n == 0:
                raise SSL.ZeroReturnError()
            if flags is not None and flags & socket.MSG_PEEK:
                engine.rx_plain[0:0] = view[:n]  # put it back: the next read gets it again
            return n

    def pending(self) -> int:
        if self._ktls is None:
            return super().pending()
        return len(self._ktls.rx_plain)

    # ------------------------------------------------------------------ closing

    def shutdown(self) -> bool:
        """pyOpenSSL's ``shutdown``: send close_notify; True once the peer's arrived too.

        As with OpenSSL, a second call waits for the peer's close_notify (on a blocking
        socket), dropping application data that comes before it.
        """
        engine = self._ktls
        if engine is None:
            return super().shutdown()
        with self._ktls_call(writing=True):
            if not engine.close_notify_sent:
                engine.send_close_notify()
                if engine.tx.backlog():
                    raise BlockingIOError(errno.EAGAIN, "close_notify queued")
                return engine.close_notify_received
            engine.flush()
            if engine.tx.backlog():
                raise BlockingIOError(errno.EAGAIN, "close_notify queued")
        if engine.close_notify_received:
            return True
        scratch = memoryview(bytearray(READ_CHUNK))
        with self._ktls_call(writing=False):
            while engine.recv_into(scratch):
                pass  # application data after our close_notify is dropped, as OpenSSL does
        return True

    def close(self) -> None:
        """Close the socket, as pyOpenSSL's ``close`` (its socket's) does; after the
        hand-over, key material kept for rekeying is wiped first."""
        if self._socket is None:  # as pyOpenSSL's __getattr__ answers for memory BIOs
            raise AttributeError(f"'{type(self).__name__}' object has no attribute 'close'")
        engine = self._ktls
        if engine is not None:
            engine.wipe()
        self._socket.close()

    def get_shutdown(self) -> int:
        engine = self._ktls
        if engine is None:
            return super().get_shutdown()
        state = 0
        if engine.close_notify_sent:
            state |= SSL.SENT_SHUTDOWN
        # OpenSSL counts a fatal alert from the peer as its shutdown, as it does close_notify.
        error = engine.error
        peer_fatal = isinstance(error, TLSAlertError) and error.level == ALERT_FATAL
        if engine.close_notify_received or peer_fatal:
            state |= SSL.RECEIVED_SHUTDOWN
        return state

    def get_session(self) -> SSL.Session | None:
        engine = self._ktls
        if engine is not None:
            engine.relay_tickets()  # the newest TLS 1.3 ticket kernel RX received
        return super().get_session()

    def set_shutdown(self, state: int) -> None:
        super().set_shutdown(state)
        engine = self._ktls
        if engine is not None:
            # "Pretend" flags, as in OpenSSL: nothing is sent or received.
            engine.close_notify_sent = bool(state & SSL.SENT_SHUTDOWN)
            engine.close_notify_received = bool(state & SSL.RECEIVED_SHUTDOWN)


Connection._ossl_ktls_original = _openssl.BaseConnection  # type: ignore[attr-defined]


def patch() -> None:
    """Make ``OpenSSL.SSL.Connection`` this module's :class:`Connection` (idempotent).

    Code that looks the class up through the module after this (``SSL.Connection(...)``,
    ``OpenSSL.SSL.Connection(...)``) gets kernel TLS; a name bound earlier with
    ``from OpenSSL.SSL import Connection`` still means pyOpenSSL's class. Contexts are
    prepared at their first Connection; one that made Connections before keeps its
    Connections in user space, with the reason logged. Undo with :func:`unpatch`.
    """
    SSL.Connection = Connection  # type: ignore[misc]


def unpatch() -> None:
    """Give ``OpenSSL.SSL.Connection`` back to pyOpenSSL (Connections already made from
    ours keep working)."""
    SSL.Connection = _openssl.BaseConnection  # type: ignore[misc]


@contextlib.contextmanager
def patched() -> Iterator[None]:
    """``with ossl_ktls.patched(): ...``: :func:`patch` for the block, then the state
    before it again."""
    before = SSL.Connection
    patch()
    try:
        yield
    finally:
        SSL.Connection = before  # type: ignore[misc]
