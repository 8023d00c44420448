"""What a control record received after the hand-over means: the rules (pure).

Kernel RX hands every non-data record to the library one at a time (alerts, and
handshake records whose messages :class:`~ossl_ktls._records.HandshakeBuffer`
reassembles). Everything that decides what such a record means lives in the two tables
below, h11 style; the receive path only carries out the :class:`Action` it is given.
(In user space OpenSSL applies the same rules itself.)

* Alerts: close_notify ends the stream (TLS 1.2 answers it with our own, RFC 5246
  7.2.1); in TLS 1.2 the warnings no_renegotiation and user_canceled do not end the
  connection (RFC 5246 7.2.2); every other alert is fatal (RFC 8446 section 6: in TLS 1.3
  all alerts but close_notify and user_canceled are errors, and user_canceled must be
  followed by a close_notify, which a sender that means it sends next).
* Handshake messages: a TLS 1.3 client takes NewSessionTicket (offered to the ticket
  callback); either TLS 1.3 side takes KeyUpdate (rekey RX; answer and rekey TX when
  update_requested); a TLS 1.2 client refuses a server's HelloRequest and a TLS 1.2
  server a client's new ClientHello, with a no_renegotiation warning, and goes on
  (renegotiation is off: RFC 5746, RFC 5246 7.4.1.1). Anything else is an
  unexpected_message.
* Any other record type is an unexpected_message.
"""

from __future__ import annotations

import enum

from ._records import (
    ALERT_LEVEL_WARNING,
    CLIENT_HELLO,
    CONTENT_ALERT,
    CONTENT_HANDSHAKE,
    HELLO_REQUEST,
    KEY_UPDATE,
    NEW_SESSION_TICKET,
)
from ._wire import AlertDescription

__all__ = ["Action", "on_alert", "on_handshake_message", "on_record_type"]

CLOSE_NOTIFY = AlertDescription.CLOSE_NOTIFY
USER_CANCELED = AlertDescription.USER_CANCELED
NO_RENEGOTIATION = AlertDescription.NO_RENEGOTIATION


class Action(enum.Enum):
    """What the receive path does with a control record or message."""

    #: An alert record: decide with on_alert().
    ALERT = "alert"
    #: close_notify: end of stream (TLS 1.2: answer with our close_notify).
    END_OF_STREAM = "end of stream"
    #: A warning that does not end the connection: read on.
    IGNORE = "ignore"
    #: An alert that ends the connection: raise TLSAlertError, close.
    FATAL_ALERT = "fatal alert"
    #: Reassemble the handshake record's messages and apply on_handshake_message.
    HANDSHAKE = "handshake"
    #: TLS 1.3 NewSessionTicket: parse it, offer it to the ticket callback.
    TICKET = "ticket"
    #: TLS 1.3 KeyUpdate: rekey RX; if update_requested, answer and rekey TX.
    KEY_UPDATE = "key update"
    #: TLS 1.2 renegotiation request: refuse with a no_renegotiation warning, read on.
    REFUSE_RENEGOTIATION = "refuse renegotiation"
    #: Anything else: unexpected_message, close.
    UNEXPECTED = "unexpected message"


Role = str  # "client" or "server"

#: (version, our role, handshake type) -> action; absent: UNEXPECTED.
HANDSHAKE_RULES: dict[tuple[str, Role, int], Action] = {
    ("1.3", "client", NEW_SESSION_TICKET): Action.TICKET,
    ("1.3", "client", KEY_UPDATE): Action.KEY_UPDATE,
    ("1.3", "server", KEY_UPDATE): Action.KEY_UPDATE,
    ("1.2", "client", HELLO_REQUEST): Action.REFUSE_RENEGOTIATION,
    ("1.2", "server", CLIENT_HELLO): Action.REFUSE_RENEGOTIATION,
}

#: (version, alert level, description) -> action for alerts other than close_notify;
#: absent: FATAL_ALERT.
ALERT_RULES: dict[tuple[str, int, int], Action] = {
    ("1.2", ALERT_LEVEL_WARNING, NO_RENEGOTIATION): Action.IGNORE,
    ("1.2", ALERT_LEVEL_WARNING, USER_CANCELED): Action.IGNORE,
}

#: Record types kernel RX may hand over besides application data.
RECORD_RULES: dict[int, Action] = {
    CONTENT_ALERT: Action.ALERT,
    CONTENT_HANDSHAKE: Action.HANDSHAKE,
}


def on_record_type(record_type: int) -> Action:
    """What a non-data record of *record_type* leads to: ALERT, HANDSHAKE or UNEXPECTED."""
    return RECORD_RULES.get(record_type, Action.UNEXPECTED)


def on_alert(version: str, level: int, description: int) -> Action:
    """What an alert received after the hand-over means."""
    if description == CLOSE_NOTIFY:
        return Action.END_OF_STREAM
    return ALERT_RULES.get((version, level, description), Action.FATAL_ALERT)


def on_handshake_message(version: str, is_server: bool, msg_type: int) -> Action:
    """What a post-handshake message of *msg_type* means for our role."""
    role = "server" if is_server else "client"
    return HANDSHAKE_RULES.get((version, role, msg_type), Action.UNEXPECTED)
