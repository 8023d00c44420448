"""Interop with GnuTLS (3.7): ``gnutls-serv --echo`` and ``gnutls-cli``.

A second, independent TLS implementation: it shares no code with OpenSSL, so an error
that OpenSSL and ossl_ktls would make the same way (a sequence number, an IV split)
still shows up here. Each handover is checked against ``tests/expectations.py``; where
the kernel has no kTLS the same tests run through the user-space fallback.

``gnutls-serv --echo`` handles data as C strings and sends it back once it holds a
newline, so payloads for it are lines of hex text (no NUL byte, never starting with
``**``, which it reads as a command).
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
    Payload,
    assert_received,
    check_new_session_ticket,
    client_context,
    connect,
    digest,
    exchange_with_client,
    gnutls_cli_argv,
    gnutls_serv_argv,
    make_text_payload,
    matrix_id,
    read_exactly,
    read_to_eof,
    server_context,
)

MATRIX_IDS = [matrix_id(v, c) for v, c in MATRIX]
SERV = "gnutls-serv"
CLI = "gnutls-cli"
CHUNK = 64 << 10


def _echo_round_trips(k: ossl_ktls.KTLSConnection, payload: Payload, file: Path) -> bytes:
    """Send *payload* in 64 KiB chunks (alternately ``sendall`` and ``sendfile``), reading
    each chunk's echo before the next; returns everything echoed."""
    payload.write_to(file)
    echoed = bytearray()
    with open(file, "rb") as f:
        for i, offset in enumerate(range(0, payload.size, CHUNK)):
            count = min(CHUNK, payload.size - offset)
            if i % 2:
                assert k.sendfile(f, offset=offset, count=count) == count
            else:
                k.sendall(payload.data[offset : offset + count])
            echoed += read_exactly(k, count)
    return bytes(echoed)


@pytest.mark.parametrize(("version", "cipher"), MATRIX, ids=MATRIX_IDS)
def test_client_against_gnutls_serv(
    peers: PeerFactory,
    certs: CertSet,
    handover: Handover,
    tmp_path: Path,
    version: str,
    cipher: str,
) -> None:
    """ossl_ktls client <-> ``gnutls-serv --echo``; the handshake done before ``wrap()``.

    Contract: declared handover path; 1 MiB sent in 64 KiB chunks (``sendall`` and
    ``sendfile`` alternately) comes back from GnuTLS byte for byte (size and SHA-256),
    which proves both directions; TLS 1.3 tickets GnuTLS sends after the handshake do
    not disturb the stream (with kernel RX they reach ``ticket_callback`` whole); our
    close_notify is answered by GnuTLS's (``recv`` returns ``b""``).
    """
    _srv, port = peers.server(
        SERV, lambda p: gnutls_serv_argv(p, certs, version, cipher), stdout="log"
    )
    tickets: list[bytes] = []
    # The handshake done by pyOpenSSL first, then handed over (wrap()'s other way in).
    k = connect(
        client_context(certs, version, cipher),
        port,
        handshake_first=True,
        ticket_callback=lambda _k, raw: tickets.append(raw),
    )
    peers.track(k)
    handover(k, peer=SERV, role="client", version=version, cipher=cipher)

    payload = make_text_payload(MATRIX_BYTES, seed=40)
    echoed = _echo_round_trips(k, payload, tmp_path / "up.txt")
    assert_received("echo from gnutls-serv", *digest(echoed), payload)
    for raw in tickets:
        check_new_session_ticket(raw)
    if version == "1.3" and k.ktls_rx:
        assert tickets, "gnutls-serv's NewSessionTicket did not reach ticket_callback"
    k.shutdown()
    assert k.recv(4096) == b"", "gnutls-serv should answer our close_notify with its own"
    k.close()


@pytest.mark.parametrize(("version", "cipher"), MATRIX, ids=MATRIX_IDS)
def test_server_against_gnutls_cli(
    peers: PeerFactory,
    certs: CertSet,
    handover: Handover,
    tmp_path: Path,
    version: str,
    cipher: str,
) -> None:
    """ossl_ktls server <-> ``gnutls-cli``; the handshake done before ``wrap()``.

    Contract: declared handover path; 1 MiB from us (``sendall`` + ``sendfile``)
    reaches gnutls-cli intact (size, SHA-256); 256 KiB from gnutls-cli reach us intact,
    then its close_notify (sent at the end of its input) makes ``recv`` return ``b""``;
    our close_notify follows and gnutls-cli exits with status 0.
    """
    listener = peers.listen()
    log = tmp_path / "gnutls-cli.log"
    cli = peers.client(
        CLI, gnutls_cli_argv(listener.port, certs, version, cipher, logfile=log), logfiles=[log]
    )
    # The handshake done by pyOpenSSL first, then handed over (wrap()'s other way in).
    k = listener.accept(server_context(certs, version, cipher), handshake_first=True)
    peers.track(k)
    handover(k, peer=CLI, role="server", version=version, cipher=cipher)

    exchange_with_client(k, cli, tmp_path, seed=41)


