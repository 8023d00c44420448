"""TLS record and handshake-message framing, sans I/O.

Theory of operation: the kernel can only take over a TCP stream at a record boundary.
Whatever user space reads from the socket after the handshake must therefore be read
record by record: :class:`RecordSplitter` says, through :meth:`RecordSplitter.need`, how
many bytes complete the current header or record, so a caller never reads past a record.
Records of type handshake carry messages that may span records or share one;
:class:`HandshakeBuffer` reassembles them. The post-handshake messages the library acts
on (TLS 1.3 NewSessionTicket and KeyUpdate) have parsers here, as do alerts.

Nothing here touches a socket or OpenSSL. Malformed input raises a
:class:`~ossl_ktls._errors.ProtocolError` subclass carrying the TLS alert to send;
caller mistakes raise :class:`~ossl_ktls._errors.UsageError`.
"""

from __future__ import annotations

from typing import NamedTuple

from ._errors import DecodeError, RecordOverflow, UnexpectedMessage, UsageError
from ._wire import AlertDescription, AlertLevel, ContentType, HandshakeType

__all__ = [
    "ALERT",
    "ALERT_LEVEL_FATAL",
    "ALERT_LEVEL_WARNING",
    "APPLICATION_DATA",
    "CERTIFICATE",
    "CERTIFICATE_REQUEST",
    "CERTIFICATE_VERIFY",
    "CHANGE_CIPHER_SPEC",
    "CLIENT_HELLO",
    "CLIENT_KEY_EXCHANGE",
    "CONTENT_ALERT",
    "CONTENT_APPLICATION_DATA",
    "CONTENT_CHANGE_CIPHER_SPEC",
    "CONTENT_HANDSHAKE",
    "CONTENT_TYPES",
    "ENCRYPTED_EXTENSIONS",
    "END_OF_EARLY_DATA",
    "EXT_MAX_FRAGMENT_LENGTH",
    "EXT_RECORD_SIZE_LIMIT",
    "FINISHED",
    "HANDSHAKE",
    "HANDSHAKE_HEADER_LEN",
    "HELLO_REQUEST",
    "KEY_UPDATE",
    "MAX_CIPHERTEXT_TLS12",
    "MAX_CIPHERTEXT_TLS13",
    "MAX_HANDSHAKE_MESSAGE",
    "MAX_PLAINTEXT",
    "MESSAGE_HASH",
    "NEW_SESSION_TICKET",
    "RECORD_HEADER_LEN",
    "SERVER_HELLO",
    "SERVER_HELLO_DONE",
    "SERVER_KEY_EXCHANGE",
    "BytesLike",
    "HandshakeBuffer",
    "HandshakeMessage",
    "Hello",
    "NewSessionTicket13",
    "RecordHeader",
    "RecordSplitter",
    "SendLimit",
    "aead_record_limit",
    "encode_alert",
    "encode_handshake",
    "encode_key_update",
    "hello_extensions",
    "parse_alert",
    "parse_hello",
    "parse_key_update",
    "parse_max_fragment_length",
    "parse_new_session_ticket_13",
    "parse_record_header",
    "parse_record_size_limit",
    "send_limit",
]

#: Accepted wherever bytes are read (a socket buffer may be a bytearray or memoryview).
BytesLike = bytes | bytearray | memoryview

# The code points as module constants (IntEnum members from _wire).
CONTENT_CHANGE_CIPHER_SPEC = ContentType.CHANGE_CIPHER_SPEC
CONTENT_ALERT = ContentType.ALERT
CONTENT_HANDSHAKE = ContentType.HANDSHAKE
CONTENT_APPLICATION_DATA = ContentType.APPLICATION_DATA
# Short spellings of the same four values.
CHANGE_CIPHER_SPEC = CONTENT_CHANGE_CIPHER_SPEC
ALERT = CONTENT_ALERT
HANDSHAKE = CONTENT_HANDSHAKE
APPLICATION_DATA = CONTENT_APPLICATION_DATA
#: Content types a TLS 1.2 or 1.3 record may carry. Heartbeat (24, RFC 6520) is never
#: negotiated by OpenSSL 3 and so is rejected like any unknown type.
CONTENT_TYPES: frozenset[int] = frozenset(ContentType)

