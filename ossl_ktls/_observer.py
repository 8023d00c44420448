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

Nothing here touches a socket or OpenSSL; ``_openssl`` feeds the events in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

HEADER = 0x100
CHANGE_CIPHER_SPEC = 20
ALERT = 21
HANDSHAKE = 22

HEADER_INNER = 0x101
INNER_CONTENT_TYPE = HEADER_INNER
HS_HELLO_REQUEST = 0
HS_CLIENT_HELLO = 1
HS_SERVER_HELLO = 2
HS_FINISHED = 20
HS_KEY_UPDATE = 24

READ, WRITE = 0, 1


@dataclass
class RecordObserver:
    """Counts records per direction since the last key change.

    ``next_seq[d]`` is the sequence number of the next record in direction *d*
    (READ=0, WRITE=1) under that direction's current key; ``epoch[d]`` how many TLS 1.3
    KeyUpdates moved that key past the first application traffic secret.
    ``peer_key_update_requested`` is set when a KeyUpdate read from the peer asked for
    one back; ``alerts_written`` lists ``(level, description)`` alerts OpenSSL produced.
    """

    next_seq: list[int] = field(default_factory=lambda: [0, 0])
    epoch: list[int] = field(default_factory=lambda: [0, 0])
    finished: list[bool] = field(default_factory=lambda: [False, False])
    peer_key_update_requested: bool = False
    hello_requests: int = 0
    alerts_written: list[tuple[int, int]] = field(default_factory=list)
    alerts_read: list[tuple[int, int]] = field(default_factory=list)
    handshake_written: list[int] = field(default_factory=list)
    is_server: bool | None = None
    read_open: bool = False

    def event(self, write: bool, version: int, content_type: int, data: bytes) -> None:
        """Feed one message-callback event (as OpenSSL reports it)."""
        d = WRITE if write else READ
        tls13 = version == 0x0304
        if content_type == HEADER:
            # A ChangeCipherSpec record is the last one under the old keys. OpenSSL reports
            # no CCS message on the read side, so the record header is what tells.
            self.next_seq[d] = (
                0 if data[:1] == bytes([CHANGE_CIPHER_SPEC]) else self.next_seq[d] + 1
            )
            if not write:
                self.read_open = True
            return
        if not write:
            # Any callback after a read header means the record was read whole (TLS 1.3
            # always reports the inner content type; TLS 1.2 data records report nothing).
            self.read_open = False
        if content_type == INNER_CONTENT_TYPE:
            pass
        elif content_type == ALERT and len(data) >= 2:
            (self.alerts_written if write else self.alerts_read).append((data[0], data[1]))
        elif content_type == HANDSHAKE and data:
            msg_type = data[0]
            if write and self.is_server is None and msg_type in (HS_CLIENT_HELLO, HS_SERVER_HELLO):
                self.is_server = msg_type == HS_SERVER_HELLO
            if write and self.finished[WRITE]:
                self.handshake_written.append(msg_type)
            if msg_type == HS_FINISHED:
                self.finished[d] = True
                if tls13:
                    self.next_seq[d] = 0
            elif msg_type == HS_KEY_UPDATE and tls13:
                self.next_seq[d] = 0
                self.epoch[d] += 1
                if not write and len(data) >= 5 and data[4] == 1:
                    self.peer_key_update_requested = True
            elif msg_type == HS_HELLO_REQUEST and not write:
                self.hello_requests += 1
