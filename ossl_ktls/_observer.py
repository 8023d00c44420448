"""Sequence accounting: which record number comes next in each direction (pure).

OpenSSL's message callback reports, per direction, every record header (content type
0x100) and every handshake message, ChangeCipherSpec and alert, in order. Measured on
OpenSSL 3.x/4.x: for a record, the header callback comes *before* the callbacks of the
messages it carries, in both directions. So the rules are:

* every record header counts one record in its direction;
* a ChangeCipherSpec record restarts the count at 0 (TLS 1.2: the CCS record itself
  was sent under the old keys; Finished is then record 0, the first data record 1).
  OpenSSL reports no CCS *message* when reading, so the record header's type decides;
* TLS 1.3: a Finished or KeyUpdate message restarts the count at 0 after its record
  (the next record uses the next key), and a KeyUpdate bumps that direction's epoch
  (the traffic secret must be advanced once per epoch).

It also keeps what decides the size of the records we may send: the record-size
extensions of the ClientHello and of the server's answer (ServerHello, EncryptedExtensions),
whichever side wrote them (``_records.send_limit`` turns them into a limit), and whether
OpenSSL padded our TLS 1.3 records (``RecordPadding`` in an OpenSSL configuration), which
kernel TX could not continue. Padding is found by exact accounting: for each TLS 1.3
record we wrote that carried handshake or alert content, the record layer reports the
header (its length) and then the inner content type; the message callbacks report the
content. Without padding, the record lengths add up to the content plus one content-type
byte and one AEAD tag per record.

Nothing here touches a socket or OpenSSL; ``_openssl`` feeds the events in.
"""

from __future__ import annotations

from . import _records
from ._errors import Error
from ._records import ENCRYPTED_EXTENSIONS, parse_hello

# Content and handshake types under the names this module uses, from the one table.
CHANGE_CIPHER_SPEC = _records.CONTENT_CHANGE_CIPHER_SPEC
ALERT = _records.CONTENT_ALERT
HANDSHAKE = _records.CONTENT_HANDSHAKE
HS_HELLO_REQUEST = _records.HELLO_REQUEST
HS_CLIENT_HELLO = _records.CLIENT_HELLO
HS_SERVER_HELLO = _records.SERVER_HELLO
HS_FINISHED = _records.FINISHED
HS_KEY_UPDATE = _records.KEY_UPDATE

# OpenSSL's pseudo content types of the message callback (SSL3_RT_HEADER,
# SSL3_RT_INNER_CONTENT_TYPE); the real ones come from _records.
HEADER = 0x100
INNER_CONTENT_TYPE = 0x101

READ, WRITE = 0, 1
TLS13 = 0x0304

_CCS_BYTE = bytes([CHANGE_CIPHER_SPEC])
_SEALED_CONTENT = (bytes([HANDSHAKE]), bytes([ALERT]))
_HELLO_TYPES = (HS_CLIENT_HELLO, HS_SERVER_HELLO, ENCRYPTED_EXTENSIONS)


