"""Interop with curl (OpenSSL backend): ossl_ktls as an HTTPS/1.1 server.

The server runs in a thread: it reads the request line, headers and body through
``makefile("rb")`` (kernel RX where the kernel took RX), answers with the headers
(``sendall(more=True)``) and the body with ``sendfile`` (zero-copy through kernel TX
where the kernel took TX), then closes with close_notify. curl is the judge: it must
get a well-formed response whose body has the size and SHA-256 of the file.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from OpenSSL import SSL

import ossl_ktls
from interop.conftest import Handover, PeerFactory
from interop.peers import (
    BIG_BYTES,
    MATRIX,
    MATRIX_BYTES,
    TIMEOUT,
    CertSet,
    Listener,
    Payload,
    assert_received,
    curl_argv,
    digest,
    make_payload,
    matrix_id,
    server_context,
)

MATRIX_IDS = [matrix_id(v, c) for v, c in MATRIX]
CURL = "curl"


@dataclass
class Served:
    """What the HTTP server thread saw and did."""

    conn: ossl_ktls.KTLSConnection | None = None
    request_line: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    body: tuple[int, str] | None = None
    sent: int = 0
    error: BaseException | None = None


def _serve_one(listener: Listener, ctx: SSL.Context, body_file: Path, served: Served) -> None:
    """Accept one connection, read one HTTP/1.1 request, answer it with *body_file*."""
    try:
        k = listener.accept(ctx)
        served.conn = k
        reader = k.makefile("rb")
        served.request_line = reader.readline(8192)
        while True:
            line = reader.readline(8192)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            served.headers[name.strip().lower()] = value.strip()
        length = int(served.headers.get("content-length", "0"))
        body = reader.read(length) if length else b""
        served.body = digest(body)
        size = body_file.stat().st_size
        head = (
            "HTTP/1.1 200 OK\r\n"
            "Content-Type: application/octet-stream\r\n"
            f"Content-Length: {size}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        k.sendall(head, more=True)  # the headers share a record with the file's start
        with open(body_file, "rb") as f:
            served.sent = k.sendfile(f)
        k.shutdown()
        k.close()
    except BaseException as exc:  # re-raised by the test thread
        served.error = exc


def _run_curl(
    peers: PeerFactory,
    certs: CertSet,
    tmp_path: Path,
    version: str,
    cipher: str,
    download: Payload,
    upload: Payload | None,
) -> Served:
    body_file = download.write_to(tmp_path / "download.bin")
    up_file = upload.write_to(tmp_path / "upload.bin") if upload is not None else None
    out = tmp_path / "curl.out"
    listener = peers.listen()
    served = Served()
    server = threading.Thread(
        target=_serve_one,
        args=(listener, server_context(certs, version, cipher), body_file, served),
        name="https-server",
        daemon=True,
    )
    server.start()
    argv = curl_argv(
        listener.port, certs, version, cipher, path="/download.bin", output=out, upload=up_file
    )
    curl = peers.client(CURL, argv, stdout="log")
    status = curl.wait()
    server.join(TIMEOUT)
    assert not server.is_alive(), "the HTTPS server thread did not finish"
    if served.error is not None:
        raise served.error
    assert status == 0, f"curl exited with status {status}"
    curl.log.wait_for(rf"stdout: 200 {download.size}\b")
    assert served.sent == download.size
    assert_received("curl received", *digest(out.read_bytes()), download)
    return served


@pytest.mark.parametrize(("version", "cipher"), MATRIX, ids=MATRIX_IDS)
def test_server_against_curl(
    peers: PeerFactory,
    certs: CertSet,
    handover: Handover,
    tmp_path: Path,
    version: str,
    cipher: str,
) -> None:
    """curl POSTs 1 MiB to our HTTPS server and downloads 1 MiB sent with ``sendfile``.

    Contract: declared handover path; the request (line, headers and a 1 MiB body)
    read through ``makefile`` arrives intact (body size and SHA-256); the response
    (headers with MSG_MORE, then the file by ``sendfile``) is a valid HTTP/1.1
    response for curl ("200", full length) with the file's exact size and SHA-256;
    curl exits with status 0.
    """
    upload = make_payload(MATRIX_BYTES, seed=60)
    download = make_payload(MATRIX_BYTES, seed=61)
    served = _run_curl(peers, certs, tmp_path, version, cipher, download, upload)
    assert served.conn is not None
    handover(served.conn, peer=CURL, role="server", version=version, cipher=cipher)
    assert served.request_line == b"POST /download.bin HTTP/1.1\r\n"
    assert served.body == (upload.size, upload.sha256), "the request body arrived damaged"


def test_big_download_by_curl(
    peers: PeerFactory, certs: CertSet, handover: Handover, tmp_path: Path
) -> None:
    """The suite's one big transfer: curl downloads ``OSSL_KTLS_INTEROP_BIG_BYTES``
    (default 64 MiB) sent by one ``sendfile`` call (TLS 1.3, AES-128-GCM).

    Contract: declared handover path; curl gets exactly the file (size, SHA-256): no
    record lost, reordered or mis-numbered over some 4000 records.
    """
    version, cipher = "1.3", "aes-128-gcm"
    download = make_payload(BIG_BYTES, seed=62)
    served = _run_curl(peers, certs, tmp_path, version, cipher, download, None)
    assert served.conn is not None
    handover(served.conn, peer=CURL, role="server", version=version, cipher=cipher)
    assert served.request_line == b"GET /download.bin HTTP/1.1\r\n"