HELLO_REQUEST = HandshakeType.HELLO_REQUEST
CLIENT_HELLO = HandshakeType.CLIENT_HELLO
SERVER_HELLO = HandshakeType.SERVER_HELLO
NEW_SESSION_TICKET = HandshakeType.NEW_SESSION_TICKET
END_OF_EARLY_DATA = HandshakeType.END_OF_EARLY_DATA
ENCRYPTED_EXTENSIONS = HandshakeType.ENCRYPTED_EXTENSIONS
CERTIFICATE = HandshakeType.CERTIFICATE
SERVER_KEY_EXCHANGE = HandshakeType.SERVER_KEY_EXCHANGE
CERTIFICATE_REQUEST = HandshakeType.CERTIFICATE_REQUEST
SERVER_HELLO_DONE = HandshakeType.SERVER_HELLO_DONE
CERTIFICATE_VERIFY = HandshakeType.CERTIFICATE_VERIFY
CLIENT_KEY_EXCHANGE = HandshakeType.CLIENT_KEY_EXCHANGE
FINISHED = HandshakeType.FINISHED
KEY_UPDATE = HandshakeType.KEY_UPDATE
MESSAGE_HASH = HandshakeType.MESSAGE_HASH

ALERT_LEVEL_WARNING = AlertLevel.WARNING
ALERT_LEVEL_FATAL = AlertLevel.FATAL

#: RFC 8446 section 5.1 / RFC 5246 section 6.2.1: TLSPlaintext.length <= 2^14.
MAX_PLAINTEXT = 2**14
#: RFC 5246 section 6.2.3: TLSCiphertext.length <= 2^14 + 2048.
MAX_CIPHERTEXT_TLS12 = 2**14 + 2048
#: RFC 8446 section 5.2: TLSCiphertext.length <= 2^14 + 256.
MAX_CIPHERTEXT_TLS13 = 2**14 + 256

#: type(1) + legacy_record_version(2) + length(2): RFC 8446 section 5.1.
RECORD_HEADER_LEN = 5
#: msg_type(1) + uint24 length: RFC 8446 section 4.
HANDSHAKE_HEADER_LEN = 4

#: Largest handshake message body :class:`HandshakeBuffer` accepts by default.
#: The largest post-handshake message this library must take is a TLS 1.3
#: NewSessionTicket (RFC 8446 section 4.6.1): 4 + 4 + (1 + 255) + (2 + 2^16 - 1) +
#: (2 + 2^16 - 2) = 131,337 bytes. 2^18 covers it with room to spare while bounding what a
#: peer can make us buffer; the check fires on the 4-byte header, before any buffering.
MAX_HANDSHAKE_MESSAGE = 2**18


class RecordHeader(NamedTuple):
    """A parsed 5-byte TLS record header (RFC 8446 section 5.1, RFC 5246 section 6.2.1).

    Attributes:
        content_type: one of :data:`CONTENT_TYPES`.
        version: ``legacy_record_version`` as a 16-bit number (0x0303 after a handshake).
        length: the length of the record body that follows the header.
    """

    content_type: int
    version: int
    length: int


