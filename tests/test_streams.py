"""recvfile() and send_stream(): a connection's plaintext to and from other descriptors.

Where the environment declares the direction in the kernel, the bytes must really go
through splice(2) (a spy counts the successful splices out of the TLS socket, or into
it); elsewhere the same calls copy, and must give the same bytes. Every transfer compares
size and SHA-256 of what arrived, and the file position (or the rest of the stream)
after it.
"""

from __future__ import annotations

import functools
import io
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    read_all,
    tcp_pair,
)

ExpectKernel = Callable[[str, str, str], bool]
SIZES = (0, 1, 16383, 16385, 3 * 1024 * 1024 + 7)


class SpliceSpy:
    """Counts the successful splice(2) calls a module makes on a given descriptor."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []
        self._real = os.splice

    def __call__(self, src: int, dst: int, count: int, *args: Any, **kw: Any) -> int:
        n = self._real(src, dst, count, *args, **kw)
        self.calls.append((src, dst, n))
        return n

    def moved(self, fd: int, *, out_of: bool) -> int:
        return sum(n for s, d, n in self.calls if (s if out_of else d) == fd)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> SpliceSpy:
    s = SpliceSpy()
    monkeypatch.setattr(os, "splice", s)  # the engine's paths call os.splice at run time
    return s


def _pair(
    certs: Certs, version: str, cipher: str = "aes-128-gcm"
) -> tuple[SSL.Connection, SSL.Connection]:
    cctx = make_context(certs, server=False, version=version, cipher=cipher)
    sctx = make_context(certs, server=True, version=version, cipher=cipher)
    return connected_pair(cctx, sctx)


def _rx_expected(expect_kernel: ExpectKernel, version: str) -> bool:
    return expect_kernel("rx", version, "aes-128-gcm")


def _wrap_receiver(client: SSL.Connection) -> ossl_ktls.KTLSConnection:
    # TLS 1.3 RX goes to the kernel before 6.14 only with rx_without_rekey (no KeyUpdate here).
    k = ossl_ktls.wrap(client, rx_without_rekey=True)
    k.settimeout(120)
    return k


def _send_and_close(server: SSL.Connection, data: bytes) -> Callable[[], None]:
    def run() -> None:
        view = memoryview(data)
        for i in range(0, len(view), 100_000):
            server.sendall(view[i : i + 100_000])
        server.shutdown()

    return run


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("size", SIZES)
def test_recvfile_to_a_file(
    certs: Certs,
    tmp_path: Path,
    expect_kernel: ExpectKernel,
    spy: SpliceSpy,
    version: str,
    size: int,
) -> None:
    """A pyOpenSSL server sends *size* bytes and close_notify; recvfile writes them to a
    file after a header written through the file object's buffer: the file holds header
    and data, byte for byte, and its position is left after the last byte."""
    client, server = _pair(certs, version)
    data = os.urandom(size)
    peer = Peer(_send_and_close(server, data))
    k = _wrap_receiver(client)
    assert k.ktls_rx == _rx_expected(expect_kernel, version), k.fallback_reason
    with open(tmp_path / "out", "wb") as f:
        f.write(b"HEAD")  # still in the BufferedWriter's buffer: must come first
        n = k.recvfile(f)
        assert f.tell() == 4 + size
        f.write(b"TAIL")
    peer.result()
    assert n == size
    assert digest((tmp_path / "out").read_bytes()) == digest(b"HEAD" + data + b"TAIL")
    spliced = spy.moved(k.fileno(), out_of=True)
    if k.ktls_rx and size:
        assert spliced > 0.9 * size, "kernel RX but recvfile did not splice"
    else:
        assert spliced == 0
    k.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_recvfile_to_a_socket_and_a_pipe(
    certs: Certs, expect_kernel: ExpectKernel, spy: SpliceSpy, version: str
) -> None:
    """recvfile into a TCP socket (what a tunnel does) and into a pipe: byte-exact."""
    for kind in ("socket", "pipe"):
        spy.calls.clear()  # descriptors are reused from one connection to the next
        client, server = _pair(certs, version)
        data = os.urandom(2 * 1024 * 1024 + 3)
        peer = Peer(_send_and_close(server, data))
        k = _wrap_receiver(client)
        if kind == "socket":
            out, far = tcp_pair()
            reader = Peer(functools.partial(_read_socket, far))
            target: Any = out
        else:
            r, w = os.pipe()
            reader = Peer(functools.partial(_read_fd, r))
            target = io.FileIO(w, "wb")
        n = k.recvfile(target)
        if kind == "socket":
            out.shutdown(socket.SHUT_WR)
        target.close()
        assert n == len(data)
        assert digest(reader.result()) == digest(data)
        peer.result()
        if k.ktls_rx:
            assert spy.moved(k.fileno(), out_of=True) > 0.9 * len(data)
        k.close()


def _read_socket(sock: socket.socket) -> bytes:
    out = bytearray()
    while chunk := sock.recv(1 << 20):
        out += chunk
    sock.close()
    return bytes(out)


def _read_fd(fd: int) -> bytes:
    out = bytearray()
    while chunk := os.read(fd, 1 << 20):
        out += chunk
    os.close(fd)
    return bytes(out)


@pytest.mark.parametrize("version", VERSIONS)
def test_recvfile_without_splice(
    certs: Certs, tmp_path: Path, spy: SpliceSpy, version: str
) -> None:
    """Outputs splice cannot write (an O_APPEND file, an object without a descriptor)
    get the same bytes through the copy path."""
    for kind in ("append", "bytesio"):
        client, server = _pair(certs, version)
        data = os.urandom(1024 * 1024 + 1)
        peer = Peer(_send_and_close(server, data))
        k = _wrap_receiver(client)
        if kind == "append":
            (tmp_path / "log").write_bytes(b"old")
            with open(tmp_path / "log", "ab") as f:
                n = k.recvfile(f)
            got = (tmp_path / "log").read_bytes()
            assert digest(got) == digest(b"old" + data)
        else:
            bio = io.BytesIO()
            n = k.recvfile(bio)
            assert digest(bio.getvalue()) == digest(data)
        assert n == len(data)
        assert spy.moved(k.fileno(), out_of=True) == 0
        peer.result()
        k.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_recvfile_count_leaves_the_rest(
    certs: Certs, tmp_path: Path, expect_kernel: ExpectKernel, version: str
) -> None:
    """With count, recvfile stops there, inside a record too; recv then gets the rest."""
    client, server = _pair(certs, version)
    data = os.urandom(200_000)
    peer = Peer(_send_and_close(server, data))
    k = _wrap_receiver(client)
    cut = 70_001  # inside the fifth 16 KiB record
    with open(tmp_path / "part", "wb") as f:
        assert k.recvfile(f, cut) == cut
    rest = k_read_all(k)
    peer.result()
    assert digest((tmp_path / "part").read_bytes() + rest) == digest(data)
    assert len(rest) == len(data) - cut
    k.close()


# A TLS 1.3 NewSessionTicket (lifetime, age_add, nonce, ticket, no extensions) and a
# TLS 1.2 HelloRequest, as handshake messages injected through the sender's kernel TX.
_TICKET_BODY = struct.pack("!IIB", 7200, 1234, 1) + b"\x01" + struct.pack("!H", 32) + bytes(32)
_TICKET = (
    bytes([4]) + len(_TICKET_BODY + b"\x00\x00").to_bytes(3, "big") + _TICKET_BODY + b"\x00\x00"
)
_HELLO_REQUEST = bytes([0, 0, 0, 0])


def _inject_handshake(k: ossl_ktls.KTLSConnection, message: bytes) -> None:
    from ossl_ktls import _linux_tls

    with socket.socket(fileno=os.dup(k.fileno())) as sock:
        _linux_tls.send_record(sock, 22, message)


@pytest.mark.parametrize("version", VERSIONS)
def test_recvfile_through_control_records(
    certs: Certs, tmp_path: Path, can_rekey: bool, version: str
) -> None:
    """Records that are not data in the middle of a spliced stream, sent by a wrapped
    peer: TLS 1.3 KeyUpdates that ask for ours (where the kernel rekeys), else
    NewSessionTickets; TLS 1.2 HelloRequests, refused. recvfile reads each the normal way
    and goes on splicing: the file is exact, and the peer still reads what we send after
    (our KeyUpdate answer and our alerts were right)."""
    client, server = _pair(certs, version)
    parts = [os.urandom(300_000) for _ in range(3)]
    srv = ossl_ktls.wrap(server)
    srv.settimeout(120)

    reply = os.urandom(40_000)

    def serve() -> bytes:
        for i, part in enumerate(parts):
            srv.sendall(part)
            if i == 2 or not srv.ktls_tx:
                continue
            if version == "1.3" and can_rekey:
                srv.key_update(request_peer=True)
            else:
                _inject_handshake(srv, _TICKET if version == "1.3" else _HELLO_REQUEST)
        got = k_read_exactly(srv, len(reply))
        srv.shutdown()
        return got

    peer = Peer(serve)
    k = _wrap_receiver(client)
    total = sum(map(len, parts))
    with open(tmp_path / "out", "wb") as f:
        assert k.recvfile(f, total) == total
        k.sendall(reply)  # the connection is sound after: the peer reads it
        assert k.recvfile(f) == 0  # then its close_notify
    assert digest(peer.result()) == digest(reply)
    assert digest((tmp_path / "out").read_bytes()) == digest(b"".join(parts))
    srv.close()
    k.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_recvfile_truncated(certs: Certs, tmp_path: Path, version: str) -> None:
    """TCP ends without close_notify: TruncatedStream, whose bytes_received is every
    byte the file got, and the file has exactly those bytes."""
    client, server = _pair(certs, version)
    data = os.urandom(500_000)

    def cut() -> None:
        server.sendall(data)
        server.sock_shutdown(socket.SHUT_WR)  # FIN, no close_notify

    peer = Peer(cut)
    k = _wrap_receiver(client)
    with open(tmp_path / "out", "wb") as f, pytest.raises(ossl_ktls.TruncatedStream) as info:
        k.recvfile(f)
    peer.result()
    assert info.value.bytes_received == len(data)
    assert digest((tmp_path / "out").read_bytes()) == digest(data)
    k.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_recvfile_output_fails(certs: Certs, version: str) -> None:
    """The output breaks (a pipe whose reader is gone: EPIPE): LocalIOError with the
    output's errno and the bytes it took (none); the connection is reset, so the peer
    never sees a clean close_notify from us, and later calls say it is closed."""
    client, server = _pair(certs, version)

    def serve() -> BaseException | str:
        try:
            server.sendall(os.urandom(2_000_000))
            server.shutdown()
            _got, end = _read_until_end(server)
        except (SSL.Error, OSError) as exc:
            return exc
        return "clean end" if isinstance(end, SSL.ZeroReturnError) else end

    peer = Peer(serve)
    k = _wrap_receiver(client)
    r, w = os.pipe()
    os.close(r)
    with io.FileIO(w, "wb") as out, pytest.raises(ossl_ktls.LocalIOError) as info:
        k.recvfile(out)
    assert info.value.errno == 32  # EPIPE, the pipe's
    assert info.value.bytes_received == 0
    with pytest.raises(ossl_ktls.ConnectionClosed):
        k.recv(1)
    assert peer.result() != "clean end"


def test_recvfile_needs_a_usable_target(certs: Certs) -> None:
    """A non-blocking socket, a negative count or an object that cannot take bytes is a
    UsageError; nothing is read."""
    client, server = _pair(certs, "1.3")
    k = _wrap_receiver(client)
    with pytest.raises(ossl_ktls.UsageError):
        k.recvfile(io.BytesIO(), -1)
    with pytest.raises(ossl_ktls.UsageError):
        k.recvfile(object())
    k.setblocking(False)
    with pytest.raises(ossl_ktls.UsageError):
        k.recvfile(io.BytesIO())
    k.settimeout(120)
    peer = Peer(_send_and_close(server, b"still here"))
    assert k.recvfile(bio := io.BytesIO()) == 10 and bio.getvalue() == b"still here"
    peer.result()
    k.close()


# ---------------------------------------------------------------- send_stream


@pytest.mark.parametrize("version", VERSIONS)
def test_send_stream_from_a_socket_a_pipe_and_a_file(
    certs: Certs, tmp_path: Path, expect_kernel: ExpectKernel, spy: SpliceSpy, version: str
) -> None:
    """What a TCP socket, a pipe and a file deliver reaches a pyOpenSSL peer byte for
    byte; with kernel TX it went through splice into the TLS socket."""
    for kind in ("socket", "pipe", "file"):
        spy.calls.clear()  # descriptors are reused from one connection to the next
        client, server = _pair(certs, version)
        data = os.urandom(2 * 1024 * 1024 + 5)
        k = ossl_ktls.wrap(client)
        k.settimeout(120)
        assert k.ktls_tx == expect_kernel("tx", version, "aes-128-gcm"), k.fallback_reason
        reader = Peer(functools.partial(read_all, server))
        if kind == "socket":
            near, far = tcp_pair()
            writer = Peer(functools.partial(_send_and_close_socket, far, data))
            source: Any = near
        elif kind == "pipe":
            r, w = os.pipe()
            writer = Peer(functools.partial(_write_fd, w, data))
            source = io.FileIO(r, "rb")
        else:
            (tmp_path / "src").write_bytes(data)
            writer = Peer(lambda: None)
            source = open(tmp_path / "src", "rb")  # noqa: SIM115
        n = k.send_stream(source)
        k.shutdown()
        writer.result()
        source.close()
        assert n == len(data)
        assert digest(reader.result()) == digest(data)
        into = spy.moved(k.fileno(), out_of=False)
        if k.ktls_tx:
            assert into == len(data), "kernel TX but send_stream did not splice"
        else:
            assert into == 0
        k.close()


def _send_and_close_socket(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)
    sock.close()


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.close(fd)


@pytest.mark.parametrize("version", VERSIONS)
def test_send_stream_count_and_empty(certs: Certs, version: str) -> None:
    """count stops early and leaves the rest in the source; an empty source sends nothing."""
    client, server = _pair(certs, version)
    k = ossl_ktls.wrap(client)
    k.settimeout(120)
    reader = Peer(lambda: read_all(server))
    data = os.urandom(100_000)
    near, far = tcp_pair()
    far.sendall(data)
    far.shutdown(socket.SHUT_WR)
    assert k.send_stream(near, 60_000) == 60_000
    rest = bytearray()
    while chunk := near.recv(65536):
        rest += chunk
    assert bytes(rest) == data[60_000:]
    assert k.send_stream(near) == 0  # at its end already
    k.shutdown()
    assert digest(reader.result()) == digest(data[:60_000])
    near.close()
    far.close()
    k.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_send_stream_source_reset(certs: Certs, version: str) -> None:
    """The source is reset mid-stream: LocalIOError with ECONNRESET and bytes_sent; the
    connection is reset too, so the peer sees an error, never a clean end."""
    client, server = _pair(certs, version)
    k = ossl_ktls.wrap(client)
    k.settimeout(120)
    reader = Peer(lambda: _read_until_end(server))
    near, far = tcp_pair()
    data = os.urandom(300_000)
    far.sendall(data)
    far.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ready = threading.Event()

    def reset_when_read() -> None:
        ready.wait(60)
        far.close()  # RST

    resetter = Peer(reset_when_read)
    with pytest.raises(ossl_ktls.LocalIOError) as info:
        total = 0
        while total < len(data):
            total += k.send_stream(near, len(data) - total)
        ready.set()
        resetter.result()
        k.send_stream(near)
    assert info.value.errno == 104  # ECONNRESET
    assert info.value.bytes_sent == 0
    got, end = reader.result()
    assert data.startswith(got)  # a reset may discard what the peer had not read yet
    assert not isinstance(end, SSL.ZeroReturnError), "the peer saw a clean end"
    near.close()


def _read_until_end(conn: SSL.Connection) -> tuple[bytes, BaseException]:
    got = bytearray()
    while True:
        try:
            chunk = conn.recv(65536)
        except (SSL.Error, OSError) as end:
            return bytes(got), end
        if not chunk:
            return bytes(got), SSL.ZeroReturnError()
        got += chunk
