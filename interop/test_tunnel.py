"""``ossl-ktls tunnel`` between peers nobody here wrote.

Server mode (TLS in, plain TCP out): ``openssl s_client`` and curl in front, a plain TCP
backend (this file's, in Python) behind. Client mode (plain in, TLS out): a plain TCP
client in front, ``openssl s_server`` and ``gnutls-serv`` behind. The tunnel runs as its
own process (``python -m ossl_ktls tunnel --json``); its per-connection JSON events say
where each direction ran, which must be what the environment declares.

Every transfer is checked by size and SHA-256 at the receiving end; half-close each way
(close_notify <-> FIN) with data still flowing the other way; 50 connections at once; and
damage from the fault proxy (a flipped bit, a cut, a reset), after which the plain side
must see a reset, never a clean end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL

from interop.conftest import PeerFactory
from interop.peers import (
    HOST,
    TIMEOUT,
    VERSIONS,
    CertSet,
    Payload,
    Peer,
    assert_received,
    curl_argv,
    digest,
    expected_directions,
    gnutls_serv_argv,
    make_payload,
    make_text_payload,
    s_client_argv,
    s_server_argv,
)
from tests._proxy import FaultProxy

TUNNEL = "ossl-ktls tunnel"
CIPHER = "aes-128-gcm"
_EVENT = b'"event": "connection"'


# ---------------------------------------------------------------- the tunnel process


def start_tunnel(peers: PeerFactory, *args: str) -> tuple[Peer, int]:
    """``ossl-ktls tunnel --json`` on a free loopback port; (peer, port) once it listens."""
    return peers.server(
        TUNNEL,
        lambda port: [
            sys.executable,
            "-m",
            "ossl_ktls",
            "tunnel",
            "--accept",
            f"{HOST}:{port}",
            "--timeout",
            str(TIMEOUT),
            *args,
            "--json",
        ],
        stdout="keep",
    )


def server_args(certs: CertSet, backend: int, version: str) -> list[str]:
    return [
        "--connect",
        f"{HOST}:{backend}",
        "--cert",
        str(certs.cert),
        "--key",
        str(certs.key),
        "--tls",
        version,
        "--cipher",
        CIPHER,
    ]


def client_args(certs: CertSet, upstream: int, version: str) -> list[str]:
    return [
        "--client",
        "--connect",
        f"{HOST}:{upstream}",
        "--cafile",
        str(certs.ca),
        "--servername",
        "localhost",
        "--tls",
        version,
        "--cipher",
        CIPHER,
    ]


def events(tunnel: Peer, count: int) -> list[dict[str, Any]]:
    """The first *count* connection events (waiting for them)."""
    tunnel.sink.wait_count(_EVENT, count)
    lines = tunnel.sink.data().decode().splitlines()
    found = [json.loads(line) for line in lines if line.startswith("{")]
    return [e for e in found if e.get("event") == "connection"][:count]


def check_event(
    event: dict[str, Any], version: str, *, result: str = "ok", to_tls: int, from_tls: int
) -> None:
    """A connection event: the result, the byte counts and where each direction ran."""
    assert event["result"] == result, event
    assert event["tls_version"] == version and event["cipher"] == CIPHER, event
    tx, rx = expected_directions(version, CIPHER)
    assert (event["ktls_tx"], event["ktls_rx"]) == (tx, rx), event
    assert event["plain_to_tls"] == ("kernel TX, spliced" if tx else "user space, copied")
    assert event["tls_to_plain"] == ("kernel RX, spliced" if rx else "user space, copied")
    if result == "ok":
        assert (event["bytes_to_tls"], event["bytes_from_tls"]) == (to_tls, from_tls), event


# ---------------------------------------------------------------- plain TCP ends


class Backend:
    """A plain TCP server: each connection runs *handler* in a thread; results kept."""

    def __init__(self, handler: Callable[[socket.socket], Any]) -> None:
        self.listener = socket.create_server((HOST, 0), backlog=128)
        self.port: int = self.listener.getsockname()[1]
        self._handler = handler
        self._lock = threading.Condition()
        self.results: list[Any] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._run, args=(sock,), daemon=True).start()

    def _run(self, sock: socket.socket) -> None:
        sock.settimeout(TIMEOUT)
        try:
            result = self._handler(sock)
        except BaseException as exc:
            result = exc
        finally:
            sock.close()
        with self._lock:
            self.results.append(result)
            self._lock.notify_all()

    def wait(self, count: int) -> list[Any]:
        with self._lock:
            assert self._lock.wait_for(lambda: len(self.results) >= count, TIMEOUT), (
                f"the backend finished {len(self.results)} of {count} connections"
            )
            return list(self.results)

    def close(self) -> None:
        self.listener.close()


def read_to_end(sock: socket.socket) -> tuple[bytes, str]:
    """Read until the stream ends; what came, and how it ended ("eof" or "reset")."""
    got = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return bytes(got), "reset"
        if not chunk:
            return bytes(got), "eof"
        got += chunk


def echo_after_end(sock: socket.socket) -> tuple[int, str]:
    """Read the stream to its end, then send it back and a FIN; (size, sha256) of it."""
    got, end = read_to_end(sock)
    assert end == "eof", "the stream was reset"
    sock.sendall(got)
    sock.shutdown(socket.SHUT_WR)
    return digest(got)


def echo(sock: socket.socket) -> tuple[int, str]:
    """Send back everything, then a FIN at EOF; (size, sha256) of what came."""
    sha, size = hashlib.sha256(), 0
    while chunk := sock.recv(1 << 20):
        sha.update(chunk)
        size += len(chunk)
        sock.sendall(chunk)
    sock.shutdown(socket.SHUT_WR)
    return size, sha.hexdigest()


# ---------------------------------------------------------------- server mode


@pytest.mark.parametrize("version", VERSIONS)
def test_server_mode_behind_s_client(peers: PeerFactory, certs: CertSet, version: str) -> None:
    """``openssl s_client`` -> tunnel -> plain backend.

    The backend sends 1 MiB first; s_client gets it intact. s_client then sends 256 KiB
    and its close_notify, which reaches the backend as the data and a FIN (half-close);
    the backend answers with its own FIN, which reaches s_client as close_notify, and
    s_client exits with status 0. The tunnel reports both counts and the directions."""
    down, up = make_payload(1 << 20, seed=101), make_payload(256 << 10, seed=102)

    def handler(sock: socket.socket) -> tuple[bytes, str]:
        sock.sendall(down.data)
        got = read_to_end(sock)
        sock.shutdown(socket.SHUT_WR)
        return got

    backend = Backend(handler)
    tunnel, port = start_tunnel(peers, *server_args(certs, backend.port, version))
    cli = peers.client(
        "openssl s_client",
        s_client_argv(port, certs, version, CIPHER, extra=["-no_ign_eof"]),
    )
    cli.sink.wait_size(down.size)
    assert_received("s_client received", cli.sink.size, cli.sink.sha256, down)
    cli.feed(up.data, close=True)
    [(got, end)] = backend.wait(1)
    assert end == "eof"
    assert_received("the backend received", *digest(got), up)
    assert cli.wait() == 0
    [event] = events(tunnel, 1)
    check_event(event, version, to_tls=down.size, from_tls=up.size)
    backend.close()


def _http_backend(body: Payload) -> Callable[[socket.socket], tuple[int, str]]:
    """A plain HTTP/1.1 server: reads one request (and its body), answers *body*."""

    def handler(sock: socket.socket) -> tuple[int, str]:
        head = bytearray()
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            assert chunk, "the request ended before its head"
            head += chunk
        header, _, rest = bytes(head).partition(b"\r\n\r\n")
        length = 0
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        received = bytearray(rest)
        while len(received) < length:
            chunk = sock.recv(1 << 20)
            assert chunk, "the request body was cut"
            received += chunk
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            + f"Content-Length: {body.size}\r\nConnection: close\r\n\r\n".encode()
        )
        view = memoryview(body.data)
        for i in range(0, len(view), 1 << 20):
            sock.sendall(view[i : i + (1 << 20)])
        sock.shutdown(socket.SHUT_WR)
        read_to_end(sock)
        return digest(bytes(received))

    return handler


@pytest.mark.parametrize(
    ("version", "down_size", "up_size"),
    [
        ("1.2", 1 << 20, 1 << 20),
        ("1.3", 1 << 20, 1 << 20),
        ("1.3", 0, 0),
        ("1.3", 64 << 20, 0),
    ],
    ids=["tls1.2-1MiB", "tls1.3-1MiB", "tls1.3-empty", "tls1.3-64MiB"],
)
def test_server_mode_behind_curl(
    peers: PeerFactory,
    certs: CertSet,
    tmp_path: Path,
    version: str,
    down_size: int,
    up_size: int,
) -> None:
    """curl -> tunnel -> a plain HTTP backend: curl's upload reaches the backend and the
    download reaches curl, each byte-exact (0 bytes to 64 MiB); curl exits with 0."""
    down = make_payload(down_size, seed=110 + down_size % 7)
    up = make_payload(up_size, seed=120)
    backend = Backend(_http_backend(down))
    tunnel, port = start_tunnel(peers, *server_args(certs, backend.port, version))
    out = tmp_path / "download.bin"
    upload = None
    if up_size:
        upload = tmp_path / "upload.bin"
        upload.write_bytes(up.data)
    argv = curl_argv(port, certs, version, CIPHER, path="/f", output=out, upload=upload)
    curl = peers.client("curl", argv, stdout="log")
    assert curl.wait() == 0
    [received] = backend.wait(1)
    assert received == (up.size, up.sha256), "the upload arrived damaged"
    assert_received("curl received", *digest(out.read_bytes()), down)
    [event] = events(tunnel, 1)
    check_event(event, version, to_tls=event["bytes_to_tls"], from_tls=event["bytes_from_tls"])
    assert event["bytes_to_tls"] > down.size and event["bytes_from_tls"] >= up.size
    backend.close()


def _tls_client(certs: CertSet, port: int, version: str) -> SSL.Connection:
    """A plain pyOpenSSL client (not ours: the tunnel is what is tested)."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    v = SSL.TLS1_3_VERSION if version == "1.3" else SSL.TLS1_2_VERSION
    ctx.set_min_proto_version(v)
    ctx.set_max_proto_version(v)
    ctx.load_verify_locations(str(certs.ca))
    ctx.set_verify(SSL.VERIFY_PEER)
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    sock.settimeout(None)
    conn = SSL.Connection(ctx, sock)
    conn.set_connect_state()
    conn.set_tlsext_host_name(b"localhost")
    conn.do_handshake()
    return conn


