"""TLS 1.3 NewSessionTickets that kernel RX received, handed back to OpenSSL (client).

With RX in the kernel, a TLS 1.3 client's NewSessionTickets arrive after the hand-over,
as control records OpenSSL never sees: ``get_session()`` would return a session without a
ticket, and the next connection could not resume (a full handshake every time). OpenSSL's
read side still holds the key and the record sequence number it had at the hand-over (its
read BIO is a memory BIO; nothing was read since). So each ticket the kernel delivers is
sealed again the way the server sealed it for OpenSSL, as a TLS 1.3 record (RFC 8446
sections 5.2 and 5.3) under that key, at OpenSSL's next read sequence number, written to
OpenSSL's read BIO and read there: OpenSSL stores the ticket in its session as it would
have, and calls the Context's session callbacks.

Only the newest ticket is relayed, and only when the session is asked for
(``get_session()``): each ticket replaces the session OpenSSL hands out, and most clients
never ask. The engine seals it at the latest when it wipes the keys (close), so that
``get_session()`` still works on a closed connection.

:class:`TicketSealer` is pure (AEAD from ``cryptography``); the engine does the OpenSSL
part. A KeyUpdate from the peer moves the kernel's key, never OpenSSL's: the sealer keeps
the key OpenSSL has.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305

from ._records import CONTENT_APPLICATION_DATA, MAX_PLAINTEXT
from ._suites import Suite

_TAG_LEN = 16
# TLS 1.3 records carry legacy_record_version 0x0303 (RFC 8446 section 5.1).
_LEGACY_VERSION = b"\x03\x03"


def _aes_ccm(key: bytearray) -> AESCCM:
    return AESCCM(key, tag_length=_TAG_LEN)


_AEADS: dict[str, Callable[[bytearray], AESGCM | ChaCha20Poly1305 | AESCCM]] = {
    "aes-128-gcm": AESGCM,
    "aes-256-gcm": AESGCM,
    "chacha20-poly1305": ChaCha20Poly1305,
    "aes-128-ccm": _aes_ccm,
}


class TicketSealer:
    """Seals TLS 1.3 records under one traffic key, from sequence number *seq* on."""

    def __init__(self, suite: Suite, key: bytearray, iv: bytearray, seq: int) -> None:
        if suite.name not in _AEADS or len(iv) != 12:
            raise ValueError(f"no TLS 1.3 record protection for {suite.name}")
        self._suite = suite
        self._key = key
        self._iv = iv
        self.seq = seq

    def seal(self, content_type: int, payload: bytes) -> bytes:
        """TLS 1.3 records (TLSCiphertext, RFC 8446 section 5.2) carrying *payload* of
        *content_type*, split at the 2^14-byte limit; each uses the next sequence number."""
        out = bytearray()
        aead = _AEADS[self._suite.name](self._key)
        iv = int.from_bytes(self._iv, "big")
        for start in range(0, max(len(payload), 1), MAX_PLAINTEXT):
            inner = payload[start : start + MAX_PLAINTEXT] + bytes([content_type])
            header = (
                bytes([CONTENT_APPLICATION_DATA])
                + _LEGACY_VERSION
                + (len(inner) + _TAG_LEN).to_bytes(2, "big")
            )
            # The per-record nonce: the sequence number, padded, XORed with the IV (5.3).
            nonce = (iv ^ self.seq).to_bytes(12, "big")
            out += header + aead.encrypt(nonce, inner, header)
            self.seq += 1
        return bytes(out)

    def wipe(self) -> None:
        """Zero the key and IV."""
        self._key[:] = bytes(len(self._key))
        self._iv[:] = bytes(len(self._iv))

    def __repr__(self) -> str:
        return f"<TicketSealer {self._suite.name} seq={self.seq} key hidden>"
