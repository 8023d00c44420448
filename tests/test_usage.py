"""Bad use gets clear errors; secrets stay secret; a user's keylog callback keeps working."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from OpenSSL import SSL

import ossl_ktls
from ossl_ktls import _openssl
from tests._pairs import (
    Certs,
    Peer,
    connected_pair,
    k_read_exactly,
    make_context,
    read_all,
    read_until_end,
)


class _Fd:
    """A minimal file-like object around a raw descriptor."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


def _contexts(
    certs: Certs, version: str = "1.3", prepare: bool = True
) -> tuple[SSL.Context, SSL.Context]:
    c = make_context(certs, server=False, version=version, cipher="aes-128-gcm", prepare=prepare)
    s = make_context(certs, server=True, version=version, cipher="aes-128-gcm", prepare=prepare)
    return c, s


def test_wrap_unprepared_context(certs: Certs) -> None:
    """wrap() of a Connection whose Context never went through prepare() raises
    NotPrepared (a UsageError and a ValueError) naming the fix."""
    cctx, sctx = _contexts(certs, prepare=False)
    client, _server = connected_pair(cctx, sctx)
    with pytest.raises(ossl_ktls.NotPrepared, match=r"prepare\(ctx\)") as info:
        ossl_ktls.wrap(client)
    assert isinstance(info.value, ValueError)


def test_prepare_after_use_is_refused(certs: Certs) -> None:
    """prepare() on a Context that already made a Connection raises UsageError (OpenSSL
    copies callbacks at Connection creation, so it could not work); prepare() twice on
    a fresh Context is a no-op."""
    ctx = SSL.Context(SSL.TLS_METHOD)
    assert ossl_ktls.prepare(ctx) is ctx
    assert ossl_ktls.prepare(ctx) is ctx
    used = SSL.Context(SSL.TLS_METHOD)
    SSL.Connection(used, None)
    with pytest.raises(ossl_ktls.UsageError, match="before the first Connection"):
        ossl_ktls.prepare(used)
    with pytest.raises(ossl_ktls.UsageError):
        ossl_ktls.prepare("not a context")  # type: ignore[arg-type]


def test_wrap_twice_and_wrong_objects(certs: Certs) -> None:
    """Wrapping the same Connection twice, a non-Connection, or a memory-BIO Connection
    raises UsageError."""
    cctx, sctx = _contexts(certs)
    client, _server = connected_pair(cctx, sctx)
    k = ossl_ktls.wrap(client)
    with pytest.raises(ossl_ktls.UsageError, match="already wrapped"):
        ossl_ktls.wrap(client)
    with pytest.raises(ossl_ktls.UsageError):
        ossl_ktls.wrap(object())  # type: ignore[arg-type]
    with pytest.raises(ossl_ktls.UsageError, match="socket"):
        ossl_ktls.wrap(
            SSL.Connection(
                make_context(certs, server=False, version="1.3", cipher="aes-128-gcm"), None
            )
        )
    k.close()


def test_non_tcp_socket(certs: Certs) -> None:
    """A Connection over a Unix socket is refused: kernel TLS is TCP only."""
    ctx = make_context(certs, server=False, version="1.3", cipher="aes-128-gcm")
    a, b = socket.socketpair()
    try:
        with pytest.raises(ossl_ktls.UsageError, match="TCP"):
            ossl_ktls.wrap(SSL.Connection(ctx, a))
    finally:
        a.close()
        b.close()


def test_io_after_close(certs: Certs) -> None:
    """After close(), send/recv/sendfile raise ConnectionClosed (an OSError); close()
    again is a no-op."""
    cctx, sctx = _contexts(certs)
    client, _server = connected_pair(cctx, sctx)
    k = ossl_ktls.wrap(client)
    k.close()
    k.close()
    for call in (lambda: k.send(b"x"), lambda: k.recv(1), lambda: k.shutdown()):
        with pytest.raises(ossl_ktls.ConnectionClosed) as info:
            call()
        assert isinstance(info.value, OSError)


def test_abort_never_looks_like_a_clean_end(certs: Certs) -> None:
    """abort() closes without close_notify: the peer reads at most what was sent (a true
    prefix) and then an error (reset or EOF without close_notify), never pyOpenSSL's
    clean ZeroReturnError; later calls on ours raise ConnectionClosed."""
    cctx, sctx = _contexts(certs)
    client, server = connected_pair(cctx, sctx)
    k = ossl_ktls.wrap(client)
    data = os.urandom(100_000)
    k.sendall(data)
    k.abort()
    got, end = read_until_end(server)
    assert not isinstance(end, SSL.ZeroReturnError)
    assert got == data[: len(got)]
    with pytest.raises(ossl_ktls.ConnectionClosed):
        k.send(b"x")
    k.close()  # a no-op now


