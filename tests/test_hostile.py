"""Damaged streams: a clear error, never a corrupted byte delivered, never a hang.

A FaultProxy sits between a pyOpenSSL server and the wrapped client and damages the
server-to-client bytes after the handshake. Each test runs with RX in the kernel (where
this environment declares it) and with RX in user space (``rx=False``).
"""

from __future__ import annotations

import os
import select
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from OpenSSL import SSL

import ossl_ktls
from tests._pairs import Certs, Peer, digest, k_read_exactly, make_context, read_exactly
from tests._proxy import FaultProxy

RX_MODES = [pytest.param(True, id="rx-kernel"), pytest.param(False, id="rx-user")]
VERSIONS = ["1.2", "1.3"]


@pytest.fixture
def proxied(certs: Certs) -> Iterator[object]:
    """A factory of (wrapped client, pyOpenSSL server, proxy); everything torn down after."""
    made: list[FaultProxy] = []

    def make(version: str, rx: bool) -> tuple[ossl_ktls.KTLSConnection, SSL.Connection, FaultProxy]:
        cctx = make_context(certs, server=False, version=version, cipher="aes-128-gcm")
        sctx = make_context(certs, server=True, version=version, cipher="aes-128-gcm")
        listener = socket.create_server(("127.0.0.1", 0))
        proxy = FaultProxy(listener.getsockname())
        made.append(proxy)
        csock = socket.create_connection(proxy.address)
        listener.settimeout(60)
        ssock, _ = listener.accept()
        listener.close()
        ssock.setblocking(True)
        client = SSL.Connection(cctx, csock)
        client.set_connect_state()
        server = SSL.Connection(sctx, ssock)
        server.set_accept_state()
        p = Peer(server.do_handshake)
        k = ossl_ktls.wrap(client, rx=rx, rx_without_rekey=rx)
        p.result()
        # Let everything the handshake left in flight (TLS 1.3 tickets) pass untouched.
        server.sendall(b"sync")
        assert k_read_exactly(k, 4) == b"sync"
        return k, server, proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.mark.parametrize("rx", RX_MODES)
@pytest.mark.parametrize("version", VERSIONS)
def test_bit_flip(proxied: object, version: str, rx: bool) -> None:
    """One flipped bit inside the second record: the first record arrives whole, then
    BadRecordMAC; what the application got is a true prefix; the connection is closed
    and later calls raise ConnectionClosed."""
    k, server, proxy = proxied(version, rx)  # type: ignore[operator]
    records = [os.urandom(10_000) for _ in range(3)]
    proxy.arm("flip", offset=10_000 + 100 + 29)  # well inside record 2's ciphertext
    for r in records:
        server.sendall(r)
    got = bytearray()
    with pytest.raises(ossl_ktls.BadRecordMAC) as info:
        while True:
            chunk = k.recv(65536)
            assert chunk, "clean EOF instead of an authentication failure"
            got += chunk
    assert info.value.errno is not None or not k.ktls_rx
    assert bytes(got) == b"".join(records)[: len(got)]
    assert len(got) == 10_000
    with pytest.raises(ossl_ktls.ConnectionClosed):
        k.recv(1)


@pytest.mark.parametrize("fault", ["drop", "duplicate"])
@pytest.mark.parametrize("rx", RX_MODES)
@pytest.mark.parametrize("version", VERSIONS)
def test_dropped_or_replayed_bytes(proxied: object, version: str, rx: bool, fault: str) -> None:
    """100 bytes dropped from record 2, or a whole record replayed: the first record
    arrives whole, then a ProtocolError (BadRecordMAC where the kernel reads); what the
    application got is a true prefix, never a byte twice; the connection is closed."""
    k, server, proxy = proxied(version, rx)  # type: ignore[operator]
    records = [os.urandom(10_000) for _ in range(3)]
    wire = len(records[0]) + (29 if version == "1.2" else 22)  # record 1 on the wire
    if fault == "drop":
        proxy.arm("drop", offset=wire + 500, count=100)
    else:
        proxy.arm("duplicate", offset=0, count=wire)
    for r in records:
        server.sendall(r)
    got = bytearray()
    with pytest.raises(ossl_ktls.ProtocolError):
        while True:
            chunk = k.recv(65536)
            assert chunk, "clean EOF instead of a protocol error"
            got += chunk
    assert bytes(got) == b"".join(records)[: len(got)]
    assert len(got) == 10_000
    with pytest.raises(ossl_ktls.ConnectionClosed):
        k.recv(1)


