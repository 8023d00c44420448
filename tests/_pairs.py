"""Connected pyOpenSSL client/server pairs on loopback, and a peer thread that never hangs."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from OpenSSL import SSL

import ossl_ktls
from ossl_ktls._openssl import state_of
from ossl_ktls._suites import SUITES, openssl_tls12_names, openssl_tls13_name
from tests.expectations import ALL_CIPHERS

TIMEOUT = 120.0  # generous: TCG emulation is slow, but nothing may hang forever
VERSIONS = ("1.2", "1.3")
CIPHERS = ALL_CIPHERS


@dataclass(frozen=True)
class Certs:
    """PEM files: the CA, and key+chain for an ECDSA and an RSA server certificate."""

    ca: Path
    ecdsa: Path
    rsa: Path


def make_certs(folder: Path) -> Certs:
    """Issue a throwaway CA and two 'localhost' server certificates into *folder*."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    ecdsa = ca.issue_cert("localhost", "127.0.0.1")
    ecdsa.private_key_and_cert_chain_pem.write_to_path(str(folder / "ecdsa.pem"))
    rsa_ca = trustme.CA(key_type=trustme.KeyType.RSA)
    rsa = rsa_ca.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.RSA)
    rsa.private_key_and_cert_chain_pem.write_to_path(str(folder / "rsa.pem"))
    with open(folder / "ca.pem", "ab") as f:
        f.write(rsa_ca.cert_pem.bytes())
    return Certs(ca=folder / "ca.pem", ecdsa=folder / "ecdsa.pem", rsa=folder / "rsa.pem")


def make_context(
    certs: Certs,
    *,
    server: bool,
    version: str,
    cipher: str,
    key: str = "ecdsa",
    prepare: bool = True,
) -> SSL.Context:
    """A Context pinned to one TLS version and one cipher, prepared for ossl_ktls."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD if server else SSL.TLS_CLIENT_METHOD)
    v = SSL.TLS1_3_VERSION if version == "1.3" else SSL.TLS1_2_VERSION
    ctx.set_min_proto_version(v)
    ctx.set_max_proto_version(v)
    suite = SUITES[cipher]
    if version == "1.3":
        ctx.set_tls13_ciphersuites(openssl_tls13_name(suite).encode())
    else:
        names = openssl_tls12_names(suite)
        name = names.ecdsa if key == "ecdsa" else names.rsa
        assert name is not None
        ctx.set_cipher_list(name.encode())
    if server:
        pem = str(certs.ecdsa if key == "ecdsa" else certs.rsa)
        ctx.use_certificate_chain_file(pem)
        ctx.use_privatekey_file(pem)
    else:
        ctx.load_verify_locations(str(certs.ca))
        ctx.set_verify(SSL.VERIFY_PEER)
    if prepare:
        ossl_ktls.prepare(ctx)
    return ctx


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected (client, server) pair of TCP sockets on loopback."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        csock = socket.create_connection(listener.getsockname())
        ssock, _ = listener.accept()
    finally:
        listener.close()
    return csock, ssock


def connected_pair(
    client_ctx: SSL.Context, server_ctx: SSL.Context, *, handshake: bool = True
) -> tuple[SSL.Connection, SSL.Connection]:
    """A client and a server Connection over loopback TCP, handshake done (or not)."""
    csock, ssock = tcp_pair()
    # Blocking sockets: pyOpenSSL's own calls cannot wait on a socket timeout. Hangs are
    # bounded by Peer.result() and pytest-timeout instead.
    csock.setblocking(True)
    ssock.setblocking(True)
    client = SSL.Connection(client_ctx, csock)
    client.set_connect_state()
    client.set_tlsext_host_name(b"localhost")
    server = SSL.Connection(server_ctx, ssock)
    server.set_accept_state()
    if handshake:
        peer = Peer(server.do_handshake)
        client.do_handshake()
        peer.result()
    return client, server


class Peer:
    """Run *fn* in a thread; ``result()`` joins with a timeout and re-raises its error."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._value = fn()
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def result(self, timeout: float = TIMEOUT) -> Any:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"peer thread still running after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._value


def read_all(conn: SSL.Connection) -> bytes:
    """Read a pyOpenSSL Connection until the peer's close_notify (clean EOF)."""
    out = bytearray()
    while True:
        try:
            chunk = conn.recv(65536)
        except SSL.ZeroReturnError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


def read_exactly(conn: SSL.Connection, n: int) -> bytes:
    """Read exactly *n* bytes from a pyOpenSSL Connection."""
    out = bytearray()
    while len(out) < n:
        out += conn.recv(min(65536, n - len(out)))
    return bytes(out)


def k_read_all(k: ossl_ktls.KTLSConnection) -> bytes:
    """Read a KTLSConnection until close_notify."""
    out = bytearray()
    while True:
        chunk = k.recv(65536)
        if not chunk:
            return bytes(out)
        out += chunk


def k_read_exactly(k: ossl_ktls.KTLSConnection, n: int) -> bytes:
    """Read exactly *n* bytes from a KTLSConnection (fails on an early EOF)."""
    out = bytearray()
    while len(out) < n:
        chunk = k.recv(min(65536, n - len(out)))
        assert chunk, f"EOF after {len(out)} of {n} bytes"
        out += chunk
    return bytes(out)


def read_until_end(conn: SSL.Connection) -> tuple[bytes, SSL.Error]:
    """Read a pyOpenSSL Connection until it stops; what it got, and how it ended
    (``SSL.ZeroReturnError`` for close_notify, another ``SSL.Error`` for anything else)."""
    got = bytearray()
    while True:
        try:
            got += conn.recv(65536)
        except SSL.Error as end:
            return bytes(got), end


def digest(data: bytes) -> tuple[int, str]:
    """(size, SHA-256 hex) of *data*: what every transfer test compares."""
    return len(data), hashlib.sha256(data).hexdigest()


def records_read(conn: SSL.Connection) -> int:
    """How many records a prepared pyOpenSSL peer read under its current key."""
    return state_of(conn).observer.next_seq[0]


def records_written(conn: SSL.Connection) -> int:
    """How many records a prepared pyOpenSSL peer wrote under its current key."""
    return state_of(conn).observer.next_seq[1]
