"""The static HTTPS/1.1 file server behind ``ossl-ktls serve``.

Theory of operation
-------------------
The main thread accepts; each connection gets a thread (at most ``max_clients`` at once),
which finishes the TLS handshake, hands the connection to the kernel with
:func:`ossl_ktls.wrap` and then serves requests one after the other (keep-alive,
pipelining). Request heads come in through ``recv`` (kernel RX where the kernel took it),
response heads go out with MSG_MORE so they share a record with the start of the body,
and bodies go out with ``sendfile`` (zero-copy through kernel TX).

What is served: GET and HEAD of regular files under ROOT, with Content-Length, single
byte ranges (206, 416 when unsatisfiable; a multi-range request gets the whole file),
``index.html`` or a plain listing for folders. Anything that resolves outside ROOT
(``..``, symlinks pointing out) is 404, like a missing file. Other methods are 405,
malformed requests 400 (and the connection closes).

Stopping: ``serve(stop)`` returns once *stop* is set. The listener closes first, then
every connection's socket is shut down for reading: idle connections (waiting for the
next request) wake up with EOF and close with close_notify, while a response being sent
finishes first (up to a grace period), then its connection closes.

The request parsing helpers (:func:`parse_head`, :func:`parse_range`, :func:`resolve`)
are pure: bytes and strings in, values out.
"""

from __future__ import annotations

import contextlib
import email.utils
import html
import json
import mimetypes
import os
import posixpath
import re
import select
import socket
import stat
import sys
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import BinaryIO

from OpenSSL import SSL

from .. import __version__
from .._connection import KTLSConnection, wrap
from .._errors import Error

SERVER_NAME = f"ossl-ktls/{__version__}"
MAX_HEAD = 16 << 10
MAX_DISCARDED_BODY = 64 << 10
SEND_CHUNK = 8 << 20
STOP_GRACE = 10.0
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DIGITS = re.compile(r"[0-9]+")


# ---------------------------------------------------------------- pure parsing


class BadRequest(Exception):
    """A request that gets an error status (and closes the connection)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    """One parsed request head."""

    method: str
    target: str
    version: tuple[int, int]
    headers: dict[str, str]

    @property
    def keep_alive(self) -> bool:
        """Whether the client wants the connection kept open after this request."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version >= (1, 1):
            return "close" not in tokens
        return "keep-alive" in tokens

    @property
    def path(self) -> str:
        """The target's path, still percent-encoded, without query or fragment."""
        return self.target.split("?", 1)[0].split("#", 1)[0]


def parse_head(head: bytes) -> Request:
    """Parse a request line and header fields (the bytes before the blank line).

    Raises:
        BadRequest: 400 for anything malformed, 505 for an HTTP major version other than 1.
    """
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes anything
        raise BadRequest(400, "undecodable request") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not all(parts):
        raise BadRequest(400, "malformed request line")
    method, target, version_text = parts
    if not _TOKEN.fullmatch(method):
        raise BadRequest(400, "malformed method")
    m = re.fullmatch(r"HTTP/([0-9])\.([0-9])", version_text)
    if m is None:
        raise BadRequest(400, "malformed HTTP version")
    version = (int(m.group(1)), int(m.group(2)))
    if version[0] != 1:
        raise BadRequest(505, "only HTTP/1.x is spoken here")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.fullmatch(name):
            raise BadRequest(400, "malformed header field")
        key = name.lower()
        value = value.strip(" \t")
        if key in headers:
            if key in ("host", "content-length"):
                raise BadRequest(400, f"repeated {name} header")
            headers[key] += ", " + value
        else:
            headers[key] = value
    if version >= (1, 1) and "host" not in headers:
        raise BadRequest(400, "HTTP/1.1 request without Host")
    if "transfer-encoding" in headers:
        raise BadRequest(400, "request bodies with Transfer-Encoding are not accepted")
    length = headers.get("content-length")
    if length is not None and not _DIGITS.fullmatch(length):
        raise BadRequest(400, "malformed Content-Length")
    if not target.startswith("/"):
        raise BadRequest(400, "only origin-form request targets (/path) are accepted")
    return Request(method, target, version, headers)