def _tls_read_to_end(conn: SSL.Connection) -> tuple[bytes, str]:
    got = bytearray()
    while True:
        try:
            chunk = conn.recv(1 << 20)
        except SSL.ZeroReturnError:
            return bytes(got), "close_notify"
        except (SSL.Error, OSError) as exc:
            return bytes(got), f"error: {exc!r}"
        if not chunk:
            return bytes(got), "eof without close_notify"
        got += chunk


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("first", ["tls", "plain"])
def test_half_close_each_way(peers: PeerFactory, certs: CertSet, version: str, first: str) -> None:
    """One side ends its direction first, and the other direction still carries 2 MiB.

    ``first="tls"``: the TLS client sends 1 MiB and close_notify, then only reads; the
    backend reads that and the FIN, then sends 2 MiB and its FIN, which the client gets
    with close_notify (in TLS 1.2 too: the tunnel does not answer close_notify early).
    ``first="plain"``: the backend sends 1 MiB and its FIN first; the client reads it and
    close_notify, then sends 2 MiB and its close_notify, which the backend reads with a
    FIN."""
    short, long = make_payload(1 << 20, seed=130), make_payload(2 << 20, seed=131)

    def handler(sock: socket.socket) -> tuple[bytes, str]:
        if first == "tls":
            got = read_to_end(sock)
            sock.sendall(long.data)
            sock.shutdown(socket.SHUT_WR)
            return got
        sock.sendall(short.data)
        sock.shutdown(socket.SHUT_WR)
        return read_to_end(sock)

    backend = Backend(handler)
    tunnel, port = start_tunnel(peers, *server_args(certs, backend.port, version))
    conn = _tls_client(certs, port, version)
    if first == "tls":
        conn.sendall(short.data)
        conn.shutdown()
        got, end = _tls_read_to_end(conn)
        sent_by_backend, sent_by_client = long, short
    else:
        got, end = _tls_read_to_end(conn)
        conn.sendall(long.data)
        conn.shutdown()
        sent_by_backend, sent_by_client = short, long
    [(backend_got, backend_end)] = backend.wait(1)
    conn.close()  # pyOpenSSL passes close() to the socket
    assert end == "close_notify"
    assert_received("the client received", *digest(got), sent_by_backend)
    assert backend_end == "eof"
    assert_received("the backend received", *digest(backend_got), sent_by_client)
    [event] = events(tunnel, 1)
    check_event(event, version, to_tls=sent_by_backend.size, from_tls=sent_by_client.size)
    backend.close()


