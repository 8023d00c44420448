"""Interop with OpenSSL's command-line peers: ``openssl s_server`` and ``openssl s_client``.

The peers are the machine's ``openssl`` (3.0 on Debian bookworm) in user space: they are
the judges of our record layer (keys, IV split, sequence numbers) whichever path
ossl_ktls took. Each handover is checked against ``tests/expectations.py`` (``handover``
fixture); on a kernel declared without kTLS the very same tests run through the
user-space fallback.

Data checks: every transfer is compared by size and SHA-256 with what was sent. In
``-quiet`` mode the peers' stdout is pure data; in interactive mode (needed for the
``k``/``K``/``R`` commands) their status text is mixed in, so payloads travel between
unique markers and are cut out of it.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from OpenSSL import SSL
from OpenSSL._util import ffi, lib

import ossl_ktls
from interop.conftest import Handover, PeerFactory
from interop.peers import (
    MATRIX,
    MATRIX_BYTES,
    REPLY_BYTES,
    TIMEOUT,
    CertSet,
    Peer,
    assert_received,
    check_new_session_ticket,
    client_context,
    connect,
    digest,
    exchange_with_client,
    expected_directions,
    framed,
    kernel_can_rekey,
    make_payload,
    make_text_payload,
    matrix_id,
    read_exactly,
    read_to_eof,
    s_client_argv,
    s_server_argv,
    send_mixed,
    server_context,
    unframe,
)

MATRIX_IDS = [matrix_id(v, c) for v, c in MATRIX]
# RSA certificates only with TLS 1.2: there the key type picks another suite (ECDHE-RSA,
# DHE-RSA for CCM: another key exchange and PRF input); in TLS 1.3 it changes nothing
# the record layer sees.
CASES = [
    pytest.param(v, c, kt, id=f"{matrix_id(v, c)}-{kt}")
    for v, c in MATRIX
    for kt in ("ecdsa", "rsa")
    if kt == "ecdsa" or v == "1.2"
]
S_SERVER = "openssl s_server"
S_CLIENT = "openssl s_client"
# SHA-256 and SHA-384 suites: the KeyUpdate secret derivation depends on the hash.
KEY_UPDATE_CIPHERS = ("aes-128-gcm", "aes-256-gcm")
DUPLEX_BYTES = 2 << 20


def _server_ctx(certs: CertSet, version: str, cipher: str, dhparams: Path) -> SSL.Context:
    # DHE-RSA-AES128-CCM (the only TLS 1.2 CCM suite for an RSA key) needs DH parameters.
    return server_context(certs, version, cipher, dhparams=dhparams)


# --------------------------------------------------------------------------- matrix


@pytest.mark.parametrize(("version", "cipher", "key_type"), CASES)
def test_client_against_s_server(
    peers: PeerFactory,
    certs_by_type: dict[str, CertSet],
    handover: Handover,
    tmp_path: Path,
    version: str,
    cipher: str,
    key_type: str,
) -> None:
    """ossl_ktls client <-> ``openssl s_server -quiet``, one version and suite offered.

    Contract: the handshake negotiates exactly that version and suite and the handover
    takes the declared path; 1 MiB from us (half ``sendall``, half ``sendfile``) reaches
    s_server with the same size and SHA-256; 256 KiB typed into s_server reach us
    intact; our close_notify is answered by s_server's (``recv`` returns ``b""``) and
    s_server exits with status 0.
    """
    certs = certs_by_type[key_type]
    srv, port = peers.server(S_SERVER, lambda p: s_server_argv(p, certs, version, cipher))
    k = connect(client_context(certs, version, cipher), port)
    peers.track(k)
    handover(k, peer=S_SERVER, role="client", version=version, cipher=cipher)

    up = make_payload(MATRIX_BYTES, seed=1)
    send_mixed(k, up, tmp_path / "up.bin")
    srv.sink.wait_size(up.size)
    assert_received("s_server received", srv.sink.size, srv.sink.sha256, up)

    back = make_payload(REPLY_BYTES, seed=2)
    srv.feed(back.data, close=False)
    assert_received("we received", *digest(read_exactly(k, back.size)), back)

    k.shutdown()
    assert k.recv(4096) == b"", "s_server's close_notify should end our stream"
    k.close()
    assert srv.wait() == 0


@pytest.mark.parametrize(("version", "cipher", "key_type"), CASES)
def test_server_against_s_client(
    peers: PeerFactory,
    certs_by_type: dict[str, CertSet],
    dhparams: Path,
    handover: Handover,
    tmp_path: Path,
    version: str,
    cipher: str,
    key_type: str,
) -> None:
    """ossl_ktls server <-> ``openssl s_client -quiet -no_ign_eof``.

    Contract: declared handover path; 1 MiB from us (``sendall`` + ``sendfile``)
    reaches s_client intact (size and SHA-256); 256 KiB from s_client reach us intact,
    followed by its close_notify (s_client sends one at the end of its input), which
    ``recv`` reports as ``b""``; s_client exits with status 0.
    """
    certs = certs_by_type[key_type]
    listener = peers.listen()
    cli = peers.client(
        S_CLIENT, s_client_argv(listener.port, certs, version, cipher, extra=["-no_ign_eof"])
    )
    k = listener.accept(_server_ctx(certs, version, cipher, dhparams))
    peers.track(k)
    handover(k, peer=S_CLIENT, role="server", version=version, cipher=cipher)

    exchange_with_client(k, cli, tmp_path, seed=3)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_full_duplex_against_s_server(
    peers: PeerFactory, certs: CertSet, handover: Handover, version: str
) -> None:
    """One thread sends while another receives: KTLSConnection's thread-safety contract.

    Contract: 2 MiB sent by a sender thread (1 KiB ``sendall`` calls) while the main
    thread receives 2 MiB that s_server sends at the same time: both arrive intact
    (size, SHA-256), whichever path each direction took (kernel or user space).
    """
    cipher = "chacha20-poly1305"
    srv, port = peers.server(S_SERVER, lambda p: s_server_argv(p, certs, version, cipher))
    k = connect(client_context(certs, version, cipher), port)
    peers.track(k)
    handover(k, peer=S_SERVER, role="client", version=version, cipher=cipher)
    up = make_payload(DUPLEX_BYTES, seed=50)
    down = make_payload(DUPLEX_BYTES, seed=51)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            for offset in range(0, up.size, 1024):
                k.sendall(up.data[offset : offset + 1024])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    srv.feed(down.data, close=False)
    sender = threading.Thread(target=send, name="duplex-sender", daemon=True)
    sender.start()
    try:
        got = read_exactly(k, down.size)
    finally:
        sender.join(TIMEOUT)
    assert not errors, f"the sender thread failed: {errors[0]!r}"
    assert_received("we received", *digest(got), down)
    srv.sink.wait_size(up.size)
    assert_received("s_server received", srv.sink.size, srv.sink.sha256, up)
    k.close()


WRAP_TIMEOUT = 60.0


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_wrap_does_not_wait_for_the_peer(
    peers: PeerFactory, certs: CertSet, handover: Handover, version: str
) -> None:
    """``wrap()`` finishing the handshake on a socket with a timeout does not wait for data.

    Contract: ``wrap()`` returns once the handshake is done and the keys are handed
    over; it must not wait for the peer's first application bytes. s_server here sends
    nothing until told to, which happens only after ``wrap()`` returned; the socket
    timeout is 60 s, so a ``wrap()`` that waits for peer data returns only after it:
    it must return in less than half of it. Then data flows both ways intact.
    """
    cipher = "aes-128-gcm"
    srv, port = peers.server(S_SERVER, lambda p: s_server_argv(p, certs, version, cipher))
    started = time.monotonic()
    k = connect(
        client_context(certs, version, cipher),
        port,
        timeout=WRAP_TIMEOUT,
        handshake_first=False,
    )
    elapsed = time.monotonic() - started
    peers.track(k)
    handover(k, peer=S_SERVER, role="client", version=version, cipher=cipher)
    assert elapsed < WRAP_TIMEOUT / 2, (
        f"connect + wrap() took {elapsed:.0f}s with a {WRAP_TIMEOUT:.0f}s socket timeout: "
        "wrap() waited for the peer to send something"
    )
    back = make_payload(4096, seed=13)
    srv.feed(back.data, close=False)
    assert_received("we received", *digest(read_exactly(k, back.size)), back)
    k.sendall(b"x" * 1000)
    srv.sink.wait_size(1000)
    k.close()


# --------------------------------------------------------------------------- KeyUpdate


def _key_update_refused(kind: str, version: str, cipher: str, rx_without_rekey: bool) -> bool:
    """Whether the documented policy makes this KeyUpdate end the connection.

    A ``K`` (update_requested) needs a kernel TX rekey; a ``k`` reaches kernel RX only
    with ``rx_without_rekey``. Either is impossible before Linux 6.14.
    """
    tx, rx = expected_directions(version, cipher, rx_without_rekey=rx_without_rekey)
    if kernel_can_rekey():
        return False
    return (kind == "K" and tx) or rx


@pytest.mark.parametrize("cipher", KEY_UPDATE_CIPHERS)
@pytest.mark.parametrize("kind", ["k", "K"])
def test_key_update_from_s_server(
    peers: PeerFactory, certs: CertSet, handover: Handover, cipher: str, kind: str
) -> None:
    """s_server sends a TLS 1.3 KeyUpdate mid-transfer (``k``; ``K`` also requests ours).

    Contract: 256 KiB from us before and 32 KiB after the KeyUpdate reach s_server
    intact; a line from s_server before and one after it reach us intact. With kernel
    RX (7.x) the RX sequence restarts (rx_sequence() == 1 after the line); for ``K``
    with kernel TX our answer is a KeyUpdate of our own and a TX key change (TX
    sequence restarts), proven by s_server decrypting what follows. Where the kernel
    cannot rekey (6.1, 6.12), ``k`` is followed in user space and ``K`` ends the
    connection with ``KeyUpdateUnsupported`` (kernel TX cannot move to a new key); then
    nothing more can be sent (``ConnectionClosed``).
    """
    version = "1.3"
    srv, port = peers.server(
        S_SERVER, lambda p: s_server_argv(p, certs, version, cipher, quiet=False), stdout="keep"
    )
    k = connect(client_context(certs, version, cipher), port)
    peers.track(k)
    handover(k, peer=S_SERVER, role="client", version=version, cipher=cipher)
    refused = _key_update_refused(kind, version, cipher, rx_without_rekey=False)
    _run_key_update(srv, k, kind, refused)


@pytest.mark.parametrize("cipher", KEY_UPDATE_CIPHERS)
@pytest.mark.parametrize("kind", ["k", "K"])
def test_key_update_from_s_client(
    peers: PeerFactory, certs: CertSet, handover: Handover, cipher: str, kind: str
) -> None:
    """s_client sends a TLS 1.3 KeyUpdate to our server mid-transfer (``k`` / ``K``).

    Contract: as for s_server: data before and after the KeyUpdate intact in both
    directions; kernel RX follows it where the kernel can rekey, user space follows it
    where it cannot; a ``K`` that needs a kernel TX rekey the kernel cannot do ends the
    connection with ``KeyUpdateUnsupported``.
    """
    version = "1.3"
    listener = peers.listen()
    cli = peers.client(
        S_CLIENT, s_client_argv(listener.port, certs, version, cipher, quiet=False), stdout="keep"
    )
    k = listener.accept(server_context(certs, version, cipher))
    peers.track(k)
    handover(k, peer=S_CLIENT, role="server", version=version, cipher=cipher)
    refused = _key_update_refused(kind, version, cipher, rx_without_rekey=False)
    _run_key_update(cli, k, kind, refused)


def test_key_update_with_rx_without_rekey(
    peers: PeerFactory, certs: CertSet, handover: Handover
) -> None:
    """``wrap(rx_without_rekey=True)``: kernel RX for TLS 1.3 even where it cannot rekey.

    Contract: the handover puts RX in the kernel wherever the kernel has TLS 1.3 RX;
    a ``k`` from s_server is then followed where the kernel can rekey (7.x) and ends
    the connection with ``KeyUpdateUnsupported`` where it cannot (6.1, 6.12); without
    kTLS (host, 5.10) user space follows it. Data before it is intact either way.
    """
    version, cipher = "1.3", "aes-128-gcm"
    srv, port = peers.server(
        S_SERVER, lambda p: s_server_argv(p, certs, version, cipher, quiet=False), stdout="keep"
    )
    k = connect(client_context(certs, version, cipher), port, rx_without_rekey=True)
    peers.track(k)
    handover(k, peer=S_SERVER, role="client", version=version, cipher=cipher, rx_without_rekey=True)
    refused = _key_update_refused("k", version, cipher, rx_without_rekey=True)
    _run_key_update(srv, k, "k", refused)


def _run_key_update(peer: Peer, k: ossl_ktls.KTLSConnection, kind: str, refused: bool) -> None:
    """Data, KeyUpdate command to the interactive *peer*, data; see the tests' contracts."""
    begin, part1, end = framed("part1", make_text_payload(256 << 10, seed=5).data)
    k.sendall(begin + part1 + end)
    peer.sink.wait_contains(end)
    got = unframe(peer.sink.data(), begin, end)
    assert_received("peer received (before)", *digest(got), part1)
    tx_seq_before = k.tx_sequence() if k.ktls_tx else None

    before = b"line from the peer before its KeyUpdate " + os.urandom(8).hex().encode() + b"\n"
    peer.write(before)
    assert read_exactly(k, len(before)) == before

    peer.command(kind.encode() + b"\n")
    after = b"line from the peer after its KeyUpdate " + os.urandom(8).hex().encode() + b"\n"
    peer.write(after)

    if refused:
        with pytest.raises(ossl_ktls.KeyUpdateUnsupported):
            read_exactly(k, len(after))
        with pytest.raises(ossl_ktls.ConnectionClosed):
            k.send(b"more")
        k.close()
        return

    assert read_exactly(k, len(after)) == after
    if k.ktls_rx:
        assert k.rx_sequence() == 1, "kernel RX should count records under the new key"

    begin2, part2, end2 = framed("part2", make_text_payload(16 << 10, seed=6).data)
    k.sendall(begin2 + part2 + end2)
    peer.sink.wait_contains(end2)
    got = unframe(peer.sink.data(), begin2, end2)
    assert_received("peer received (after)", *digest(got), part2)
    if kind == "K" and tx_seq_before is not None:
        tx_seq_after = k.tx_sequence()
        assert tx_seq_after < tx_seq_before, (
            f"TX sequence {tx_seq_before} -> {tx_seq_after}: no TX key change after 'K'"
        )
    k.close()