@pytest.mark.parametrize("rx", RX_MODES)
@pytest.mark.parametrize("version", VERSIONS)
def test_byte_by_byte(proxied: object, version: str, rx: bool) -> None:
    """Records delivered one byte per TCP segment arrive intact, through a non-blocking
    reader driven by select(): a split record never blocks it and never loses a byte."""
    k, server, proxy = proxied(version, rx)  # type: ignore[operator]
    proxy.arm("split")
    data = os.urandom(400)  # two records, each a few hundred one-byte segments
    p = Peer(lambda: (server.sendall(data[:200]), server.sendall(data[200:])))
    k.setblocking(False)
    got = bytearray()
    while len(got) < len(data):
        if not k.has_buffered_input():
            readable, _, _ = select.select([k], [], [], 60)
            assert readable, "stalled"
        try:
            got += k.recv(65536)
        except BlockingIOError:
            continue
    p.result()
    assert digest(bytes(got)) == digest(data)
    k.close()


@pytest.mark.parametrize("rx", RX_MODES)
@pytest.mark.parametrize("version", VERSIONS)
def test_oversized_record_injected(proxied: object, version: str, rx: bool) -> None:
    """A record header claiming 65535 bytes injected into the stream raises
    RecordOverflow and closes the connection; nothing injected is delivered."""
    k, server, proxy = proxied(version, rx)  # type: ignore[operator]
    proxy.arm("inject", offset=0, payload=b"\x17\x03\x03\xff\xff" + bytes(100))
    server.sendall(b"after")
    with pytest.raises(ossl_ktls.RecordOverflow):
        k.recv(100)
    with pytest.raises(ossl_ktls.ConnectionClosed):
        k.recv(1)


@pytest.mark.parametrize("rx", RX_MODES)
def test_cut_with_fin_is_truncation(proxied: object, rx: bool) -> None:
    """The stream cut with a FIN in the middle of a record: TruncatedStream (or a
    protocol error), never a clean EOF, and the data before the cut is a true prefix."""
    k, server, proxy = proxied("1.3", rx)  # type: ignore[operator]
    data = os.urandom(30_000)
    proxy.arm("fin", offset=20_000)
    server.sendall(data)
    got = bytearray()
    with pytest.raises((ossl_ktls.TruncatedStream, ossl_ktls.ProtocolError)):
        while True:
            chunk = k.recv(65536)
            assert chunk, "clean EOF at a cut stream"
            got += chunk
    assert bytes(got) == data[: len(got)]


def test_rst_mid_sendfile(proxied: object, tmp_path: Path) -> None:
    """An RST while sendfile() is blocked on a slow reader raises a ConnectionError;
    the error's bytes_sent never exceeds the file, and the peer got no more than that."""
    k, server, proxy = proxied("1.2", True)  # type: ignore[operator]
    path = tmp_path / "big.bin"
    content = os.urandom(32 * 1024 * 1024)
    path.write_bytes(content)

    def peer() -> bytes:
        got = read_exactly(server, 100_000)
        proxy.arm("rst")
        server.sendall(b"!")  # the proxy answers this with an RST toward the client
        return got

    p = Peer(peer)
    with path.open("rb") as f, pytest.raises(ConnectionError) as info:
        k.sendfile(f)
    got = p.result()
    sent = getattr(info.value, "bytes_sent", None)
    assert sent is not None
    assert len(got) <= sent <= len(content)
    assert got == content[: len(got)]
    assert isinstance(info.value, ossl_ktls.Error)