def test_sendfile_bad_files(certs: Certs, tmp_path: Path) -> None:
    """sendfile() of a directory, of a count past the end of the file, or of an object
    without a file descriptor raises UsageError before sending anything; the stream is
    still usable afterwards."""
    cctx, sctx = _contexts(certs)
    client, server = connected_pair(cctx, sctx)
    k = ossl_ktls.wrap(client)
    f = tmp_path / "short.bin"
    f.write_bytes(b"12345")
    dir_fd = os.open(tmp_path, os.O_RDONLY)
    try:
        with pytest.raises(ossl_ktls.UsageError, match="regular file"):
            k.sendfile(_Fd(dir_fd))  # type: ignore[arg-type]
    finally:
        os.close(dir_fd)
    with f.open("rb") as fh, pytest.raises(ossl_ktls.UsageError, match="past the end"):
        k.sendfile(fh, offset=2, count=10)
    with pytest.raises(ossl_ktls.UsageError, match="file descriptor"):
        k.sendfile(io.BytesIO(b"abc"))
    p = Peer(lambda: read_all(server))
    with f.open("rb") as fh:
        assert k.sendfile(fh, offset=2) == 3
    k.shutdown()
    assert p.result() == b"345"
    k.close()


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_user_keylog_callback_keeps_working(certs: Certs, when: str, version: str) -> None:
    """A keylog callback the user set before or after prepare() still receives every
    line (the same lines an unprepared Context gets), and the hand-over still works."""
    lines: list[bytes] = []
    cctx = make_context(certs, server=False, version=version, cipher="aes-128-gcm", prepare=False)
    if when == "before":
        cctx.set_keylog_callback(lambda _c, line: lines.append(line))
        ossl_ktls.prepare(cctx)
    else:
        ossl_ktls.prepare(cctx)
        cctx.set_keylog_callback(lambda _c, line: lines.append(line))
    sctx = make_context(certs, server=True, version=version, cipher="aes-128-gcm")
    client, server = connected_pair(cctx, sctx)
    labels = sorted(line.split()[0] for line in lines)
    if version == "1.3":
        assert labels == sorted(
            [
                b"CLIENT_HANDSHAKE_TRAFFIC_SECRET",
                b"SERVER_HANDSHAKE_TRAFFIC_SECRET",
                b"CLIENT_TRAFFIC_SECRET_0",
                b"SERVER_TRAFFIC_SECRET_0",
                b"EXPORTER_SECRET",
            ]
        )
    else:
        assert labels == [b"CLIENT_RANDOM"]
    k = ossl_ktls.wrap(client)
    server.sendall(b"still fine")
    assert k_read_exactly(k, 10) == b"still fine"
    k.close()


def test_secrets_not_kept_or_shown(
    certs: Certs,
    caplog: pytest.LogCaptureFixture,
    expect_kernel: Callable[[str, str, str], bool],
    can_rekey: bool,
) -> None:
    """No key material appears in repr() or in any log record (captured at DEBUG over a
    whole session), and the captured traffic secrets are wiped from the Connection's
    state once installed. They are kept (for rekeying) exactly where the kernel carries
    a direction and can rekey TLS 1.3, and those kept buffers are zero after close()."""
    caplog.set_level(logging.DEBUG)
    lines: list[bytes] = []
    cctx = make_context(certs, server=False, version="1.3", cipher="aes-128-gcm", prepare=False)
    cctx.set_keylog_callback(lambda _c, line: lines.append(line))
    ossl_ktls.prepare(cctx)
    sctx = make_context(certs, server=True, version="1.3", cipher="aes-128-gcm")
    client, server = connected_pair(cctx, sctx)
    secrets = [bytes.fromhex(line.split()[2].decode()) for line in lines]
    k = ossl_ktls.wrap(client)
    server.sendall(b"x" * 100)
    assert k_read_exactly(k, 100) == b"x" * 100
    assert _openssl.state_of(client).secrets == {}
    text = repr(k) + repr(_openssl.state_of(client)) + caplog.text
    for secret in secrets:
        assert secret.hex() not in text
        assert secret.hex().upper() not in text
        assert repr(secret) not in text
    kept_secrets = k._engine.secrets
    # the very buffers close() must wipe
    kept = kept_secrets.buffers() if kept_secrets is not None else []
    in_kernel = expect_kernel("tx", "1.3", "aes-128-gcm") or expect_kernel(
        "rx", "1.3", "aes-128-gcm"
    )
    assert len(kept) == (2 if in_kernel and can_rekey else 0), "secrets kept against policy"
    assert all(any(buf) for buf in kept), "a secret kept for rekeying is already zero"
    k.close()
    assert not any(any(buf) for buf in kept), "close() left a secret unwiped"
    assert not k._engine.secrets


def test_failed_verification_hands_nothing_over(certs: Certs) -> None:
    """A client that does not trust the server's certificate fails the handshake inside
    wrap() with pyOpenSSL's error; nothing is handed over (the socket has no kTLS)."""
    cctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    cctx.set_verify(SSL.VERIFY_PEER)  # no CA loaded: nothing is trusted
    ossl_ktls.prepare(cctx)
    sctx = make_context(certs, server=True, version="1.3", cipher="aes-128-gcm")
    client, server = connected_pair(cctx, sctx, handshake=False)

    def serve() -> None:
        with contextlib.suppress(SSL.Error):
            server.do_handshake()

    p = Peer(serve)
    with pytest.raises(SSL.Error, match="certificate verify failed"):
        ossl_ktls.wrap(client)
    p.result()
    assert not getattr(client, "_ossl_ktls_wrapped", False)
