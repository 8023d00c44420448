"""Record sizes a client negotiated are honoured by what our server sends (issue 14).

A client may ask for records smaller than 2^14 bytes: ``openssl s_client -maxfraglen``
(RFC 6066 max_fragment_length) or ``gnutls-cli --recordsize`` (RFC 8449 record_size_limit
and max_fragment_length; OpenSSL answers the latter). Kernel TX knows nothing of it: it
must be capped (``TLS_TX_MAX_PAYLOAD_LEN``, Linux 6.19+) or TX must stay in user space,
where OpenSSL fragments by itself, with a ``fallback_reason``.

Every test puts a recording relay between the client and our server: the client program
is the judge of the data (size and SHA-256 of what it printed), the relay of the wire
(no record from us larger than the limit plus the suite's per-record overhead). Each test
sends with all three ways in: ``sendall``, ``sendfile`` and ``more=True`` writes.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from OpenSSL._util import lib

import ossl_ktls
from interop.conftest import PeerFactory
from interop.peers import (
    CertSet,
    Payload,
    Peer,
    exchange_with_client,
    expected_directions,
    gnutls_cli_argv,
    s_client_argv,
    server_context,
)
from ossl_ktls import _linux_tls as uapi
from ossl_ktls import _records
from tests._proxy import FaultProxy
from tests.expectations import current

CIPHER = "aes-128-gcm"
PAYLOAD_BYTES = 192 << 10
MAX_FRAGMENT_LENGTHS = (512, 1024, 2048, 4096)


def _overhead(version: str) -> int:
    """Ciphertext bytes a record adds to its content (AES-GCM: 16-byte tag; TLS 1.2 also
    the 8-byte explicit nonce, TLS 1.3 the inner content type byte)."""
    return 1 + 16 if version == "1.3" else 8 + 16


def _records_on_wire(stream: bytes) -> list[tuple[int, int]]:
    """``(content type, length)`` of every whole TLS record in *stream* (a server's output)."""
    found = []
    pos = 0
    while pos + _records.RECORD_HEADER_LEN <= len(stream):
        header = _records.parse_record_header(stream[pos:], tls13=False)
        found.append((header.content_type, header.length))
        pos += _records.RECORD_HEADER_LEN + header.length
    assert pos == len(stream), f"the relay saw {len(stream) - pos} bytes of a partial record"
    return found


def _send_three_ways(k: ossl_ktls.KTLSConnection, payload: Payload, file: Path) -> None:
    """A third with ``sendall``, a third with ``sendfile``, the rest as ``more=True`` writes
    of 1000 bytes (records held open and coalesced), the last one closing the record."""
    data = payload.data
    third = len(data) // 3
    k.sendall(data[:third])
    file.write_bytes(data)
    with open(file, "rb") as f:
        assert k.sendfile(f, offset=third, count=third) == third
    rest = memoryview(data)[2 * third :]
    for start in range(0, len(rest), 1000):
        chunk = rest[start : start + 1000]
        k.sendall(chunk, more=start + 1000 < len(rest))


def _check_tx_path(k: ossl_ktls.KTLSConnection, version: str, limit: int, source: str) -> None:
    """TX went where the environment says it must, with the limit read back from the
    kernel, or stayed in user space naming the limit; RX went as declared."""
    assert k.tx_record_limit == limit, (
        f"negotiated {limit}, the connection says {k.tx_record_limit}"
    )
    env = current()
    kernel_tx = env is None or env.has("tx", version, CIPHER)
    can_cap = env is None or env.tx_max_payload_len
    _tx, rx = expected_directions(version, CIPHER)
    assert k.ktls_rx == rx, k.fallback_reason
    if kernel_tx and can_cap:
        assert k.ktls_tx, k.fallback_reason
        with socket.socket(fileno=os.dup(k.fileno())) as dup:
            assert uapi.get_u16(dup, uapi.TLS_TX_MAX_PAYLOAD_LEN) == limit
    else:
        assert not k.ktls_tx, "kernel TX without a record size cap"
        reason = k.fallback_reason or ""
        if kernel_tx:
            assert f"limited records to {limit} bytes ({source})" in reason, reason
            assert "TLS_TX_MAX_PAYLOAD_LEN" in reason, reason
        else:
            assert reason, "TX stayed in user space without a reason"


def _serve(
    peers: PeerFactory,
    client: Peer,
    proxy: FaultProxy,
    k: ossl_ktls.KTLSConnection,
    tmp_path: Path,
    *,
    version: str,
    limit: int,
    source: str,
    seed: int,
    reply_bytes: int = 32 << 10,
) -> None:
    """Send the payload three ways, take a reply, close; judge data and wire."""
    peers.track(k)
    _check_tx_path(k, version, limit, source)
    exchange_with_client(
        k,
        client,
        tmp_path,
        seed,
        send=_send_three_ways,
        down_bytes=PAYLOAD_BYTES,
        reply_bytes=reply_bytes,
    )
    records = _records_on_wire(proxy.downstream())
    largest = max(length for _type, length in records)
    assert largest <= limit + _overhead(version), (
        f"a record of {largest} bytes reached a client that accepts {limit} of content"
    )
    data_records = [length for content_type, length in records if content_type == 23]
    assert len(data_records) >= PAYLOAD_BYTES // limit, "fewer records than the limit allows"


@pytest.mark.parametrize("size", MAX_FRAGMENT_LENGTHS)
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_s_client_max_fragment_length(
    peers: PeerFactory, certs: CertSet, tmp_path: Path, version: str, size: int
) -> None:
    """``openssl s_client -maxfraglen N`` gets every byte, in records of at most N bytes.

    Contract: the server learns N from the hellos (``tx_record_limit``); TX is in the
    kernel with the cap read back where the kernel has TLS_TX_MAX_PAYLOAD_LEN, else in
    user space with a reason naming the limit; 192 KiB sent by ``sendall``, ``sendfile``
    and ``more=True`` reach s_client intact (size, SHA-256), 32 KiB come back intact,
    close_notify both ways, s_client exits 0; no record on the wire exceeds N plus the
    suite's overhead.
    """
    listener = peers.listen()
    proxy = FaultProxy(("127.0.0.1", listener.port))
    try:
        argv = s_client_argv(
            proxy.address[1],
            certs,
            version,
            CIPHER,
            extra=["-no_ign_eof", "-maxfraglen", str(size)],
        )
        client = peers.client("openssl s_client -maxfraglen", argv)
        k = listener.accept(server_context(certs, version, CIPHER))
        _serve(
            peers,
            client,
            proxy,
            k,
            tmp_path,
            version=version,
            limit=size,
            source="max_fragment_length",
            seed=size,
        )
    finally:
        proxy.close()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_s_client_max_fragment_length_on_resumption(
    peers: PeerFactory, certs: CertSet, tmp_path: Path, version: str
) -> None:
    """A resumed session keeps its max_fragment_length (RFC 6066 section 4).

    Contract: s_client saves the session of a first connection (``-maxfraglen 1024``) and
    resumes it in a second (``SSL_session_reused`` on our side); both connections keep
    to 1024-byte records, by the data s_client printed and by the wire.
    """
    sess = tmp_path / "session.pem"
    listener = peers.listen()
    ctx = server_context(certs, version, CIPHER)
    for round_, flag in enumerate(("-sess_out", "-sess_in")):
        proxy = FaultProxy(("127.0.0.1", listener.port))
        try:
            extra = ["-no_ign_eof", "-maxfraglen", "1024", flag, str(sess)]
            argv = s_client_argv(proxy.address[1], certs, version, CIPHER, extra=extra)
            client = peers.client(f"openssl s_client -maxfraglen #{round_ + 1}", argv)
            k = listener.accept(ctx)
            reused = bool(lib.SSL_session_reused(k.connection._ssl))
            assert reused == (round_ == 1), f"connection {round_ + 1}: session_reused={reused}"
            _serve(
                peers,
                client,
                proxy,
                k,
                tmp_path,
                version=version,
                limit=1024,
                source="max_fragment_length",
                seed=70 + round_,
            )
        finally:
            proxy.close()
        assert sess.exists(), "s_client wrote no session"


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_gnutls_cli_record_size(
    peers: PeerFactory, certs: CertSet, tmp_path: Path, version: str
) -> None:
    """``gnutls-cli --recordsize 512`` offers record_size_limit and max_fragment_length;
    OpenSSL answers max_fragment_length (it has no record_size_limit), so 512 binds.

    Contract: as for s_client: ``tx_record_limit`` is 512 from max_fragment_length, TX
    where the environment says, data intact both ways, no record over 512 + overhead.
    The reply is 400 bytes: gnutls-cli 3.7.9 with ``--recordsize 512`` sends only 4104
    of a 32 KiB input before its close_notify, to a plain pyOpenSSL server just the same.
    """
    listener = peers.listen()
    proxy = FaultProxy(("127.0.0.1", listener.port))
    try:
        log = tmp_path / "gnutls-cli.log"
        argv = gnutls_cli_argv(
            proxy.address[1], certs, version, CIPHER, logfile=log, extra=["--recordsize", "512"]
        )
        client = peers.client("gnutls-cli --recordsize", argv, logfiles=[log])
        k = listener.accept(server_context(certs, version, CIPHER))
        _serve(
            peers,
            client,
            proxy,
            k,
            tmp_path,
            version=version,
            limit=512,
            source="max_fragment_length",
            seed=90,
            reply_bytes=400,
        )
    finally:
        proxy.close()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_require_with_a_record_size_limit(peers: PeerFactory, certs: CertSet, version: str) -> None:
    """``wrap(require=True)`` facing ``s_client -maxfraglen 512``: TX in the kernel, capped,
    where the kernel can cap records; elsewhere ``KTLSUnavailable`` naming the reason
    (the limit on a kernel with kTLS but no cap, the missing kTLS on one without)."""
    env = current()
    kernel_tx = env is None or env.has("tx", version, CIPHER)
    can_cap = env is None or env.tx_max_payload_len
    listener = peers.listen()
    argv = s_client_argv(listener.port, certs, version, CIPHER, extra=["-maxfraglen", "512"])
    peers.client("openssl s_client -maxfraglen", argv)
    if kernel_tx and can_cap:
        k = listener.accept(server_context(certs, version, CIPHER), require=True, rx=False)
        peers.track(k)
        assert (k.ktls_tx, k.tx_record_limit) == (True, 512), k.fallback_reason
        k.close()
        return
    with pytest.raises(ossl_ktls.KTLSUnavailable) as info:
        listener.accept(server_context(certs, version, CIPHER), require=True, rx=False)
    if kernel_tx:
        assert "limited records to 512 bytes (max_fragment_length)" in str(info.value)
