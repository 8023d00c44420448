"""ossl_ktls.aio: asyncio streams over kernel TLS, against itself and a plain pyOpenSSL peer.

Every transfer compares sizes and SHA-256 of what was sent and what arrived. Where the
environment declares kernel TLS for the suite (tests/expectations.py), the transport must
report it (``ktls_tx``/``ktls_rx``); elsewhere the same tests run the user-space path.
Each test runs its own event loop with ``asyncio.run`` and a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
from asyncio import constants
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from OpenSSL import SSL

import ossl_ktls
import ossl_ktls.aio
from tests._pairs import (
    Certs,
    Peer,
    digest,
    make_context,
    read_all,
    read_exactly,
    read_until_end,
)

T = TypeVar("T")
ExpectKernel = Callable[[str, str, str], bool]

DEADLINE = float(
    os.environ.get("AIO_DEADLINE", "240")
)  # per test; TCG emulation is slow, but nothing may hang
HOST = "127.0.0.1"
SUITES = [
    pytest.param("1.2", "aes-128-gcm", id="tls1.2-aes-128-gcm"),
    pytest.param("1.3", "aes-256-gcm", id="tls1.3-aes-256-gcm"),
    pytest.param("1.3", "chacha20-poly1305", id="tls1.3-chacha20-poly1305"),
]
VERSIONS = [pytest.param("1.2", id="tls1.2"), pytest.param("1.3", id="tls1.3")]


def _run(coro: Coroutine[Any, Any, T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, DEADLINE)

    return asyncio.run(bounded())


def _contexts(certs: Certs, version: str, cipher: str) -> tuple[SSL.Context, SSL.Context]:
    """(client, server) Contexts pinned to one suite; aio prepares them itself."""
    return (
        make_context(certs, server=False, version=version, cipher=cipher, prepare=False),
        make_context(certs, server=True, version=version, cipher=cipher, prepare=False),
    )


def _expected(
    expect_kernel: ExpectKernel, can_rekey: bool, version: str, cipher: str
) -> tuple[bool, bool]:
    tx = expect_kernel("tx", version, cipher)
    # TLS 1.3 RX goes to the kernel only where the kernel can follow a KeyUpdate.
    rx = expect_kernel("rx", version, cipher) and (version == "1.2" or can_rekey)
    return tx, rx


def _check_transport(writer: asyncio.StreamWriter, tx: bool, rx: bool) -> None:
    """The transport reports where the record layer is, and the TLS session."""
    info = writer.get_extra_info
    reason = info("ktls_fallback_reason")
    assert info("ktls_tx") is tx, reason
    assert info("ktls_rx") is rx, reason
    assert isinstance(info("ssl_object"), SSL.Connection)
    assert isinstance(info("ktls"), ossl_ktls.KTLSConnection)
    name, version, bits = info("cipher")
    assert name and version.startswith("TLSv1.") and bits >= 128
    assert info("peername") is not None and info("socket") is not None


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _send_framed(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(len(data).to_bytes(8, "big"))
    writer.write(data)
    await writer.drain()


async def _recv_framed(reader: asyncio.StreamReader) -> bytes:
    n = int.from_bytes(await reader.readexactly(8), "big")
    return await reader.readexactly(n)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


def _thread_server(
    ctx: SSL.Context, serve: Callable[[SSL.Connection], Any], *, rcvbuf: int | None = None
) -> tuple[int, Peer]:
    """A blocking pyOpenSSL server for one connection in a thread: (port, its result).

    *rcvbuf*: the accepted socket's SO_RCVBUF (set on the listener, which it inherits).
    """
    if rcvbuf is None:
        listener = socket.create_server((HOST, 0))
    else:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        listener.bind((HOST, 0))
        listener.listen()
    port = listener.getsockname()[1]

    def run() -> Any:
        with listener:
            sock, _ = listener.accept()
        with sock:
            conn = SSL.Connection(ctx, sock)
            conn.set_accept_state()
            conn.do_handshake()
            return serve(conn)

    return port, Peer(run)


@pytest.mark.parametrize(("version", "cipher"), SUITES)
def test_both_ends_aio(
    certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool, version: str, cipher: str
) -> None:
    """aio client and aio server exchange 1.5 MiB each way, intact, with kTLS as declared.

    Both transports report the declared placement and the session; the client's request
    arrives whole before the server answers; the server's close_notify ends the client's
    stream cleanly and the client's close completes.
    """
    cctx, sctx = _contexts(certs, version, cipher)
    request, response = os.urandom(1536 * 1024 + 7), os.urandom(1536 * 1024 + 11)
    tx, rx = _expected(expect_kernel, can_rekey, version, cipher)

    async def main() -> tuple[bytes, bytes]:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            _check_transport(writer, tx, rx)
            received = await _recv_framed(reader)
            writer.write(response)
            await _close(writer)
            got.set_result(received)

        server = await ossl_ktls.aio.start_server(handle, HOST, 0, context=sctx)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await ossl_ktls.aio.open_connection(
                HOST, port, context=cctx, server_hostname="localhost"
            )
            _check_transport(writer, tx, rx)
            await _send_framed(writer, request)
            answer = await reader.read()
            assert reader.at_eof()
            await _close(writer)
            return await got, answer

    received, answer = _run(main())
    assert digest(received) == digest(request)
    assert digest(answer) == digest(response)


@pytest.mark.parametrize("version", VERSIONS)
def test_client_against_pyopenssl_server(
    certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool, version: str
) -> None:
    """aio client against a blocking pyOpenSSL server in a thread.

    The server gets the request intact, its response and close_notify reach the client
    as data then a clean EOF, and the client's close sends close_notify (the server's
    read ends with a clean TLS EOF, not a truncation error).
    """
    cctx, sctx = _contexts(certs, version, "aes-128-gcm")
    request, response = os.urandom(1024 * 1024 + 3), os.urandom(2 * 1024 * 1024 - 5)

    def serve(conn: SSL.Connection) -> tuple[bytes, bytes]:
        received = read_exactly(conn, len(request))
        conn.sendall(response)
        conn.shutdown()
        return received, read_all(conn)

    port, peer = _thread_server(sctx, serve)

    async def main() -> bytes:
        reader, writer = await ossl_ktls.aio.open_connection(
            HOST, port, context=cctx, server_hostname="localhost"
        )
        _check_transport(writer, *_expected(expect_kernel, can_rekey, version, "aes-128-gcm"))
        writer.write(request)
        await writer.drain()
        answer = await reader.read()
        await _close(writer)
        return answer

    answer = _run(main())
    received, tail = peer.result()
    assert digest(received) == digest(request)
    assert digest(answer) == digest(response)
    assert tail == b""


@pytest.mark.parametrize("version", VERSIONS)
def test_server_against_pyopenssl_client(
    certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool, version: str
) -> None:
    """aio server against a blocking pyOpenSSL client in a thread.

    The request arrives intact, the response arrives intact, and the server's close
    reaches the client as close_notify (a clean EOF after the response).
    """
    cctx, sctx = _contexts(certs, version, "aes-128-gcm")
    request, response = os.urandom(2 * 1024 * 1024 + 1), os.urandom(1024 * 1024 + 9)

    def client(port: int) -> tuple[bytes, bytes]:
        with socket.create_connection((HOST, port)) as sock:
            conn = SSL.Connection(cctx, sock)
            conn.set_connect_state()
            conn.set_tlsext_host_name(b"localhost")
            conn.do_handshake()
            conn.sendall(request)
            answer = read_exactly(conn, len(response))
            tail = read_all(conn)
            conn.shutdown()
            return answer, tail

    async def main() -> bytes:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            _check_transport(writer, *_expected(expect_kernel, can_rekey, version, "aes-128-gcm"))
            received = await reader.readexactly(len(request))
            writer.write(response)
            await _close(writer)
            got.set_result(received)

        server = await ossl_ktls.aio.start_server(handle, HOST, 0, context=sctx)
        async with server:
            peer = Peer(lambda: client(server.sockets[0].getsockname()[1]))
            received = await got
            answer, tail = await asyncio.to_thread(peer.result)
        assert digest(answer) == digest(response)
        assert tail == b""
        return received

    assert digest(_run(main())) == digest(request)


@pytest.mark.parametrize("version", VERSIONS)
def test_client_against_openssl_s_server(
    certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool, version: str, tmp_path: Path
) -> None:
    """aio client against ``openssl s_server -WWW`` serving a 1 MiB file.

    The file arrives intact after the HTTP head, and the server's close_notify ends the
    stream cleanly (no TruncatedStream).
    """
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is missing (make setup installs it): a missing tool fails")
    cctx, _ = _contexts(certs, version, "aes-128-gcm")
    content = os.urandom(1024 * 1024 + 5)
    (tmp_path / "payload.bin").write_bytes(content)
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    argv = ["openssl", "s_server", "-WWW", "-quiet", "-accept", f"{HOST}:{port}"]
    argv += ["-cert", str(certs.ecdsa), "-key", str(certs.ecdsa)]
    server = subprocess.Popen(argv, cwd=tmp_path, stdin=subprocess.DEVNULL)

    async def main() -> bytes:
        for _ in range(400):  # until it listens (a refused connect costs s_server nothing)
            try:
                reader, writer = await ossl_ktls.aio.open_connection(
                    HOST, port, context=cctx, server_hostname="localhost"
                )
                break
            except ConnectionRefusedError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("openssl s_server did not start listening")
        _check_transport(writer, *_expected(expect_kernel, can_rekey, version, "aes-128-gcm"))
        writer.write(b"GET /payload.bin HTTP/1.0\r\n\r\n")
        answer = await reader.read()
        await _close(writer)
        return answer

    try:
        answer = _run(main())
    finally:
        server.terminate()
        server.wait(30)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert digest(body) == digest(content)


@pytest.mark.parametrize("version", VERSIONS)
def test_server_against_curl(
    certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool, version: str, tmp_path: Path
) -> None:
    """aio server against curl: a 1 MiB upload and a 1.5 MiB download, both intact."""
    if shutil.which("curl") is None:
        pytest.fail("the curl command is missing (make setup installs it): a missing tool fails")
    _, sctx = _contexts(certs, version, "aes-128-gcm")
    upload, response = os.urandom(1024 * 1024 + 3), os.urandom(1536 * 1024 + 1)
    (tmp_path / "upload.bin").write_bytes(upload)
    out = tmp_path / "out.bin"

    async def main() -> bytes:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            _check_transport(writer, *_expected(expect_kernel, can_rekey, version, "aes-128-gcm"))
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            assert length is not None, head
            received = await reader.readexactly(int(length.group(1)))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(response))
            writer.write(b"Connection: close\r\n\r\n" + response)
            await _close(writer)
            got.set_result(received)

        server = await ossl_ktls.aio.start_server(handle, HOST, 0, context=sctx)
        async with server:
            port = server.sockets[0].getsockname()[1]
            curl = await asyncio.create_subprocess_exec(
                "curl", "-sS", "--fail", "--http1.1", "--cacert", str(certs.ca),
                "--resolve", f"localhost:{port}:{HOST}", "-H", "Expect:",
                "--data-binary", f"@{tmp_path / 'upload.bin'}", "-o", str(out),
                f"https://localhost:{port}/",
            )  # fmt: skip
            try:
                assert await curl.wait() == 0
            finally:
                with contextlib.suppress(ProcessLookupError):
                    curl.kill()
            return await got

    assert digest(_run(main())) == digest(upload)
    assert digest(out.read_bytes()) == digest(response)


def test_many_concurrent_streams(
    certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool
) -> None:
    """20 aio clients at once against one aio server: every echo comes back intact.

    Each client sends its own 96 KiB (+ its index) payload; the server echoes each
    stream after reading it whole; every connection reports the declared placement.
    """
    cctx, sctx = _contexts(certs, "1.3", "aes-128-gcm")
    tx, rx = _expected(expect_kernel, can_rekey, "1.3", "aes-128-gcm")
    payloads = [os.urandom(96 * 1024 + i) for i in range(20)]

    async def main() -> list[bytes]:
        handled: list[int] = []
        all_handled = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            _check_transport(writer, tx, rx)
            data = await _recv_framed(reader)
            await _send_framed(writer, data)
            await _close(writer)
            handled.append(len(data))
            if len(handled) == len(payloads):
                all_handled.set()

        async def one(port: int, data: bytes) -> bytes:
            reader, writer = await ossl_ktls.aio.open_connection(
                HOST, port, context=cctx, server_hostname="localhost"
            )
            _check_transport(writer, tx, rx)
            await _send_framed(writer, data)
            echo = await _recv_framed(reader)
            assert await reader.read() == b""
            await _close(writer)
            return echo

        server = await ossl_ktls.aio.start_server(handle, HOST, 0, context=sctx)
        async with server:
            port = server.sockets[0].getsockname()[1]
            echoes = await asyncio.gather(*(one(port, p) for p in payloads))
            await all_handled.wait()
            return echoes

    echoes = _run(main())
    assert [digest(e) for e in echoes] == [digest(p) for p in payloads]


@pytest.mark.parametrize("version", VERSIONS)
def test_sendfile(
    certs: Certs,
    expect_kernel: ExpectKernel,
    can_rekey: bool,
    version: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """loop.sendfile(writer.transport, file) sends the file in order with queued writes.

    A whole file and a slice (offset/count) go between ordinary writes; the receiver
    gets exactly header + file + slice + trailer; the return values are the byte counts
    and the file position ends after the last byte sent. With kernel TX the data goes
    through zero-copy ``os.sendfile``; without it through the transport (no os.sendfile).
    """
    cctx, sctx = _contexts(certs, version, "aes-128-gcm")
    tx, rx = _expected(expect_kernel, can_rekey, version, "aes-128-gcm")
    content = os.urandom(3 * 1024 * 1024 + 123)
    path = tmp_path / "payload.bin"
    path.write_bytes(content)
    offset, count = 12345, 1024 * 1024 + 1
    header, trailer = b"header:" * 100, b":trailer" * 100
    calls = []
    real_sendfile = os.sendfile

    def counting_sendfile(*args: Any) -> int:
        calls.append(args)
        return real_sendfile(*args)

    monkeypatch.setattr(os, "sendfile", counting_sendfile)

    async def main() -> bytes:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received = await reader.read()
            await _close(writer)
            got.set_result(received)

        server = await ossl_ktls.aio.start_server(handle, HOST, 0, context=sctx)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await ossl_ktls.aio.open_connection(
                HOST, port, context=cctx, server_hostname="localhost"
            )
            _check_transport(writer, tx, rx)
            loop = asyncio.get_running_loop()
            writer.write(header)
            with path.open("rb") as f:
                assert await loop.sendfile(writer.transport, f) == len(content)
                assert f.tell() == len(content)
                assert await loop.sendfile(writer.transport, f, offset, count) == count
                assert f.tell() == offset + count
            writer.write(trailer)
            writer.write_eof()
            received = await got
            assert await reader.read() == b""
            await _close(writer)
            return received

    received = _run(main())
    expected = header + content + content[offset : offset + count] + trailer
    assert digest(received) == digest(expected)
    assert bool(calls) is tx


@pytest.mark.parametrize("version", VERSIONS)
def test_flow_control(
    certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool, version: str
) -> None:
    """Back-pressure both ways: drain() waits for a peer that does not read, reading pauses.

    The client's 4 MiB write exceeds its 64 KiB high-water mark while the server does not
    read: drain() does not finish and the buffer stays above the mark; the server's
    small StreamReader limit makes its transport pause reading. Once the server reads,
    drain() finishes and everything arrives intact.
    """
    cctx, sctx = _contexts(certs, version, "aes-128-gcm")
    data = os.urandom(4 * 1024 * 1024 + 17)

    async def main() -> bytes:
        go = asyncio.Event()
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            transport = writer.transport
            assert isinstance(transport, ossl_ktls.aio.KTLSTransport)
            while transport.is_reading():
                await asyncio.sleep(0.01)  # the reader's buffer fills, the transport pauses
            await go.wait()
            received = await reader.readexactly(len(data))
            writer.write(b"ok")
            await _close(writer)
            got.set_result(received)

        # Small kernel buffers on both ends, or 4 MiB could sit in them unread.
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        listener.bind((HOST, 0))
        listener.listen()
        server = await ossl_ktls.aio.start_server(
            handle, sock=listener, context=sctx, limit=16 * 1024
        )
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await ossl_ktls.aio.open_connection(
                HOST, port, context=cctx, server_hostname="localhost"
            )
            writer.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024
            )
            writer.transport.set_write_buffer_limits(high=64 * 1024)
            writer.write(data)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(writer.drain()), 0.5)
            assert writer.transport.get_write_buffer_size() > 64 * 1024
            go.set()
            await writer.drain()
            assert await reader.read() == b"ok"
            await _close(writer)
            return await got

    assert digest(_run(main())) == digest(data)


def test_close_notify_half_close_and_truncation(certs: Certs) -> None:
    """close_notify is the only clean end; a bare TCP close is a TruncatedStream.

    TLS 1.3 half-close: the client's write_eof() sends close_notify, the server reads its
    data to a clean EOF and can still answer on the same connection. Against a
    pyOpenSSL server that drops TCP without close_notify after its data, the client
    reads the data, then gets ossl_ktls.TruncatedStream (as the synchronous API raises).
    """
    cctx, sctx = _contexts(certs, "1.3", "aes-128-gcm")
    request, response = os.urandom(512 * 1024 + 1), os.urandom(256 * 1024 + 2)

    async def half_close() -> tuple[bytes, bytes]:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            received = await reader.read()  # ends at the client's close_notify
            writer.write(response)
            await _close(writer)
            got.set_result(received)

        server = await ossl_ktls.aio.start_server(handle, HOST, 0, context=sctx)
        async with server:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await ossl_ktls.aio.open_connection(
                HOST, port, context=cctx, server_hostname="localhost"
            )
            writer.write(request)
            assert writer.can_write_eof()
            writer.write_eof()
            answer = await reader.read()
            await _close(writer)
            return await got, answer

    received, answer = _run(half_close())
    assert digest(received) == digest(request)
    assert digest(answer) == digest(response)

    cctx2, sctx2 = _contexts(certs, "1.3", "aes-128-gcm")
    read_done = threading.Event()

    def truncate(conn: SSL.Connection) -> None:
        conn.sendall(response)
        read_done.wait(DEADLINE)  # then _thread_server closes the socket: no close_notify

    port, peer = _thread_server(sctx2, truncate)

    async def truncated() -> bytes:
        reader, writer = await ossl_ktls.aio.open_connection(
            HOST, port, context=cctx2, server_hostname="localhost"
        )
        data = await reader.readexactly(len(response))
        read_done.set()
        with pytest.raises(ossl_ktls.TruncatedStream):
            await reader.read()
        writer.close()
        with pytest.raises(ossl_ktls.TruncatedStream):
            await writer.wait_closed()
        return data

    assert digest(_run(truncated())) == digest(response)
    peer.result()


def test_cancel_mid_transfer_closes_cleanly(certs: Certs) -> None:
    """A client task cancelled mid-transfer: no descriptor leaks, nothing queued is lost.

    The client writes 8 MiB in 64 KiB chunks with drain() to a server that reads
    slowly, and is cancelled after 1 MiB; its ``finally`` closes the writer. The server
    then reads to a clean EOF and gets exactly the bytes the client had passed to
    write() (queued data is flushed before close_notify). The process has as many open
    descriptors afterwards as before.
    """
    cctx, sctx = _contexts(certs, "1.3", "aes-128-gcm")
    chunks = [os.urandom(64 * 1024) for _ in range(128)]

    async def main() -> tuple[bytes, bytes]:
        sent = bytearray()
        halfway = asyncio.Event()
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            out = bytearray()
            while chunk := await reader.read(32 * 1024):
                out += chunk
                await asyncio.sleep(0.001)
            await _close(writer)
            got.set_result(bytes(out))

        async def client(port: int) -> None:
            _, writer = await ossl_ktls.aio.open_connection(
                HOST, port, context=cctx, server_hostname="localhost"
            )
            try:
                for chunk in chunks:
                    writer.write(chunk)
                    sent.extend(chunk)
                    if len(sent) >= 1024 * 1024:
                        halfway.set()
                    await writer.drain()
                    await asyncio.sleep(0)  # drain() returns at once below the high-water mark
            finally:
                writer.close()
                await writer.wait_closed()

        server = await ossl_ktls.aio.start_server(handle, HOST, 0, context=sctx)
        async with server:
            task = asyncio.create_task(client(server.sockets[0].getsockname()[1]))
            await halfway.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            received = await got
        return bytes(sent), received

    gc.collect()  # descriptors of earlier tests' garbage must not close during this one
    before = _fd_count()
    sent, received = _run(main())
    gc.collect()
    assert _fd_count() == before
    assert 1024 * 1024 <= len(sent) < 8 * 1024 * 1024
    assert digest(received) == digest(sent)


def test_handshake_cancel_timeout_and_failure_leak_nothing(certs: Certs) -> None:
    """Handshakes that never finish or fail close their sockets; the loop never blocks.

    A client cancelled while the server never answers the ClientHello, a server whose
    client never sends one (handshake_timeout), and a certificate name mismatch
    (OpenSSL.SSL.Error, as in the synchronous API) leave no descriptor open; meanwhile
    the loop keeps running other work.
    """
    cctx, sctx = _contexts(certs, "1.3", "aes-128-gcm")

    async def main() -> None:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick_task = asyncio.create_task(ticker())

        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # plain TCP server that never speaks TLS
            writer.close()

        silent = await asyncio.start_server(mute, HOST, 0)
        async with silent:
            port = silent.sockets[0].getsockname()[1]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(
                    ossl_ktls.aio.open_connection(
                        HOST, port, context=cctx, server_hostname="localhost"
                    ),
                    0.5,
                )
            with pytest.raises(TimeoutError):
                await ossl_ktls.aio.open_connection(
                    HOST, port, context=cctx, server_hostname="localhost", handshake_timeout=0.3
                )

        async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            raise AssertionError("no connection should complete")

        server = await ossl_ktls.aio.start_server(
            never, HOST, 0, context=sctx, handshake_timeout=2.0
        )
        async with server:
            port = server.sockets[0].getsockname()[1]
            raw_reader, raw_writer = await asyncio.open_connection(HOST, port)
            assert await raw_reader.read() == b""  # the server gave up and closed
            raw_writer.close()
            await raw_writer.wait_closed()
            with pytest.raises(SSL.Error):
                await ossl_ktls.aio.open_connection(
                    HOST, port, context=cctx, server_hostname="wrong.example"
                )
        tick_task.cancel()
        assert ticks > 10

    gc.collect()  # descriptors of earlier tests' garbage must not close during this one
    before = _fd_count()
    _run(main())
    gc.collect()
    assert _fd_count() == before


class _Recorder(asyncio.Protocol):
    """A plain Protocol that keeps what arrives and the transport's calls, in order."""

    def __init__(self) -> None:
        self.transport: ossl_ktls.aio.KTLSTransport | None = None
        self.data = bytearray()
        self.events: list[tuple[str, int]] = []  # (call, write-buffer size at the call)
        self.resumed = asyncio.get_running_loop().create_future()
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, ossl_ktls.aio.KTLSTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.events.append(("pause", self.transport.get_write_buffer_size()))

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.events.append(("resume", self.transport.get_write_buffer_size()))
        if not self.resumed.done():
            self.resumed.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