# --------------------------------------------------------------------------- tickets


def test_tickets_from_s_server(peers: PeerFactory, certs: CertSet, handover: Handover) -> None:
    """s_server (TLS 1.3, ``-num_tickets 3``) sends three NewSessionTickets after the handshake.

    Contract: data both ways stays intact around them; with kernel RX each ticket is
    handed to ``ticket_callback`` as one whole NewSessionTicket message (exactly 3) and
    relayed to OpenSSL; with user-space RX OpenSSL consumes them itself (no callback).
    Either way the session then carries a ticket (its encoding grows).
    """
    version, cipher = "1.3", "aes-128-gcm"
    srv, port = peers.server(
        S_SERVER,
        lambda p: s_server_argv(p, certs, version, cipher, extra=["-num_tickets", "3"]),
    )
    tickets: list[bytes] = []
    k = connect(
        client_context(certs, version, cipher),
        port,
        ticket_callback=lambda _k, raw: tickets.append(raw),
    )
    peers.track(k)
    handover(k, peer=S_SERVER, role="client", version=version, cipher=cipher)
    first = k.get_session()
    assert first is not None
    session_size = lib.i2d_SSL_SESSION(first._session, ffi.NULL)

    up = make_payload(64 << 10, seed=7)
    k.sendall(up.data)
    srv.sink.wait_size(up.size)
    assert_received("s_server received", srv.sink.size, srv.sink.sha256, up)
    back = make_payload(64 << 10, seed=8)
    srv.feed(back.data, close=False)
    assert_received("we received", *digest(read_exactly(k, back.size)), back)

    if k.ktls_rx:
        assert len(tickets) == 3, f"{len(tickets)} tickets reached ticket_callback"
        for raw in tickets:
            check_new_session_ticket(raw)
    else:
        assert tickets == [], "user-space RX: OpenSSL handles tickets, no callback"
    later = k.get_session()
    assert later is not None
    grown = lib.i2d_SSL_SESSION(later._session, ffi.NULL)
    assert grown > session_size, "OpenSSL did not store the tickets in the session"
    k.shutdown()
    assert k.recv(4096) == b""
    k.close()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_resumption_by_s_client(
    peers: PeerFactory, certs: CertSet, handover: Handover, tmp_path: Path, version: str
) -> None:
    """s_client resumes a session from a ticket our server issued before the handover.

    Contract: the first connection's ticket (TLS 1.3: NewSessionTicket records OpenSSL
    wrote before the handover, counted into our TX sequence; TLS 1.2: in the
    handshake) is accepted by s_client; the second connection resumes it ("Reused" on
    s_client's side, ``SSL_session_reused`` on ours; TLS 1.2: abbreviated handshake,
    server Finished first) and then hands over as declared with data intact both ways.
    """
    cipher = "aes-128-gcm"
    sess = tmp_path / "session.pem"
    listener = peers.listen()
    ctx = server_context(certs, version, cipher)
    for round_, flag in enumerate(("-sess_out", "-sess_in")):
        argv = s_client_argv(
            listener.port, certs, version, cipher, quiet=False, extra=[flag, str(sess)]
        )
        cli = peers.client(f"{S_CLIENT} #{round_ + 1}", argv, stdout="keep")
        k = listener.accept(ctx)
        peers.track(k)
        handover(k, peer=S_CLIENT, role="server", version=version, cipher=cipher)
        reused = bool(lib.SSL_session_reused(k.connection._ssl))
        assert reused == (round_ == 1), f"connection {round_ + 1}: session_reused={reused}"

        text = make_text_payload(64 << 10, seed=9 + round_).data
        begin, data, end = framed(f"round{round_}", text)
        k.sendall(begin + data + end)
        cli.sink.wait_contains(end)
        assert_received("s_client received", *digest(unframe(cli.sink.data(), begin, end)), data)
        line = b"from s_client " + os.urandom(8).hex().encode() + b"\n"
        cli.write(line)
        assert read_exactly(k, len(line)) == line
        k.shutdown()
        k.close()
        cli.sink.wait_closed()
        assert cli.wait() == 0
        expected = b"Reused, TLSv" if round_ == 1 else b"New, TLSv"
        assert expected in cli.sink.data(), f"s_client did not report {expected!r}"
        assert sess.exists(), "s_client wrote no session"


