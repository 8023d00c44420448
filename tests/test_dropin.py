"""Differential tests: ``ossl_ktls.Connection`` against pyOpenSSL's own ``SSL.Connection``.

Each test runs one script of calls twice, over a fresh TCP connection to the same kind of
peer (a plain pyOpenSSL Connection in a thread, driven by the same peer script): once
with pyOpenSSL's class, once with ours. What every call returned or raised (exception
type and arguments) forms a transcript; the two transcripts must be equal, and so must
the sizes and SHA-256 of what both peers received. Ours must also have moved the record
layer into the kernel exactly where this environment declares kTLS (on the host: nowhere,
and the Connection is pyOpenSSL's all along).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from OpenSSL import SSL
from OpenSSL.SSL import Connection as PyOpenSSLConnection  # bound now: never patched

import ossl_ktls
from tests._pairs import TIMEOUT, Certs, Peer, make_context, tcp_pair

CIPHER = "aes-128-gcm"
BIG = bytes(range(256)) * 700  # 179200 bytes: many full records and a partial one


@dataclass
class Run:
    """One side of a differential run: the transcript of calls and what the peer got."""

    transcript: list[tuple[Any, ...]] = field(default_factory=list)
    peer_got: bytes = b""
    ktls: tuple[bool, bool] = (False, False)
    reason: str | None = None

    def call(self, label: str, fn: Callable[[], Any]) -> Any:
        try:
            value = fn()
        except SSL.Error as exc:
            self.transcript.append((label, "raises", type(exc).__name__, _args(exc)))
            return exc
        self.transcript.append((label, "returns", value))
        return value


def _args(exc: SSL.Error) -> Any:
    if isinstance(exc, SSL.SysCallError):
        return exc.args
    # OpenSSL's error list: the SSL library's reasons, in order. Entries of other
    # libraries are left out: OpenSSL's crypto provider adds "cipher operation failed"
    # before a bad record's reasons for some ciphers and versions (AES-GCM in TLS 1.2,
    # CCM) and not others (ChaCha20, AES-GCM in TLS 1.3), and the kernel's AEAD, which
    # opened the record instead, has no such entry to give.
    if not (exc.args and isinstance(exc.args[0], list)):
        return []
    return [r[2] for r in exc.args[0] if r[0] == "SSL routines"]


def _pair(
    cls: type[SSL.Connection], certs: Certs, version: str, *, client_side: bool
) -> tuple[SSL.Connection, SSL.Connection]:
    """(under test, peer) over loopback TCP, no handshake yet; the peer is pyOpenSSL's."""
    csock, ssock = tcp_pair()
    cctx = make_context(certs, server=False, version=version, cipher=CIPHER, prepare=False)
    sctx = make_context(certs, server=True, version=version, cipher=CIPHER, prepare=False)
    if client_side:
        tested, peer = cls(cctx, csock), PyOpenSSLConnection(sctx, ssock)
        tested.set_connect_state()
        tested.set_tlsext_host_name(b"localhost")
        peer.set_accept_state()
    else:
        tested, peer = cls(sctx, ssock), PyOpenSSLConnection(cctx, csock)
        tested.set_accept_state()
        peer.set_connect_state()
        peer.set_tlsext_host_name(b"localhost")
    return tested, peer


def _differential(
    certs: Certs,
    version: str,
    script: Callable[[Run, SSL.Connection], None],
    peer_script: Callable[[SSL.Connection], bytes],
    *,
    client_side: bool = True,
) -> tuple[Run, Run]:
    runs = []
    for cls in (PyOpenSSLConnection, ossl_ktls.Connection):
        run = Run()
        tested, peer = _pair(cls, certs, version, client_side=client_side)
        worker = Peer(functools.partial(peer_script, peer))
        try:
            script(run, tested)
            run.peer_got = worker.result()
        finally:
            for c in (tested, peer):
                with contextlib.suppress(OSError):
                    c.sock_shutdown(socket.SHUT_RDWR)
                c.close()
        if isinstance(tested, ossl_ktls.Connection):
            run.ktls = (tested.ktls_tx, tested.ktls_rx)
            run.reason = tested.fallback_reason
        runs.append(run)
    theirs, ours = runs
    assert ours.transcript == theirs.transcript
    assert _digest(ours.peer_got) == _digest(theirs.peer_got)
    return theirs, ours