async def _connect(
    port: int, ctx: SSL.Context, protocol: asyncio.BaseProtocol, **kwds: Any
) -> ossl_ktls.aio.KTLSTransport:
    transport, _ = await ossl_ktls.aio.create_connection(
        lambda: protocol, HOST, port, context=ctx, server_hostname="localhost", **kwds
    )
    return transport


@pytest.mark.parametrize("version", VERSIONS)
def test_write_buffer_limits_pause_and_resume_writing(certs: Certs, version: str) -> None:
    """The write-buffer limits pause the protocol above the high mark, resume it at the low.

    Limits default to (16 KiB, 64 KiB); ``high`` alone sets low = high // 4, ``low`` alone
    sets high = 4 * low, and high < low is a ValueError that changes nothing. With a peer
    that does not read (small socket buffers), 4 MiB queued by ``writelines`` under a
    1 GiB mark pauses nothing; lowering the mark below what is queued pauses the protocol
    at once, and only once; when the peer reads, the protocol resumes once, with the
    buffer at or below the low mark; the peer gets every byte, in order, then close_notify.
    """
    cctx, sctx = _contexts(certs, version, "aes-128-gcm")
    chunks = [os.urandom(64 * 1024 + i) for i in range(64)]
    go = threading.Event()

    def serve(conn: SSL.Connection) -> tuple[bytes, str]:
        go.wait(DEADLINE)
        data, end = read_until_end(conn)
        return data, type(end).__name__

    port, peer = _thread_server(sctx, serve, rcvbuf=32 * 1024)

    async def main() -> list[tuple[str, int]]:
        proto = _Recorder()
        transport = await _connect(port, cctx, proto)
        transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024
        )
        assert transport.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        transport.set_write_buffer_limits(high=40000)
        assert transport.get_write_buffer_limits() == (10000, 40000)
        transport.set_write_buffer_limits(low=1000)
        assert transport.get_write_buffer_limits() == (1000, 4000)
        with pytest.raises(ValueError, match="must be >="):
            transport.set_write_buffer_limits(high=10, low=20)
        assert transport.get_write_buffer_limits() == (1000, 4000)

        transport.set_write_buffer_limits(high=2**30)
        transport.writelines(chunks)
        queued = transport.get_write_buffer_size()
        assert queued > 2 * 1024 * 1024
        assert proto.events == []
        transport.set_write_buffer_limits(high=256 * 1024, low=32 * 1024)
        assert proto.events == [("pause", queued)]
        transport.set_write_buffer_limits(high=128 * 1024, low=32 * 1024)
        assert proto.events == [("pause", queued)]
        go.set()
        await proto.resumed
        assert len(proto.events) == 2
        assert proto.events[1][0] == "resume"
        assert proto.events[1][1] <= 32 * 1024
        transport.close()
        assert await proto.lost is None
        return proto.events

    events = _run(main())
    assert len(events) == 2
    data, end = peer.result()
    assert end == "ZeroReturnError"
    assert digest(data) == digest(b"".join(chunks))