def parse_record_header(data: BytesLike, *, tls13: bool) -> RecordHeader:
    """Parse the record header at the start of ``data`` (at least 5 bytes; extra ignored).

    Checks (RFC 8446 section 5.1 and 5.2, RFC 5246 section 6.2):

    * the content type is one of :data:`CONTENT_TYPES`, else :class:`DecodeError`
      carrying alert unexpected_message (RFC 8446 section 5: "an unexpected record type");
    * the major version byte is 3, else :class:`DecodeError`. The minor version is not
      checked: TLS 1.3 says ``legacy_record_version`` "MUST be ignored for all purposes",
      and a TLS 1.2 peer's version was already checked by OpenSSL during the handshake;
    * the length is at most 2^14 + 256 (TLS 1.3) or 2^14 + 2048 (TLS 1.2), else
      :class:`RecordOverflow`. This bounds ciphertext; plaintext limits (2^14) apply
      after decryption and are the record protection layer's job.

    Raises:
        UsageError: ``data`` is shorter than 5 bytes (wait for more input instead).
    """
    head = bytes(data[:RECORD_HEADER_LEN])
    if len(head) < RECORD_HEADER_LEN:
        raise UsageError(f"a record header needs {RECORD_HEADER_LEN} bytes, got {len(head)}")
    content_type = head[0]
    version = (head[1] << 8) | head[2]
    length = (head[3] << 8) | head[4]
    if content_type not in CONTENT_TYPES:
        raise DecodeError(
            f"unknown TLS record content type {content_type}",
            alert=AlertDescription.UNEXPECTED_MESSAGE,
        )
    if head[1] != 3:
        raise DecodeError(f"record version 0x{version:04x} is not TLS (major version 3)")
    limit = MAX_CIPHERTEXT_TLS13 if tls13 else MAX_CIPHERTEXT_TLS12
    if length > limit:
        raise RecordOverflow(
            f"record length {length} exceeds the TLS {'1.3' if tls13 else '1.2'} limit {limit}"
        )
    return RecordHeader(content_type, version, length)