class RecordObserver:
    """Counts records per direction since the last key change.

    ``next_seq[d]`` is the sequence number of the next record in direction *d*
    (READ=0, WRITE=1) under that direction's current key; ``epoch[d]`` how many TLS 1.3
    KeyUpdates moved that key past the first application traffic secret.
    ``peer_key_update_requested`` is set when a KeyUpdate read from the peer asked for
    one back; ``alerts_written`` lists ``(level, description)`` alerts OpenSSL produced.

    :meth:`event` runs inside OpenSSL's message callback, some twenty times per
    handshake, so it does as little as it can: it counts, and keeps the three hellos as
    they came; they are parsed when someone asks what they said
    (``client_extensions``, ``server_extensions``, ``compression``, ``hello_error``),
    normally once, at the hand-over.
    """

    __slots__ = (
        "_client_extensions",
        "_compression",
        "_hello_error",
        "_hellos",
        "_server_extensions",
        "_write_header_len",
        "_write_sealed",
        "alerts_read",
        "alerts_written",
        "epoch",
        "finished",
        "handshake_written",
        "hello_requests",
        "is_server",
        "next_seq",
        "peer_key_update_requested",
        "read_open",
        "written_sealed_bytes",
        "written_sealed_content",
        "written_sealed_records",
    )

    def __init__(self) -> None:
        self.next_seq = [0, 0]
        self.epoch = [0, 0]
        self.finished = [False, False]
        self.peer_key_update_requested = False
        self.hello_requests = 0
        self.alerts_written: list[tuple[int, int]] = []
        self.alerts_read: list[tuple[int, int]] = []
        self.handshake_written: list[int] = []
        self.is_server: bool | None = None
        self.read_open = False
        # TLS 1.3 records we wrote with handshake/alert content: their count, the sum of
        # their lengths, and the content the message callbacks reported for them.
        self.written_sealed_records = 0
        self.written_sealed_bytes = 0
        self.written_sealed_content = 0
        self._write_header_len = 0
        self._write_sealed = False
        # Hellos as they came, ``(handshake type, message)``, parsed on demand.
        self._hellos: list[tuple[int, bytes]] = []
        self._client_extensions: dict[int, bytes] = {}
        self._server_extensions: dict[int, bytes] = {}
        self._hello_error: str | None = None
        self._compression = 0

    def __repr__(self) -> str:
        return (
            f"RecordObserver(next_seq={self.next_seq}, epoch={self.epoch}, "
            f"finished={self.finished}, is_server={self.is_server})"
        )

    def event(
        self, write: bool, version: int, content_type: int, data: bytes, length: int = -1
    ) -> None:
        """Feed one message-callback event (as OpenSSL reports it).

        *data* holds at least the first 8 bytes of the message (the whole message for a
        ClientHello, ServerHello or EncryptedExtensions); *length* is the message's full
        length (default: ``len(data)``).
        """
        if content_type == HEADER:
            # A ChangeCipherSpec record is the last one under the old keys. OpenSSL reports
            # no CCS message on the read side, so the record header is what tells.
            ccs = data[:1] == _CCS_BYTE
            if write:
                if len(data) >= 5:
                    self._write_header_len = (data[3] << 8) | data[4]
                self._write_sealed = False
                self.next_seq[1] = 0 if ccs else self.next_seq[1] + 1
            else:
                self.read_open = True
                self.next_seq[0] = 0 if ccs else self.next_seq[0] + 1
            return
        if length < 0:
            length = len(data)
        if write:
            if content_type == INNER_CONTENT_TYPE:
                # Only TLS 1.3 protected records report an inner type; data records carry
                # no message callback to compare with, so only control records count.
                if data[:1] in _SEALED_CONTENT:
                    self._write_sealed = True
                    self.written_sealed_records += 1
                    self.written_sealed_bytes += self._write_header_len
                return
            if self._write_sealed and content_type in (HANDSHAKE, ALERT):
                self.written_sealed_content += length
        else:
            # Any callback after a read header means the record was read whole (TLS 1.3
            # always reports the inner content type; TLS 1.2 data records report nothing).
            self.read_open = False
            if content_type == INNER_CONTENT_TYPE:
                return
        if content_type == HANDSHAKE and data:
            self._handshake(write, version, data)
        elif content_type == ALERT and len(data) >= 2:
            (self.alerts_written if write else self.alerts_read).append((data[0], data[1]))

    def _handshake(self, write: bool, version: int, data: bytes) -> None:
        d = WRITE if write else READ
        msg_type = data[0]
        if msg_type in _HELLO_TYPES:
            self._hellos.append((msg_type, data))
            if write and self.is_server is None and msg_type != ENCRYPTED_EXTENSIONS:
                self.is_server = msg_type == HS_SERVER_HELLO
        if write and self.finished[WRITE]:
            self.handshake_written.append(msg_type)
        if msg_type == HS_FINISHED:
            self.finished[d] = True
            if version == TLS13:
                self.next_seq[d] = 0
        elif msg_type == HS_KEY_UPDATE and version == TLS13:
            self.next_seq[d] = 0
            self.epoch[d] += 1
            if not write and len(data) >= 5 and data[4] == 1:
                self.peer_key_update_requested = True
        elif msg_type == HS_HELLO_REQUEST and not write:
            self.hello_requests += 1

    # ---------------------------------------------------------------- what the hellos said

    def _settle(self) -> None:
        """Parse the hellos kept since the last look, in the order they came."""
        if not self._hellos:
            return
        hellos, self._hellos = self._hellos, []
        for msg_type, message in hellos:
            try:
                hello = parse_hello(msg_type, message[4:])
            except Error as exc:
                self._hello_error = f"handshake message {msg_type}: {exc}"
                continue
            if msg_type == HS_CLIENT_HELLO:
                self._client_extensions = hello.extensions  # the second one (after HRR) counts
                continue
            self._server_extensions.update(hello.extensions)
            if msg_type == HS_SERVER_HELLO:
                self._compression = hello.compression

    @property
    def client_extensions(self) -> dict[int, bytes]:
        """Record-size extensions (RFC 6066 type 1, RFC 8449 type 28) of the ClientHello,
        as ``{type: data}``."""
        self._settle()
        return self._client_extensions

    @client_extensions.setter
    def client_extensions(self, value: dict[int, bytes]) -> None:
        self._settle()
        self._client_extensions = value

    @property
    def server_extensions(self) -> dict[int, bytes]:
        """The same, of the server's ServerHello plus EncryptedExtensions."""
        self._settle()
        return self._server_extensions

    @server_extensions.setter
    def server_extensions(self, value: dict[int, bytes]) -> None:
        self._settle()
        self._server_extensions = value

    @property
    def hello_error(self) -> str | None:
        """Why a hello could not be parsed (then the record size limit is unknown)."""
        self._settle()
        return self._hello_error

    @hello_error.setter
    def hello_error(self, value: str | None) -> None:
        self._settle()
        self._hello_error = value

    @property
    def compression(self) -> int:
        """The ServerHello's compression method (TLS 1.2; 0: none)."""
        self._settle()
        return self._compression

    @compression.setter
    def compression(self, value: int) -> None:
        self._settle()
        self._compression = value

    def padding_written(self, tag_len: int) -> int:
        """Bytes of padding OpenSSL put in our TLS 1.3 control records (0: none).

        Each record is content + 1 (inner content type) + padding + *tag_len*.
        """
        overhead = self.written_sealed_records * (1 + tag_len)
        return self.written_sealed_bytes - overhead - self.written_sealed_content