class _BufferedRecorder(asyncio.BufferedProtocol):
    """A BufferedProtocol with a small buffer (of *size* bytes): what arrives, and the end."""

    def __init__(self, size: int) -> None:
        self._buf = bytearray(size)
        self.data = bytearray()
        self.calls: list[str] = []
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buf)

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self._buf[:nbytes]

    def eof_received(self) -> bool:
        self.calls.append(f"eof after {len(self.data)}")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.calls.append("lost")
        self.lost.set_result(exc)


@pytest.mark.parametrize("version", VERSIONS)
def test_buffered_protocol(certs: Certs, version: str) -> None:
    """A BufferedProtocol gets the stream through get_buffer()/buffer_updated(), intact.

    1.5 MiB from a pyOpenSSL peer arrive through a 1000-byte buffer, then eof_received()
    once, after the last byte (the peer's close_notify), then connection_lost(None). A
    get_buffer() that returns an empty buffer is a fatal read error: the loop's exception
    handler hears of it and connection_lost() gets the RuntimeError.
    """
    cctx, sctx = _contexts(certs, version, "aes-128-gcm")
    response = os.urandom(1536 * 1024 + 13)

    def serve(conn: SSL.Connection) -> bytes:
        conn.sendall(response)
        conn.shutdown()
        data, _ = read_until_end(conn)
        return data

    port, peer = _thread_server(sctx, serve)

    async def whole() -> tuple[bytes, list[str], BaseException | None]:
        proto = _BufferedRecorder(1000)
        await _connect(port, cctx, proto)
        exc = await proto.lost
        return bytes(proto.data), proto.calls, exc

    data, calls, exc = _run(whole())
    assert digest(data) == digest(response)
    assert calls == [f"eof after {len(response)}", "lost"]
    assert exc is None
    assert peer.result() == b""

    port, peer = _thread_server(sctx, serve)

    async def empty_buffer() -> tuple[BaseException | None, list[dict[str, Any]]]:
        handled: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: handled.append(ctx))
        proto = _BufferedRecorder(0)
        await _connect(port, cctx, proto)
        return await proto.lost, handled

    exc, handled = _run(empty_buffer())
    assert isinstance(exc, RuntimeError)
    assert "empty buffer" in str(exc)
    assert [ctx["message"] for ctx in handled] == ["Fatal read error on kTLS transport"]
    assert handled[0]["exception"] is exc
    with contextlib.suppress(SSL.Error):
        peer.result()  # the peer's sendall may fail: the transport closed without reading


