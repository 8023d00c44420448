"""The TLS and kTLS code points ossl_ktls speaks, as IntEnums (a leaf module: it imports
nothing of the package, so every other module can use it).

The members compare equal to the plain numbers on the wire and in the kernel's uAPI,
and print as those numbers.
"""

from __future__ import annotations

import enum

__all__ = ["AlertDescription", "AlertLevel", "ContentType", "Direction", "HandshakeType"]


class ContentType(enum.IntEnum):
    """RFC 8446 section 5.1 / RFC 5246 section 6.2.1."""

    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23


class HandshakeType(enum.IntEnum):
    """RFC 8446 section 4 / RFC 5246 section 7.4 (those this library meets)."""

    HELLO_REQUEST = 0  # TLS 1.2 only: a renegotiation request (RFC 5246 section 7.4.1.1)
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    NEW_SESSION_TICKET = 4
    END_OF_EARLY_DATA = 5
    ENCRYPTED_EXTENSIONS = 8
    CERTIFICATE = 11
    SERVER_KEY_EXCHANGE = 12
    CERTIFICATE_REQUEST = 13
    SERVER_HELLO_DONE = 14
    CERTIFICATE_VERIFY = 15
    CLIENT_KEY_EXCHANGE = 16
    FINISHED = 20
    KEY_UPDATE = 24
    MESSAGE_HASH = 254


class AlertLevel(enum.IntEnum):
    """RFC 8446 section 6 / RFC 5246 section 7.2."""

    WARNING = 1
    FATAL = 2


class AlertDescription(enum.IntEnum):
    """RFC 8446 section 6 and RFC 5246 section 7.2 (the member names, lowercased, are the
    RFCs' names)."""

    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    BAD_RECORD_MAC = 20
    DECRYPTION_FAILED = 21
    RECORD_OVERFLOW = 22
    DECOMPRESSION_FAILURE = 30
    HANDSHAKE_FAILURE = 40
    NO_CERTIFICATE = 41
    BAD_CERTIFICATE = 42
    UNSUPPORTED_CERTIFICATE = 43
    CERTIFICATE_REVOKED = 44
    CERTIFICATE_EXPIRED = 45
    CERTIFICATE_UNKNOWN = 46
    ILLEGAL_PARAMETER = 47
    UNKNOWN_CA = 48
    ACCESS_DENIED = 49
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    EXPORT_RESTRICTION = 60
    PROTOCOL_VERSION = 70
    INSUFFICIENT_SECURITY = 71
    INTERNAL_ERROR = 80
    INAPPROPRIATE_FALLBACK = 86
    USER_CANCELED = 90
    NO_RENEGOTIATION = 100
    MISSING_EXTENSION = 109
    UNSUPPORTED_EXTENSION = 110
    CERTIFICATE_UNOBTAINABLE = 111
    UNRECOGNIZED_NAME = 112
    BAD_CERTIFICATE_STATUS_RESPONSE = 113
    BAD_CERTIFICATE_HASH_VALUE = 114
    UNKNOWN_PSK_IDENTITY = 115
    CERTIFICATE_REQUIRED = 116
    NO_APPLICATION_PROTOCOL = 120


class Direction(enum.IntEnum):
    """A kTLS socket's directions, numbered as the ``SOL_TLS`` options of linux/tls.h."""

    TX = 1
    RX = 2