def test_fifty_at_once(peers: PeerFactory, certs: CertSet) -> None:
    """50 TLS clients at once through one tunnel, sizes from 0 to 512 KiB, to a backend
    that reads each stream to its end and sends it back: every client gets back exactly
    what it sent (SHA-256 per connection), and the tunnel reports 50 clean connections."""
    count = 50
    backend = Backend(echo_after_end)
    tunnel, port = start_tunnel(
        peers, *server_args(certs, backend.port, "1.3"), "--max-clients", "64"
    )
    payloads = [make_payload((i * 10_487) % (512 << 10), seed=200 + i) for i in range(count)]
    outcomes: list[Any] = [None] * count

    def one(i: int) -> None:
        # One thread per Connection: pyOpenSSL's are not safe to share between threads.
        try:
            conn = _tls_client(certs, port, "1.3")
            conn.sendall(payloads[i].data)
            conn.shutdown()
            got, end = _tls_read_to_end(conn)
            conn.close()
            outcomes[i] = (digest(got), end)
        except BaseException as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 2)
    for i, outcome in enumerate(outcomes):
        assert outcome == ((payloads[i].size, payloads[i].sha256), "close_notify"), (i, outcome)
    assert sorted(backend.wait(count)) == sorted((p.size, p.sha256) for p in payloads)
    found = events(tunnel, count)
    assert [e["result"] for e in found] == ["ok"] * count
    for e in found:
        check_event(e, "1.3", to_tls=e["bytes_to_tls"], from_tls=e["bytes_from_tls"])
        assert e["bytes_to_tls"] == e["bytes_from_tls"]
    backend.close()