def test_writes_after_close_write_eof_and_abort(
    certs: Certs, caplog: pytest.LogCaptureFixture
) -> None:
    """What a closed or half-closed transport does with writes, and what abort() sends.

    After close(), writes are dropped (after five of them a warning is logged) and the
    peer gets exactly what was written before, then close_notify. After write_eof(),
    write() raises RuntimeError. abort() sends no close_notify: the peer's read ends in
    an error (a truncated stream), not a clean EOF, after a prefix of what was written;
    the protocol's connection_lost() gets None.
    """
    cctx, sctx = _contexts(certs, "1.3", "aes-128-gcm")
    before, dropped = os.urandom(300 * 1024 + 1), os.urandom(1000)

    def serve(conn: SSL.Connection) -> tuple[bytes, str]:
        data, end = read_until_end(conn)
        return data, type(end).__name__

    port, peer = _thread_server(sctx, serve)

    async def closed() -> BaseException | None:
        proto = _Recorder()
        transport = await _connect(port, cctx, proto)
        transport.write(before)
        transport.close()
        assert transport.is_closing()
        for _ in range(constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES):
            transport.write(dropped)
        return await proto.lost

    with caplog.at_level(logging.WARNING, logger="ossl_ktls.aio"):
        assert _run(closed()) is None
    assert [r.getMessage() for r in caplog.records] == [
        "write() on a closed kTLS transport: data dropped"
    ]
    data, end = peer.result()
    assert end == "ZeroReturnError"
    assert digest(data) == digest(before)

    port, peer = _thread_server(sctx, serve)

    async def half_closed() -> None:
        proto = _Recorder()
        transport = await _connect(port, cctx, proto)
        transport.write(before)
        transport.write_eof()
        with pytest.raises(RuntimeError, match="after write_eof"):
            transport.write(dropped)
        transport.close()
        assert await proto.lost is None

    _run(half_closed())
    data, end = peer.result()
    assert end == "ZeroReturnError"
    assert digest(data) == digest(before)

    port, peer = _thread_server(sctx, serve)

    async def aborted() -> BaseException | None:
        proto = _Recorder()
        transport = await _connect(port, cctx, proto)
        transport.write(before)
        transport.abort()
        assert transport.is_closing()
        return await proto.lost

    assert _run(aborted()) is None
    data, end = peer.result()
    assert end != "ZeroReturnError"
    assert before.startswith(data)