def _digest(data: bytes) -> tuple[int, str]:
    return len(data), hashlib.sha256(data).hexdigest()


def _expected(
    expect_kernel: Callable[[str, str, str], bool], can_rekey: bool, version: str
) -> tuple[bool, bool]:
    tx = expect_kernel("tx", version, CIPHER)
    rx = expect_kernel("rx", version, CIPHER) and (version == "1.2" or can_rekey)
    return tx, rx


def _read_all(conn: SSL.Connection) -> bytes:
    got = bytearray()
    while True:
        try:
            got += conn.recv(65536)
        except SSL.ZeroReturnError:
            return bytes(got)


def _read_exactly(run: Run, conn: SSL.Connection, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        got += conn.recv(n - len(got))
    run.transcript.append(("read", _digest(bytes(got))))
    return bytes(got)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_echo_then_close_notify(
    certs: Certs, version: str, expect_kernel: Callable[[str, str, str], bool], can_rekey: bool
) -> None:
    """Blocking: do_handshake, sendall of 175 KiB, the peer echoes it; pending() is
    non-zero after a short read of a full record; the peer's close_notify is
    ZeroReturnError (twice); our shutdown() then returns True; get_shutdown at each step."""

    def peer_script(peer: SSL.Connection) -> bytes:
        peer.do_handshake()
        got = bytearray()
        while len(got) < len(BIG):
            got += peer.recv(65536)
        peer.sendall(bytes(got))
        peer.shutdown()
        return bytes(got)

    def script(run: Run, c: SSL.Connection) -> None:
        run.call("do_handshake", c.do_handshake)
        run.call("sendall", lambda: c.sendall(BIG))
        head = run.call("recv 100", lambda: c.recv(100))
        # What programs use pending() for: is more plaintext readable without waiting?
        # (Its value may differ: kernel RX hands over what it decrypted, which can reach
        # into the next record, where OpenSSL counts what is left of the current one.)
        run.call("pending > 0", lambda: c.pending() > 0)
        _read_exactly(run, c, len(BIG) - len(head))
        run.call("recv at close_notify", lambda: c.recv(100))
        run.call("recv again", lambda: c.recv(100))
        run.call("get_shutdown", c.get_shutdown)
        run.call("shutdown", c.shutdown)
        run.call("get_shutdown after", c.get_shutdown)

    _, ours = _differential(certs, version, script, peer_script)
    assert ours.ktls == _expected(expect_kernel, can_rekey, version), ours.reason


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_tcp_end_without_close_notify(
    certs: Certs, version: str, expect_kernel: Callable[[str, str, str], bool], can_rekey: bool
) -> None:
    """The peer sends data, then closes TCP without close_notify: the data arrives, then
    pyOpenSSL's SysCallError(-1, 'Unexpected EOF')."""

    def peer_script(peer: SSL.Connection) -> bytes:
        peer.do_handshake()
        got = peer.recv(2)  # the FIN must come after the hand-over (the ULP needs TCP open)
        peer.sendall(b"partial answer")
        peer.sock_shutdown(socket.SHUT_WR)
        return got

    def script(run: Run, c: SSL.Connection) -> None:
        run.call("do_handshake", c.do_handshake)
        run.call("send", lambda: c.send(b"go"))
        _read_exactly(run, c, 14)
        run.call("recv at EOF", lambda: c.recv(100))

    _, ours = _differential(certs, version, script, peer_script)
    assert ours.ktls == _expected(expect_kernel, can_rekey, version), ours.reason


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_lazy_server_handshake_nonblocking(
    certs: Certs, version: str, expect_kernel: Callable[[str, str, str], bool], can_rekey: bool
) -> None:
    """As cheroot and pyftpdlib do it: a non-blocking server that never calls
    do_handshake; WantReadError until the handshake and the request are in, a peeked
    read, a read, a response, the client's close_notify as ZeroReturnError, then our
    shutdown() (True: both sent)."""
    request = b"GET / HTTP/1.0\r\n\r\n"

    def peer_script(peer: SSL.Connection) -> bytes:
        peer.do_handshake()
        peer.sendall(request)
        got = _read_all(peer)
        peer.shutdown()
        return got

    def script(run: Run, c: SSL.Connection) -> None:
        c.setblocking(False)
        got = b""
        while not got:
            try:
                got = c.recv(5, socket.MSG_PEEK)
            except SSL.WantReadError:
                _wait(c)
            except SSL.WantWriteError:
                _wait(c, write=True)
        run.transcript.append(("peeked", got))
        run.call("recv", lambda: c.recv(len(request)))
        run.call("send", lambda: c.send(b"HTTP/1.0 200 OK\r\n\r\nbody"))
        run.call("shutdown", c.shutdown)
        while True:
            try:
                c.recv(100)
            except SSL.WantReadError:
                _wait(c)
            except SSL.ZeroReturnError:
                break
        run.transcript.append(("end", "ZeroReturnError"))
        run.call("shutdown again", c.shutdown)
        run.call("get_shutdown", c.get_shutdown)
        run.call("recv empty", lambda: c.recv(100))

    _, ours = _differential(certs, version, script, peer_script, client_side=False)
    assert ours.ktls == _expected(expect_kernel, can_rekey, version), ours.reason


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_send_after_shutdown_and_want_read(
    certs: Certs, version: str, expect_kernel: Callable[[str, str, str], bool], can_rekey: bool
) -> None:
    """Non-blocking client: recv with nothing there is WantReadError; after our shutdown()
    (False: the peer has not answered) a send raises pyOpenSSL's error; the peer reads
    everything sent before close_notify."""

    def peer_script(peer: SSL.Connection) -> bytes:
        peer.do_handshake()
        return _read_all(peer)

    def script(run: Run, c: SSL.Connection) -> None:
        run.call("do_handshake", c.do_handshake)
        c.setblocking(False)
        run.call("recv nothing", lambda: c.recv(100))
        run.call("send", lambda: c.send(b"last words"))
        run.call("shutdown", c.shutdown)
        run.call("send after shutdown", lambda: c.send(b"more"))
        run.call("get_shutdown", c.get_shutdown)

    _, ours = _differential(certs, version, script, peer_script)
    assert ours.ktls == _expected(expect_kernel, can_rekey, version), ours.reason
    assert ours.peer_got == b"last words"


def _wait(c: SSL.Connection, *, write: bool = False) -> None:
    r, w, _ = select.select([] if write else [c], [c] if write else [], [], TIMEOUT)
    assert r or w, "timed out waiting for the socket"


def test_memory_bio_connection_is_pyopenssl(certs: Certs) -> None:
    """Connection(ctx, None) (Twisted, mitmproxy) is pyOpenSSL's, memory BIOs and all: a
    handshake and data through bio_read/bio_write with a pyOpenSSL peer; nothing is
    handed over, and the reason says why."""
    cctx = make_context(certs, server=False, version="1.3", cipher=CIPHER, prepare=False)
    sctx = make_context(certs, server=True, version="1.3", cipher=CIPHER, prepare=False)
    client = ossl_ktls.Connection(cctx, None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"localhost")
    server = SSL.Connection(sctx, None)
    server.set_accept_state()

    def pump() -> None:
        for src, dst in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                dst.bio_write(src.bio_read(65536))

    for _ in range(10):
        for c in (client, server):
            with contextlib.suppress(SSL.WantReadError):
                c.do_handshake()
        pump()
    client.sendall(b"over memory")
    pump()
    assert server.recv(100) == b"over memory"
    assert (client.ktls_tx, client.ktls_rx) == (False, False)
    assert client.fallback_reason is not None and "memory-BIO" in client.fallback_reason


def test_patch_serves_module_lookups(
    certs: Certs, expect_kernel: Callable[[str, str, str], bool], can_rekey: bool
) -> None:
    """Under ``patched()``, ``OpenSSL.SSL.Connection`` is ours: a client made through the
    module (its Context never prepared by hand) moves 175 KiB to a pyOpenSSL server
    byte-exact, in the kernel where declared. A Context that made a Connection before
    the patch keeps its new Connections in user space and says why; a name bound by
    ``from OpenSSL.SSL import Connection`` stays pyOpenSSL's; after the block, the module
    is pyOpenSSL's again."""
    from OpenSSL.SSL import Connection as bound_before

    used = make_context(certs, server=False, version="1.3", cipher=CIPHER, prepare=False)
    SSL.Connection(used, None)  # made a Connection: too late to prepare
    with ossl_ktls.patched():
        assert SSL.Connection is ossl_ktls.Connection
        assert bound_before is not ossl_ktls.Connection
        late = SSL.Connection(used, socket.socket())
        assert isinstance(late, ossl_ktls.Connection)
        assert late.fallback_reason is not None and "prepare()" in late.fallback_reason
        late.close()

        tested, peer = _pair(SSL.Connection, certs, "1.3", client_side=True)
        assert isinstance(tested, ossl_ktls.Connection)
        assert not isinstance(peer, ossl_ktls.Connection)  # _pair's bound name
    assert SSL.Connection is bound_before

    def serve() -> bytes:
        peer.do_handshake()
        got = _read_all(peer)
        peer.shutdown()
        return got

    worker = Peer(serve)
    tested.do_handshake()
    tested.sendall(BIG)
    tested.shutdown()
    assert _digest(worker.result()) == _digest(BIG)
    with pytest.raises(SSL.ZeroReturnError):
        tested.recv(10)
    assert (tested.ktls_tx, tested.ktls_rx) == _expected(expect_kernel, can_rekey, "1.3")
    tested.close()
    peer.close()


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_select_sees_what_is_not_read_yet(
    certs: Certs, version: str, expect_kernel: Callable[[str, str, str], bool], can_rekey: bool
) -> None:
    """An event loop reads only when select() says readable (as pyftpdlib does). The peer
    sends 16 small records and its close_notify back to back; reading 64 KiB per readable
    event must reach ZeroReturnError. (User-space RX that read the socket in large chunks
    took the close_notify off the socket with the data: select never fired again.)"""

    def peer_script(peer: SSL.Connection) -> bytes:
        peer.do_handshake()
        got = peer.recv(2)
        for i in range(16):
            peer.sendall(bytes([i]) * 1000)
        peer.shutdown()
        return got

    def script(run: Run, c: SSL.Connection) -> None:
        run.call("do_handshake", c.do_handshake)
        run.call("send", lambda: c.send(b"go"))
        c.setblocking(False)
        got = bytearray()
        while True:
            readable, _, _ = select.select([c], [], [], 30.0)
            if not readable:
                run.transcript.append(("select timed out", len(got)))
                return
            try:
                got += c.recv(65536)
            except SSL.WantReadError:
                continue
            except SSL.ZeroReturnError:
                run.transcript.append(("end", _digest(bytes(got))))
                return

    _, ours = _differential(certs, version, script, peer_script)
    assert ours.ktls == _expected(expect_kernel, can_rekey, version), ours.reason


def test_close_wipes_what_was_kept(certs: Certs, can_rekey: bool) -> None:
    """TLS 1.3 secrets are kept for rekeying only where the kernel carries a direction and
    can rekey; close() (pyOpenSSL's: the socket's) zeroes those buffers first."""
    tested, peer = _pair(ossl_ktls.Connection, certs, "1.3", client_side=True)
    worker = Peer(peer.do_handshake)
    tested.do_handshake()
    worker.result()
    assert isinstance(tested, ossl_ktls.Connection)
    engine = tested._ktls
    kept = engine.secrets.buffers() if engine is not None and engine.secrets else []
    in_kernel = tested.ktls_tx or tested.ktls_rx
    assert len(kept) == (2 if in_kernel and can_rekey else 0)
    assert all(any(buf) for buf in kept)
    tested.close()
    assert not any(any(buf) for buf in kept)
    assert tested.fileno() == -1
    peer.close()


# A record no key opens: application data, 40 bytes of zeros (long enough for any AEAD's
# nonce and tag in both versions).
_BAD_RECORD = bytes([23, 3, 3, 0, 40]) + bytes(40)


def _raw(conn: SSL.Connection) -> socket.socket:
    """The TCP socket under *conn* (a duplicate), to write around its TLS."""
    return socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM)


