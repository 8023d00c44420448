"""TLS 1.3 session tickets that kernel RX receives reach OpenSSL, so clients resume.

With RX in the kernel, the server's NewSessionTickets arrive after the hand-over as
control records OpenSSL never sees. ``_relay.TicketSealer`` seals each one again for
OpenSSL's read side (its key and sequence number of the hand-over) and the engine feeds
it in. Two levels:

* on the host, in memory: the record the sealer makes is byte for byte the record the
  server made (OpenSSL sends each ticket in its own record, unpadded), decrypted here
  with ``cryptography`` directly; fed to the client, the ticket resumes a session;
* in the kernels: a wrapped client reads the server's data (the tickets come first),
  closes, and the next connection resumes from ``get_session()``, exactly as a plain
  pyOpenSSL client against the same server does.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305
from OpenSSL import SSL
from OpenSSL.SSL import Connection as PyOpenSSLConnection  # bound now: never patched

import ossl_ktls
from ossl_ktls._keys import tls13_traffic_key_iv
from ossl_ktls._openssl import session_reused, state_of
from ossl_ktls._records import CONTENT_HANDSHAKE
from ossl_ktls._relay import TicketSealer
from ossl_ktls._suites import SUITES
from tests._pairs import (
    CIPHERS,
    Certs,
    Peer,
    digest,
    k_read_exactly,
    make_context,
    read_exactly,
    tcp_pair,
)

ExpectKernel = Callable[[str, str, str], bool]


def _pump(src: SSL.Connection, dst: SSL.Connection) -> bytes:
    out = b""
    while True:
        try:
            chunk = src.bio_read(65536)
        except SSL.WantReadError:
            break
        out += chunk
    if out:
        dst.bio_write(out)
    return out


def _memory_handshake(
    cctx: SSL.Context, sctx: SSL.Context, session: SSL.Session | None = None
) -> tuple[SSL.Connection, SSL.Connection, bytes]:
    """A handshake over memory BIOs; returns the pair and what the server wrote after
    its handshake finished (TLS 1.3: its tickets), not yet given to the client."""
    client, server = SSL.Connection(cctx, None), SSL.Connection(sctx, None)
    client.set_connect_state()
    server.set_accept_state()
    if session is not None:
        client.set_session(session)
    done = [False, False]
    for _ in range(20):
        for i, conn in enumerate((client, server)):
            if not done[i]:
                try:
                    conn.do_handshake()
                    done[i] = True
                except SSL.WantReadError:
                    pass
        if all(done):
            break
        _pump(client, server)
        if not done[1]:
            _pump(server, client)
    assert all(done)
    after = b""
    while True:
        try:
            after += server.bio_read(65536)
        except SSL.WantReadError:
            break
    return client, server, after


def _records(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        end = pos + 5 + int.from_bytes(data[pos + 3 : pos + 5], "big")
        out.append(data[pos:end])
        pos = end
    return out


def _open(cipher: str, key: bytes, iv: bytes, seq: int, record: bytes) -> bytes:
    """Decrypt one TLS 1.3 record with cryptography directly (RFC 8446 5.2, 5.3)."""
    aead: AESGCM | ChaCha20Poly1305 | AESCCM
    if cipher == "chacha20-poly1305":
        aead = ChaCha20Poly1305(key)
    elif cipher == "aes-128-ccm":
        aead = AESCCM(key, tag_length=16)
    else:
        aead = AESGCM(key)
    nonce = bytes(a ^ b for a, b in zip(iv, seq.to_bytes(12, "big"), strict=True))
    return aead.decrypt(nonce, record[5:], record[:5])


@pytest.mark.parametrize("cipher", CIPHERS)
def test_sealed_ticket_is_the_servers_record_and_resumes(certs: Certs, cipher: str) -> None:
    """Each ticket sealed for the client's OpenSSL equals, byte for byte, the record the
    server sent; fed in, the client's next handshake resumes (as with the original)."""
    suite = SUITES[cipher]
    sctx = make_context(certs, server=True, version="1.3", cipher=cipher, prepare=False)
    cctx = make_context(certs, server=False, version="1.3", cipher=cipher)
    client, _server, after = _memory_handshake(cctx, sctx)
    records = _records(after)
    assert records, "the server wrote no ticket after the handshake"
    st = state_of(client)
    secret = bytes(st.secrets["server"])
    key, iv = tls13_traffic_key_iv(suite.hash_name, secret, suite.key_len)
    seq = st.observer.next_seq[0]
    sealer = TicketSealer(suite, bytearray(key), bytearray(iv), seq)
    sealed = b""
    for i, record in enumerate(records):
        inner = _open(cipher, key, iv, seq + i, record)
        assert inner[-1] == CONTENT_HANDSHAKE and inner[0] == 4  # a NewSessionTicket
        mine = sealer.seal(CONTENT_HANDSHAKE, inner[:-1])
        assert mine == record
        sealed += mine
    client.bio_write(sealed)
    with pytest.raises(SSL.WantReadError):
        client.recv(1)
    session = client.get_session()
    assert session is not None
    again, _, _ = _memory_handshake(cctx, sctx, session)
    assert session_reused(again)
    sealer.wipe()
    assert "hidden" in repr(sealer) and key.hex() not in repr(sealer)


