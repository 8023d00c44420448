"""The FTPS scenario: pyftpdlib serving one RETR, stock against ossl_ktls.

The measured server runs in a bench worker (:func:`serve_one_retr`, pyftpdlib's own event
loop in the worker's main thread); the client is ``curl --ssl-reqd``, started by the
orchestrator (:func:`curl_argv`). The server measures itself: from the moment the file's
first byte can go out (the RETR arrived *and* the data connection's handshake is done) to
the client's QUIT, which curl sends only after it read the whole file and the 226 reply.
It also reports what really carried the data: the data connection's kernel TX flag, the
bytes pyftpdlib moved with ``os.sendfile``, and the growth of ``/proc/net/tls_stat``'s
``TlsTxSw`` (sockets whose TX the kernel took). :func:`check` turns those into the
sample's verdict: an ossl_ktls sample that stayed in user space never counts.
"""

from __future__ import annotations

import contextlib
import cProfile
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from OpenSSL import SSL

from bench.common import HOST, IO_TIMEOUT, CpuReading, proc_cpu

Json = dict[str, Any]
USER = "bench"
PASSWORD = "bench"
#: The two variants: pyftpdlib's own TLS handlers, and ossl_ktls.contrib.pyftpdlib's.
VARIANTS = ("ftps_stock", "ftps_ktls")


@dataclass
class Window:
    """What one RETR did, filled in by the handlers."""

    pid: int
    profiler: cProfile.Profile | None = None
    pushed: bool = False
    cpu0: CpuReading | None = None
    t0: float = 0.0
    cpu1: CpuReading | None = None
    t1: float = 0.0
    bytes_sent: int = 0
    sendfile_bytes: int = 0
    use_sendfile: bool = False
    data_ktls_tx: bool = False
    control_ktls_tx: bool = False
    data_fallback_reason: str | None = None
    connection_type: str = ""
    cipher: str = ""
    version: str = ""
    file_sent: bool = False
    closed: bool = False
    errors: list[str] = field(default_factory=list)

    def start(self) -> None:
        if self.cpu0 is None:
            self.cpu0, self.t0 = proc_cpu(self.pid), time.perf_counter()
            if self.profiler is not None:
                self.profiler.enable()

    def stop(self) -> None:
        if self.cpu0 is not None and self.cpu1 is None:
            if self.profiler is not None:
                self.profiler.disable()
            self.t1, self.cpu1 = time.perf_counter(), proc_cpu(self.pid)


def _handlers(variant: str, window: Window, ctx: SSL.Context) -> tuple[type[Any], type[Any]]:
    """The control and data handler classes of *variant*, reporting into *window*."""
    from pyftpdlib.handlers import TLS_DTPHandler, TLS_FTPHandler

    import ossl_ktls
    from ossl_ktls.contrib.pyftpdlib import KTLS_DTPHandler, KTLS_FTPHandler

    control_base: type[Any] = KTLS_FTPHandler if variant == "ftps_ktls" else TLS_FTPHandler
    data_base: type[Any] = KTLS_DTPHandler if variant == "ftps_ktls" else TLS_DTPHandler

    class Data(data_base):  # type: ignore[misc]
        def push_with_producer(self, producer: Any) -> None:
            window.pushed = True
            if self._ssl_established:
                window.start()
            super().push_with_producer(producer)

        def handle_ssl_established(self) -> None:
            sock = self.socket
            with contextlib.suppress(Exception):
                window.cipher = sock.get_cipher_name() or ""
                window.version = sock.get_protocol_version_name() or ""
            if window.pushed:
                window.start()  # RETR came first: the file goes out from now on
            super().handle_ssl_established()
            window.connection_type = f"{type(sock).__module__}.{type(sock).__qualname__}"
            if isinstance(sock, ossl_ktls.Connection):
                window.data_ktls_tx = sock.ktls_tx
                window.data_fallback_reason = sock.fallback_reason

        def use_sendfile(self) -> bool:
            used = bool(super().use_sendfile())
            window.use_sendfile = window.use_sendfile or used
            return used

        def initiate_sendfile(self) -> None:
            before = self.tot_bytes_sent
            super().initiate_sendfile()
            window.sendfile_bytes += max(0, self.tot_bytes_sent - before)

        def close(self) -> None:
            if not self._closed and not self.receive:
                window.bytes_sent = max(window.bytes_sent, int(self.tot_bytes_sent))
            super().close()

    class Control(control_base):  # type: ignore[misc]
        dtp_handler = Data
        ssl_context = ctx
        tls_control_required = True
        tls_data_required = True

        def handle_ssl_established(self) -> None:
            super().handle_ssl_established()
            if isinstance(self.socket, ossl_ktls.Connection):
                window.control_ktls_tx = self.socket.ktls_tx

        def on_file_sent(self, file: str) -> None:
            window.file_sent = True
            super().on_file_sent(file)

        def ftp_QUIT(self, line: str) -> None:
            window.stop()  # the client has the whole file and the 226 reply
            super().ftp_QUIT(line)

        def close(self) -> None:
            window.stop()
            window.closed = True
            super().close()

    return Control, Data


