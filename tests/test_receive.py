"""Receiving, and the post-handshake protocol, between two ossl_ktls endpoints.

Both ends are wrapped, so whatever one sends through kernel TX the other reads
through kernel RX (where the environment declares them) or user space (where not).
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Callable

import pytest
from OpenSSL import SSL

import ossl_ktls
from tests._pairs import (
    VERSIONS,
    Certs,
    Peer,
    connected_pair,
    digest,
    k_read_all,
    k_read_exactly,
    make_context,
)

ExpectKernel = Callable[[str, str, str], bool]


def _wrapped_pair(
    certs: Certs, version: str, cipher: str = "aes-128-gcm", **kw: object
) -> tuple[ossl_ktls.KTLSConnection, ossl_ktls.KTLSConnection, SSL.Connection]:
    cctx = make_context(certs, server=False, version=version, cipher=cipher)
    sctx = make_context(certs, server=True, version=version, cipher=cipher)
    client, server = connected_pair(cctx, sctx)
    a = ossl_ktls.wrap(client, **kw)  # type: ignore[arg-type]
    b = ossl_ktls.wrap(server)
    return a, b, server


def _tls_stat() -> dict[str, int]:
    try:
        with open("/proc/net/tls_stat") as f:
            return {k: int(v) for k, v in (line.split() for line in f if line.strip())}
    except FileNotFoundError:
        return {}


@pytest.mark.parametrize("version", VERSIONS)
def test_alerts_each_way(certs: Certs, expect_kernel: ExpectKernel, version: str) -> None:
    """A fatal alert sent by one end reaches the other as TLSAlertError carrying level 2
    and the description; the receiver is closed afterwards (later calls raise)."""
    if not expect_kernel("tx", version, "aes-128-gcm"):
        pytest.skip("declared: no kernel TX here, and user space can only send close_notify")
    for sender_is_client in (True, False):
        a, b, _ = _wrapped_pair(certs, version)
        sender, receiver = (a, b) if sender_is_client else (b, a)
        sender.send_alert(2, 40)
        with pytest.raises(ossl_ktls.TLSAlertError) as info:
            receiver.recv(100)
        assert (info.value.level, info.value.description, info.value.alert) == (2, 40, 40)
        with pytest.raises(ossl_ktls.ConnectionClosed):
            receiver.recv(100)
        receiver.close()


def test_tls13_half_close(certs: Certs) -> None:
    """TLS 1.3: after one side's close_notify the other reads EOF and can still send;
    the first side reads that data, then EOF at the second close_notify."""
    a, b, _ = _wrapped_pair(certs, "1.3")
    a.shutdown()
    assert b.recv(10) == b""
    data = os.urandom(30_000)
    b.sendall(data)
    b.shutdown()
    assert digest(k_read_all(a)) == digest(data)
    a.close()
    b.close()


def test_tls12_close_notify_is_answered(certs: Certs) -> None:
    """TLS 1.2: a received close_notify is answered with our own (no half-close in 1.2),
    so the sender reads a clean EOF too."""
    a, b, _ = _wrapped_pair(certs, "1.2")
    a.shutdown()
    assert b.recv(10) == b""
    assert a.recv(10) == b""
    with pytest.raises(ossl_ktls.ConnectionClosed):
        b.send(b"too late")
    a.close()
    b.close()


def test_recv_into_partial_reads_and_makefile(certs: Certs) -> None:
    """recv_into with small buffers, recv(1) across records, and makefile().readline()
    for a line protocol all see the exact byte stream."""
    a, b, _ = _wrapped_pair(certs, "1.2")
    lines = [b"HELLO %d\r\n" % i for i in range(50)]
    b.sendall(b"".join(lines[:25]))
    b.sendall(b"".join(lines[25:]))
    buf = bytearray(7)
    assert a.recv_into(buf) == 7
    assert bytes(buf) == lines[0][:7]
    assert a.recv(1) == lines[0][7:8]
    assert a.recv(1) == lines[0][8:9]
    f = a.makefile("rb")
    assert [f.readline() for _ in range(49)] == lines[1:]
    b.close()
    assert f.read() == b""
    a.close()


def test_nonblocking_reads(certs: Certs) -> None:
    """A non-blocking connection raises BlockingIOError while nothing is there, becomes
    readable through select() on fileno() when data arrives, and returns it whole."""
    a, b, _ = _wrapped_pair(certs, "1.2")
    a.setblocking(False)
    with pytest.raises(BlockingIOError):
        a.recv(100)
    data = os.urandom(100_000)
    p = Peer(lambda: b.sendall(data))
    got = bytearray()
    while len(got) < len(data):
        readable, _, _ = select.select([a], [], [], 60)
        assert readable, "no data within 60 s"
        try:
            got += a.recv(65536)
        except BlockingIOError:
            continue
    p.result()
    assert digest(bytes(got)) == digest(data)
    a.close()
    b.close()


def test_timeout(certs: Certs) -> None:
    """With a socket timeout, recv raises TimeoutError when nothing arrives in time, and
    the connection stays usable."""
    a, b, _ = _wrapped_pair(certs, "1.3")
    a.settimeout(0.5)
    with pytest.raises(TimeoutError):
        a.recv(10)
    b.sendall(b"late")
    assert k_read_exactly(a, 4) == b"late"
    a.close()
    b.close()


def test_tickets_after_handshake(
    certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool
) -> None:
    """TLS 1.3 tickets the server wrote right after the handshake do not disturb the data
    stream. With kernel RX each one reaches ticket_callback as a raw NewSessionTicket
    message, as many as the server wrote; in user space OpenSSL consumes them."""
    tickets: list[bytes] = []
    a, b, server = _wrapped_pair(certs, "1.3", ticket_callback=lambda _k, msg: tickets.append(msg))
    data = os.urandom(20_000)
    b.sendall(data)
    assert digest(k_read_exactly(a, len(data))) == digest(data)
    written = ossl_ktls._openssl.state_of(server).observer.handshake_written.count(4)
    assert written >= 1
    if a.ktls_rx:
        assert len(tickets) == written
        assert all(t[0] == 4 for t in tickets)
    else:
        assert not (expect_kernel("rx", "1.3", "aes-128-gcm") and can_rekey), a.fallback_reason
        assert tickets == []
    a.close()
    b.close()


@pytest.mark.parametrize("request_peer", [False, True])
def test_key_update(
    certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool, request_peer: bool
) -> None:
    """key_update() rekeys kernel TX; the peer's kernel RX follows it (and, when asked,
    answers with its own KeyUpdate and rekeys TX); data stays exact both ways and the
    sequence numbers restart. Where the kernel cannot rekey, key_update() raises
    KeyUpdateUnsupported; without kernel TX, UsageError."""
    a, b, _ = _wrapped_pair(certs, "1.3")
    if not expect_kernel("tx", "1.3", "aes-128-gcm"):
        with pytest.raises(ossl_ktls.UsageError):
            a.key_update()
        return
    if not can_rekey:
        with pytest.raises(ossl_ktls.KeyUpdateUnsupported):
            a.key_update(request_peer)
        return
    assert a.ktls_rx and b.ktls_rx
    before = _tls_stat()
    a.sendall(b"old key")
    a.key_update(request_peer)
    assert a.tx_sequence() == 0
    data = os.urandom(50_000)
    a.sendall(data)
    assert k_read_exactly(b, 7) == b"old key"
    assert digest(k_read_exactly(b, len(data))) == digest(data)
    reply = os.urandom(30_000)
    b.sendall(reply)
    assert digest(k_read_exactly(a, len(reply))) == digest(reply)
    after = _tls_stat()
    assert after["TlsRxRekeyOk"] - before["TlsRxRekeyOk"] == (2 if request_peer else 1)
    assert after["TlsTxRekeyOk"] - before["TlsTxRekeyOk"] == (2 if request_peer else 1)
    a.close()
    b.close()


def test_tls_stat_counters_move(certs: Certs, expect_kernel: ExpectKernel) -> None:
    """Each direction handed to the kernel shows up in /proc/net/tls_stat (TlsTxSw and
    TlsRxSw grow by one per wrapped socket), and nothing moves without kTLS."""
    before = _tls_stat()
    a, b, _ = _wrapped_pair(certs, "1.2")
    after = _tls_stat()
    expected = expect_kernel("tx", "1.2", "aes-128-gcm")
    if not expected:
        assert not a.ktls_tx
        assert after.get("TlsTxSw", 0) == before.get("TlsTxSw", 0)
    else:
        assert after["TlsTxSw"] - before["TlsTxSw"] == 2
        assert after["TlsRxSw"] - before["TlsRxSw"] == 2
    a.close()
    b.close()


def test_rx_expect_no_pad(certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool) -> None:
    """rx_expect_no_pad=True (TLS 1.3 kernel RX) still delivers the stream exactly."""
    a, b, _ = _wrapped_pair(certs, "1.3", rx_expect_no_pad=True)
    data = os.urandom(40_000)
    b.sendall(data)
    assert digest(k_read_exactly(a, len(data))) == digest(data)
    assert a.ktls_rx == (expect_kernel("rx", "1.3", "aes-128-gcm") and can_rekey)
    a.close()
    b.close()


def _inject_handshake(k: ossl_ktls.KTLSConnection, message: bytes) -> None:
    """Send a raw handshake record (type 22) through *k*'s kernel TX."""
    from ossl_ktls import _linux_tls

    with socket.socket(fileno=os.dup(k.fileno())) as sock:
        _linux_tls.send_record(sock, 22, message)