@pytest.mark.parametrize(("version", "cipher"), [("1.2", "aes-256-gcm"), ("1.3", "aes-128-gcm")])
def test_resumption_against_s_server(
    peers: PeerFactory, certs: CertSet, handover: Handover, version: str, cipher: str
) -> None:
    """ossl_ktls client resumes a session with s_server.

    Contract: the session from the first connection is resumed on the second
    (``SSL_session_reused``). TLS 1.2: the ticket comes in the handshake, and in the
    abbreviated handshake the server's Finished comes first. TLS 1.3: s_server's tickets
    come after the handshake, so with kernel RX they reach OpenSSL only through the
    relay. The handover still takes the declared path with data intact both ways on both
    connections.
    """
    srv, port = peers.server(
        S_SERVER, lambda p: s_server_argv(p, certs, version, cipher, naccept=2)
    )
    ctx = client_context(certs, version, cipher)
    session: SSL.Session | None = None
    total = b""
    for round_ in range(2):
        k = connect(ctx, port, session=session)
        peers.track(k)
        handover(k, peer=S_SERVER, role="client", version=version, cipher=cipher)
        assert bool(lib.SSL_session_reused(k.connection._ssl)) == (round_ == 1)
        data = make_payload(128 << 10, seed=20 + round_).data
        k.sendall(data)
        total += data
        srv.sink.wait_size(len(total))
        back = make_payload(32 << 10, seed=30 + round_)
        srv.feed(back.data, close=False)
        assert_received("we received", *digest(read_exactly(k, back.size)), back)
        session = k.get_session()
        k.shutdown()
        assert k.recv(4096) == b""
        k.close()
    assert_received("s_server received (both)", srv.sink.size, srv.sink.sha256, total)
    assert srv.wait() == 0