class RecordSplitter:
    """Cut a byte stream into whole TLS records, without ever needing to read past one.

    Feed it bytes as they arrive; take records with :meth:`next_record`. Before reading
    from a socket, ask :meth:`need` how many bytes complete the current header or record
    and read at most that many: the stream then stops exactly at a record boundary, which
    is where the kernel must pick it up (kernel TLS RX parses whatever is still in the TCP
    receive queue, and bytes user space already took are gone for it).

    A bad header raises from :meth:`need` and :meth:`next_record` (see
    :func:`parse_record_header`) and keeps raising: the stream cannot be resynchronised.
    """

    def __init__(self, *, tls13: bool) -> None:
        """Start with an empty buffer; ``tls13`` picks the record length limit."""
        self._tls13 = tls13
        self._buf = bytearray()

    @property
    def tls13(self) -> bool:
        """Whether TLS 1.3 length limits apply."""
        return self._tls13

    def feed(self, data: BytesLike) -> None:
        """Append ``data`` to the buffer. Never raises for content: parsing is lazy."""
        self._buf += data

    def buffered(self) -> int:
        """How many bytes are buffered (parts of records, whole records, or both)."""
        return len(self._buf)

    def _header(self) -> RecordHeader | None:
        if len(self._buf) < RECORD_HEADER_LEN:
            return None
        return parse_record_header(bytes(self._buf[:RECORD_HEADER_LEN]), tls13=self._tls13)

    def need(self) -> int:
        """Bytes still missing from the first buffered header or record; 0 if it is whole.

        With fewer than 5 bytes buffered this is what completes the header (so a caller
        reading exactly ``need()`` bytes never reads a body byte it cannot yet size);
        after that, what completes the body. Zero means :meth:`next_record` returns a
        record now.

        Raises:
            DecodeError, RecordOverflow: the buffered header is invalid.
        """
        header = self._header()
        if header is None:
            return RECORD_HEADER_LEN - len(self._buf)
        return max(0, RECORD_HEADER_LEN + header.length - len(self._buf))

    def next_record(self) -> tuple[RecordHeader, bytes] | None:
        """Remove and return the first whole record (header, body), or ``None`` if partial.

        Raises:
            DecodeError, RecordOverflow: the buffered header is invalid.
        """
        header = self._header()
        if header is None:
            return None
        end = RECORD_HEADER_LEN + header.length
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[RECORD_HEADER_LEN:end])
        del self._buf[:end]
        return header, body

    def take_buffered(self) -> bytes:
        """Remove and return every buffered byte (for handing a stream over as is)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data


class HandshakeMessage(NamedTuple):
    """One reassembled handshake message (RFC 8446 section 4).

    Attributes:
        msg_type: the HandshakeType byte.
        body: the message body, without the 4-byte header.
        raw: the whole message, header included (what a transcript hash covers).
    """

    msg_type: int
    body: bytes
    raw: bytes


def encode_handshake(msg_type: int, body: BytesLike) -> bytes:
    """Frame ``body`` as a handshake message: type, uint24 length, body (RFC 8446 4).

    Raises:
        UsageError: ``msg_type`` is not a byte or ``body`` does not fit a uint24 length.
    """
    if not 0 <= msg_type <= 255:
        raise UsageError(f"handshake type {msg_type} is not a byte")
    data = bytes(body)
    if len(data) >= 1 << 24:
        raise UsageError(f"handshake body of {len(data)} bytes does not fit a uint24 length")
    return bytes([msg_type]) + len(data).to_bytes(3, "big") + data


class HandshakeBuffer:
    """Reassemble handshake messages from the plaintext of handshake records.

    Messages may span records and a record may hold several (RFC 8446 section 5.1).
    Feed the plaintext of one type-22 record per :meth:`feed` call: the record boundary
    matters, because a KeyUpdate must end its record (RFC 8446 section 5.1: handshake
    messages "MUST NOT span key changes"), and anything after it in the same record is
    an :class:`UnexpectedMessage`.

    A message whose header claims more than ``max_message`` bytes raises
    :class:`DecodeError` as soon as its header arrives, so a peer cannot make this
    buffer grow without bound. Errors are final: the stream is broken.
    """

    def __init__(self, *, max_message: int = MAX_HANDSHAKE_MESSAGE) -> None:
        """Start empty; ``max_message`` bounds a single message body (default 2^18)."""
        if max_message < 0:
            raise UsageError("max_message must not be negative")
        self._max = max_message
        self._buf = bytearray()

    def pending(self) -> bool:
        """Whether a partial message is buffered (a record boundary fell inside it)."""
        return bool(self._buf)

    def buffered(self) -> int:
        """How many bytes of an incomplete message are buffered."""
        return len(self._buf)

    def feed(self, data: BytesLike) -> list[HandshakeMessage]:
        """Add one handshake record's plaintext; return the messages it completed.

        Raises:
            DecodeError: a message header claims more than ``max_message`` bytes.
            UnexpectedMessage: more handshake data follows a KeyUpdate in the same
                record (RFC 8446 section 5.1).
        """
        self._buf += data
        messages: list[HandshakeMessage] = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= HANDSHAKE_HEADER_LEN:
            msg_type = buf[pos]
            length = int.from_bytes(buf[pos + 1 : pos + 4], "big")
            if length > self._max:
                raise DecodeError(
                    f"handshake message type {msg_type} claims {length} bytes, "
                    f"more than the {self._max} accepted"
                )
            end = pos + HANDSHAKE_HEADER_LEN + length
            if len(buf) < end:
                break
            raw = bytes(buf[pos:end])
            messages.append(HandshakeMessage(msg_type, raw[HANDSHAKE_HEADER_LEN:], raw))
            pos = end
            if msg_type == KEY_UPDATE and pos != len(buf):
                raise UnexpectedMessage("KeyUpdate does not end its record (RFC 8446 section 5.1)")
        del buf[:pos]
        return messages


def parse_key_update(body: BytesLike) -> bool:
    """Parse a KeyUpdate body; return ``update_requested`` (RFC 8446 section 4.6.3).

    Raises:
        DecodeError: the body is not exactly one byte (alert decode_error), or that byte
            is neither update_not_requested(0) nor update_requested(1) (alert
            illegal_parameter, as section 4.6.3 requires).
    """
    data = bytes(body)
    if len(data) != 1:
        raise DecodeError(f"KeyUpdate body must be 1 byte, got {len(data)}")
    value = data[0]
    if value not in (0, 1):
        raise DecodeError(
            f"KeyUpdate request_update {value} is neither 0 nor 1",
            alert=AlertDescription.ILLEGAL_PARAMETER,
        )
    return value == 1


def encode_key_update(request_peer: bool) -> bytes:
    """A whole KeyUpdate handshake message (RFC 8446 section 4.6.3).

    ``request_peer`` sets update_requested(1): the peer must answer with its own
    KeyUpdate. When answering a peer's request, pass ``False`` (or the two sides would
    ping-pong forever).
    """
    return encode_handshake(KEY_UPDATE, b"\x01" if request_peer else b"\x00")


class NewSessionTicket13(NamedTuple):
    """A TLS 1.3 NewSessionTicket (RFC 8446 section 4.6.1).

    Attributes:
        lifetime: ticket_lifetime in seconds (servers must not exceed 604800; not
            enforced here, clients only must not cache longer).
        age_add: ticket_age_add, a 32-bit number.
        nonce: ticket_nonce, 0..255 bytes.
        ticket: the opaque ticket, 1..2^16-1 bytes.
        extensions: (extension_type, extension_data) pairs in wire order; each type
            appears at most once.
    """

    lifetime: int
    age_add: int
    nonce: bytes
    ticket: bytes
    extensions: tuple[tuple[int, bytes], ...]


class _Reader:
    """Strict cursor over a message body: every read checks the bytes exist."""

    def __init__(self, data: BytesLike, what: str) -> None:
        self._data = bytes(data)
        self._pos = 0
        self.what = what

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._data):
            raise DecodeError(f"{self.what} is truncated")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def uint(self, size: int) -> int:
        return int.from_bytes(self.take(size), "big")

    def vector(self, len_size: int, minimum: int, maximum: int, field: str) -> bytes:
        start = self._pos + len_size
        end = _skip_vector(self._data, self._pos, len_size, minimum, maximum, self.what, field)
        self._pos = end
        return self._data[start:end]

    def remaining(self) -> int:
        return len(self._data) - self._pos


def parse_new_session_ticket_13(body: BytesLike) -> NewSessionTicket13:
    """Parse a TLS 1.3 NewSessionTicket body (RFC 8446 section 4.6.1).

    ``uint32 ticket_lifetime; uint32 ticket_age_add; opaque ticket_nonce<0..255>;
    opaque ticket<1..2^16-1>; Extension extensions<0..2^16-2>``, every length checked
    and every byte accounted for.

    Raises:
        DecodeError: truncation, a length outside its range, trailing bytes, or a
            malformed extension list (alert decode_error); an extension type appearing
            twice (alert illegal_parameter, RFC 8446 section 4.2).
    """
    r = _Reader(body, "NewSessionTicket")
    lifetime = r.uint(4)
    age_add = r.uint(4)
    nonce = r.vector(1, 0, 255, "ticket_nonce")
    ticket = r.vector(2, 1, 2**16 - 1, "ticket")
    ext_data = r.vector(2, 0, 2**16 - 2, "extensions")
    if r.remaining():
        raise DecodeError(f"NewSessionTicket has {r.remaining()} trailing bytes")
    extensions = _extension_list(ext_data, "NewSessionTicket")
    return NewSessionTicket13(lifetime, age_add, nonce, ticket, tuple(extensions))


def _extension_list(data: bytes, what: str) -> list[tuple[int, bytes]]:
    """The ``(type, data)`` pairs of an extension block's contents, in wire order.

    Index arithmetic over the bytes (no cursor object): hellos go through here for every
    handshake of a prepared Context.

    Raises:
        DecodeError: a truncated extension (decode_error), or a type appearing twice
            (illegal_parameter, RFC 8446 section 4.2).
    """
    extensions: list[tuple[int, bytes]] = []
    seen: set[int] = set()
    pos, end = 0, len(data)
    while pos < end:
        if pos + 4 > end:
            raise DecodeError(f"{what} extension is truncated")
        ext_type = (data[pos] << 8) | data[pos + 1]
        ext_end = pos + 4 + ((data[pos + 2] << 8) | data[pos + 3])
        if ext_end > end:
            raise DecodeError(f"{what} extension is truncated")
        if ext_type in seen:
            raise DecodeError(
                f"{what} repeats extension {ext_type} (RFC 8446 section 4.2)",
                alert=AlertDescription.ILLEGAL_PARAMETER,
            )
        seen.add(ext_type)
        extensions.append((ext_type, data[pos + 4 : ext_end]))
        pos = ext_end
    return extensions


def parse_alert(data: BytesLike) -> tuple[int, int]:
    """Parse an alert record's plaintext into ``(level, description)`` (RFC 8446 6).

    The level is returned as sent, not validated: TLS 1.3 tells receivers to treat every
    alert but close_notify and user_canceled as fatal whatever its level (RFC 8446
    section 6), so the caller decides.

    Raises:
        DecodeError: ``data`` is not exactly 2 bytes (one record carries one alert;
            RFC 8446 section 5.1 forbids fragmenting alerts).
    """
    alert = bytes(data)
    if len(alert) != 2:
        raise DecodeError(f"an alert is 2 bytes, got {len(alert)}")
    return alert[0], alert[1]


def encode_alert(level: int, description: int) -> bytes:
    """The 2-byte plaintext of an alert record: level, description (RFC 8446 section 6).

    Raises:
        UsageError: ``level`` or ``description`` is not a byte.
    """
    if not 0 <= level <= 255 or not 0 <= description <= 255:
        raise UsageError(f"alert level {level} / description {description} is not a byte")
    return bytes([level, description])


# Per-key record limits, counted in full-size (2^14-byte) records.
_RECORD_LIMITS: dict[str, int] = {
    # RFC 8446 section 5.5: "For AES-GCM, up to 2^24.5 full-size records (about 24
    # million) may be encrypted on a given connection while keeping a safety margin of
    # approximately 2^-57 for Authenticated Encryption (AE) security."
    "aes-128-gcm": int(2**24.5),
    "aes-256-gcm": int(2**24.5),
    # RFC 8446 section 5.5: "For ChaCha20/Poly1305, the record sequence number would
    # wrap before the safety limit is reached." The sequence number is a uint64.
    "chacha20-poly1305": 2**64 - 1,
    # RFC 8446 gives no AES-CCM limit. RFC 9147 (DTLS 1.3) appendix B.1 derives one for
    # AEAD_AES_128_CCM with 2^14-byte records from the CCM analysis (Jonsson, Theorem 2):
    # q <= 2^23 protected records for a 2^-60 distinguishing advantage, the target TLS 1.3
    # uses. (Its integrity limit, B.2, is v + q <= 2^24.5 forgery attempts.)
    "aes-128-ccm": 2**23,
}


def aead_record_limit(suite_name: str) -> int:
    """How many full-size records one key may protect before it must be updated.

    Values: AES-GCM ``int(2**24.5)`` (RFC 8446 section 5.5), ChaCha20-Poly1305
    ``2**64 - 1`` (no limit before the sequence number wraps; same section), AES-128-CCM
    ``2**23`` (RFC 9147 appendix B.1, the DTLS 1.3 analysis with TLS record sizes). A
    TLS 1.3 sender should send a KeyUpdate before reaching it; TLS 1.2 cannot rekey.

    Raises:
        UsageError: ``suite_name`` is not one of the suites in ``_suites.SUITES``.
    """
    try:
        return _RECORD_LIMITS[suite_name]
    except KeyError:
        raise UsageError(f"no record limit known for suite {suite_name!r}") from None


# --------------------------------------------------------------------------- record sizes
#
# A peer may ask for smaller records than 2^14: RFC 6066 max_fragment_length (ClientHello,
# answered in the ServerHello (TLS 1.2) or EncryptedExtensions (TLS 1.3); then binding on
# both sides) or RFC 8449 record_size_limit (each side states what it takes; binding only
# when both sent it). OpenSSL honours them in user space; the kernel knows nothing of them,
# so the library must learn the limit from the hellos and cap kernel TX, or keep TX in user
# space. Only these two extensions are kept from a hello.

#: RFC 6066 section 4.
EXT_MAX_FRAGMENT_LENGTH = 1
#: RFC 8449 section 4.
EXT_RECORD_SIZE_LIMIT = 28
_RECORD_SIZE_EXTENSIONS = frozenset({EXT_MAX_FRAGMENT_LENGTH, EXT_RECORD_SIZE_LIMIT})
_HELLO_NAMES: dict[int, str] = {CLIENT_HELLO: "ClientHello", SERVER_HELLO: "ServerHello"}


class Hello(NamedTuple):
    """What a hello (or EncryptedExtensions) tells about the record layer.

    Attributes:
        extensions: ``{type: data}`` of the extensions asked for (``keep``).
        compression: the ServerHello's ``legacy_compression_method`` (RFC 5246 section
            7.4.1.3; RFC 8446 section 4.1.3 makes it 0); 0 for the other messages.
            Non-zero means TLS 1.2 compression, which kernel TLS cannot do.
    """

    extensions: dict[int, bytes]
    compression: int


def parse_hello(
    msg_type: int, body: BytesLike, *, keep: frozenset[int] = _RECORD_SIZE_EXTENSIONS
) -> Hello:
    """Parse a ClientHello, ServerHello or EncryptedExtensions body, in one pass.

    Layouts: ClientHello (RFC 8446 section 4.1.2, RFC 5246 section 7.4.1.2):
    ``legacy_version(2) random(32) session_id<0..32> cipher_suites<2..2^16-2>
    compression_methods<1..2^8-1> extensions<0..2^16-1>``, the extensions optional in
    TLS 1.2; ServerHello (4.1.3): ``legacy_version(2) random(32) session_id<0..32>
    cipher_suite(2) compression_method(1) extensions``; EncryptedExtensions (4.3.1):
    ``extensions<0..2^16-1>``. Every length is checked and every byte accounted for.
    The extensions returned are those in *keep* (default: the two that limit record
    sizes).

    Raises:
        DecodeError: a truncated or overlong field, trailing bytes, or an extension type
            appearing twice (alert illegal_parameter, RFC 8446 section 4.2).
        UsageError: *msg_type* is none of the three.
    """
    # Index arithmetic over the bytes (no cursor object): this runs for every handshake of
    # a prepared Context, so it stays cheap. Every length is still checked.
    data = bytes(body)
    size = len(data)
    compression = 0
    if msg_type == ENCRYPTED_EXTENSIONS:
        what, pos = "EncryptedExtensions", 0
    elif msg_type in _HELLO_NAMES:
        what = _HELLO_NAMES[msg_type]
        if size < 35:  # legacy_version(2) random(32) and the session id's length
            raise DecodeError(f"{what} is truncated")
        pos = _skip_vector(data, 34, 1, 0, 32, what, "legacy_session_id")
        if msg_type == CLIENT_HELLO:
            pos = _skip_vector(data, pos, 2, 2, 2**16 - 2, what, "cipher_suites")
            pos = _skip_vector(data, pos, 1, 1, 255, what, "legacy_compression_methods")
        else:
            if pos + 3 > size:  # cipher_suite(2) compression_method(1)
                raise DecodeError(f"{what} is truncated")
            compression = data[pos + 2]
            pos += 3
        if pos == size:
            return Hello({}, compression)  # TLS 1.2 without extensions (RFC 5246 7.4.1.2)
    else:
        raise UsageError(f"handshake type {msg_type} carries no hello extensions")
    end = _skip_vector(data, pos, 2, 0, 2**16 - 1, what, "extensions")
    if end != size:
        raise DecodeError(f"{what} has {size - end} trailing bytes")
    kept = {t: ext for t, ext in _extension_list(data[pos + 2 : end], what) if t in keep}
    return Hello(kept, compression)


def _skip_vector(
    data: bytes, pos: int, len_size: int, minimum: int, maximum: int, what: str, field: str
) -> int:
    """Where the vector at *pos* (a *len_size*-byte length, then the bytes) ends."""
    if pos + len_size > len(data):
        raise DecodeError(f"{what} is truncated")
    length = int.from_bytes(data[pos : pos + len_size], "big")
    if not minimum <= length <= maximum:
        raise DecodeError(f"{what} {field} length {length} is outside {minimum}..{maximum}")
    end = pos + len_size + length
    if end > len(data):
        raise DecodeError(f"{what} is truncated")
    return end


def hello_extensions(
    msg_type: int, body: BytesLike, *, keep: frozenset[int] = _RECORD_SIZE_EXTENSIONS
) -> dict[int, bytes]:
    """The extensions in *keep* of a hello body (see :func:`parse_hello`)."""
    return parse_hello(msg_type, body, keep=keep).extensions


def parse_max_fragment_length(data: BytesLike) -> int:
    """The plaintext limit a max_fragment_length extension names: 2^9, 2^10, 2^11 or 2^12.

    RFC 6066 section 4: one byte, ``2^9(1), 2^10(2), 2^11(3), 2^12(4)``.

    Raises:
        DecodeError: not one byte (decode_error), or another value (illegal_parameter,
            as section 4 requires).
    """
    raw = bytes(data)
    if len(raw) != 1:
        raise DecodeError(f"max_fragment_length must be 1 byte, got {len(raw)}")
    if not 1 <= raw[0] <= 4:
        raise DecodeError(
            f"max_fragment_length code {raw[0]} is not 1..4",
            alert=AlertDescription.ILLEGAL_PARAMETER,
        )
    return 1 << (8 + raw[0])


def parse_record_size_limit(data: BytesLike) -> int:
    """The value of a record_size_limit extension (RFC 8449 section 4): a uint16 >= 64.

    Raises:
        DecodeError: not two bytes (decode_error), or below 64 (illegal_parameter:
            "Endpoints MUST NOT send a 'record_size_limit' extension with a value
            smaller than 64").
    """
    raw = bytes(data)
    if len(raw) != 2:
        raise DecodeError(f"record_size_limit must be 2 bytes, got {len(raw)}")
    value = int.from_bytes(raw, "big")
    if value < 64:
        raise DecodeError(
            f"record_size_limit {value} is below 64", alert=AlertDescription.ILLEGAL_PARAMETER
        )
    return value


class SendLimit(NamedTuple):
    """The largest plaintext one record we send may carry, and which extension said so.

    Attributes:
        size: 64..2^14 bytes of content (TLS 1.3: without the inner content type byte),
            the value ``TLS_TX_MAX_PAYLOAD_LEN`` takes; 2^14 when nothing limits it.
        source: ``"max_fragment_length"``, ``"record_size_limit"``, or ``""`` (none).
    """

    size: int
    source: str

    @property
    def limited(self) -> bool:
        """Whether records must be smaller than 2^14."""
        return self.size < MAX_PLAINTEXT


def send_limit(
    *,
    tls13: bool,
    is_server: bool,
    client: dict[int, bytes],
    server: dict[int, bytes],
    resumed: bool = False,
) -> SendLimit:
    """What the hellos (the ClientHello's extensions, *client*, and the server's answer in
    ServerHello and EncryptedExtensions, *server*) allow one record we send to carry.

    * max_fragment_length (RFC 6066 section 4) binds both sides once the server echoed
      it. On a resumed session it binds even unechoed ("the negotiated length applies for
      the duration of the session including session resumptions"), and the hellos of a
      resumption cannot tell what the first handshake agreed: the client's offer is taken
      (never too large: a smaller record is always acceptable).
    * record_size_limit (RFC 8449 section 4) binds what we send when both sides sent it;
      the peer's value counts TLS 1.3's inner content type byte, so the content may be
      one byte less. Values above the protocol's maximum mean no limit.

    Raises:
        DecodeError: an extension's value is malformed (see the parsers).
    """
    limits: list[tuple[int, str]] = []
    if EXT_MAX_FRAGMENT_LENGTH in server:
        limits.append(
            (parse_max_fragment_length(server[EXT_MAX_FRAGMENT_LENGTH]), "max_fragment_length")
        )
    elif resumed and EXT_MAX_FRAGMENT_LENGTH in client:
        limits.append(
            (parse_max_fragment_length(client[EXT_MAX_FRAGMENT_LENGTH]), "max_fragment_length")
        )
    if EXT_RECORD_SIZE_LIMIT in client and EXT_RECORD_SIZE_LIMIT in server:
        value = parse_record_size_limit((client if is_server else server)[EXT_RECORD_SIZE_LIMIT])
        limits.append((value - 1 if tls13 else value, "record_size_limit"))
    size, source = min(limits, default=(MAX_PLAINTEXT, ""))
    if size >= MAX_PLAINTEXT:
        return SendLimit(MAX_PLAINTEXT, "")
    return SendLimit(size, source)