def test_sigterm_lets_open_connections_finish(peers: PeerFactory, certs: CertSet) -> None:
    """SIGTERM with a connection open: the tunnel stops accepting (a new connection is
    refused), the open one still moves all its bytes, then the tunnel exits with 0."""
    backend = Backend(echo)
    tunnel, port = start_tunnel(peers, *server_args(certs, backend.port, "1.3"))
    conn = _tls_client(certs, port, "1.3")
    first = make_payload(300_000, seed=140)
    conn.sendall(first.data)
    got = bytearray()
    while len(got) < first.size:
        got += conn.recv(1 << 20)
    assert tunnel.proc is not None
    os.kill(tunnel.proc.pid, signal.SIGTERM)
    tunnel.sink.wait_contains(b'"event": "stopping"')  # the listener is closed
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((HOST, port), timeout=TIMEOUT)
    second = make_payload(700_000, seed=141)
    conn.sendall(second.data)
    conn.shutdown()
    rest, end = _tls_read_to_end(conn)
    assert end == "close_notify"
    assert_received("the client got back", *digest(bytes(got) + rest), first.data + second.data)
    assert tunnel.wait() == 0
    [event] = events(tunnel, 1)
    assert event["result"] == "ok" and event["bytes_to_tls"] == 1_000_000
    backend.close()


# ---------------------------------------------------------------- client mode


def _plain_client(port: int) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=TIMEOUT)


@pytest.mark.parametrize("version", VERSIONS)
def test_client_mode_in_front_of_s_server(peers: PeerFactory, certs: CertSet, version: str) -> None:
    """plain client -> tunnel --client -> ``openssl s_server``.

    The client sends 256 KiB, which s_server gets intact (the TLS session is up: s_server
    may not be fed before it, or it may write into a handshake in progress); s_server
    then sends 1 MiB, which the client gets intact; the client's FIN reaches s_server as
    close_notify, s_server answers with its own, which reaches the client as a FIN;
    s_server exits with 0."""
    srv, upstream = peers.server(
        "openssl s_server", lambda p: s_server_argv(p, certs, version, CIPHER)
    )
    tunnel, port = start_tunnel(peers, *client_args(certs, upstream, version))
    down, up = make_payload(1 << 20, seed=150), make_payload(256 << 10, seed=151)
    sock = _plain_client(port)
    sock.sendall(up.data)
    srv.sink.wait_size(up.size)
    assert_received("s_server received", srv.sink.size, srv.sink.sha256, up)
    srv.feed(down.data, close=False)
    got = _recv_exactly(sock, down.size)
    assert_received("the client received", *digest(got), down)
    sock.shutdown(socket.SHUT_WR)
    rest, end = read_to_end(sock)
    sock.close()
    assert (rest, end) == (b"", "eof")
    assert srv.wait() == 0
    [event] = events(tunnel, 1)
    check_event(event, version, to_tls=up.size, from_tls=down.size)


