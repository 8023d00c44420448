"""The exception hierarchy and the errno mapper (pure, on the host)."""

from __future__ import annotations

import errno

import pytest

import ossl_ktls
from ossl_ktls._errors import from_errno


@pytest.mark.parametrize(
    ("err", "builtin"),
    [
        (errno.ECONNRESET, ConnectionResetError),
        (errno.EPIPE, BrokenPipeError),
        (errno.ECONNABORTED, ConnectionAbortedError),
        (errno.ETIMEDOUT, ConnectionError),
    ],
)
def test_transport_errnos_are_the_socket_builtins(err: int, builtin: type[OSError]) -> None:
    """A reset, a broken pipe, an abort or a timeout from a kTLS socket is the library's
    KernelError and also the builtin a plain socket raises, with the errno kept: code
    written for sockets (``except ConnectionResetError``) keeps working."""
    exc = from_errno(err, "receive")
    assert isinstance(exc, ossl_ktls.KernelError) and isinstance(exc, builtin)
    assert isinstance(exc, ossl_ktls.Error)
    assert exc.errno == err
    assert "receive failed" in str(exc) and f"errno {err}" in str(exc)


@pytest.mark.parametrize(
    ("err", "cls", "alert"),
    [
        (errno.EBADMSG, ossl_ktls.BadRecordMAC, 20),
        (errno.EMSGSIZE, ossl_ktls.RecordOverflow, 22),
        (errno.EINVAL, ossl_ktls.ProtocolError, 50),
    ],
)
def test_record_errnos_are_protocol_errors(
    err: int, cls: type[ossl_ktls.Error], alert: int
) -> None:
    """What kernel RX says about a bad record maps to a ProtocolError subclass carrying
    the alert to send (bad_record_mac, record_overflow, decode_error) and the errno."""
    exc = from_errno(err, "receive")
    assert type(exc) is cls
    assert (exc.errno, exc.alert) == (err, alert)
    assert isinstance(exc, ConnectionError)


def test_other_errnos_are_kernel_errors() -> None:
    """Anything else is a plain KernelError (an OSError), not a connection error."""
    exc = from_errno(errno.ENOMEM, "send")
    assert type(exc) is ossl_ktls.KernelError
    assert isinstance(exc, OSError) and not isinstance(exc, ConnectionError)
    assert exc.errno == errno.ENOMEM
