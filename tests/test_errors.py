"""The exception hierarchy and the errno mapper (pure, on the host)."""

from __future__ import annotations

import errno
import pickle
from collections.abc import Callable

import pytest

import ossl_ktls
from ossl_ktls._errors import alert_name, from_alerts, from_errno
from ossl_ktls._wire import AlertDescription


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


def test_from_alerts_peer_alert_wins() -> None:
    """An alert the peer sent during the failed call is a TLSAlertError with its real
    level and description, whatever OpenSSL sent back."""
    exc = from_alerts("receive", [(2, 40)], [(2, 20)])
    assert isinstance(exc, ossl_ktls.TLSAlertError)
    assert (exc.level, exc.description, exc.alert) == (2, 40, 40)
    warning = from_alerts("receive", [(1, 0), (1, 112)], [])
    assert isinstance(warning, ossl_ktls.TLSAlertError) and warning.level == 1


@pytest.mark.parametrize(
    ("sent", "cls"),
    [
        (20, ossl_ktls.BadRecordMAC),
        (22, ossl_ktls.RecordOverflow),
        (50, ossl_ktls.DecodeError),
        (10, ossl_ktls.UnexpectedMessage),
        (47, ossl_ktls.ProtocolError),
    ],
)
def test_from_alerts_what_openssl_sent_names_the_error(sent: int, cls: type[Exception]) -> None:
    """With no alert from the peer, the alert OpenSSL sent about the problem picks the
    class (bad_record_mac, record_overflow, decode_error, unexpected_message; anything
    else a ProtocolError carrying it); close_notify moves are ignored."""
    exc = from_alerts("receive", [(1, 0)], [(1, 0), (2, sent)], "detail")
    assert type(exc) is cls
    assert exc is not None and exc.alert == sent and "detail" in str(exc)


def test_from_alerts_nothing_moved() -> None:
    """No alert (or only close_notify) either way: no verdict, the caller decides."""
    assert from_alerts("send", [], []) is None
    assert from_alerts("send", [(1, 0)], [(1, 0)]) is None


@pytest.mark.parametrize(
    "make",
    [
        lambda: ossl_ktls.Error("plain"),
        lambda: ossl_ktls.TLSAlertError(2, 40),
        lambda: ossl_ktls.TLSAlertError(1, 112, "custom text"),
        lambda: from_errno(errno.ECONNRESET, "receive"),
        lambda: from_errno(errno.ENOMEM, "send"),
        lambda: from_errno(errno.EBADMSG, "receive"),
        lambda: ossl_ktls.ProtocolError("odd", alert=47),
        lambda: ossl_ktls.ConnectionClosed("closed"),
        lambda: ossl_ktls.KTLSUnavailable("no kernel"),
    ],
    ids=lambda make: type(make()).__name__,
)
def test_errors_pickle_whole(make: Callable[[], ossl_ktls.Error]) -> None:
    """Every error survives pickle (process pools, logging handlers): same class, message,
    errno, alert, bytes_sent and subclass attributes (an alert's level/description)."""
    exc = make()
    exc.bytes_sent = 1234
    back = pickle.loads(pickle.dumps(exc))  # noqa: S301 (our own bytes)
    assert type(back) is type(exc)
    assert (str(back), back.args) == (str(exc), exc.args)
    assert (back.errno, back.alert, back.bytes_sent) == (exc.errno, exc.alert, 1234)
    if isinstance(exc, ossl_ktls.TLSAlertError):
        assert isinstance(back, ossl_ktls.TLSAlertError)
        assert (back.level, back.description) == (exc.level, exc.description)


def test_bytes_sent_is_declared() -> None:
    """``bytes_sent`` is part of every Error (None unless a sendfile error set it)."""
    assert ossl_ktls.Error("x").bytes_sent is None


def test_alert_codes_print_as_numbers_and_name_themselves() -> None:
    """The alert IntEnum is the one alert table: every member's RFC name is what error
    messages say (``alert_name``), unknown codes get ``alert_<n>``, and members format as
    their wire numbers (messages and JSON keep showing 20, not the member name)."""
    for member in AlertDescription:
        assert alert_name(member) == alert_name(int(member)) == member.name.lower()
    assert alert_name(201) == "alert_201"
    assert f"{AlertDescription.BAD_RECORD_MAC}" == str(int(AlertDescription.BAD_RECORD_MAC))
    assert ossl_ktls.BadRecordMAC("x").alert == AlertDescription.BAD_RECORD_MAC
