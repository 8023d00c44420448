"""Both ends in the kernel: ossl_ktls against OpenSSL's own kernel TLS.

OpenSSL 3.0 switches kTLS on with ``Options = KTLS`` in an ``OPENSSL_CONF`` file. It
then offloads TX for TLS 1.2 and 1.3 (AES-GCM, ChaCha20-Poly1305; AES-128-CCM only in
TLS 1.2) and RX for TLS 1.2 only. ``openssl s_server -WWW -sendfile`` serves files with
``SSL_sendfile`` (zero-copy through kernel TX), and ``openssl s_client`` reads and writes
through the kernel.

Whether OpenSSL really used the kernel is measured, not assumed: ``/proc/net/tls_stat``
counts every TLS_TX / TLS_RX installed (``TlsTxSw`` / ``TlsRxSw``); the deltas over a
test must be exactly ours plus OpenSSL's. Without kernel TLS (host, 5.10) the same tests
run with both ends in user space, and s_server says "sendfile requested but KTLS is not
available".
"""

from __future__ import annotations

from pathlib import Path

import pytest

import ossl_ktls
from interop.conftest import Handover, PeerFactory
from interop.peers import (
    MATRIX,
    MATRIX_BYTES,
    CertSet,
    assert_received,
    check_new_session_ticket,
    client_context,
    connect,
    digest,
    exchange_with_client,
    make_payload,
    matrix_id,
    openssl_ktls_conf,
    read_to_eof,
    s_client_argv,
    s_server_argv,
    server_context,
)
from ossl_ktls.cli import read_tls_stat
from tests.expectations import current

MATRIX_IDS = [matrix_id(v, c) for v, c in MATRIX]
WWW = "openssl s_server -WWW -sendfile (kTLS)"
CLIENT = "openssl s_client (kTLS)"
NO_KTLS_WARNING = "sendfile requested but KTLS is not available"


def openssl_offloads(version: str, cipher: str) -> tuple[bool, bool]:
    """``(tx, rx)`` OpenSSL 3.0 must put in the kernel here, per the declaration."""
    env = current()

    def has(direction: str) -> bool:
        return True if env is None else env.has(direction, version, cipher)

    tx = has("tx") and not (version == "1.3" and cipher == "aes-128-ccm")
    rx = has("rx") and version == "1.2"
    return tx, rx


class TlsStat:
    """``/proc/net/tls_stat`` before/after, with ossl_ktls's probe sockets taken out."""

    def __init__(self) -> None:
        ossl_ktls.probe()  # cached per process: its test sockets are counted before this
        self.before = read_tls_stat()

    def deltas(self) -> tuple[int, int] | None:
        after = read_tls_stat()
        if self.before is None or after is None:
            return None
        return (
            after["TlsTxSw"] - self.before["TlsTxSw"],
            after["TlsRxSw"] - self.before["TlsRxSw"],
        )


def _check_offload(stat: TlsStat, k: ossl_ktls.KTLSConnection, version: str, cipher: str) -> None:
    openssl_tx, openssl_rx = openssl_offloads(version, cipher)
    deltas = stat.deltas()
    if deltas is None:
        assert not (openssl_tx or openssl_rx), "kTLS declared but /proc/net/tls_stat is missing"
    else:
        want = (int(k.ktls_tx) + int(openssl_tx), int(k.ktls_rx) + int(openssl_rx))
        assert deltas == want, (
            f"tls_stat (TlsTxSw, TlsRxSw) moved by {deltas}, expected {want}: ours "
            f"tx={k.ktls_tx} rx={k.ktls_rx} + OpenSSL tx={openssl_tx} rx={openssl_rx}"
        )


@pytest.mark.parametrize(("version", "cipher"), MATRIX, ids=MATRIX_IDS)
def test_client_against_openssl_ktls_server(
    peers: PeerFactory,
    certs: CertSet,
    handover: Handover,
    tmp_path: Path,
    version: str,
    cipher: str,
) -> None:
    """ossl_ktls client GETs a 1 MiB file from ``s_server -WWW -sendfile`` with kTLS on.

    Contract: declared handover path on our side; OpenSSL's side offloads exactly what
    OpenSSL 3.0 can (tls_stat deltas = ours + OpenSSL's; s_server warns that sendfile
    has no kTLS exactly when its TX stayed in user space); the response body has the
    file's size and SHA-256; s_server ends with close_notify (``recv`` gives ``b""``),
    sent through its kernel TX where it has one; TLS 1.3 tickets (2, written through
    OpenSSL's kernel TX) reach ``ticket_callback`` whole when our RX is in the kernel.
    """
    www = tmp_path / "www"
    www.mkdir()
    body = make_payload(MATRIX_BYTES, seed=70)
    body.write_to(www / "file.bin")
    conf = openssl_ktls_conf(tmp_path / "openssl-ktls.cnf")
    stat = TlsStat()
    srv, port = peers.server(
        WWW,
        lambda p: s_server_argv(
            p, certs, version, cipher, quiet=False, extra=["-WWW", "-sendfile"]
        ),
        stdout="log",
        env={"OPENSSL_CONF": str(conf)},
        cwd=www,
    )
    tickets: list[bytes] = []
    k = connect(
        client_context(certs, version, cipher),
        port,
        ticket_callback=lambda _k, raw: tickets.append(raw),
    )
    peers.track(k)
    handover(k, peer=WWW, role="client", version=version, cipher=cipher)
    k.sendall(b"GET /file.bin HTTP/1.0\r\n\r\n")
    response = read_to_eof(k)
    k.close()
    assert srv.wait() == 0

    head, sep, content = response.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.0 200 ok"), head[:200]
    assert_received("body from s_server", *digest(content), body)
    if version == "1.3" and k.ktls_rx:
        assert len(tickets) == 2, f"{len(tickets)} tickets reached ticket_callback"
        for raw in tickets:
            check_new_session_ticket(raw)
    _check_offload(stat, k, version, cipher)
    openssl_tx, _rx = openssl_offloads(version, cipher)
    warned = NO_KTLS_WARNING in srv.log.text()
    assert warned != openssl_tx, f"s_server kTLS TX expected {openssl_tx}, its warning: {warned}"


@pytest.mark.parametrize(("version", "cipher"), MATRIX, ids=MATRIX_IDS)
def test_server_against_openssl_ktls_client(
    peers: PeerFactory,
    certs: CertSet,
    handover: Handover,
    tmp_path: Path,
    version: str,
    cipher: str,
) -> None:
    """ossl_ktls server <-> ``openssl s_client -quiet -no_ign_eof`` with kTLS on.

    Contract: declared handover path on our side, OpenSSL's offload as for s_server
    (tls_stat deltas = ours + OpenSSL's); 1 MiB from us (``sendall`` + ``sendfile``)
    and 256 KiB from s_client arrive intact (size, SHA-256); s_client's close_notify
    (through its kernel TX where it has one) makes ``recv`` return ``b""``.
    """
    conf = openssl_ktls_conf(tmp_path / "openssl-ktls.cnf")
    stat = TlsStat()
    listener = peers.listen()
    cli = peers.client(
        CLIENT,
        s_client_argv(listener.port, certs, version, cipher, extra=["-no_ign_eof"]),
        env={"OPENSSL_CONF": str(conf)},
    )
    k = listener.accept(server_context(certs, version, cipher))
    peers.track(k)
    handover(k, peer=CLIENT, role="server", version=version, cipher=cipher)

    exchange_with_client(k, cli, tmp_path, seed=71)
    _check_offload(stat, k, version, cipher)