def _one_connection(
    cctx: SSL.Context,
    sctx: SSL.Context,
    session: SSL.Session | None,
    *,
    mode: str,
    tickets: list[bytes],
) -> tuple[SSL.Session | None, bool, bool]:
    """Connect, read 64 KiB from the server (its tickets come first), close; return the
    session to offer next (taken after the close), whether this one resumed, and whether
    kernel RX read. *mode*: ``pyopenssl`` (plain), ``wrap`` (KTLSConnection) or
    ``facade`` (``ossl_ktls.Connection``, pyOpenSSL's API)."""
    csock, ssock = tcp_pair()
    csock.setblocking(True)  # as _pairs.connected_pair: pyOpenSSL's calls cannot time out
    ssock.setblocking(True)
    cls = ossl_ktls.Connection if mode == "facade" else PyOpenSSLConnection
    client, server = cls(cctx, csock), PyOpenSSLConnection(sctx, ssock)
    client.set_connect_state()
    client.set_tlsext_host_name(b"localhost")
    server.set_accept_state()
    if session is not None:
        client.set_session(session)
    data = os.urandom(65536)

    def serve() -> None:
        server.do_handshake()
        server.sendall(data)
        server.recv(1)  # the client's close_notify (or EOF) ends it

    peer = Peer(serve)
    client.do_handshake()
    resumed = session_reused(client)
    if mode == "wrap":
        k = ossl_ktls.wrap(client, ticket_callback=lambda _k, msg: tickets.append(msg))
        assert digest(k_read_exactly(k, len(data))) == digest(data)
        in_kernel = k.ktls_rx
        k.close()
        nxt = k.get_session()
    else:
        assert digest(read_exactly(client, len(data))) == digest(data)
        in_kernel = bool(getattr(client, "ktls_rx", False))
        client.shutdown()
        client.sock_shutdown(2)
        nxt = client.get_session()
    with contextlib.suppress(SSL.Error):
        peer.result()  # its last read may see the close without close_notify
    for sock in (csock, ssock):
        sock.close()
    return nxt, resumed, in_kernel


def test_tls13_clients_resume_after_the_hand_over(
    certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool
) -> None:
    """A wrapped TLS 1.3 client, and one through ``ossl_ktls.Connection``, resume their
    next connection from ``get_session()`` (taken after the close), as a plain pyOpenSSL
    client against the same server does, also once the first Connection is freed
    (OpenSSL makes the session of a Connection freed without close_notify sent
    non-resumable: with kernel TX it must learn that the kernel sent it). Where kernel RX
    carried the tickets, each one also reached ticket_callback."""
    sctx = make_context(certs, server=True, version="1.3", cipher="aes-128-gcm", prepare=False)
    kernel_rx = expect_kernel("rx", "1.3", "aes-128-gcm") and can_rekey
    resumed: dict[str, bool] = {}
    for mode in ("pyopenssl", "wrap", "facade"):
        cctx = make_context(
            certs, server=False, version="1.3", cipher="aes-128-gcm", prepare=mode == "wrap"
        )
        tickets: list[bytes] = []
        first, resumed0, kernel0 = _one_connection(cctx, sctx, None, mode=mode, tickets=tickets)
        assert not resumed0
        gc.collect()  # the first Connection is freed now, not at some later moment
        _, resumed[mode], kernel1 = _one_connection(cctx, sctx, first, mode=mode, tickets=tickets)
        if mode != "pyopenssl":
            assert kernel0 == kernel_rx and kernel1 == kernel_rx, mode
        if mode == "wrap":
            # The first connection's tickets came through kernel RX, or through OpenSSL.
            assert (len(tickets) >= 1) == kernel_rx
    assert resumed == {"pyopenssl": True, "wrap": True, "facade": True}