def test_tls12_hello_request_is_refused_and_data_flows(
    certs: Certs, expect_kernel: ExpectKernel
) -> None:
    """A TLS 1.2 HelloRequest (renegotiation) reaching the client is refused with one
    no_renegotiation warning alert (the client's TX record count grows by exactly one),
    and data keeps flowing both ways, byte-exact, before and after it."""
    if not expect_kernel("tx", "1.2", "aes-128-gcm"):
        pytest.skip("declared: no kernel TX here to inject a raw HelloRequest with")
    a, b, _ = _wrapped_pair(certs, "1.2")
    assert a.ktls_tx and b.ktls_tx, (a.fallback_reason, b.fallback_reason)
    before = os.urandom(5000)
    b.sendall(before)
    assert digest(k_read_exactly(a, len(before))) == digest(before)
    seq = a.tx_sequence()
    _inject_handshake(b, bytes([0, 0, 0, 0]))  # HelloRequest: type 0, empty body
    after = os.urandom(7000)
    b.sendall(after)
    assert digest(k_read_exactly(a, len(after))) == digest(after)
    assert a.tx_sequence() == seq + 1, "exactly one record (the warning) went out"
    reply = os.urandom(3000)
    a.sendall(reply)
    assert digest(k_read_exactly(b, len(reply))) == digest(reply)
    a.close()
    b.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_unexpected_handshake_message_is_a_protocol_error(
    certs: Certs, expect_kernel: ExpectKernel, version: str
) -> None:
    """A handshake message that has no place after the handshake (a ServerHello) ends
    the connection with a ProtocolError (UnexpectedMessage on kernel RX); the data sent
    before it was delivered intact, and later calls raise ConnectionClosed."""
    if not expect_kernel("tx", version, "aes-128-gcm"):
        pytest.skip("declared: no kernel TX here to inject a raw handshake record with")
    a, b, _ = _wrapped_pair(certs, version)
    assert b.ktls_tx, b.fallback_reason
    data = os.urandom(4000)
    b.sendall(data)
    _inject_handshake(b, bytes([2, 0, 0, 2, 3, 3]))  # ServerHello, 2-byte body
    assert digest(k_read_exactly(a, len(data))) == digest(data)
    with pytest.raises(ossl_ktls.ProtocolError) as info:
        a.recv(100)
    if a.ktls_rx:
        assert isinstance(info.value, ossl_ktls.UnexpectedMessage)
    with pytest.raises(ossl_ktls.ConnectionClosed):
        a.recv(100)
    a.close()
    b.close()