# --------------------------------------------------------------------------- renegotiation


def test_renegotiation_from_s_server(
    peers: PeerFactory, certs: CertSet, handover: Handover
) -> None:
    """s_server (TLS 1.2) requests a renegotiation (``R``: HelloRequest) mid-transfer.

    Contract: data before the request is intact both ways; we refuse with a
    no_renegotiation warning alert, which s_server decrypts and reads (its log says
    "no renegotiation"). OpenSSL treats a refused renegotiation it asked for as fatal:
    it answers with a fatal handshake_failure alert, which we must decrypt and raise
    as ``TLSAlertError`` (description 40): no corruption, no bad_record_mac either way.
    """
    version, cipher = "1.2", "aes-128-gcm"
    srv, port = peers.server(
        S_SERVER, lambda p: s_server_argv(p, certs, version, cipher, quiet=False), stdout="keep"
    )
    k = connect(client_context(certs, version, cipher), port)
    peers.track(k)
    handover(k, peer=S_SERVER, role="client", version=version, cipher=cipher)
    _run_refused_renegotiation(srv, k)


def test_renegotiation_from_s_client(
    peers: PeerFactory, certs: CertSet, handover: Handover
) -> None:
    """s_client (TLS 1.2) starts a renegotiation (``R``: a new ClientHello) to our server.

    Contract: as with s_server: data before it intact, our no_renegotiation warning
    reaches s_client (its log says "no renegotiation"), and s_client's fatal
    handshake_failure reaches us as ``TLSAlertError`` (40).
    """
    version, cipher = "1.2", "aes-128-gcm"
    listener = peers.listen()
    cli = peers.client(
        S_CLIENT, s_client_argv(listener.port, certs, version, cipher, quiet=False), stdout="keep"
    )
    k = listener.accept(server_context(certs, version, cipher))
    peers.track(k)
    handover(k, peer=S_CLIENT, role="server", version=version, cipher=cipher)
    _run_refused_renegotiation(cli, k)