def _error_of(fn: Callable[[], Any]) -> bytes:
    """What *fn* raised, in a transcript's words (the peer reports it as its bytes)."""
    try:
        fn()
    except SSL.Error as exc:
        return repr((type(exc).__name__, _args(exc))).encode()
    return b"nothing raised"


class _BioPeer:
    """pyOpenSSL's Connection on memory BIOs, pumped over the socket of *conn* (which it
    replaces): a peer that can be made to send a fatal alert, which pyOpenSSL has no call
    for; OpenSSL sends one when it reads a record it cannot open."""

    def __init__(self, conn: SSL.Connection) -> None:
        self.sock = _raw(conn)
        self.tls = PyOpenSSLConnection(conn.get_context(), None)
        self.tls.set_accept_state()

    def _out(self) -> None:
        while True:
            try:
                data = self.tls.bio_read(65536)
            except SSL.WantReadError:
                return
            self.sock.sendall(data)

    def _in(self) -> None:
        self._out()
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the tested side closed")
        self.tls.bio_write(data)

    def do_handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
            except SSL.WantReadError:
                self._in()
                continue
            self._out()
            return

    def recv(self, n: int) -> bytes:
        while True:
            try:
                return self.tls.recv(n)
            except SSL.WantReadError:
                self._in()

    def sendall(self, data: bytes) -> None:
        self.tls.sendall(data)
        self._out()

    def send_fatal_alert(self) -> None:
        """bad_record_mac: OpenSSL's answer to a record it cannot open, fed to itself."""
        self.tls.bio_write(_BAD_RECORD)
        with contextlib.suppress(SSL.Error):
            self.tls.recv(100)
        self._out()

    def close(self) -> None:
        self.sock.close()