def test_tickets_from_gnutls_serv(peers: PeerFactory, certs: CertSet, handover: Handover) -> None:
    """GnuTLS (TLS 1.3) sends a NewSessionTicket after the handshake.

    Contract: data round-trips intact around it; with kernel RX at least one ticket
    reaches ``ticket_callback`` as a whole NewSessionTicket message; with user-space RX
    OpenSSL consumes it and the callback stays silent.
    """
    version, cipher = "1.3", "chacha20-poly1305"
    _srv, port = peers.server(
        SERV, lambda p: gnutls_serv_argv(p, certs, version, cipher), stdout="log"
    )
    tickets: list[bytes] = []
    k = connect(
        client_context(certs, version, cipher),
        port,
        ticket_callback=lambda _k, raw: tickets.append(raw),
    )
    peers.track(k)
    handover(k, peer=SERV, role="client", version=version, cipher=cipher)
    line = make_text_payload(4096, seed=43)
    k.sendall(line.data)
    assert_received("echo", *digest(read_exactly(k, line.size)), line)
    if k.ktls_rx:
        assert tickets, "no NewSessionTicket reached ticket_callback"
        for raw in tickets:
            check_new_session_ticket(raw)
    else:
        assert tickets == []
    k.close()


def test_renegotiation_from_gnutls_serv(
    peers: PeerFactory, certs: CertSet, handover: Handover
) -> None:
    """gnutls-serv (TLS 1.2) sends a HelloRequest (its ``**REHANDSHAKE**`` echo command).

    Contract: data before is echoed intact; we refuse with a no_renegotiation warning
    alert, which GnuTLS decrypts and reports ("A TLS warning alert has been received");
    its reply to the command, sent after the HelloRequest, reaches us intact; gnutls-serv
    then drops the connection without close_notify, which we report as
    ``TruncatedStream`` (not as a clean EOF, not as corruption).
    """
    version, cipher = "1.2", "aes-256-gcm"
    srv, port = peers.server(
        SERV, lambda p: gnutls_serv_argv(p, certs, version, cipher), stdout="log"
    )
    k = connect(client_context(certs, version, cipher), port)
    peers.track(k)
    handover(k, peer=SERV, role="client", version=version, cipher=cipher)
    before = make_text_payload(64 << 10, seed=44)
    k.sendall(before.data)
    assert_received("echo before", *digest(read_exactly(k, before.size)), before)

    k.sendall(b"**REHANDSHAKE**\n")
    reply = b"Successfully executed command\n"
    assert read_exactly(k, len(reply)) == reply
    srv.log.wait_for("warning alert has been received")
    with pytest.raises(ossl_ktls.TruncatedStream):
        read_to_eof(k)
    k.close()


def test_renegotiation_from_gnutls_cli(
    peers: PeerFactory, certs: CertSet, handover: Handover, tmp_path: Path
) -> None:
    """gnutls-cli ``--rehandshake`` (TLS 1.2) sends new ClientHellos to our server.

    Contract: each is refused with a no_renegotiation warning alert that GnuTLS
    decrypts ("Received alert [100]" in its log); GnuTLS retries, then gives up with a
    fatal internal_error alert that we decrypt and raise as ``TLSAlertError`` (80).
    """
    version, cipher = "1.2", "aes-128-gcm"
    listener = peers.listen()
    log = tmp_path / "gnutls-cli.log"
    cli = peers.client(
        CLI,
        gnutls_cli_argv(
            listener.port, certs, version, cipher, logfile=log, extra=["--rehandshake"]
        ),
        logfiles=[log],
    )
    k = listener.accept(server_context(certs, version, cipher))
    peers.track(k)
    handover(k, peer=CLI, role="server", version=version, cipher=cipher)
    with pytest.raises(ossl_ktls.TLSAlertError) as info:
        read_to_eof(k)
    assert (info.value.level, info.value.description) == (2, 80), info.value
    cli.wait()
    refusals = cli.logfile_text().count("Received alert [100]")
    assert refusals >= 1, "gnutls-cli never read our no_renegotiation alert"
    cli.log.wait_for("ReHandshake has failed")
    k.close()
