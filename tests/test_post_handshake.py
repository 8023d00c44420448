"""The rules for control records received after the hand-over (pure, on the host).

Every rule of ``ossl_ktls._post_handshake`` is checked here without a socket; the
kernel suites (``tests/test_receive.py``, the interop suites) check that kernel RX
carries them out.
"""

from __future__ import annotations

import itertools

import pytest

from ossl_ktls import _post_handshake as rules
from ossl_ktls import _records as r

A = rules.Action
VERSIONS = ("1.2", "1.3")


def test_record_types() -> None:
    """Alerts and handshake records have their own rules; every other type a kernel may
    hand over (change_cipher_spec, heartbeat, anything) is unexpected_message."""
    assert rules.on_record_type(r.CONTENT_ALERT) is A.ALERT
    assert rules.on_record_type(r.CONTENT_HANDSHAKE) is A.HANDSHAKE
    for other in (r.CONTENT_CHANGE_CIPHER_SPEC, 24, 0, 255):
        assert rules.on_record_type(other) is A.UNEXPECTED


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("level", [1, 2])
def test_close_notify_ends_the_stream(version: str, level: int) -> None:
    """close_notify is the end of the stream, whatever its level (RFC 8446 6.1)."""
    assert rules.on_alert(version, level, rules.CLOSE_NOTIFY) is A.END_OF_STREAM


def test_tls12_warnings_that_do_not_end_the_connection() -> None:
    """TLS 1.2 no_renegotiation and user_canceled warnings are read past (RFC 5246 7.2.2);
    the same descriptions as fatal alerts, or in TLS 1.3, end the connection."""
    for description in (rules.NO_RENEGOTIATION, rules.USER_CANCELED):
        assert rules.on_alert("1.2", r.ALERT_LEVEL_WARNING, description) is A.IGNORE
        assert rules.on_alert("1.2", r.ALERT_LEVEL_FATAL, description) is A.FATAL_ALERT
        assert rules.on_alert("1.3", r.ALERT_LEVEL_WARNING, description) is A.FATAL_ALERT


@pytest.mark.parametrize("version", VERSIONS)
def test_every_other_alert_is_fatal(version: str) -> None:
    """Any alert description but those above ends the connection, at either level."""
    allowed = {rules.CLOSE_NOTIFY, rules.NO_RENEGOTIATION, rules.USER_CANCELED}
    for level, description in itertools.product((1, 2), range(256)):
        if description in allowed:
            continue
        assert rules.on_alert(version, level, description) is A.FATAL_ALERT, description


# (version, is_server, message type) -> action: the whole table, written out.
EXPECTED = {
    ("1.3", False, r.NEW_SESSION_TICKET): A.TICKET,
    ("1.3", False, r.KEY_UPDATE): A.KEY_UPDATE,
    ("1.3", True, r.KEY_UPDATE): A.KEY_UPDATE,
    ("1.2", False, r.HELLO_REQUEST): A.REFUSE_RENEGOTIATION,
    ("1.2", True, r.CLIENT_HELLO): A.REFUSE_RENEGOTIATION,
}


@pytest.mark.parametrize(("case", "action"), EXPECTED.items(), ids=str)
def test_handshake_messages_with_a_meaning(case: tuple[str, bool, int], action: A) -> None:
    """TLS 1.3: tickets go to clients, KeyUpdate to both sides; TLS 1.2: a renegotiation
    request (HelloRequest to a client, ClientHello to a server) is refused and read past."""
    version, is_server, msg_type = case
    assert rules.on_handshake_message(version, is_server, msg_type) is action


def test_every_other_handshake_message_is_unexpected() -> None:
    """Everything else is unexpected_message: a ticket sent to a server, a TLS 1.2
    KeyUpdate, a HelloRequest to a server, a TLS 1.3 ClientHello, Finished again, ..."""
    for version, is_server, msg_type in itertools.product(VERSIONS, (False, True), range(256)):
        if (version, is_server, msg_type) in EXPECTED:
            continue
        action = rules.on_handshake_message(version, is_server, msg_type)
        assert action is A.UNEXPECTED, (version, is_server, msg_type)
