"""The user-space path's contracts that select/poll programs rely on.

These run with both directions forced into user space (``tx=False, rx=False``), so they
prove the same thing on every kernel, with or without kTLS.
"""

from __future__ import annotations

import os
import select
import socket
import time

import pytest
from OpenSSL import SSL

import ossl_ktls
from ossl_ktls import _engine
from tests._pairs import (
    Certs,
    Peer,
    connected_pair,
    digest,
    make_context,
    read_all,
    read_exactly,
    read_until_end,
)


def _user_pair(
    certs: Certs, version: str = "1.3"
) -> tuple[ossl_ktls.KTLSConnection, SSL.Connection]:
    cctx = make_context(certs, server=False, version=version, cipher="aes-128-gcm")
    sctx = make_context(certs, server=True, version=version, cipher="aes-128-gcm")
    client, server = connected_pair(cctx, sctx)
    k = ossl_ktls.wrap(client, tx=False, rx=False)
    assert (k.ktls_tx, k.ktls_rx) == (False, False)
    assert k.fallback_reason is None  # nothing requested, nothing fell back
    return k, server


def test_nonblocking_send_queues_ciphertext_and_flush_delivers_it(certs: Certs) -> None:
    """On a non-blocking socket whose send buffer is full, send() either accepts a chunk
    (its ciphertext may wait in tx_backlog) or raises BlockingIOError accepting nothing;
    flush() later puts the backlog on the wire. What the peer reads is exactly the
    accepted bytes (size and SHA-256): nothing lost, nothing duplicated."""
    k, server = _user_pair(certs)
    k.setblocking(False)
    chunk = os.urandom(16384)
    accepted = bytearray()
    refused = 0
    # The peer does not read yet: fill the socket buffers until send() refuses.
    while refused < 3:
        try:
            n = k.send(chunk)
        except BlockingIOError:
            refused += 1
            continue
        assert n == len(chunk)
        accepted += chunk
    assert k.tx_backlog > 0, "a refused send must leave ciphertext queued"
    total = len(accepted)

    peer = Peer(lambda: read_exactly(server, total))
    deadline = time.monotonic() + 120
    while k.flush():
        assert time.monotonic() < deadline, "flush() made no progress"
        select.select([], [k.fileno()], [], 5)
    assert k.tx_backlog == 0
    got = peer.result()
    assert digest(got) == digest(bytes(accepted))
    k.close()


def _fill_backlog(k: ossl_ktls.KTLSConnection) -> bytes:
    """Send on a non-blocking socket nobody reads until the socket stays full; what
    send() accepted. A refusal alone is not enough: while segments are in flight, TCP
    may still grow its buffers and take more, so the socket counts as full only when,
    half a second after a refusal, flush() still cannot move a byte."""
    chunk = os.urandom(16384)
    accepted = bytearray()
    while True:
        try:
            accepted += chunk[: k.send(chunk)]
            continue
        except BlockingIOError:
            pass
        queued = k.tx_backlog
        assert queued > 0, "a refused send must leave ciphertext queued"
        time.sleep(0.5)
        if k.flush() == queued:
            return bytes(accepted)


def _read_to_close_notify(server: SSL.Connection) -> tuple[bytes, bytes]:
    """Everything the peer reads up to close_notify, then what its TCP socket reads next
    (b"" when our FIN followed close_notify)."""
    got = read_all(server)
    sock = server._socket
    assert isinstance(sock, socket.socket)
    sock.settimeout(60)
    return got, sock.recv(1)


def test_nonblocking_shutdown_sends_fin_only_after_the_backlog(certs: Certs) -> None:
    """shutdown() with ciphertext still queued must not half-close TCP at once: that would
    cut off the queue (the peer would read a truncated stream). close_notify joins the
    queue; flush() sends it all, then the FIN. The peer reads every accepted byte (size
    and SHA-256), then close_notify, then EOF."""
    k, server = _user_pair(certs)
    k.setblocking(False)
    accepted = _fill_backlog(k)
    k.shutdown()
    assert k.tx_backlog > 0, "the queue (close_notify last) waits for flush()"
    peer = Peer(lambda: _read_to_close_notify(server))
    deadline = time.monotonic() + 120
    while k.flush():
        assert time.monotonic() < deadline, "flush() made no progress"
        select.select([], [k.fileno()], [], 5)
    got, after = peer.result()
    assert digest(got) == digest(accepted)
    assert after == b"", "our FIN should follow close_notify"
    k.close()


def test_nonblocking_close_delivers_the_backlog(certs: Certs) -> None:
    """close() on a non-blocking socket with ciphertext queued waits for the reader
    instead of dropping the queue: the peer gets every accepted byte and close_notify."""
    k, server = _user_pair(certs)
    k.setblocking(False)
    accepted = _fill_backlog(k)

    def late_reader() -> tuple[bytes, bytes]:
        time.sleep(0.5)  # close() starts with the queue stuck
        return _read_to_close_notify(server)

    peer = Peer(late_reader)
    k.close()
    got, after = peer.result()
    assert digest(got) == digest(accepted)
    assert after == b""


def test_has_buffered_input_reports_a_stream_end_already_read(certs: Certs) -> None:
    """When data and close_notify arrived together, after the data is consumed the
    descriptor is no longer readable, yet has_buffered_input() says recv() answers
    at once, and that answer is b"" (close_notify), not a hang."""
    k, server = _user_pair(certs)
    data = os.urandom(3000)
    server.sendall(data)
    server.shutdown()  # close_notify, no FIN
    # Wait until both records are on our socket, so one recv takes them together.
    deadline = time.monotonic() + 60
    # TLS 1.3 records: 5-byte header, inner type byte, 16-byte tag (tickets come first).
    records = (5 + len(data) + 1 + 16) + (5 + 2 + 1 + 16)
    sock = socket.socket(fileno=os.dup(k.fileno()))
    while True:
        waiting = len(sock.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        if waiting >= records:
            sock.close()
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    got = k.recv(1)
    got += k.recv(k.pending())
    assert digest(got) == digest(data)
    assert k.pending() == 0
    assert k.has_buffered_input()
    readable, _, _ = select.select([k.fileno()], [], [], 0.2)
    assert readable == [], "the socket is drained: only has_buffered_input() can tell"
    assert k.recv(100) == b""
    assert not k.has_buffered_input()
    k.close()


def test_nonblocking_close_resets_when_the_backlog_cannot_go(
    certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If nobody reads, close() cannot deliver the queue: after its wait (30 s, 1 s here)
    it resets the connection. The peer then reads a true prefix and an error, never
    close_notify (which would call a cut stream whole)."""
    monkeypatch.setattr(_engine, "CONTROL_WAIT", 1.0)
    k, server = _user_pair(certs)
    k.setblocking(False)
    accepted = _fill_backlog(k)
    started = time.monotonic()
    k.close()
    assert time.monotonic() - started < 30
    got, end = read_until_end(server)
    assert not isinstance(end, SSL.ZeroReturnError), "close_notify after a cut"
    assert accepted.startswith(got) and len(got) < len(accepted)
