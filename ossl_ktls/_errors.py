"""The one exception hierarchy of ossl_ktls, and the one place errors are mapped.

Every error the library raises is an :class:`Error`. Where an error resembles a
builtin one, the class also inherits it, so ``except ConnectionError`` or
``except ValueError`` in existing code keeps working:

* :class:`ProtocolError` (and its subclasses), :class:`TLSAlertError` and
  :class:`TruncatedStream` are ``ConnectionError``\\ s: the peer broke the stream.
* :class:`NotPrepared`, :class:`UsageError` are ``ValueError``\\ s: the caller's mistake.
* :class:`KernelError` is an ``OSError`` carrying the errno the kernel returned.

Each error carries ``errno`` (the kernel errno it came from, or ``None``) and
``alert`` (the TLS alert description it corresponds to, or ``None``).
"""

from __future__ import annotations

import errno as _errno
import os
from collections.abc import Sequence

from ._wire import AlertDescription

__all__ = [
    "BadRecordMAC",
    "ConnectionClosed",
    "DecodeError",
    "Error",
    "KTLSUnavailable",
    "KernelError",
    "KeyUpdateUnsupported",
    "NotPrepared",
    "ProtocolError",
    "RecordOverflow",
    "TLSAlertError",
    "TruncatedStream",
    "UnexpectedMessage",
    "UsageError",
    "from_errno",
]

# TLS alert descriptions (RFC 8446 section 6, RFC 5246 section 7.2) by their RFC names.
ALERT_NAMES: dict[int, str] = {int(a): a.name.lower() for a in AlertDescription}


def alert_name(description: int) -> str:
    """The RFC name of a TLS alert description, or ``alert_<n>`` for unknown ones."""
    return ALERT_NAMES.get(description, f"alert_{description}")


class Error(Exception):
    """Root of every exception ossl_ktls raises.

    Attributes:
        errno: the kernel errno this error came from, or ``None``.
        alert: the TLS alert description (RFC 8446 section 6) it corresponds to, or ``None``.
        bytes_sent: on an error from ``sendfile`` or ``send_stream``, the bytes the peer
            was really sent before it (``None`` elsewhere).
        bytes_received: on an error from ``recvfile``, the bytes the output really took
            before it (``None`` elsewhere).

    Errors pickle and unpickle whole (message, errno, alert, the byte counts and the
    attributes of subclasses), for process pools and logging handlers.
    """

    errno: int | None = None
    alert: int | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None

    def __init__(self, message: str, *, errno: int | None = None, alert: int | None = None):
        super().__init__(message)
        if errno is not None:
            self.errno = errno
        if alert is not None:
            self.alert = alert

    def __reduce__(self) -> tuple[object, ...]:
        # The default (cls(*args)) would call __init__ with the message only: OSError
        # subclasses would lose their errno, TLSAlertError could not be rebuilt at all.
        state = dict(self.__dict__)
        state["errno"], state["alert"] = self.errno, self.alert
        return (_restore, (type(self), self.args, state))


class KTLSUnavailable(Error):
    """The kernel cannot take over this connection and ``require=True`` was asked.

    The message names the reason: no ``tls`` ULP, a cipher the kernel lacks, a session
    feature kernel TLS cannot carry, ...
    """


class UsageError(Error, ValueError):
    """The library was used in a way it does not support (wrapped twice, wrong socket, ...)."""


class NotPrepared(UsageError):
    """``wrap()`` was given a Connection whose Context never went through ``prepare()``."""


class ConnectionClosed(Error, OSError):
    """The connection was closed (by ``close()`` or after a fatal error); no I/O is possible."""

    def __init__(self, message: str = "connection is closed") -> None:
        Error.__init__(self, message, errno=_errno.EBADF)


class KernelError(Error, OSError):
    """A kernel call failed with an errno that has no more specific meaning here."""


class LocalIOError(KernelError):
    """The other end of ``recvfile``/``send_stream`` failed: writing the output (a full
    disk, a closed pipe, a reset socket) or reading the source. ``errno`` is that
    file's or socket's. The stream through the connection is cut there, so the
    connection was reset (no close_notify)."""


class ProtocolError(Error, ConnectionError):
    """The peer broke the TLS protocol (fatal: the connection is closed)."""


class BadRecordMAC(ProtocolError):
    """A record failed authentication (tampered or wrongly keyed): kernel ``EBADMSG``."""

    errno = _errno.EBADMSG
    alert = AlertDescription.BAD_RECORD_MAC


class RecordOverflow(ProtocolError):
    """A record longer than TLS allows arrived: kernel ``EMSGSIZE``."""

    errno = _errno.EMSGSIZE
    alert = AlertDescription.RECORD_OVERFLOW


class DecodeError(ProtocolError):
    """A record or handshake message could not be parsed."""

    alert = AlertDescription.DECODE_ERROR