def test_close_waits_for_the_peer_at_most_shutdown_timeout(certs: Certs) -> None:
    """After close_notify, close() waits for the peer's end, but no longer than the timeout.

    The peer reads everything to a clean EOF (our close_notify), then keeps its side
    open and silent; with ``shutdown_timeout=0.5`` connection_lost(None) comes no sooner
    than 0.5 s after close() and while the peer still holds the connection.
    """
    cctx, sctx = _contexts(certs, "1.3", "aes-128-gcm")
    request = os.urandom(200 * 1024 + 3)
    released = threading.Event()

    def serve(conn: SSL.Connection) -> tuple[bytes, str, bool]:
        data, end = read_until_end(conn)
        return data, type(end).__name__, released.wait(DEADLINE)

    port, peer = _thread_server(sctx, serve)

    async def main() -> tuple[float, BaseException | None]:
        loop = asyncio.get_running_loop()
        proto = _Recorder()
        transport = await _connect(port, cctx, proto, shutdown_timeout=0.5)
        transport.write(request)
        start = loop.time()
        transport.close()
        exc = await proto.lost
        waited = loop.time() - start
        released.set()
        return waited, exc

    waited, exc = _run(main())
    assert exc is None
    assert waited >= 0.5
    data, end, held = peer.result()
    assert held
    assert end == "ZeroReturnError"
    assert digest(data) == digest(request)
