"""``serve``'s HTTP/1.1 edge cases that curl does not reach in ``test_cli.test_serve``:
pipelining, request bodies on a kept-alive connection, the error statuses of malformed or
oversized requests, HTTP/1.0; and that serve without h11 says how to install it.

The server runs as ``python -m ossl_ktls serve`` (``tests._serve.Serve``); the client is the
stdlib: ``ssl`` for TLS and ``http.client``'s response parser (peers we did not write), raw
request bytes written by hand so that several can share one write. Bodies are compared by
size and SHA-256, and how each connection ends is checked: close_notify after the last
response (``suppress_ragged_eofs=False``, so a bare TCP close would fail the read).
"""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import select
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest

import ossl_ktls.cli
from ossl_ktls.cli import main
from tests._serve import REPO, TIMEOUT, Serve, cli_env, stop

BIG = 300 << 10  # bigger than a TLS record and than one recv of the server


class _KeepOpen(io.BufferedReader):
    """A buffered reader that ``http.client`` cannot close: it closes its file after each
    response, and the next pipelined response is read from the same buffer."""

    def close(self) -> None:
        pass

    def release(self) -> None:
        super().close()


class Client:
    """One TLS connection to *server*; send raw requests, read parsed responses in order."""

    def __init__(self, server: Serve) -> None:
        ctx = ssl.create_default_context(cafile=server.ready["cert"])
        raw = socket.create_connection(("127.0.0.1", server.ready["port"]), timeout=TIMEOUT)
        self.tls = ctx.wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False)
        self._file = _KeepOpen(socket.SocketIO(self.tls, "rb"))

    def makefile(self, mode: str) -> io.BufferedReader:
        """What ``http.client.HTTPResponse`` reads from."""
        return self._file

    def send(self, data: bytes) -> None:
        self.tls.sendall(data)

    def response(self, method: str = "GET") -> tuple[int, http.client.HTTPMessage, bytes]:
        """The next response: status, header fields, body."""
        r = http.client.HTTPResponse(cast(socket.socket, self), method=method)
        r.begin()
        return r.status, r.headers, r.read()

    def ends_with_close_notify(self) -> bool:
        """Nothing more comes, and the server said so with close_notify."""
        return self._file.read() == b""

    def close(self) -> None:
        self._file.release()
        self.tls.close()