def serve_one_retr(
    variant: str,
    ctx: SSL.Context,
    home: str,
    port: int,
    pid: int,
    profiler: cProfile.Profile | None = None,
    timeout: float = IO_TIMEOUT,
) -> Window:
    """Serve FTPS on *port* until the first control connection closes; return its window."""
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.ioloop import IOLoop
    from pyftpdlib.servers import FTPServer

    quiet_logging()
    window = Window(pid, profiler)
    control, _ = _handlers(variant, window, ctx)
    authorizer = DummyAuthorizer()
    authorizer.add_user(USER, PASSWORD, home, perm="elr")
    control.authorizer = authorizer
    loop = IOLoop()
    server = FTPServer((HOST, port), control, ioloop=loop)
    deadline = time.monotonic() + timeout
    try:
        while not window.closed:
            if time.monotonic() > deadline:
                window.errors.append(f"no complete session within {timeout:.0f} s")
                break
            loop.loop(0.05, blocking=False)
    finally:
        window.stop()
        server.close_all()
    return window


def quiet_logging() -> None:
    """Warnings only, on stderr (the worker's stdout is its answer channel): pyftpdlib
    would otherwise configure INFO logging of every command for itself."""
    log = logging.getLogger("pyftpdlib")
    if not log.handlers:
        log.addHandler(logging.StreamHandler(sys.stderr))
    log.setLevel(logging.WARNING)


def result(window: Window, size: int) -> Json:
    """The worker's answer for one RETR (before :func:`check`)."""
    out: Json = {
        "status": "ok",
        "bytes": size,
        "server_bytes_sent": window.bytes_sent,
        "sendfile_bytes": window.sendfile_bytes,
        "use_sendfile": window.use_sendfile,
        "ktls_tx": window.data_ktls_tx,
        "control_ktls_tx": window.control_ktls_tx,
        "data_connection": window.connection_type,
        "cipher": window.cipher,
        "tls_version": window.version,
        "file_sent": window.file_sent,
    }
    if window.data_fallback_reason:
        out["fallback_reason"] = window.data_fallback_reason
    if window.cpu0 is None or window.cpu1 is None:
        reason = "; ".join(window.errors) or "the transfer never started"
        return {**out, "status": "error", "reason": reason}
    out.update({"seconds": window.t1 - window.t0, **(window.cpu1 - window.cpu0).as_json()})
    if window.errors:
        out.update({"status": "error", "reason": "; ".join(window.errors)})
    return out


def check(variant: str, sample: Json, size: int) -> tuple[str, str] | None:
    """(status, reason) when *sample* must not count, else None.

    ossl_ktls: the data connection's TX in the kernel, every byte through ``os.sendfile``,
    and ``TlsTxSw`` grown by at least one socket per connection that says its TX is in the
    kernel; otherwise ``unavailable``. Stock: neither sendfile nor kernel TX (``error``:
    the comparison would be meaningless). Both: the whole file sent.
    """
    if sample.get("status") != "ok":
        return None
    if not sample.get("file_sent") or sample.get("server_bytes_sent", 0) < size:
        return ("error", f"the server sent {sample.get('server_bytes_sent', 0)} of {size} bytes")
    delta = sample.get("tls_tx_sw_delta")
    if variant == "ftps_ktls":
        if not sample.get("ktls_tx"):
            why = sample.get("fallback_reason") or "no reason given"
            return ("unavailable", f"kernel TX not taken on the data connection: {why}")
        if sample.get("sendfile_bytes", 0) < size:
            return (
                "unavailable",
                f"pyftpdlib's os.sendfile moved {sample.get('sendfile_bytes', 0)} of {size} "
                "bytes (the rest went through user space)",
            )
        expected = 1 + int(bool(sample.get("control_ktls_tx")))
        if delta is None or delta < expected:
            return (
                "unavailable",
                f"/proc/net/tls_stat TlsTxSw grew by {delta}, expected at least {expected}",
            )
        return None
    if sample.get("sendfile_bytes", 0) or sample.get("ktls_tx") or (delta or 0) > 0:
        return ("error", "stock pyftpdlib used sendfile or kernel TX: not the stock path")
    return None


def curl_argv(port: int, name: str, out: str, tls13_suite: str) -> list[str]:
    """curl downloading *name* over explicit FTPS (AUTH TLS, PROT P) into *out*.

    ``-w`` prints the downloaded size and the negotiated cipher is pinned with
    ``--tls13-ciphers`` (the server's context offers only the same suite).
    """
    return [
        "curl", "-sS", "--ssl-reqd", "--insecure", "--tlsv1.3", "--tls-max", "1.3",
        "--tls13-ciphers", tls13_suite, "--user", f"{USER}:{PASSWORD}",
        "-o", out, "-w", "%{size_download}",
        f"ftp://{HOST}:{port}/{name}",
    ]  # fmt: skip


def top_entries(profiler: cProfile.Profile, n: int = 8) -> list[Json]:
    """The *n* functions with the most cumulative time, as plain data."""
    import pstats

    stats = pstats.Stats(profiler)
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    rows = sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True)[:n]
    out: list[Json] = []
    for (path, line, func), (_cc, nc, tt, ct, _callers) in rows:
        where = f"{os.path.basename(path)}:{line}({func})" if path != "~" else func
        out.append({"function": where, "ncalls": nc, "tottime": tt, "cumtime": ct})
    return out
