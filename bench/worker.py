"""A measuring endpoint: one process, driven by the orchestrator over stdin/stdout.

Started as ``python -m bench.worker CONFIG_JSON``. It listens on a loopback port, prints
``{"port": P, "pid": PID}``, then reads one JSON command per line from stdin and answers
each with one JSON line on stdout (nothing else goes to stdout). Commands (``op``):

``tx``            measured sender (TLS server): handshake, then send ``size`` bytes with the
                  variant's method, close_notify, half-close, wait for the receiver's FIN.
``sink``          the receiver of ``tx``: TLS client that discards ciphertext after its
                  handshake (pyOpenSSL, no decryption), or a plain TCP discarder.
``http_sink``     GET a file from ``openssl s_server -WWW`` and discard it; measures the
                  s_server process (``pid``) from after the handshake to the end.
``rx``            measured receiver (TLS client): read ``size`` bytes with the variant's stack.
``push``          the sender of ``rx`` (TLS server; kernel sendfile where it can). With
                  ``watch_pid`` it measures that process (an ``openssl s_client``) instead,
                  following its progress through ``/proc/<pid>/io``.
``echo_server``   echoes fixed-size messages until EOF (peer of ``rr_client``).
``rr_client``     measured: request/response round trips for ``seconds``.
``conn_server``   accepts connections (handshake, hand-over, 1-byte exchange) until a
                  connection starts with ``STOP``; reports its handshake and ``wrap()`` times.
``conn_client``   measured: connections for ``seconds``, timing handshake and ``wrap()``.
``http_many``     ``n`` simultaneous GETs to ``ossl_ktls serve`` (handshakes first, then all
                  transfers at once); measures the server process (``pid``).
``ftps_server``   measured: pyftpdlib FTPS on ``port`` (stock or ossl_ktls handlers) for one
                  client session; measures one RETR of ``payload-<size>`` (:mod:`bench.ftps`).
``quit``          exit.

Every answer has ``status``: ``ok``, ``unavailable`` (with ``reason``: the path under test
does not exist here, e.g. no kernel TLS) or ``error`` (with ``reason``).
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import json
import os
import pstats
import select
import socket
import ssl
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, cast

from OpenSSL import SSL

import ossl_ktls
from bench.common import (
    HOST,
    IO_TIMEOUT,
    SUITES,
    TLS_RX,
    TLS_TX,
    Certs,
    CpuReading,
    Suite,
    kernel_tls_on,
    proc_cpu,
    proc_wchar,
    pyopenssl_context,
    stdlib_context,
    wait_idle,
)
from ossl_ktls.cli import read_tls_stat

Json = dict[str, Any]
_DISCARD = 1 << 20
_RECV_BUF = 256 << 10
#: What each connection of the connection test exchanges; 4 bytes, so that the server
#: can tell it from the ``STOP`` that ends the test on plain TCP too.
PING = b"ping"


class Unavailable(Exception):
    """The path under test does not exist in this environment (reason in the message)."""


class Endpoint(Protocol):
    """The few operations a measured connection needs, whatever the stack."""

    sock: socket.socket

    def sendall(self, data: memoryview) -> None: ...

    def recv_into(self, buf: memoryview) -> int: ...

    def finish(self) -> None:
        """close_notify where the stack sends it, then half-close TCP."""

    def close(self) -> None: ...

    def session(self) -> Any:
        """What a client offers to resume this session next time (None: nothing)."""


class TcpEnd:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def sendall(self, data: memoryview) -> None:
        self.sock.sendall(data)

    def recv_into(self, buf: memoryview) -> int:
        return self.sock.recv_into(buf)

    def finish(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()

    def session(self) -> Any:
        return None


class KtlsEnd:
    def __init__(self, k: ossl_ktls.KTLSConnection, sock: socket.socket) -> None:
        self.k = k
        self.sock = sock

    def sendall(self, data: memoryview) -> None:
        self.k.sendall(data)

    def recv_into(self, buf: memoryview) -> int:
        return self.k.recv_into(buf)

    def finish(self) -> None:
        self.k.shutdown()

    def close(self) -> None:
        self.k.close()

    def session(self) -> Any:
        return self.k.get_session()


class PyOpenSSLEnd:
    def __init__(self, conn: SSL.Connection, sock: socket.socket) -> None:
        self.conn = conn
        self.sock = sock

    def sendall(self, data: memoryview) -> None:
        self.conn.sendall(data)

    def recv_into(self, buf: memoryview) -> int:
        try:
            return self.conn.recv_into(cast(Any, buf))
        except SSL.ZeroReturnError:
            return 0
        except SSL.SysCallError as exc:
            if exc.args and exc.args[0] in (-1, 0):
                return 0  # TCP EOF without close_notify (the stdlib peer never sends it)
            raise

    def finish(self) -> None:
        self.conn.shutdown()
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(SSL.Error, OSError):
            self.conn.shutdown()
        self.sock.close()

    def session(self) -> Any:
        return self.conn.get_session()


class StdlibEnd:
    def __init__(self, ssock: ssl.SSLSocket) -> None:
        self.ssock = ssock
        self.sock: socket.socket = ssock

    def sendall(self, data: memoryview) -> None:
        self.ssock.sendall(data)

    def recv_into(self, buf: memoryview) -> int:
        return self.ssock.recv_into(buf)

    def finish(self) -> None:
        # Python 3.11 has no "send close_notify, keep the socket" call: unwrap() waits
        # for the peer's close_notify. The transfer ends with a TCP half-close.
        socket.socket.shutdown(self.ssock, socket.SHUT_WR)

    def close(self) -> None:
        self.ssock.close()

    def session(self) -> Any:
        return self.ssock.session


@dataclass
class Handshake:
    """An established connection and what it cost."""

    end: Endpoint
    handshake_s: float
    wrap_s: float
    ktls_tx: bool
    ktls_rx: bool
    cipher: str
    fallback_reason: str | None = None
    resumed: bool = False


def configure(sock: socket.socket, nodelay: bool) -> socket.socket:
    """Blocking mode (what pyOpenSSL needs, and no poll() before every call), with the
    kernel's own send/receive timeouts as a safety net against a stuck peer."""
    sock.settimeout(None)
    timeval = struct.pack("ll", int(IO_TIMEOUT), 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    if nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def wait_readable(sock: socket.socket, timeout: float = IO_TIMEOUT) -> None:
    """Wait until *sock* has data or EOF (the peer's FIN), without reading it."""
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLHUP | select.POLLRDHUP)
    if not poller.poll(timeout * 1000):
        raise TimeoutError("the peer did not finish in time")


