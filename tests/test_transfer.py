"""Data both ways through wrap(), in every suite, against a plain pyOpenSSL peer.

Each test states which directions must be in the kernel: what this environment
declares (tests/expectations.py). A kernel that should carry a direction and does not
fails the test; where the declaration says it cannot, the same test runs through the
user-space path and checks the fallback says why.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from OpenSSL import SSL

import ossl_ktls
from ossl_ktls import _linux_tls as uapi
from tests._pairs import (
    CIPHERS,
    VERSIONS,
    Certs,
    Peer,
    connected_pair,
    digest,
    k_read_all,
    k_read_exactly,
    make_context,
    read_all,
    read_exactly,
    records_read,
    records_written,
)

SUITE_PARAMS = [pytest.param(v, c, id=f"tls{v}-{c}") for v in VERSIONS for c in CIPHERS]
SIZES = (0, 1, 16383, 16384, 16385)
BIG = 10 * 1024 * 1024

ExpectKernel = Callable[[str, str, str], bool]


def _pair(
    certs: Certs, version: str, cipher: str, role: str, key: str = "ecdsa"
) -> tuple[SSL.Connection, SSL.Connection]:
    cctx = make_context(certs, server=False, version=version, cipher=cipher, key=key)
    sctx = make_context(certs, server=True, version=version, cipher=cipher, key=key)
    client, server = connected_pair(cctx, sctx)
    return (client, server) if role == "client" else (server, client)


def _expected(
    expect_kernel: ExpectKernel, can_rekey: bool, version: str, cipher: str
) -> tuple[bool, bool]:
    tx = expect_kernel("tx", version, cipher)
    # TLS 1.3 RX goes to the kernel only where the kernel can follow a KeyUpdate.
    rx = expect_kernel("rx", version, cipher) and (version == "1.2" or can_rekey)
    return tx, rx


def _check_placement(k: ossl_ktls.KTLSConnection, tx: bool, rx: bool) -> None:
    assert (k.ktls_tx, k.ktls_rx) == (tx, rx), k.fallback_reason
    if tx and rx:
        assert k.fallback_reason is None
    else:
        assert k.fallback_reason, "a direction stayed in user space without a reason"


@pytest.mark.parametrize("role", ["client", "server"])
@pytest.mark.parametrize(("version", "cipher"), SUITE_PARAMS)
def test_both_directions(
    certs: Certs,
    expect_kernel: ExpectKernel,
    can_rekey: bool,
    role: str,
    version: str,
    cipher: str,
) -> None:
    """After wrap(), payloads of 0, 1, 2^14-1, 2^14, 2^14+1 bytes (and 10 MiB for
    AES-128-GCM) reach the peer byte-exact, the peer's reply arrives byte-exact, the
    kernel's TX/RX sequence numbers equal the records the peer counted, and both
    close_notify exchanges end cleanly."""
    ours, theirs = _pair(certs, version, cipher, role)
    k = ossl_ktls.wrap(ours)
    _check_placement(k, *_expected(expect_kernel, can_rekey, version, cipher))
    assert k.version == version and k.suite is not None and k.suite.name == cipher

    sizes = (*SIZES, BIG) if cipher == "aes-128-gcm" else SIZES
    payload = os.urandom(sum(sizes))
    reply = os.urandom(50_000)

    def peer() -> tuple[bytes, bool]:
        got = read_exactly(theirs, len(payload))
        theirs.sendall(reply)
        theirs.shutdown()
        rest = read_all(theirs)  # returns at our close_notify
        return got, rest == b""

    p = Peer(peer)
    pos = 0
    for size in sizes:
        k.sendall(payload[pos : pos + size])
        pos += size
    assert digest(k_read_all(k)) == digest(reply)
    if k.ktls_rx:
        assert k.rx_sequence() == records_written(theirs)
    k.shutdown()
    got, clean = p.result()
    assert digest(got) == digest(payload)
    assert clean
    if k.ktls_tx:
        assert k.tx_sequence() == records_read(theirs)
    k.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_rsa_certificate(
    certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool, version: str
) -> None:
    """An RSA server certificate works the same as ECDSA (server role, AES-256-GCM)."""
    ours, theirs = _pair(certs, version, "aes-256-gcm", "server", key="rsa")
    k = ossl_ktls.wrap(ours)
    _check_placement(k, *_expected(expect_kernel, can_rekey, version, "aes-256-gcm"))
    data = os.urandom(100_000)
    p = Peer(lambda: read_all(theirs))
    k.sendall(data)
    k.shutdown()
    assert digest(p.result()) == digest(data)
    k.close()


@pytest.mark.parametrize("role", ["client", "server"])
@pytest.mark.parametrize("version", VERSIONS)
def test_sendfile_offset_and_count(
    certs: Certs,
    expect_kernel: ExpectKernel,
    can_rekey: bool,
    tmp_path: Path,
    role: str,
    version: str,
) -> None:
    """sendfile(file, offset, count) sends exactly that slice (zero-copy with kernel TX),
    returns its length and leaves the file position after it; a second sendfile of the
    whole file follows byte-exact."""
    ours, theirs = _pair(certs, version, "aes-128-gcm", role)
    k = ossl_ktls.wrap(ours)
    _check_placement(k, *_expected(expect_kernel, can_rekey, version, "aes-128-gcm"))
    content = os.urandom(300_001)
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    expected = content[1000:151000] + content
    p = Peer(lambda: read_all(theirs))
    with path.open("rb") as f:
        assert k.sendfile(f, offset=1000, count=150_000) == 150_000
        assert f.tell() == 151_000
        assert k.sendfile(f) == len(content)
    k.shutdown()
    assert digest(p.result()) == digest(expected)
    k.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_zerocopy_sendfile_option(
    certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool, tmp_path: Path, version: str
) -> None:
    """wrap(zerocopy_sendfile=True) sets TLS_TX_ZEROCOPY_RO on kernel TX (read back with
    getsockopt; every kTLS kernel of the matrix, 5.19+, has it) and sendfile still
    delivers the file byte-exact; without kernel TX nothing is set."""
    ours, theirs = _pair(certs, version, "aes-256-gcm", "server")
    k = ossl_ktls.wrap(ours, zerocopy_sendfile=True)
    tx, rx = _expected(expect_kernel, can_rekey, version, "aes-256-gcm")
    _check_placement(k, tx, rx)
    assert k.zerocopy_sendfile == tx
    if tx:
        with socket.socket(fileno=os.dup(k.fileno())) as dup:
            assert uapi.get_u32(dup, uapi.TLS_TX_ZEROCOPY_RO) == 1
    content = os.urandom(700_000)
    path = tmp_path / "data.bin"
    path.write_bytes(content)
    p = Peer(lambda: read_all(theirs))
    with path.open("rb") as f:
        assert k.sendfile(f) == len(content)
    k.shutdown()
    assert digest(p.result()) == digest(content)
    k.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_more_coalesces_records(
    certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool, version: str
) -> None:
    """send(..., more=True) holds the record open: ten small sends and a closing one
    arrive as ONE record, where eleven plain sends arrive as eleven."""
    ours, theirs = _pair(certs, version, "aes-128-gcm", "client")
    k = ossl_ktls.wrap(ours)
    _check_placement(k, *_expected(expect_kernel, can_rekey, version, "aes-128-gcm"))
    chunk = os.urandom(100)
    before = records_read(theirs)

    for _ in range(10):
        k.send(chunk, more=True)
    k.send(b"end")
    assert read_exactly(theirs, 1003) == chunk * 10 + b"end"
    coalesced = records_read(theirs) - before

    for _ in range(10):
        k.send(chunk)
    k.send(b"end")
    assert read_exactly(theirs, 1003) == chunk * 10 + b"end"
    separate = records_read(theirs) - before - coalesced

    assert (coalesced, separate) == (1, 11)
    k.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_open_more_record_is_flushed_by_close(
    certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool, version: str
) -> None:
    """Data sent with more=True and never closed by a plain send is not lost: close()
    pushes it out before close_notify."""
    ours, theirs = _pair(certs, version, "aes-128-gcm", "server")
    k = ossl_ktls.wrap(ours)
    _check_placement(k, *_expected(expect_kernel, can_rekey, version, "aes-128-gcm"))
    data = os.urandom(5000)
    p = Peer(lambda: read_all(theirs))
    k.send(data, more=True)
    k.close()
    assert digest(p.result()) == digest(data)


@pytest.mark.parametrize("version", VERSIONS)
def test_fatal_alert_reaches_peer(
    certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool, version: str
) -> None:
    """send_alert(2, internal_error) through kernel TX reaches the pyOpenSSL peer as that
    alert; the connection is closed on our side afterwards. In user space only
    close_notify can be sent, and other alerts are refused with UsageError."""
    ours, theirs = _pair(certs, version, "aes-128-gcm", "client")
    k = ossl_ktls.wrap(ours)
    tx, rx = _expected(expect_kernel, can_rekey, version, "aes-128-gcm")
    _check_placement(k, tx, rx)
    if not tx:
        with pytest.raises(ossl_ktls.UsageError):
            k.send_alert(2, 80)
        k.close()
        return
    k.send_alert(2, 80)
    with pytest.raises(SSL.Error, match="internal error"):
        theirs.recv(100)
    with pytest.raises(ossl_ktls.ConnectionClosed):
        k.send(b"x")


@pytest.mark.parametrize("version", VERSIONS)
def test_truncation_is_an_error(
    certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool, version: str
) -> None:
    """A TCP EOF without close_notify raises TruncatedStream after the data that did
    arrive (which is a true prefix); ragged_eof=True reads it as a plain EOF."""
    for ragged in (False, True):
        ours, theirs = _pair(certs, version, "aes-128-gcm", "client")
        k = ossl_ktls.wrap(ours, ragged_eof=ragged)
        _check_placement(k, *_expected(expect_kernel, can_rekey, version, "aes-128-gcm"))
        data = os.urandom(20_000)
        theirs.sendall(data)
        sock = theirs._socket
        assert sock is not None
        sock.close()
        assert k_read_exactly(k, len(data)) == data
        if ragged:
            assert k.recv(10) == b""
        else:
            with pytest.raises(ossl_ktls.TruncatedStream):
                k.recv(10)
        k.close()


@pytest.mark.parametrize("role", ["client", "server"])
@pytest.mark.parametrize("version", VERSIONS)
def test_handover_mid_stream(
    certs: Certs,
    expect_kernel: ExpectKernel,
    can_rekey: bool,
    role: str,
    version: str,
) -> None:
    """Wrapping after application data already went both ways in user space keeps the
    stream exact: sequence numbers continue, and plaintext OpenSSL had already decrypted
    but nobody read (a partly read record, and a whole record behind it) comes first."""
    ours, theirs = _pair(certs, version, "chacha20-poly1305", role)
    for i in range(3):
        ours.sendall(b"ping %d" % i)
        assert read_exactly(theirs, 6) == b"ping %d" % i
        theirs.sendall(b"pong %d" % i)
        assert read_exactly(ours, 6) == b"pong %d" % i
    first, second = os.urandom(300), os.urandom(700)
    theirs.sendall(first)
    theirs.sendall(second)
    assert ours.recv(100) == first[:100]  # 200 bytes stay inside OpenSSL

    k = ossl_ktls.wrap(ours)
    _check_placement(k, *_expected(expect_kernel, can_rekey, version, "chacha20-poly1305"))
    assert k_read_exactly(k, 900) == first[100:] + second

    data, reply = os.urandom(70_000), os.urandom(40_000)

    def peer() -> bytes:
        got = read_exactly(theirs, len(data))
        theirs.sendall(reply)
        return got

    p = Peer(peer)
    k.sendall(data)
    assert digest(k_read_exactly(k, len(reply))) == digest(reply)
    assert digest(p.result()) == digest(data)
    k.close()


def test_wrap_before_handshake(certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool) -> None:
    """wrap() on a Connection whose handshake has not run yet finishes it first (client
    role, blocking socket), then hands over."""
    cctx = make_context(certs, server=False, version="1.3", cipher="aes-128-gcm")
    sctx = make_context(certs, server=True, version="1.3", cipher="aes-128-gcm")
    client, server = connected_pair(cctx, sctx, handshake=False)

    def peer() -> bytes:
        server.do_handshake()
        return read_all(server)

    p = Peer(peer)
    k = ossl_ktls.wrap(client)
    _check_placement(k, *_expected(expect_kernel, can_rekey, "1.3", "aes-128-gcm"))
    k.sendall(b"hello after handshake")
    k.shutdown()
    assert p.result() == b"hello after handshake"
    k.close()


def test_require_raises_when_kernel_cannot(
    certs: Certs, expect_kernel: ExpectKernel, can_rekey: bool
) -> None:
    """require=True raises KTLSUnavailable, naming the reason, exactly when a requested
    direction cannot go to the kernel; otherwise both directions are in it."""
    ours, _theirs = _pair(certs, "1.2", "aes-128-gcm", "client")
    tx, rx = _expected(expect_kernel, can_rekey, "1.2", "aes-128-gcm")
    if tx and rx:
        k = ossl_ktls.wrap(ours, require=True)
        assert k.ktls_tx and k.ktls_rx
        k.close()
    else:
        with pytest.raises(ossl_ktls.KTLSUnavailable, match="kernel TLS cannot take over"):
            ossl_ktls.wrap(ours, require=True)
