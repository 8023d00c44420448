"""``ossl-ktls tunnel``: stunnel's job, with the record layer in the kernel.

Theory of operation
-------------------
Server mode (the default) accepts TLS on ``--accept``, finishes the handshake, hands the
connection over (:func:`ossl_ktls.wrap`) and connects to the plain TCP backend at
``--connect``. Client mode (``--client``) accepts plain TCP, connects to ``--connect``
and originates TLS there, verifying the server as ``send``/``recv`` do.

Each connection then has two directions, each a loop in its own thread:

* TLS -> plain: :meth:`KTLSConnection.recvfile` into the plain socket. With kernel RX,
  records are decrypted into a pipe and spliced on to the plain socket, kernel to kernel;
  control records (tickets, KeyUpdate, alerts) are handled as by ``recv``. The peer's
  close_notify ends it, and becomes a FIN (``shutdown(SHUT_WR)``) on the plain side.
* plain -> TLS: :meth:`KTLSConnection.send_stream` from the plain socket. With kernel TX,
  what the plain side sends is spliced into a pipe and on into the TLS socket, where the
  kernel makes the records. The plain side's FIN ends it, and becomes close_notify and a
  FIN on the TLS side. TLS 1.2 half-closes the same way: a close_notify from the TLS
  peer is not answered until the plain side has finished too.

When both directions ended cleanly, both sockets close. An error on either side (a bad
record, an alert, TCP ending without close_notify, a reset, a timeout) resets both: the
plain side gets a TCP RST, the TLS side an RST after an alert where one applies, so that
neither peer ever takes a cut stream for a complete one. A byte counts as delivered only
once the receiving socket took it.

Why threads: every step is a blocking splice or ``recvmsg`` that releases the GIL, and a
direction's state (a partly spliced record, a control record, a KeyUpdate to answer)
lives in the engine between steps; a selector loop would have to turn all of it into
resumable state machines. Two threads per connection at ``--max-clients 64`` are 128
threads, nearly all of them asleep in ``poll``.

Waking a direction when the other fails: every socket has a timeout (``--timeout``), so
every wait is a ``poll``, never a sleep inside the kernel. A failing connection resets
the plain socket with ``connect(AF_UNSPEC)`` (``tcp_disconnect``: an RST, and every
waiter wakes with ECONNRESET) and shuts the TLS socket down through a duplicate
descriptor the tunnel keeps (the engine may already have closed its own; kernel TLS
sockets refuse ``tcp_disconnect``); the last close sends the RST there (SO_LINGER 0).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from types import FrameType

from OpenSSL import SSL

from .._connection import KTLSConnection, wrap
from .._errors import Error, LocalIOError, TLSAlertError, TruncatedStream
from ._listen import accept_until
from ._output import CLIError, human_bytes
from ._tls import _ssl_reason, set_peer_name

HANDSHAKE_TIMEOUT = 30.0
_LINGER_RESET = struct.pack("ii", 1, 0)


def parse_endpoint(text: str, *, listen: bool) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` (port 0 only where *listen*: pick a free one)."""
    host, sep, port = text.rpartition(":")
    lowest = 0 if listen else 1
    if not sep or not host or not port.isdigit() or not lowest <= int(port) < 65536:
        raise CLIError(f"expected HOST:PORT, got {text!r}", status=2)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------- resets

_libc: ctypes.CDLL | None = None


def _disconnect(sock: socket.socket) -> bool:
    """``connect(AF_UNSPEC)``: the kernel resets the TCP connection (RST) and wakes every
    waiter with ECONNRESET, while the descriptor stays valid. False where refused."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = sock.fileno()
    if fd < 0:
        return False
    unspec = struct.pack("=H14x", socket.AF_UNSPEC)
    buf = ctypes.create_string_buffer(unspec, len(unspec))
    result: int = _libc.connect(fd, buf, len(unspec))
    return result == 0


def reset_plain(sock: socket.socket) -> None:
    """Reset a plain TCP connection now (RST, never a FIN) and wake its waiters."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    if not _disconnect(sock):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)  # wakes readers; the close then sends the RST


# ---------------------------------------------------------------- one connection


@dataclass
class Options:
    """How the tunnel behaves (from the command line)."""

    client_mode: bool
    accept: tuple[str, int]
    connect: tuple[str, int]
    servername: str | None = None
    verify: bool = True
    require_ktls: bool = False
    rx_without_rekey: bool = False
    max_clients: int = 64
    idle_timeout: float = 60.0