def _run_refused_renegotiation(peer: Peer, k: ossl_ktls.KTLSConnection) -> None:
    begin, data, end = framed("before", make_text_payload(128 << 10, seed=11).data)
    k.sendall(begin + data + end)
    peer.sink.wait_contains(end)
    assert_received("peer received", *digest(unframe(peer.sink.data(), begin, end)), data)
    line = b"peer line before renegotiation " + os.urandom(8).hex().encode() + b"\n"
    peer.write(line)
    assert read_exactly(k, len(line)) == line

    peer.command(b"R\n")
    with pytest.raises(ossl_ktls.TLSAlertError) as info:
        read_to_eof(k)
    assert (info.value.level, info.value.description) == (2, 40), info.value
    peer.log.wait_for("no renegotiation")
    k.close()


# --------------------------------------------------------------------------- closing


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_close_notify_from_our_server(
    peers: PeerFactory, certs: CertSet, handover: Handover, version: str
) -> None:
    """Our server closes first (``shutdown()``); s_client (``-quiet``) answers in kind.

    Contract: everything sent before ``shutdown()`` reaches s_client (size, SHA-256),
    s_client takes our close_notify as the end of the stream and answers with its own,
    which our ``recv`` reports as ``b""``; s_client exits with status 0.
    """
    cipher = "chacha20-poly1305"
    listener = peers.listen()
    cli = peers.client(S_CLIENT, s_client_argv(listener.port, certs, version, cipher))
    k = listener.accept(server_context(certs, version, cipher))
    peers.track(k)
    handover(k, peer=S_CLIENT, role="server", version=version, cipher=cipher)
    data = make_payload(200_000, seed=12)
    k.sendall(data.data, more=True)  # an open MSG_MORE record must be flushed by shutdown()
    k.shutdown()
    assert k.recv(4096) == b""
    cli.sink.wait_closed()
    assert_received("s_client received", cli.sink.size, cli.sink.sha256, data)
    assert cli.wait() == 0
    k.close()


def test_truncation_by_s_server(peers: PeerFactory, certs: CertSet, handover: Handover) -> None:
    """s_server ``Q`` closes TCP without close_notify: that is not a clean end of stream.

    Contract: the data before arrives intact, then ``recv`` raises ``TruncatedStream``
    (never ``b""``), whichever path RX took.
    """
    version, cipher = "1.2", "chacha20-poly1305"
    srv, port = peers.server(
        S_SERVER, lambda p: s_server_argv(p, certs, version, cipher, quiet=False), stdout="keep"
    )
    k = connect(client_context(certs, version, cipher), port)
    peers.track(k)
    handover(k, peer=S_SERVER, role="client", version=version, cipher=cipher)
    line = b"last words " + os.urandom(8).hex().encode() + b"\n"
    srv.write(line)
    assert read_exactly(k, len(line)) == line
    srv.command(b"Q\n")
    with pytest.raises(ossl_ktls.TruncatedStream):
        k.recv(4096)
    k.close()