def read_exactly(end: Endpoint, view: memoryview) -> bool:
    """Fill *view*; False on EOF first."""
    got = 0
    while got < len(view):
        n = end.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return True


def discard(sock: socket.socket) -> int:
    """Read and drop raw bytes until EOF; return how many."""
    buf = bytearray(_DISCARD)
    total = 0
    while n := sock.recv_into(buf):
        total += n
    return total


class Worker:
    """The command loop and every command's implementation."""

    def __init__(self, config: Json) -> None:
        self.certs = Certs(**config["certs"])
        self.payload_dir: str = config["payload_dir"]
        self.allow_fallback = bool(config.get("allow_fallback", False))
        self.pid = os.getpid()
        # What the kernel takes is probed once per process (cached): here, so that no
        # measured sample pays for it.
        ossl_ktls.probe()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST, 0))
        self.listener.listen(256)
        self.listener.settimeout(IO_TIMEOUT)
        self.port: int = self.listener.getsockname()[1]
        self._pyctx: dict[tuple[str, bool, bool], SSL.Context] = {}
        self._stdctx: dict[tuple[str, bool, bool], ssl.SSLContext] = {}
        self._data: dict[int, bytes] = {}
        self.profiler: cProfile.Profile | None = None
        self.ops: dict[str, Callable[[Json], Json]] = {
            "tx": self.op_tx,
            "sink": self.op_sink,
            "http_sink": self.op_http_sink,
            "rx": self.op_rx,
            "push": self.op_push,
            "echo_server": self.op_echo_server,
            "rr_client": self.op_rr_client,
            "conn_server": self.op_conn_server,
            "conn_client": self.op_conn_client,
            "http_many": self.op_http_many,
            "ftps_server": self.op_ftps_server,
        }

    # ------------------------------------------------------------ plumbing

    def pyctx(self, suite: Suite, *, server: bool, prepared: bool) -> SSL.Context:
        key = (suite.key, server, prepared)
        if key not in self._pyctx:
            self._pyctx[key] = pyopenssl_context(
                suite, server=server, certs=self.certs, prepared=prepared
            )
        return self._pyctx[key]

    def stdctx(self, suite: Suite, *, server: bool, ktls_bit: bool) -> ssl.SSLContext:
        key = (suite.key, server, ktls_bit)
        if key not in self._stdctx:
            self._stdctx[key] = stdlib_context(
                suite, server=server, certs=self.certs, ktls_bit=ktls_bit
            )
        return self._stdctx[key]

    def payload_path(self, size: int) -> str:
        return os.path.join(self.payload_dir, f"payload-{size}")

    def payload(self, size: int) -> bytes:
        if size not in self._data:
            with open(self.payload_path(size), "rb") as f:
                self._data[size] = f.read()
        return self._data[size]

    def accept(self, *, nodelay: bool = False) -> socket.socket:
        sock, _ = self.listener.accept()
        return configure(sock, nodelay)

    @staticmethod
    def connect(port: int, *, nodelay: bool = False) -> socket.socket:
        sock = socket.create_connection((HOST, port), timeout=IO_TIMEOUT)
        return configure(sock, nodelay)

    def establish(
        self,
        stack: str,
        suite: Suite,
        sock: socket.socket,
        *,
        server: bool,
        session: Any = None,
    ) -> Handshake:
        """Handshake *sock* with *stack* (``ktls``, ``pyopenssl``, ``stdlib``,
        ``stdlib_ktls``, ``tcp``); the handshake and the hand-over are timed apart.
        A client given *session* offers it for resumption."""
        if stack == "tcp":
            return Handshake(TcpEnd(sock), 0.0, 0.0, False, False, "none")
        if stack in ("ktls", "pyopenssl"):
            ctx = self.pyctx(suite, server=server, prepared=stack == "ktls")
            conn = SSL.Connection(ctx, sock)
            if server:
                conn.set_accept_state()
            else:
                conn.set_connect_state()
                if session is not None:
                    conn.set_session(session)
            t0 = time.perf_counter()
            conn.do_handshake()
            t1 = time.perf_counter()
            cipher = conn.get_cipher_name() or "?"
            resumed = ossl_ktls._openssl.session_reused(conn)
            if stack == "pyopenssl":
                return Handshake(
                    PyOpenSSLEnd(conn, sock), t1 - t0, 0.0, False, False, cipher, None, resumed
                )
            if self.profiler is not None:
                self.profiler.enable()
            k = ossl_ktls.wrap(conn)
            if self.profiler is not None:
                self.profiler.disable()
            t2 = time.perf_counter()
            return Handshake(
                KtlsEnd(k, sock),
                t1 - t0,
                t2 - t1,
                k.ktls_tx,
                k.ktls_rx,
                cipher,
                k.fallback_reason,
                resumed,
            )
        ctx2 = self.stdctx(suite, server=server, ktls_bit=stack == "stdlib_ktls")
        ssock = ctx2.wrap_socket(
            sock, server_side=server, do_handshake_on_connect=False, session=session
        )
        t0 = time.perf_counter()
        ssock.do_handshake()
        t1 = time.perf_counter()
        cipher = (ssock.cipher() or ("?",))[0]
        tx, rx = kernel_tls_on(ssock, TLS_TX), kernel_tls_on(ssock, TLS_RX)
        return Handshake(
            StdlibEnd(ssock), t1 - t0, 0.0, tx, rx, cipher, None, bool(ssock.session_reused)
        )

    def require(self, hs: Handshake, stack: str, direction: str, suite: Suite) -> None:
        """Raise Unavailable when *stack* should carry *direction* in the kernel but does not."""
        if stack not in ("ktls", "stdlib_ktls") or self.allow_fallback:
            return
        on = hs.ktls_tx if direction == "tx" else hs.ktls_rx
        if on:
            return
        if stack == "ktls":
            raise Unavailable(f"kernel {direction.upper()} not taken: {hs.fallback_reason}")
        raise Unavailable(
            f"the stdlib's OpenSSL did not put {direction.upper()} of TLS {suite.version} "
            "in the kernel (OpenSSL built without kTLS, kernel without kTLS, or, for RX of "
            "TLS 1.3, OpenSSL 3.0)"
        )

    @staticmethod
    def measured(
        cpu0: CpuReading, cpu1: CpuReading, seconds: float, hs: Handshake | None = None
    ) -> Json:
        out: Json = {"status": "ok", "seconds": seconds, **(cpu1 - cpu0).as_json()}
        if hs is not None:
            out.update(
                {
                    "ktls_tx": hs.ktls_tx,
                    "ktls_rx": hs.ktls_rx,
                    "cipher": hs.cipher,
                    "handshake_s": hs.handshake_s,
                    "wrap_s": hs.wrap_s,
                }
            )
            if hs.fallback_reason:
                out["fallback_reason"] = hs.fallback_reason
        return out

    # ------------------------------------------------------------ bulk, sender measured

    def op_tx(self, cmd: Json) -> Json:
        variant: str = cmd["variant"]
        suite = SUITES[cmd["suite"]]
        size: int = cmd["size"]
        stack = {
            "ktls_sendfile": "ktls",
            "ktls_sendall": "ktls",
            "pyopenssl_sendall": "pyopenssl",
            "stdlib_sendall": "stdlib",
            "stdlib_sendfile": "stdlib",
            "stdlib_ktls_sendall": "stdlib_ktls",
            "tcp_sendfile": "tcp",
        }[variant]
        sock = self.accept()
        hs: Handshake | None = None
        try:
            hs = self.establish(stack, suite, sock, server=True)
            self.require(hs, stack, "tx", suite)
            end = hs.end
            sendfile = variant.endswith("sendfile")
            f: BinaryIO | None = open(self.payload_path(size), "rb") if sendfile else None  # noqa: SIM115
            data = memoryview(self.payload(size)) if not sendfile else None
            profiler = cProfile.Profile() if cmd.get("profile") else None
            try:
                cpu0, t0 = proc_cpu(self.pid), time.perf_counter()
                if profiler is not None:
                    self.profiler = profiler
                    profiler.enable()
                if variant == "ktls_sendfile":
                    assert isinstance(end, KtlsEnd) and f is not None
                    end.k.sendfile(f, 0, size)
                elif variant in ("stdlib_sendfile", "tcp_sendfile"):
                    assert f is not None
                    end.sock.sendfile(f, 0, size)
                else:
                    assert data is not None
                    end.sendall(data)
                end.finish()
                wait_readable(end.sock)
                if profiler is not None:
                    profiler.disable()
                t1, cpu1 = time.perf_counter(), proc_cpu(self.pid)
            finally:
                if f is not None:
                    f.close()
            out = {**self.measured(cpu0, cpu1, t1 - t0, hs), "bytes": size}
            return self.take_profile(out)
        finally:
            if hs is not None:
                with contextlib.suppress(Exception):
                    hs.end.close()
            sock.close()

    def op_sink(self, cmd: Json) -> Json:
        suite = SUITES[cmd["suite"]]
        sock = self.connect(cmd["port"])
        try:
            if cmd["tls"]:
                conn = SSL.Connection(self.pyctx(suite, server=False, prepared=False), sock)
                conn.set_connect_state()
                conn.do_handshake()
            return {"status": "ok", "raw_bytes": discard(sock)}
        finally:
            sock.close()

    def op_http_sink(self, cmd: Json) -> Json:
        """Fetch from openssl s_server -WWW; the s_server process is the one measured."""
        suite = SUITES[cmd["suite"]]
        pid: int = cmd["pid"]
        size: int = cmd["size"]
        stat0 = read_tls_stat()  # s_server installs kernel TX at the end of the handshake
        sock = self.connect(cmd["port"])
        try:
            conn = SSL.Connection(self.pyctx(suite, server=False, prepared=False), sock)
            conn.set_connect_state()
            conn.do_handshake()
            wait_idle(pid)
            cpu0, t0 = proc_cpu(pid), time.perf_counter()
            conn.sendall(f"GET /payload-{size} HTTP/1.0\r\n\r\n".encode())
            # s_server -WWW waits for the client's close_notify before closing: send it
            # now (it reads it after the response), then discard until its FIN.
            conn.shutdown()
            raw = discard(sock)
            t1 = time.perf_counter()
            wait_idle(pid)
            cpu1 = proc_cpu(pid)
            stat1 = read_tls_stat()
        finally:
            sock.close()
        if raw < size:
            return {
                "status": "error",
                "reason": f"s_server sent {raw} bytes for a {size}-byte file",
            }
        ktls_tx = bool(stat0 and stat1 and stat1.get("TlsTxSw", 0) > stat0.get("TlsTxSw", 0))
        if cmd.get("expect_ktls") and not ktls_tx and not self.allow_fallback:
            return {
                "status": "unavailable",
                "reason": "openssl s_server did not put TX in the kernel (no kTLS here)",
            }
        return {
            "status": "ok",
            "seconds": t1 - t0,
            **(cpu1 - cpu0).as_json(),
            "ktls_tx": ktls_tx,
            "ktls_rx": False,
            "bytes": size,
            "raw_bytes": raw,
        }

    # ------------------------------------------------------------ bulk, receiver measured

    def op_rx(self, cmd: Json) -> Json:
        variant: str = cmd["variant"]
        suite = SUITES[cmd["suite"]]
        size: int = cmd["size"]
        stack = {
            "ktls_recv": "ktls",
            "pyopenssl_recv": "pyopenssl",
            "stdlib_recv": "stdlib",
            "stdlib_ktls_recv": "stdlib_ktls",
            "tcp_recv": "tcp",
        }[variant]
        sock = self.connect(cmd["port"])
        hs: Handshake | None = None
        try:
            hs = self.establish(stack, suite, sock, server=False)
            self.require(hs, stack, "rx", suite)
            end = hs.end
            view = memoryview(bytearray(_RECV_BUF))
            got = 0
            cpu0, t0 = proc_cpu(self.pid), time.perf_counter()
            while got < size:
                n = end.recv_into(view)
                if n == 0:
                    break
                got += n
            t1, cpu1 = time.perf_counter(), proc_cpu(self.pid)
            while end.recv_into(view):
                pass
            if got < size:
                return {"status": "error", "reason": f"stream ended after {got} of {size} bytes"}
            return {**self.measured(cpu0, cpu1, t1 - t0, hs), "bytes": size}
        finally:
            if hs is not None:
                with contextlib.suppress(Exception):
                    hs.end.close()
            sock.close()

    def op_push(self, cmd: Json) -> Json:
        """Send *size* bytes as a TLS server (or TCP); optionally measure a watched receiver."""
        suite = SUITES[cmd["suite"]]
        size: int = cmd["size"]
        watch: int | None = cmd.get("watch_pid")
        sock = self.accept()
        k: ossl_ktls.KTLSConnection | None = None
        conn: SSL.Connection | None = None
        try:
            if cmd["tls"]:
                conn = SSL.Connection(self.pyctx(suite, server=True, prepared=True), sock)
                conn.set_accept_state()
                conn.do_handshake()
                k = ossl_ktls.wrap(conn, rx=False)
            if watch is not None:
                wait_idle(watch)
                cpu0, w0, t0 = proc_cpu(watch), proc_wchar(watch), time.perf_counter()
            with open(self.payload_path(size), "rb") as f:
                if k is not None and k.ktls_tx:
                    k.sendfile(f, 0, size)
                elif k is not None:
                    k.sendall(self.payload(size))
                else:
                    sock.sendfile(f, 0, size)
            out: Json = {"status": "ok", "pusher_ktls_tx": bool(k and k.ktls_tx)}
            if watch is not None:
                deadline = time.monotonic() + IO_TIMEOUT
                while proc_wchar(watch) - w0 < size:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the watched receiver did not take all the data")
                    time.sleep(0.0005)
                t1, cpu1 = time.perf_counter(), proc_cpu(watch)
                out.update({"seconds": t1 - t0, **(cpu1 - cpu0).as_json(), "bytes": size})
            if k is not None:
                k.shutdown()
            else:
                sock.shutdown(socket.SHUT_WR)
            wait_readable(sock, 60.0)
            return out
        finally:
            if k is not None:
                with contextlib.suppress(Exception):
                    k.close()
            sock.close()

    # ------------------------------------------------------------ small messages

    def op_echo_server(self, cmd: Json) -> Json:
        suite = SUITES[cmd["suite"]]
        msg: int = cmd["msg_size"]
        sock = self.accept(nodelay=True)
        hs: Handshake | None = None
        count = 0
        try:
            hs = self.establish(cmd["stack"], suite, sock, server=True)
            view = memoryview(bytearray(msg))
            while read_exactly(hs.end, view):
                hs.end.sendall(view)
                count += 1
            return {"status": "ok", "count": count}
        finally:
            if hs is not None:
                with contextlib.suppress(Exception):
                    hs.end.close()
            sock.close()

    def op_rr_client(self, cmd: Json) -> Json:
        suite = SUITES[cmd["suite"]]
        stack: str = cmd["stack"]
        msg: int = cmd["msg_size"]
        sock = self.connect(cmd["port"], nodelay=True)
        hs: Handshake | None = None
        try:
            hs = self.establish(stack, suite, sock, server=False)
            self.require(hs, stack, "tx", suite)
            self.require(hs, stack, "rx", suite)
            out_msg = memoryview(os.urandom(msg))
            view = memoryview(bytearray(msg))
            end = hs.end
            count = 0
            limit = float(cmd["seconds"])
            cpu0, t0 = proc_cpu(self.pid), time.perf_counter()
            while True:
                end.sendall(out_msg)
                if not read_exactly(end, view):
                    raise ConnectionError("echo server closed early")
                count += 1
                if count % 16 == 0 and time.perf_counter() - t0 >= limit:
                    break
            t1, cpu1 = time.perf_counter(), proc_cpu(self.pid)
            return {**self.measured(cpu0, cpu1, t1 - t0, hs), "count": count}
        finally:
            if hs is not None:
                with contextlib.suppress(Exception):
                    hs.end.close()
            sock.close()

    # ------------------------------------------------------------ connections

    def op_conn_server(self, cmd: Json) -> Json:
        suite = SUITES[cmd["suite"]]
        stack: str = cmd["stack"]
        count = 0
        hs_total = wrap_total = 0.0
        one = bytearray(len(PING))
        cpu0 = proc_cpu(self.pid)
        while True:
            sock = self.accept(nodelay=True)
            try:
                head = sock.recv(4, socket.MSG_PEEK | socket.MSG_WAITALL)
                if head == b"STOP":
                    break
                hs = self.establish(stack, suite, sock, server=True)
                try:
                    if not read_exactly(hs.end, memoryview(one)):
                        continue
                    hs.end.sendall(memoryview(one))
                finally:
                    hs.end.close()
                count += 1
                hs_total += hs.handshake_s
                wrap_total += hs.wrap_s
            except (OSError, SSL.Error, ossl_ktls.Error) as exc:
                print(f"bench worker: conn_server: {exc!r}", file=sys.stderr)
            finally:
                sock.close()
        cpu = (proc_cpu(self.pid) - cpu0).as_json()
        return {
            "status": "ok",
            "count": count,
            "handshake_s": hs_total,
            "wrap_s": wrap_total,
            # The server process's CPU over the whole sample (it waits in accept() between
            # connections, which costs none).
            "cpu_s": cpu["cpu_s"],
        }

    def op_conn_client(self, cmd: Json) -> Json:
        suite = SUITES[cmd["suite"]]
        stack: str = cmd["stack"]
        port: int = cmd["port"]
        limit = float(cmd["seconds"])
        count = 0
        hs_total = wrap_total = 0.0
        ktls_tx = ktls_rx = True
        resume = bool(cmd.get("resume"))
        session: Any = None
        resumed = 0
        one = memoryview(bytearray(PING))
        if cmd.get("profile"):
            self.profiler = cProfile.Profile()  # enabled around wrap() only
        try:
            cpu0, t0 = proc_cpu(self.pid), time.perf_counter()
            while True:
                sock = self.connect(port, nodelay=True)
                try:
                    hs = self.establish(stack, suite, sock, server=False, session=session)
                    if count == 0:
                        self.require(hs, stack, "tx", suite)
                    try:
                        hs.end.sendall(one)
                        if not read_exactly(hs.end, one):
                            raise ConnectionError("server closed early")
                        if resume:
                            # The session to offer next time (TLS 1.3: its ticket came
                            # after the handshake, read with the server's answer).
                            session = hs.end.session()
                    finally:
                        hs.end.close()
                finally:
                    sock.close()
                count += 1
                resumed += hs.resumed
                hs_total += hs.handshake_s
                wrap_total += hs.wrap_s
                ktls_tx &= hs.ktls_tx
                ktls_rx &= hs.ktls_rx
                if time.perf_counter() - t0 >= limit:
                    break
            t1, cpu1 = time.perf_counter(), proc_cpu(self.pid)
        finally:
            with contextlib.suppress(OSError):
                stop = self.connect(port)
                stop.sendall(b"STOP")
                stop.close()
        out = {
            **self.measured(cpu0, cpu1, t1 - t0),
            "count": count,
            "handshake_s": hs_total,
            "wrap_s": wrap_total,
            "ktls_tx": ktls_tx,
            "ktls_rx": ktls_rx,
            "cipher": hs.cipher,
            "resumed": resumed,
        }
        return self.take_profile(out)

    def take_profile(self, out: Json) -> Json:
        """Attach the profile taken during this command (if any) to its answer."""
        if self.profiler is None:
            return out
        self.profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(self.profiler, stream=text).strip_dirs()
        stats.sort_stats("cumulative").print_stats(30)
        stats.sort_stats("tottime").print_stats(15)
        self.profiler = None
        body = [ln for ln in text.getvalue().splitlines() if ln.strip()]
        return {**out, "profile": "\n".join(body)}

    # ------------------------------------------------------------ concurrency

    def op_http_many(self, cmd: Json) -> Json:
        """``n`` simultaneous downloads from ``serve``; the server process is measured."""
        suite = SUITES[cmd["suite"]]
        n: int = cmd["n"]
        size: int = cmd["size"]
        pid: int = cmd["pid"]
        port: int = cmd["port"]
        ready = threading.Barrier(n + 1, timeout=IO_TIMEOUT)
        go = threading.Barrier(n + 1, timeout=IO_TIMEOUT)
        results: list[int] = []
        errors: list[str] = []
        request = (
            f"GET /payload-{size} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        ).encode()
        ctx = self.pyctx(suite, server=False, prepared=False)

        def one() -> None:
            sock: socket.socket | None = None
            try:
                sock = self.connect(port)
                conn = SSL.Connection(ctx, sock)
                conn.set_connect_state()
                conn.do_handshake()
                ready.wait()
                go.wait()
                conn.sendall(request)
                results.append(discard(sock))
            except Exception as exc:
                errors.append(repr(exc))
                ready.abort()
                go.abort()
            finally:
                if sock is not None:
                    sock.close()

        threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        try:
            ready.wait()
            wait_idle(pid, threads=True)
            cpu0, t0 = proc_cpu(pid, threaded=True), time.perf_counter()
            go.wait()
        except threading.BrokenBarrierError:
            pass
        for t in threads:
            t.join(IO_TIMEOUT)
        t1 = time.perf_counter()
        if errors:
            return {"status": "error", "reason": f"{len(errors)} of {n} failed: {errors[0]}"}
        wait_idle(pid, threads=True)
        cpu1 = proc_cpu(pid, threaded=True)
        short = [r for r in results if r < size]
        if short or len(results) != n:
            return {"status": "error", "reason": f"short downloads: {short[:3]}"}
        return {
            "status": "ok",
            "seconds": t1 - t0,
            **(cpu1 - cpu0).as_json(),
            "bytes": size * n,
            "raw_bytes": sum(results),
        }

    # ------------------------------------------------------------ FTPS

    def op_ftps_server(self, cmd: Json) -> Json:
        """One client session of pyftpdlib FTPS; the RETR inside it is measured."""
        try:
            from bench import ftps
        except ImportError as exc:  # pyftpdlib missing
            raise Unavailable(f"pyftpdlib is not installed: {exc}") from exc
        variant: str = cmd["variant"]
        suite = SUITES[cmd["suite"]]
        size: int = cmd["size"]
        ossl_ktls.probe()  # its trial sockets must not count in the TlsTxSw delta
        # ossl_ktls's handler gets a prepared Context (what KTLS_FTPHandler would make of a
        # fresh one); the stock handler a plain one, as pyftpdlib users have.
        ctx = self.pyctx(suite, server=True, prepared=variant == "ftps_ktls")
        profiler = cProfile.Profile() if cmd.get("profile") else None
        stat0 = read_tls_stat()
        window = ftps.serve_one_retr(
            variant, ctx, self.payload_dir, int(cmd["port"]), self.pid, profiler
        )
        stat1 = read_tls_stat()
        out = ftps.result(window, size)
        if stat0 is not None and stat1 is not None:
            out["tls_tx_sw_delta"] = stat1.get("TlsTxSw", 0) - stat0.get("TlsTxSw", 0)
            out["tls_rx_sw_delta"] = stat1.get("TlsRxSw", 0) - stat0.get("TlsRxSw", 0)
        verdict = ftps.check(variant, out, size)
        if verdict is not None:
            out["status"], out["reason"] = verdict
        if profiler is not None:
            out["profile_top"] = ftps.top_entries(profiler)
            self.profiler = profiler
            return self.take_profile(out)
        return out

    # ------------------------------------------------------------ loop

    def serve(self) -> None:
        print(json.dumps({"port": self.port, "pid": self.pid}), flush=True)
        for line in sys.stdin:
            if not line.strip():
                continue
            cmd = json.loads(line)
            if cmd["op"] == "quit":
                break
            self.profiler = None
            try:
                result = self.ops[cmd["op"]](cmd)
            except Unavailable as exc:
                result = {"status": "unavailable", "reason": str(exc)}
            except (OSError, SSL.Error, ossl_ktls.Error) as exc:
                # Usually the other end gave up first (it found its path unavailable).
                print(f"bench worker: {cmd['op']}: {exc!r}", file=sys.stderr, flush=True)
                result = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
            except Exception as exc:
                traceback.print_exc(file=sys.stderr)
                result = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(result), flush=True)


def main() -> int:
    Worker(json.loads(sys.argv[1])).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