class UnexpectedMessage(ProtocolError):
    """A record or handshake message that is not allowed at this point arrived."""

    alert = AlertDescription.UNEXPECTED_MESSAGE


class TruncatedStream(Error, ConnectionError):
    """The TCP stream ended without a TLS close_notify: the data may have been cut short."""


class TLSAlertError(Error, ConnectionError):
    """The peer sent a TLS alert other than close_notify.

    Attributes:
        level: 1 (warning) or 2 (fatal).
        description: the alert description number; ``alert`` holds the same value.
    """

    def __init__(self, level: int, description: int, message: str | None = None) -> None:
        self.level = level
        self.description = description
        kind = "fatal" if level == 2 else "warning" if level == 1 else f"level-{level}"
        text = message or f"peer sent {kind} alert {alert_name(description)} ({description})"
        super().__init__(text, alert=description)


class KeyUpdateUnsupported(Error):
    """A TLS 1.3 KeyUpdate needs a transmit rekey this kernel cannot do (before Linux 6.14)."""


def from_errno(err: int, operation: str) -> Error:
    """Map a kernel errno from a TLS socket operation to the library's exception.

    ``operation`` is a short phrase ("receive", "sendfile", ...) put into the message.
    Transport failures become :class:`KernelError` instances that are also the builtin
    exception the socket module would raise: ECONNRESET a ``ConnectionResetError``, EPIPE
    a ``BrokenPipeError``, ECONNABORTED a ``ConnectionAbortedError``, ETIMEDOUT a
    ``ConnectionError``; so ``except ConnectionResetError`` works as with a plain socket.
    """
    if err == _errno.EINVAL:
        return ProtocolError(
            f"{operation} failed: the kernel rejected a record (EINVAL)",
            errno=err,
            alert=AlertDescription.DECODE_ERROR,
        )
    cls = _ERRNO_CLASSES.get(err, KernelError)
    return cls(f"{operation} failed: {os.strerror(err)} (errno {err})", errno=err)


class _ConnectionKernelError(KernelError, ConnectionError):
    """A transport-level failure reported by the kernel (ETIMEDOUT)."""


class _ResetKernelError(KernelError, ConnectionResetError):
    """The peer reset the connection (ECONNRESET)."""


class _BrokenPipeKernelError(KernelError, BrokenPipeError):
    """The connection is closed for writing (EPIPE)."""


class _AbortedKernelError(KernelError, ConnectionAbortedError):
    """The connection was aborted (ECONNABORTED)."""


# errno -> class; anything else is a plain KernelError (EINVAL: see from_errno).
_ERRNO_CLASSES: dict[int, type[Error]] = {
    _errno.EBADMSG: BadRecordMAC,
    _errno.EMSGSIZE: RecordOverflow,
    _errno.ECONNRESET: _ResetKernelError,
    _errno.EPIPE: _BrokenPipeKernelError,
    _errno.ECONNABORTED: _AbortedKernelError,
    _errno.ETIMEDOUT: _ConnectionKernelError,
}


# The class of the error OpenSSL detected, by the alert it sent about it (RFC 8446 6.2).
_ALERT_SENT_CLASSES: dict[int, type[ProtocolError]] = {
    BadRecordMAC.alert: BadRecordMAC,
    RecordOverflow.alert: RecordOverflow,
    DecodeError.alert: DecodeError,
    UnexpectedMessage.alert: UnexpectedMessage,
}


def from_alerts(
    operation: str,
    read: Sequence[tuple[int, int]],
    written: Sequence[tuple[int, int]],
    detail: str = "",
) -> Error | None:
    """The error a failed OpenSSL call stands for, from the alerts that crossed meanwhile.

    *read* and *written* are the ``(level, description)`` alerts the record observer saw
    arrive and OpenSSL send during the call (close_notify ignored). An alert from the
    peer is a :class:`TLSAlertError` with its real level; otherwise the alert OpenSSL sent
    names what it found (bad_record_mac, record_overflow, decode_error,
    unexpected_message, else a :class:`ProtocolError` carrying that alert). ``None``: no
    alert moved, and the caller falls back to what else it knows. Codes, never text.
    """
    for level, description in read:
        if description != AlertDescription.CLOSE_NOTIFY:
            return TLSAlertError(level, description)
    for _level, description in written:
        if description == AlertDescription.CLOSE_NOTIFY:
            continue
        text = f"{operation}: we sent alert {alert_name(description)}"
        if detail:
            text += f" ({detail})"
        cls = _ALERT_SENT_CLASSES.get(description)
        return cls(text) if cls is not None else ProtocolError(text, alert=description)
    return None


def _restore(cls: type[Error], args: tuple[object, ...], state: dict[str, object]) -> Error:
    """Rebuild a pickled :class:`Error` without calling its ``__init__``."""
    exc = cls.__new__(cls)
    exc.args = args
    for name, value in state.items():
        setattr(exc, name, value)
    return exc