def _after_an_error(run: Run, c: SSL.Connection) -> None:
    """Handshake, ask for 6 bytes and read them, then the error and what follows it."""
    run.call("do_handshake", c.do_handshake)
    run.call("send", lambda: c.send(b"go"))
    _read_exactly(run, c, 6)
    run.call("recv at the error", lambda: c.recv(100))
    run.call("recv again", lambda: c.recv(100))
    run.call("send after the error", lambda: c.send(b"more"))
    run.call("get_shutdown", c.get_shutdown)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_a_bad_record_from_the_peer(
    certs: Certs, version: str, expect_kernel: Callable[[str, str, str], bool], can_rekey: bool
) -> None:
    """After 6 good bytes the peer writes a record that does not decrypt: the read raises
    pyOpenSSL's SSL.Error with OpenSSL's reason (bad record mac), later calls raise what
    pyOpenSSL raises, and the peer is told with the same fatal alert."""

    def peer_script(peer: SSL.Connection) -> bytes:
        peer.do_handshake()
        got = peer.recv(2)
        peer.sendall(b"before")
        raw = _raw(peer)
        raw.sendall(_BAD_RECORD)
        raw.close()
        return got + _error_of(lambda: peer.recv(100))

    _, ours = _differential(certs, version, _after_an_error, peer_script)
    assert ours.ktls == _expected(expect_kernel, can_rekey, version), ours.reason


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_a_fatal_alert_from_the_peer(
    certs: Certs, version: str, expect_kernel: Callable[[str, str, str], bool], can_rekey: bool
) -> None:
    """After 6 good bytes the peer sends a fatal alert (bad_record_mac): the read raises
    SSL.Error naming the alert as OpenSSL does, and later calls raise what pyOpenSSL
    raises."""

    def peer_script(conn: SSL.Connection) -> bytes:
        peer = _BioPeer(conn)
        try:
            peer.do_handshake()
            got = peer.recv(2)
            peer.sendall(b"before")
            peer.send_fatal_alert()
            return got
        finally:
            peer.close()

    _, ours = _differential(certs, version, _after_an_error, peer_script)
    assert ours.ktls == _expected(expect_kernel, can_rekey, version), ours.reason


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_nonblocking_send_under_backpressure(
    certs: Certs, version: str, expect_kernel: Callable[[str, str, str], bool], can_rekey: bool
) -> None:
    """A non-blocking sender, as event loops write: 64 KiB chunks into a peer that reads
    nothing until the sender has seen WantWriteError; then it retries the same chunk
    whenever select() says writable. Both classes hit WantWriteError, send every byte
    once, in order, and the peer reads them all before close_notify."""
    data = BIG * 8  # 1.4 MiB: far more than the two 64 KiB socket buffers below hold
    blocked = threading.Event()

    def small_buffer(conn: SSL.Connection, option: int) -> None:
        raw = _raw(conn)
        raw.setsockopt(socket.SOL_SOCKET, option, 65536)  # and no autotuning
        raw.close()

    def peer_script(peer: SSL.Connection) -> bytes:
        small_buffer(peer, socket.SO_RCVBUF)
        peer.do_handshake()
        if not blocked.wait(TIMEOUT):
            raise AssertionError("the sender never saw WantWriteError")
        return _read_all(peer)

    def script(run: Run, c: SSL.Connection) -> None:
        small_buffer(c, socket.SO_SNDBUF)
        run.call("do_handshake", c.do_handshake)
        c.setblocking(False)
        view = memoryview(data)
        sent = 0
        while sent < len(data):
            try:
                sent += c.send(view[sent : sent + 65536])
            except SSL.WantWriteError:
                blocked.set()
                _wait(c, write=True)
        run.transcript.append(("sent", sent, blocked.is_set()))
        while True:
            try:
                run.call("shutdown", c.shutdown)
                return
            except SSL.WantWriteError:
                _wait(c, write=True)

    blocked_runs = []

    def reset_between(run: Run, c: SSL.Connection) -> None:
        blocked.clear()
        script(run, c)
        blocked_runs.append(blocked.is_set())

    _, ours = _differential(certs, version, reset_between, peer_script)
    assert blocked_runs == [True, True]
    assert ours.ktls == _expected(expect_kernel, can_rekey, version), ours.reason
    assert _digest(ours.peer_got) == _digest(data)