@pytest.mark.parametrize("version", VERSIONS)
def test_client_mode_in_front_of_gnutls_serv(
    peers: PeerFactory, certs: CertSet, version: str
) -> None:
    """plain client -> tunnel --client -> ``gnutls-serv --echo``: 1 MiB of text lines (it
    echoes C strings, line by line) in 64 KiB round trips comes back byte-exact; the
    client's FIN then ends the connection cleanly."""
    _srv, upstream = peers.server(
        "gnutls-serv", lambda p: gnutls_serv_argv(p, certs, version, CIPHER), stdout="log"
    )
    tunnel, port = start_tunnel(peers, *client_args(certs, upstream, version))
    data = make_text_payload(1 << 20, seed=160)
    sock = _plain_client(port)
    echoed = bytearray()
    for offset in range(0, data.size, 64 << 10):
        chunk = data.data[offset : offset + (64 << 10)]
        sock.sendall(chunk)
        echoed += _recv_exactly(sock, len(chunk))
    assert_received("the echo", *digest(bytes(echoed)), data)
    sock.shutdown(socket.SHUT_WR)
    rest, _end = read_to_end(sock)
    sock.close()
    assert rest == b""
    [event] = events(tunnel, 1)
    check_event(event, version, to_tls=data.size, from_tls=data.size)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


# ---------------------------------------------------------------- hostile


def _tls_server(
    certs: CertSet, version: str, data: bytes
) -> tuple[socket.socket, threading.Thread]:
    """A plain pyOpenSSL server that sends *data* slowly enough to be damaged in flight."""
    listener = socket.create_server((HOST, 0))
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    v = SSL.TLS1_3_VERSION if version == "1.3" else SSL.TLS1_2_VERSION
    ctx.set_min_proto_version(v)
    ctx.set_max_proto_version(v)
    ctx.use_certificate_chain_file(str(certs.cert))
    ctx.use_privatekey_file(str(certs.key))

    def serve() -> None:
        with contextlib.suppress(OSError, SSL.Error):
            sock, _ = listener.accept()
            conn = SSL.Connection(ctx, sock)
            conn.set_accept_state()
            conn.do_handshake()
            view = memoryview(data)
            for i in range(0, len(view), 16384):
                conn.sendall(view[i : i + 16384])
            conn.shutdown()
            _tls_read_to_end(conn)
            sock.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return listener, t


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("fault", ["flip", "fin", "rst"])
def test_damage_reaches_the_plain_side_as_a_reset(
    peers: PeerFactory, certs: CertSet, version: str, fault: str
) -> None:
    """TLS server -> fault proxy -> tunnel --client -> plain client. A flipped bit (the
    record fails authentication), a FIN without close_notify, or a reset, 300 KB into a
    1 MB stream: the plain client gets a reset, never a clean end, and what it did get
    is a prefix of what was sent; the tunnel reports the connection as reset."""
    data = make_payload(1_000_000, seed=170)
    listener, server = _tls_server(certs, version, data.data)
    proxy = FaultProxy(listener.getsockname())
    try:
        tunnel, port = start_tunnel(peers, *client_args(certs, proxy.address[1], version))
        # Armed before the connection: the offset counts the handshake too, which is a
        # few KB, so the damage lands in the data.
        proxy.arm(fault, offset=300_000)
        sock = _plain_client(port)
        got, end = read_to_end(sock)
        sock.close()
        assert end == "reset", f"the plain side saw a clean end after {len(got)} bytes"
        assert data.data.startswith(got)
        assert len(got) < data.size
        [event] = events(tunnel, 1)
        assert event["result"] in ("reset", "refused"), event
    finally:
        proxy.close()
        listener.close()
        server.join(TIMEOUT)