def digest(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


def request(
    method: str, target: str, *fields: str, body: bytes = b"", version: str = "1.1"
) -> bytes:
    """Raw request bytes: request line, *fields*, blank line, *body*."""
    head = f"{method} {target} HTTP/{version}\r\n" + "".join(f"{f}\r\n" for f in fields)
    return head.encode() + b"\r\n" + body


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Serve, Path]]:
    """serve running on a folder with a 300 KiB random file and a small text file."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(BIG))
    (root / "small.txt").write_bytes(b"small file\n")
    serve = Serve(root)
    try:
        yield serve, root
    finally:
        stop(serve.proc)


def test_pipelined_requests_get_their_responses_in_order(server: tuple[Serve, Path]) -> None:
    """Four requests in one write (GET, a range, HEAD, GET with Connection: close) get four
    responses in order on the one connection, the bodies byte for byte, then close_notify;
    the access log has the four in the same order, from one client."""
    serve, root = server
    big = (root / "big.bin").read_bytes()
    c = Client(serve)
    try:
        c.send(
            request("GET", "/big.bin", "Host: x")
            + request("GET", "/big.bin", "Host: x", "Range: bytes=70000-70099")
            + request("HEAD", "/big.bin", "Host: x")
            + request("GET", "/small.txt", "Host: x", "Connection: close")
        )
        status, _, body = c.response()
        assert (status, digest(body)) == (200, digest(big))
        status, fields, body = c.response()
        assert (status, body) == (206, big[70000:70100])
        assert fields["Content-Range"] == f"bytes 70000-70099/{BIG}"
        status, fields, body = c.response("HEAD")
        assert (status, fields["Content-Length"], body) == (200, str(BIG), b"")
        status, fields, body = c.response()
        assert (status, fields["Connection"], body) == (200, "close", b"small file\n")
        assert c.ends_with_close_notify()
    finally:
        c.close()
    events = [serve.next("request") for _ in range(4)]
    assert [(e["method"], e["status"], e["bytes"]) for e in events] == [
        ("GET", 200, BIG),
        ("GET", 206, 100),
        ("HEAD", 200, 0),
        ("GET", 200, 11),
    ]
    assert len({e["client"] for e in events}) == 1


def test_request_bodies_are_read_and_dropped(server: tuple[Serve, Path]) -> None:
    """On one kept-alive connection: a POST with a Content-Length body and one with a
    chunked body each get 405 (Allow: GET, HEAD) and their bodies are skipped, so the GET
    pipelined behind the second is answered with the whole file; an empty line before the
    next request line is ignored (RFC 9112 2.2)."""
    serve, root = server
    big = (root / "big.bin").read_bytes()
    c = Client(serve)
    try:
        c.send(request("POST", "/big.bin", "Host: x", "Content-Length: 1000", body=b"a" * 1000))
        status, fields, body = c.response()
        assert (status, fields["Allow"], fields["Connection"]) == (405, "GET, HEAD", "keep-alive")
        chunked = b"100\r\n" + b"b" * 256 + b"\r\n5\r\nbbbbb\r\n0\r\n\r\n"
        c.send(
            request("POST", "/big.bin", "Host: x", "Transfer-Encoding: chunked", body=chunked)
            + request("GET", "/big.bin", "Host: x")
        )
        assert c.response()[0] == 405
        status, _, body = c.response()
        assert (status, digest(body)) == (200, digest(big))
        c.send(b"\r\n" + request("GET", "/small.txt", "Host: x", "Connection: close"))
        assert c.response()[::2] == (200, b"small file\n")
        assert c.ends_with_close_notify()
    finally:
        c.close()
    events = [serve.next("request") for _ in range(4)]
    assert [(e["method"], e["status"]) for e in events] == [
        ("POST", 405),
        ("POST", 405),
        ("GET", 200),
        ("GET", 200),
    ]
    assert len({e["client"] for e in events}) == 1


@pytest.mark.parametrize(
    ("sent", "status"),
    [
        (request("GET", "/small.txt", "Host: x", "X-Long: " + "a" * (100 << 10)), 431),
        (request("POST", "/small.txt", "Host: x", f"Content-Length: {1 << 20}"), 413),
        (request("GET", "/small.txt", "Host: x", "Transfer-Encoding: gzip"), 501),
        (request("GET", "/small.txt", "Host: x", version="2.0"), 505),
        (request("GET", "/small.txt"), 400),  # HTTP/1.1 without Host
        (request("OPTIONS", "*", "Host: x"), 400),  # not origin-form
        (request("GET", "/small.txt", "Host: x", "Content-Length: 1", "Content-Length: 2"), 400),
    ],
    ids=[
        "head-too-large",
        "body-too-large",
        "unknown-coding",
        "http-2",
        "no-host",
        "asterisk",
        "two-lengths",
    ],
)
def test_bad_requests_get_an_error_and_the_connection_closes(
    server: tuple[Serve, Path], sent: bytes, status: int
) -> None:
    """A request h11 or the server refuses gets its error status with a text body and
    Connection: close, then close_notify (the 413 comes before any of the body is sent).
    The 431 head is 100 KiB: h11 refuses a head once more than MAX_HEAD (16 KiB) of it is
    buffered incomplete, and the server reads at most 64 KiB at a time, so whatever the
    record boundaries it is refused before its end arrives."""
    serve, _ = server
    c = Client(serve)
    try:
        c.send(sent)
        got, fields, body = c.response()
        phrase = http.client.responses[status]
        assert (got, fields["Connection"], body) == (
            status,
            "close",
            f"{status} {phrase}\n".encode(),
        )
        assert c.ends_with_close_notify()
    finally:
        c.close()
    event = serve.next("request")
    assert (event["status"], event["method"], event["bytes"]) == (status, "-", len(body))


def test_a_client_still_sending_a_refused_request_reads_the_answer(
    server: tuple[Serve, Path],
) -> None:
    """The server lingers after an error status: a client that keeps writing its refused
    request after the 431 is already on its way (as an uploading client does) finishes its
    write and then reads the answer and close_notify, never a reset. The client writes
    100 KiB of an endless head, waits until the answer is readable, then 8 MiB more (more
    than the socket buffers hold: without lingering the server's kernel resets the
    connection under that write)."""
    serve, _ = server
    c = Client(serve)
    try:
        c.send(b"GET /small.txt HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * (100 << 10))
        readable, _, _ = select.select([c.tls], [], [], TIMEOUT)
        assert readable, "no answer to a 100 KiB head"
        c.send(b"a" * (8 << 20))
        got, fields, body = c.response()
        assert (got, fields["Connection"], body) == (
            431,
            "close",
            b"431 " + b"Request Header Fields Too Large\n",
        )
        assert c.ends_with_close_notify()
    finally:
        c.close()
    event = serve.next("request")
    assert (event["status"], event["bytes"]) == (431, len(body))


def test_http_1_0_is_served_and_closed(server: tuple[Serve, Path]) -> None:
    """HTTP/1.0 requests (no Host needed) are answered and the connection closes after the
    response, also when the client asks for keep-alive (h11 keeps no HTTP/1.0 connection)."""
    serve, root = server
    big = (root / "big.bin").read_bytes()
    for fields in ((), ("Connection: keep-alive",)):
        c = Client(serve)
        try:
            c.send(request("GET", "/big.bin", *fields, version="1.0"))
            status, got, body = c.response()
            assert (status, got["Connection"], digest(body)) == (200, "close", digest(big))
            assert c.ends_with_close_notify()
        finally:
            c.close()
        event = serve.next("request")
        assert (event["http"], event["status"], event["bytes"]) == ("1.0", 200, BIG)


def test_serve_without_h11_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without h11 (the cli extra), serve exits 1 with one line naming the extra to install."""
    monkeypatch.setitem(sys.modules, "h11", None)  # import h11 raises ModuleNotFoundError
    monkeypatch.delitem(sys.modules, "ossl_ktls.cli._http", raising=False)
    monkeypatch.delattr(ossl_ktls.cli, "_http", raising=False)  # or "from . import" finds it
    # A ROOT that does not exist: were h11 still found, serve would fail on it, not serve.
    assert main(["serve", str(tmp_path / "missing"), "--port", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "ossl-ktls: error: serve needs h11, which is not installed: pip install 'ossl-ktls[cli]'"
    ]


def test_library_and_other_commands_do_not_import_h11() -> None:
    """h11 is the serve command's alone: the library, asyncio and the CLI module do not load it."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, ossl_ktls, ossl_ktls.aio, ossl_ktls.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'h11'))",
        ],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )
    assert done.stdout.strip() == "[]"