def test_engine_errors_map_to_what_pyopenssl_raises() -> None:
    """The mapping the data methods apply to the engine's exceptions (no socket needed):
    OpenSSL's own error again where OpenSSL said it; a record the kernel refused in the
    record layer's words; after a fatal error an empty list (OpenSSL's queue is empty
    then), after our shutdown() 'protocol is shutdown' for a write; would-block as
    WantRead/WantWrite; a reset as SysCallError with its errno."""
    from ossl_ktls import _pyopenssl
    from ossl_ktls._errors import BadRecordMAC, ConnectionClosed, from_errno

    # The mapping applies to a Connection, so OpenSSL has loaded its reason strings (at
    # its first SSL_CTX); a test run of this function alone must make one too.
    SSL.Context(SSL.TLS_METHOD)

    def mapped(exc: BaseException, *, writing: bool = False, broken: bool = False) -> Any:
        out = _pyopenssl._as_pyopenssl(exc, writing=writing, broken=broken)
        assert isinstance(out, SSL.Error), out
        return type(out).__name__, _args(out)

    theirs = SSL.Error([("SSL routines", "", "tls alert bad record mac")])
    ours = ossl_ktls.TLSAlertError(2, 20)
    ours.__cause__ = theirs
    assert mapped(ours) == ("Error", ["tls alert bad record mac"])
    assert mapped(BadRecordMAC("receive")) == (
        "Error",
        ["decryption failed or bad record mac", "record layer failure"],
    )
    assert mapped(ConnectionClosed(), writing=True, broken=True) == ("Error", [])
    assert mapped(ConnectionClosed(), writing=False, broken=True) == ("Error", [])
    assert mapped(ConnectionClosed(), writing=True) == ("Error", ["protocol is shutdown"])
    assert mapped(BlockingIOError(), writing=True) == ("WantWriteError", [])
    assert mapped(BlockingIOError()) == ("WantReadError", [])
    assert mapped(from_errno(errno.ECONNRESET, "receive")) == (
        "SysCallError",
        (errno.ECONNRESET, "ECONNRESET"),
    )