class Unsatisfiable(Exception):
    """A Range that selects nothing in the file (416)."""


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """A single ``bytes=`` range -> (first, last) inclusive, clipped to the file.

    Returns None when the header is to be ignored (another unit, several ranges, bad
    syntax): RFC 9110 section 14.2 lets a server answer such requests with the whole file.

    Raises:
        Unsatisfiable: the range starts past the end, or is an empty suffix.
    """
    unit, sep, spec = value.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    first_text, last_text = first_text.strip(), last_text.strip()
    if not dash:
        return None
    if not first_text:
        if not _DIGITS.fullmatch(last_text):
            return None
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise Unsatisfiable()
        return max(0, size - suffix), size - 1
    if not _DIGITS.fullmatch(first_text) or (last_text and not _DIGITS.fullmatch(last_text)):
        return None
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:
        return None
    if first >= size:
        raise Unsatisfiable()
    return first, min(last, size - 1)


def resolve(root: str, path: str) -> str | None:
    """The real file system path for a request path, or None if it is not under *root*.

    *root* must be a real path (``os.path.realpath``). The request path is
    percent-decoded; ``..`` and symlinks are resolved and the result must stay inside
    *root*, so nothing outside it can be named.
    """
    try:
        decoded = urllib.parse.unquote(path, errors="strict")
    except UnicodeDecodeError:
        return None
    if "\x00" in decoded:
        return None
    relative = posixpath.normpath("/" + decoded).lstrip("/")
    candidate = os.path.realpath(os.path.join(root, relative))
    if candidate != root and not candidate.startswith(root.rstrip("/") + "/"):
        return None
    return candidate


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    """Status line, header fields, blank line."""
    phrase = HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {phrase}"]
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# ---------------------------------------------------------------- logging and totals


class EventLog:
    """Access log: human lines on stderr, or JSON lines on stdout (``--json``)."""

    def __init__(self, *, json_mode: bool, quiet: bool) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self._lock = threading.Lock()

    def event(self, record: dict[str, object]) -> None:
        """One JSON line on stdout (JSON mode only)."""
        with self._lock:
            print(json.dumps(record), flush=True)

    def request(self, record: dict[str, object]) -> None:
        """One line per request served."""
        if self.json_mode:
            self.event({"event": "request", **record})
            return
        if self.quiet:
            return
        on = {True: "on", False: "off"}
        ktls = f"kTLS tx={on[bool(record['ktls_tx'])]} rx={on[bool(record['ktls_rx'])]}"
        line = (
            f'{record["client"]} "{record["method"]} {record["target"]} '
            f'HTTP/{record["http"]}" {record["status"]} {record["bytes"]} '
            f"{record['seconds']:.3f}s TLS{record['tls_version']} {record['cipher']} {ktls}"
        )
        with self._lock:
            print(line, file=sys.stderr, flush=True)

    def note(self, client: str, message: str) -> None:
        """A connection-level event (handshake failure, dropped connection)."""
        if self.json_mode:
            self.event({"event": "connection", "client": client, "message": message})
        elif not self.quiet:
            with self._lock:
                print(f"{client} {message}", file=sys.stderr, flush=True)


@dataclass
class Totals:
    """What a server run did, for the summary line."""

    seconds: float = 0.0
    connections: int = 0
    handshake_failures: int = 0
    requests: int = 0
    body_bytes: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    tls: Counter[str] = field(default_factory=Counter)
    ktls_tx: int = 0
    ktls_rx: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    @property
    def throughput(self) -> float:
        """Body bytes per second of server run time."""
        return self.body_bytes / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, object]:
        """The ``--json`` summary event."""
        return {
            "seconds": round(self.seconds, 3),
            "connections": self.connections,
            "handshake_failures": self.handshake_failures,
            "requests": self.requests,
            "bytes": self.body_bytes,
            "throughput": round(self.throughput, 1),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "tls": dict(self.tls),
            "ktls_tx_connections": self.ktls_tx,
            "ktls_rx_connections": self.ktls_rx,
            "fallback_reasons": dict(self.reasons),
        }

    def line(self) -> str:
        """The one human summary line."""
        from ._output import human_bytes

        tls = ", ".join(f"TLS {k} x{v}" for k, v in self.tls.items()) or "no TLS connection"
        text = (
            f"served {self.requests} requests on {self.connections} connections, "
            f"{self.body_bytes} bytes ({human_bytes(self.body_bytes)}) in {self.seconds:.1f} s "
            f"({human_bytes(self.throughput)}/s), {tls}, kTLS TX on {self.ktls_tx}/"
            f"{self.connections} connections, RX on {self.ktls_rx}/{self.connections}"
        )
        if self.reasons:
            text += " (" + "; ".join(self.reasons) + ")"
        return text