@dataclass
class Record:
    """What one tunnelled connection did: a ``--json`` event, or one summary line."""

    client: str
    mode: str
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    tls_version: str = ""
    cipher: str = ""
    ktls_tx: bool = False
    ktls_rx: bool = False
    fallback_reason: str | None = None
    bytes_from_tls: int = 0  # the TLS peer's bytes delivered to the plain side
    bytes_to_tls: int = 0  # the plain side's bytes the TLS connection took
    result: str = "ok"
    error: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "event": "connection",
            "client": self.client,
            "mode": self.mode,
            "result": self.result,
            "error": self.error,
            "seconds": round(self.seconds, 6),
            "tls_version": self.tls_version,
            "cipher": self.cipher,
            "bytes_from_tls": self.bytes_from_tls,
            "bytes_to_tls": self.bytes_to_tls,
            # Where each direction ran: the kernel splices it, or user space copies it.
            "tls_to_plain": "kernel RX, spliced" if self.ktls_rx else "user space, copied",
            "plain_to_tls": "kernel TX, spliced" if self.ktls_tx else "user space, copied",
            "ktls_tx": self.ktls_tx,
            "ktls_rx": self.ktls_rx,
            "fallback_reason": self.fallback_reason,
        }

    def line(self) -> str:
        on = {True: "on", False: "off"}
        text = (
            f"{self.client} {self.mode}: {self.result}, "
            f"{self.bytes_from_tls} bytes from TLS ({human_bytes(self.bytes_from_tls)}), "
            f"{self.bytes_to_tls} bytes to TLS ({human_bytes(self.bytes_to_tls)}) "
            f"in {self.seconds:.2f} s, TLS {self.tls_version or '?'} {self.cipher or '?'}, "
            f"kTLS TX {on[self.ktls_tx]} RX {on[self.ktls_rx]}"
        )
        if self.fallback_reason:
            text += f" ({self.fallback_reason})"
        if self.error:
            text += f": {self.error}"
        return text