# ---------------------------------------------------------------- the server


@dataclass
class Options:
    """How ``serve`` behaves."""

    root: str
    require_ktls: bool = False
    rx_without_rekey: bool = False
    max_clients: int = 64
    idle_timeout: float = 30.0
    handshake_timeout: float = 30.0


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket (IPv6 when *host* has a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=128, reuse_port=False)


class _Closing(Exception):
    """The connection is done (peer closed, idle, stopping): no response is owed."""


class _Incomplete(Exception):
    """A response could not be sent whole: the connection must be aborted."""


class StaticServer:
    """Serves ROOT over a prepared server Context; see the module docstring."""

    def __init__(
        self, ctx: SSL.Context, listener: socket.socket, options: Options, log: EventLog
    ) -> None:
        self.ctx = ctx
        self.listener = listener
        self.options = options
        self.log = log
        self.root = os.path.realpath(options.root)
        self._slots = threading.BoundedSemaphore(max(1, options.max_clients))
        self._lock = threading.Lock()
        self._active: dict[socket.socket, threading.Thread] = {}
        self._stopping = threading.Event()
        self._totals = Totals()
        self._started = time.monotonic()

    # -- lifecycle

    def serve(self, stop: threading.Event) -> None:
        """Accept and serve until *stop* is set, then stop cleanly (see module docstring)."""
        self._started = time.monotonic()
        try:
            while not stop.is_set():
                if not self._slots.acquire(timeout=0.25):
                    continue
                try:
                    ready, _, _ = select.select([self.listener], [], [], 0.25)
                    if not ready:
                        self._slots.release()
                        continue
                    raw, addr = self.listener.accept()
                except (InterruptedError, BlockingIOError, ConnectionAbortedError):
                    self._slots.release()
                    continue
                except OSError:
                    self._slots.release()
                    if stop.is_set():
                        break
                    time.sleep(0.1)  # EMFILE and friends: do not spin
                    continue
                thread = threading.Thread(
                    target=self._connection, args=(raw, addr), daemon=True, name="ossl-ktls-http"
                )
                with self._lock:
                    self._active[raw] = thread
                thread.start()
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            active = dict(self._active)
        for raw in active:
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RD)
        deadline = time.monotonic() + STOP_GRACE
        for thread in active.values():
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = dict(self._active)
        for raw in left:
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)
        for thread in left.values():
            thread.join(2.0)

    def totals(self) -> Totals:
        """A copy of the counters, with the run time."""
        with self._lock:
            t = Totals(**{k: getattr(self._totals, k) for k in Totals.__dataclass_fields__})
        t.seconds = time.monotonic() - self._started
        return t

    # -- one connection

    def _connection(self, raw: socket.socket, addr: tuple[str, int]) -> None:
        client = f"{addr[0]}:{addr[1]}" if "." in addr[0] else f"[{addr[0]}]:{addr[1]}"
        try:
            raw.settimeout(self.options.handshake_timeout)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = SSL.Connection(self.ctx, raw)
            conn.set_accept_state()
            try:
                k = wrap(conn, rx_without_rekey=self.options.rx_without_rekey)
            except (SSL.Error, OSError, Error) as exc:
                with self._lock:
                    self._totals.handshake_failures += 1
                if not self._stopping.is_set():
                    self.log.note(client, f"TLS handshake failed: {_reason(exc)}")
                return
            with self._lock:
                t = self._totals
                t.connections += 1
                t.tls[f"{k.version} {k.suite.name if k.suite else k.get_cipher_name()}"] += 1
                t.ktls_tx += k.ktls_tx
                t.ktls_rx += k.ktls_rx
                if k.fallback_reason:
                    t.reasons[k.fallback_reason] += 1
            if self.options.require_ktls and not k.ktls_tx:
                self.log.note(client, f"closed: kernel TLS TX required ({k.fallback_reason})")
                k.close()
                return
            k.settimeout(self.options.idle_timeout)
            clean = False
            try:
                self._requests(k, client)
                clean = True
            except _Closing:
                clean = True
            except (Error, OSError, SSL.Error, _Incomplete) as exc:
                if not self._stopping.is_set():
                    self.log.note(client, f"connection dropped: {_reason(exc)}")
            finally:
                # A response cut short (timeout, error) must not end with close_notify,
                # which would tell the client the stream is complete: abort instead.
                if clean:
                    k.close()
                else:
                    k.abort()
        finally:
            with contextlib.suppress(OSError):
                raw.close()
            with self._lock:
                self._active.pop(raw, None)
            self._slots.release()

    def _requests(self, k: KTLSConnection, client: str) -> None:
        buffer = bytearray()
        while True:
            head = self._read_head(k, buffer)
            started = time.monotonic()
            try:
                request = parse_head(head)
                self._discard_body(k, request, buffer)
            except BadRequest as exc:
                sent = self._error(k, exc.status, head_only=False, close=True, extra=[])
                self._log(client, k, None, exc.status, sent, started)
                return
            keep = request.keep_alive and not self._stopping.is_set()
            status, sent = self._respond(k, request, keep)
            self._log(client, k, request, status, sent, started)
            if not keep:
                return

    def _read_head(self, k: KTLSConnection, buffer: bytearray) -> bytes:
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(buffer[:end])
                del buffer[: end + 4]
                return head
            if len(buffer) > MAX_HEAD:
                self._error(k, 431, head_only=False, close=True, extra=[])
                raise _Closing()
            try:
                chunk = k.recv(65536)
            except (TimeoutError, Error, OSError, SSL.Error) as exc:
                if buffer.strip():
                    self._error(k, 400, head_only=False, close=True, extra=[])
                raise _Closing() from exc
            if not chunk:
                raise _Closing()
            if not buffer and chunk.startswith(b"\r\n"):
                chunk = chunk.lstrip(b"\r\n")  # RFC 9112 2.2: ignore empty lines first
            buffer += chunk

    def _discard_body(self, k: KTLSConnection, request: Request, buffer: bytearray) -> None:
        length = int(request.headers.get("content-length", "0") or 0)
        if length > MAX_DISCARDED_BODY:
            raise BadRequest(413, "request body too large")
        while len(buffer) < length:
            try:
                chunk = k.recv(65536)
            except (TimeoutError, Error, OSError, SSL.Error) as exc:
                raise _Closing() from exc
            if not chunk:
                raise _Closing()
            buffer += chunk
        del buffer[:length]

    def _log(
        self,
        client: str,
        k: KTLSConnection,
        request: Request | None,
        status: int,
        sent: int,
        started: float,
    ) -> None:
        with self._lock:
            self._totals.requests += 1
            self._totals.statuses[status] += 1
            if status < 300:
                self._totals.body_bytes += sent
        self.log.request(
            {
                "client": client,
                "method": request.method if request else "-",
                "target": request.target if request else "-",
                "http": "{}.{}".format(*request.version) if request else "-",
                "status": status,
                "bytes": sent,
                "seconds": round(time.monotonic() - started, 6),
                "tls_version": k.version,
                "cipher": k.suite.name if k.suite else "",
                "ktls_tx": k.ktls_tx,
                "ktls_rx": k.ktls_rx,
                "fallback_reason": k.fallback_reason,
            }
        )

    # -- responses

    def _common(self, keep: bool) -> list[tuple[str, str]]:
        return [
            ("Date", _http_date(time.time())),
            ("Server", SERVER_NAME),
            ("Connection", "keep-alive" if keep else "close"),
        ]

    def _error(
        self,
        k: KTLSConnection,
        status: int,
        *,
        head_only: bool,
        close: bool,
        extra: list[tuple[str, str]],
    ) -> int:
        body = f"{status} {HTTPStatus(status).phrase}\n".encode()
        headers = self._common(not close) + extra
        headers += [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ]
        k.sendall(response_head(status, headers) + (b"" if head_only else body))
        return 0 if head_only else len(body)

    def _respond(self, k: KTLSConnection, request: Request, keep: bool) -> tuple[int, int]:
        head_only = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            extra = [("Allow", "GET, HEAD")]
            return 405, self._error(k, 405, head_only=False, close=not keep, extra=extra)
        path = resolve(self.root, request.path)
        if path is None:
            return 404, self._error(k, 404, head_only=head_only, close=not keep, extra=[])
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            if os.path.isdir(path):
                return self._directory(k, request, path, keep)
            return 404, self._error(k, 404, head_only=head_only, close=not keep, extra=[])
        except PermissionError:
            return 403, self._error(k, 403, head_only=head_only, close=not keep, extra=[])
        except OSError:
            return 404, self._error(k, 404, head_only=head_only, close=not keep, extra=[])
        with f:
            st = os.fstat(f.fileno())
            if stat.S_ISDIR(st.st_mode):
                return self._directory(k, request, path, keep)
            if not stat.S_ISREG(st.st_mode):
                return 404, self._error(k, 404, head_only=head_only, close=not keep, extra=[])
            return self._file(k, request, f, st, keep)

    def _file(
        self, k: KTLSConnection, request: Request, f: BinaryIO, st: os.stat_result, keep: bool
    ) -> tuple[int, int]:
        size = st.st_size
        last_modified = _http_date(st.st_mtime)
        ctype = mimetypes.guess_type(request.path)[0] or "application/octet-stream"
        headers = [
            *self._common(keep),
            ("Content-Type", ctype),
            ("Last-Modified", last_modified),
            ("Accept-Ranges", "bytes"),
        ]
        status, first, length = 200, 0, size
        range_header = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if range_header is not None and (if_range is None or if_range == last_modified):
            try:
                selected = parse_range(range_header, size)
            except Unsatisfiable:
                extra = [("Content-Range", f"bytes */{size}")]
                head_only = request.method == "HEAD"
                return 416, self._error(k, 416, head_only=head_only, close=not keep, extra=extra)
            if selected is not None:
                first, last = selected
                status, length = 206, last - first + 1
                headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
        headers.append(("Content-Length", str(length)))
        head = response_head(status, headers)
        if request.method == "HEAD" or length == 0:
            k.sendall(head)
            return status, 0
        k.sendall(head, more=True)  # shares a record with the start of the body
        sent = 0
        while sent < length:
            n = k.sendfile(f, first + sent, min(SEND_CHUNK, length - sent))
            if n == 0:
                raise _Incomplete(f"the file ended after {sent} of {length} bytes")
            sent += n
        return status, sent

    def _directory(
        self, k: KTLSConnection, request: Request, path: str, keep: bool
    ) -> tuple[int, int]:
        head_only = request.method == "HEAD"
        if not request.path.endswith("/"):
            location = request.path + "/"
            extra = [("Location", location)]
            return 301, self._error(k, 301, head_only=head_only, close=not keep, extra=extra)
        index = os.path.join(path, "index.html")
        if os.path.isfile(index) and resolve(self.root, request.path + "index.html"):
            with open(index, "rb") as f:
                return self._file(k, request, f, os.fstat(f.fileno()), keep)
        try:
            names = sorted(os.listdir(path))
        except OSError:
            return 403, self._error(k, 403, head_only=head_only, close=not keep, extra=[])
        title = html.escape(urllib.parse.unquote(request.path))
        items = []
        for name in names:
            shown = name + ("/" if os.path.isdir(os.path.join(path, name)) else "")
            href = urllib.parse.quote(shown)
            items.append(f'<li><a href="{href}">{html.escape(shown)}</a></li>')
        body = (
            f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body><h1>{title}</h1><ul>\n" + "\n".join(items) + "\n</ul></body></html>\n"
        ).encode("utf-8", "surrogateescape")
        headers = [
            *self._common(keep),
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
        ]
        k.sendall(response_head(200, headers) + (b"" if head_only else body))
        return 200, 0 if head_only else len(body)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        reasons = [str(r[2]) for r in exc.args[0] if isinstance(r, tuple) and len(r) >= 3]
        if reasons:
            return "; ".join(reasons)
    return str(exc) or type(exc).__name__