class _Failed(Exception):
    """A connection could not be set up; the message says why."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, (SSL.Error, OSError)) and not isinstance(exc, Error):
        return _ssl_reason(exc)
    return str(exc) or type(exc).__name__


class Pump:
    """The two directions of one handed-over connection (see the module docstring)."""

    def __init__(self, k: KTLSConnection, plain: socket.socket, record: Record) -> None:
        self.k = k
        self.plain = plain
        self.record = record
        # Our own reference to the TLS socket: it outlives the engine's (which closes on
        # errors), so a shutdown through it can always wake the other direction.
        self._tls_dup = socket.socket(fileno=os.dup(k.fileno()))
        self._lock = threading.Lock()
        self.error: tuple[str, BaseException] | None = None

    def run(self) -> None:
        """Move data both ways until both ends closed, or one failed (then reset both)."""
        up = threading.Thread(target=self._plain_to_tls, daemon=True, name="ossl-ktls-up")
        up.start()
        self._tls_to_plain()
        up.join()
        try:
            if self.error is None:
                self.k.close()
            else:
                self.k.abort()
        finally:
            with contextlib.suppress(OSError):
                self._tls_dup.close()

    def stop(self) -> None:
        """Reset both sides now (a second SIGTERM)."""
        self._fail("tunnel", ConnectionAbortedError("the tunnel was stopped"))

    def _tls_to_plain(self) -> None:
        try:
            self.record.bytes_from_tls = self.k.recvfile(self.plain)
            self.plain.shutdown(socket.SHUT_WR)  # the TLS peer's close_notify: a FIN
        except (Error, OSError) as exc:
            self.record.bytes_from_tls = getattr(exc, "bytes_received", 0) or 0
            side = "plain" if isinstance(exc, LocalIOError) else "tls"
            self._fail(side, exc)

    def _plain_to_tls(self) -> None:
        try:
            self.record.bytes_to_tls = self.k.send_stream(self.plain)
            self.k.shutdown()  # the plain side's FIN: close_notify, then a FIN
        except (Error, OSError) as exc:
            self.record.bytes_to_tls = getattr(exc, "bytes_sent", 0) or 0
            side = "plain" if isinstance(exc, LocalIOError) else "tls"
            self._fail(side, exc)

    def _fail(self, side: str, exc: BaseException) -> None:
        with self._lock:
            if self.error is not None:
                return
            self.error = (side, exc)
        reset_plain(self.plain)
        with contextlib.suppress(OSError):
            self._tls_dup.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            # kTLS sockets refuse tcp_disconnect: shut down instead (wakes every waiter);
            # the TLS peer sees the stream end without close_notify, then the RST.
            if not _disconnect(self._tls_dup):
                self._tls_dup.shutdown(socket.SHUT_RDWR)


def _describe(side: str, exc: BaseException) -> str:
    if isinstance(exc, TruncatedStream):
        return "the TLS peer closed TCP without close_notify: the stream was cut; both sides reset"
    if isinstance(exc, TLSAlertError):
        return f"the TLS peer sent {exc}; both sides reset"
    where = {"tls": "TLS side", "plain": "plain side", "tunnel": "tunnel"}[side]
    return f"{where}: {_reason(exc)}; both sides reset"


# ---------------------------------------------------------------- the server


class Tunnel:
    """Accepts on a listener and tunnels each connection (see the module docstring)."""

    def __init__(
        self, ctx: SSL.Context, listener: socket.socket, options: Options, *, json_mode: bool
    ) -> None:
        self.ctx = ctx
        self.listener = listener
        self.options = options
        self.json_mode = json_mode
        self._slots = threading.BoundedSemaphore(max(1, options.max_clients))
        self._lock = threading.Lock()
        self._active: dict[threading.Thread, Pump | None] = {}
        self.connections = 0
        self.failures = 0

    def emit(self, record: dict[str, object] | str) -> None:
        with self._lock:
            if isinstance(record, str):
                print(record, flush=True)
            else:
                print(json.dumps(record), flush=True)

    def serve(self, stop: threading.Event, stop_now: threading.Event) -> None:
        """Accept until *stop*; then let open connections finish (all reset at *stop_now*)."""
        try:
            accept_until(self.listener, self._slots, stop, self._spawn)
        finally:
            with contextlib.suppress(OSError):
                self.listener.close()
        with self._lock:
            open_now = len(self._active)
        if self.json_mode:
            self.emit({"event": "stopping", "open_connections": open_now})
        else:
            self.emit(f"tunnel: stopped accepting; {open_now} connections still open")
        while True:
            with self._lock:
                threads = list(self._active)
            if not threads:
                return
            if stop_now.is_set():
                with self._lock:
                    pumps = [p for p in self._active.values() if p is not None]
                for pump in pumps:
                    pump.stop()
            threads[0].join(0.25)

    def _spawn(self, raw: socket.socket, addr: tuple[str, ...]) -> None:
        thread = threading.Thread(
            target=self._connection, args=(raw, addr), daemon=True, name="ossl-ktls-tunnel"
        )
        with self._lock:
            self._active[thread] = None
        thread.start()

    def _connection(self, raw: socket.socket, addr: tuple[str, ...]) -> None:
        o = self.options
        mode = "client" if o.client_mode else "server"
        record = Record(client=_show(addr[0], int(addr[1])), mode=mode)
        plain: socket.socket | None = None
        tls_sock: socket.socket | None = None
        k: KTLSConnection | None = None
        try:
            try:
                if o.client_mode:
                    plain = raw
                    tls_sock = self._dial()
                    conn = SSL.Connection(self.ctx, tls_sock)
                    conn.set_connect_state()
                    set_peer_name(conn, o.servername or o.connect[0], o.verify)
                else:
                    tls_sock = raw
                    conn = SSL.Connection(self.ctx, tls_sock)
                    conn.set_accept_state()
                tls_sock.settimeout(HANDSHAKE_TIMEOUT)
                tls_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                try:
                    k = wrap(conn, rx_without_rekey=o.rx_without_rekey, half_close=True)
                except (SSL.Error, OSError, Error) as exc:
                    raise _Failed(f"TLS handshake failed: {_reason(exc)}") from exc
                record.tls_version = k.version
                record.cipher = k.suite.name if k.suite else (k.get_cipher_name() or "")
                record.ktls_tx, record.ktls_rx = k.ktls_tx, k.ktls_rx
                record.fallback_reason = k.fallback_reason
                if o.require_ktls and not (k.ktls_tx and k.ktls_rx):
                    raise _Failed(f"kernel TLS required, but: {k.fallback_reason}")
                if plain is None:
                    plain = self._dial()
            except (_Failed, CLIError) as exc:
                record.result, record.error = "refused", str(exc)
                if k is not None:
                    k.abort()  # the TLS peer must not take this for a clean, empty stream
                if plain is not None:
                    reset_plain(plain)
                return
            k.settimeout(o.idle_timeout)
            plain.settimeout(o.idle_timeout)
            plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pump = Pump(k, plain, record)
            with self._lock:
                self._active[threading.current_thread()] = pump
                self.connections += 1
            pump.run()
            if pump.error is not None:
                record.result = "reset"
                record.error = _describe(*pump.error)
        finally:
            record.seconds = time.monotonic() - record.started
            for s in (plain, tls_sock, raw):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()
            with self._lock:
                self._active.pop(threading.current_thread(), None)
                if record.result != "ok":
                    self.failures += 1
            self.emit(record.as_json() if self.json_mode else record.line())
            self._slots.release()

    def _dial(self) -> socket.socket:
        host, port = self.options.connect
        try:
            return socket.create_connection((host, port), timeout=HANDSHAKE_TIMEOUT)
        except OSError as exc:
            raise _Failed(f"cannot connect to {_show(host, port)}: {exc.strerror or exc}") from exc


# ---------------------------------------------------------------- the command


def cmd_tunnel(args: object) -> int:
    """``tunnel``: see the module docstring; returns when stopped (SIGTERM, SIGINT)."""
    import argparse

    from .._linux_tls import probe
    from ._tls import client_context, configure_context, server_context

    assert isinstance(args, argparse.Namespace)
    accept = parse_endpoint(args.accept, listen=True)
    connect = parse_endpoint(args.connect, listen=False)
    if args.client:
        if args.cert or args.key:
            raise CLIError("--cert/--key are for server mode (without --client)", status=2)
        ctx = client_context(args)
    else:
        if not args.cert:
            raise CLIError("server mode needs --cert (and --key unless the key is in it)", status=2)
        if args.cafile or args.insecure or args.servername:
            raise CLIError("--cafile, --insecure and --servername need --client", status=2)
        ctx = server_context(args.cert, args.key)
        configure_context(ctx, args.tls, args.cipher)
    if args.require_ktls:
        caps = probe()
        if not caps.ulp:
            raise CLIError(f"kernel TLS required, but this kernel has none: {caps.ulp_error}")
    options = Options(
        client_mode=args.client,
        accept=accept,
        connect=connect,
        servername=getattr(args, "servername", None),
        verify=not getattr(args, "insecure", False),
        require_ktls=args.require_ktls,
        rx_without_rekey=args.rx_without_rekey,
        max_clients=args.max_clients,
        idle_timeout=args.timeout,
    )
    family = socket.AF_INET6 if ":" in accept[0] else socket.AF_INET
    try:
        listener = socket.create_server(accept, family=family, backlog=128)
    except OSError as exc:
        raise CLIError(f"cannot listen on {args.accept}: {exc.strerror or exc}") from exc
    port = listener.getsockname()[1]
    tunnel = Tunnel(ctx, listener, options, json_mode=args.json)
    stop, stop_now = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        (stop_now if stop.is_set() else stop).set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    mode = "client" if args.client else "server"
    flow = "plain in, TLS out" if args.client else "TLS in, plain out"
    try:
        if args.json:
            tunnel.emit(
                {
                    "event": "ready",
                    "mode": mode,
                    "accept": _show(accept[0], port),
                    "port": port,
                    "connect": _show(*connect),
                }
            )
        else:
            tunnel.emit(
                f"tunnel {_show(accept[0], port)} -> {_show(*connect)} ({mode} mode: {flow})"
            )
        started = time.monotonic()
        tunnel.serve(stop, stop_now)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    seconds = time.monotonic() - started
    if args.json:
        tunnel.emit(
            {
                "event": "summary",
                "connections": tunnel.connections,
                "failed": tunnel.failures,
                "seconds": round(seconds, 3),
            }
        )
    else:
        tunnel.emit(
            f"tunnel stopped after {seconds:.1f} s: {tunnel.connections} connections, "
            f"{tunnel.failures} failed or refused"
        )
    return 0
