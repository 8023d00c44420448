"""The static HTTPS/1.1 file server behind ``ossl-ktls serve``.

Theory of operation
-------------------
The main thread accepts; each connection gets a thread (at most ``max_clients`` at once),
which finishes the TLS handshake, hands the connection to the kernel with
:func:`ossl_ktls.wrap` and then serves requests one after the other (keep-alive,
pipelining). HTTP/1.1 itself (parsing requests, framing responses, keep-alive) is h11's
(the ``cli`` extra), one sans-IO ``h11.Connection`` per TLS connection: request bytes come
in through ``recv`` (kernel RX where the kernel took it) and are fed to it, response heads
are framed by it and go out with MSG_MORE so they share a record with the start of the
body, and bodies go out with ``sendfile`` (zero-copy through kernel TX), h11 counting
their length through its documented sendfile placeholder (:class:`FileRange`).

What is served: GET and HEAD of regular files under ROOT, with Content-Length, single
byte ranges (206, 416 when unsatisfiable; a multi-range request gets the whole file),
``index.html`` or a plain listing for folders. Anything that resolves outside ROOT
(``..``, symlinks pointing out) is 404, like a missing file. Other methods are 405. A
request body (Content-Length or chunked) of up to ``MAX_DISCARDED_BODY`` bytes is read and
dropped, a larger one gets 413. Malformed requests get 400 (431 once more than
``MAX_HEAD`` bytes of a head came without its end, 501 for a transfer coding other than
chunked, 505 for an HTTP version other than 1.x); after an error status the connection
closes, lingering as HTTP servers do: close_notify and the TCP half-close go out at once,
then what the client still sends (the rest of a refused head or body) is read and dropped
until it closes its side, stays silent for 5 s, or 30 s passed (``LINGER``, nginx's
lingering_time and lingering_timeout). Closing over unread input would make the kernel
answer with a reset, which can reach the client while it is still writing its request,
before it read the error response. HTTP/1.0 clients are served, and their connection
closes after each response (h11 keeps no HTTP/1.0 connection alive).

Stopping: ``serve(stop)`` returns once *stop* is set. The listener closes first, then
every connection's socket is shut down for reading: idle connections (waiting for the
next request) wake up with EOF and close with close_notify, while a response being sent
finishes first (up to a grace period), then its connection closes.

The request helpers (:func:`parse_range`, :func:`resolve`, :func:`request_path`) are
pure: strings in, values out.
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
import socket
import stat
import sys
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import BinaryIO, cast

import h11
from OpenSSL import SSL

from .. import __version__
from .._connection import KTLSConnection, wrap
from .._errors import Error
from ._listen import accept_until

SERVER_NAME = f"ossl-ktls/{__version__}"
MAX_HEAD = 16 << 10
MAX_DISCARDED_BODY = 64 << 10
SEND_CHUNK = 8 << 20
STOP_GRACE = 10.0
LINGER = (30.0, 5.0)  # after an error status: at most, and per wait (nginx's defaults)
_DIGITS = re.compile(r"[0-9]+")


# ---------------------------------------------------------------- pure helpers


class BadRequest(Exception):
    """A request that gets an error status (and closes the connection)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def request_path(target: str) -> str:
    """A request target's path, still percent-encoded, without query or fragment."""
    return target.split("?", 1)[0].split("#", 1)[0]


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


@dataclass(frozen=True)
class Request:
    """What the server uses of a request head that h11 parsed and validated, decoded."""

    method: str
    target: str
    http: str  # "1.1", "1.0"
    headers: list[tuple[bytes, bytes]]  # h11's: names lower-cased

    @classmethod
    def of(cls, event: h11.Request) -> Request:
        """The decoded view of *event*."""
        return cls(
            event.method.decode("ascii"),
            event.target.decode("latin-1"),
            event.http_version.decode("ascii"),
            list(event.headers),
        )

    @property
    def path(self) -> str:
        """The target's path, still percent-encoded, without query or fragment."""
        return request_path(self.target)

    def field(self, name: bytes) -> str | None:
        """The value of header field *name* (lower case), repeated fields joined by ", "."""
        values = [v.decode("latin-1") for n, v in self.headers if n == name]
        return ", ".join(values) if values else None


@dataclass(frozen=True)
class FileRange:
    """*count* bytes of *file* from *offset*: h11's sendfile placeholder for a body.

    h11 documents (API reference, "Support for sendfile()") that
    ``send_with_data_passthrough(Data(data=placeholder))`` accepts any object whose
    ``__len__`` is its size in bytes: its body writers only call ``len(data)`` (to check it
    against Content-Length) and hand the object itself back in the returned list, between
    any framing bytes. The server then sends it with ``sendfile``.
    """

    file: BinaryIO
    offset: int
    count: int

    def __len__(self) -> int:
        return self.count


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
            accept_until(self.listener, self._slots, stop, self._spawn)
        finally:
            self._shutdown()

    def _spawn(self, raw: socket.socket, addr: tuple[str, ...]) -> None:
        thread = threading.Thread(
            target=self._connection, args=(raw, addr), daemon=True, name="ossl-ktls-http"
        )
        with self._lock:
            self._active[raw] = thread
        thread.start()

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
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        while True:
            try:
                request = Request.of(self._next_request(k, conn))
            except BadRequest as exc:
                self._reject(k, conn, client, exc, time.monotonic())
                return
            started = time.monotonic()
            try:
                _check(request)
                self._discard_body(k, conn, request)
            except BadRequest as exc:
                self._reject(k, conn, client, exc, started)
                return
            keep = not self._stopping.is_set()
            status, sent = self._respond(k, conn, request, keep)
            self._log(client, k, request, status, sent, started)
            # h11 tracks whether the connection may be reused: it is not after either side
            # said "Connection: close", or after an HTTP/1.0 request.
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    def _reject(
        self,
        k: KTLSConnection,
        conn: h11.Connection,
        client: str,
        exc: BadRequest,
        started: float,
    ) -> None:
        """Answer a request that gets an error status; the connection then closes, after
        lingering (the module's docstring says why)."""
        sent = self._error(k, conn, exc.status, head_only=False, close=True, extra=[])
        self._log(client, k, None, exc.status, sent, started)
        if not self._stopping.is_set():
            _linger(k, *LINGER)

    def _receive(self, k: KTLSConnection, conn: h11.Connection) -> h11.Event:
        """The next event from the client, reading from the connection as h11 needs."""
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                # Anything malformed. h11's hint is the status to answer with: 400, 431 for
                # a head over max_incomplete_event_size, 501 for a transfer coding other
                # than chunked.
                raise BadRequest(exc.error_status_hint, str(exc)) from exc
            if event is not h11.NEED_DATA:
                if event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
                    raise _Closing()  # not reached: we start each cycle, and feed no EOF
                return cast(h11.Event, event)
            waiting = conn.their_state is h11.IDLE  # for a request head
            try:
                chunk = k.recv(65536)
            except (TimeoutError, Error, OSError, SSL.Error) as exc:
                if waiting and conn.trailing_data[0].strip():
                    raise BadRequest(400, "incomplete request head") from exc
                raise _Closing() from exc
            if not chunk:
                raise _Closing()  # the client is gone, or stop() shut the socket down
            if waiting and not conn.trailing_data[0]:
                # RFC 9112 2.2: a server SHOULD ignore an empty line before a request line
                # (h11 answers it with "no request line received").
                chunk = chunk.lstrip(b"\r\n")
            if chunk:
                conn.receive_data(chunk)

    def _next_request(self, k: KTLSConnection, conn: h11.Connection) -> h11.Request:
        event = self._receive(k, conn)
        assert isinstance(event, h11.Request), event  # h11's only event from IDLE
        return event

    def _discard_body(self, k: KTLSConnection, conn: h11.Connection, request: Request) -> None:
        """Read and drop a request body (h11 undoes Content-Length or chunked framing).

        A declared Content-Length over the limit is refused before reading any of it (h11
        has checked that it is a number); a chunked body, once it passes the limit.
        """
        declared = request.field(b"content-length")
        if declared is not None and int(declared) > MAX_DISCARDED_BODY:
            raise BadRequest(413, "request body too large")
        discarded = 0
        while True:
            event = self._receive(k, conn)
            if isinstance(event, h11.EndOfMessage):
                return
            if isinstance(event, h11.Data):
                discarded += len(event.data)
                if discarded > MAX_DISCARDED_BODY:
                    raise BadRequest(413, "request body too large")

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
                "http": request.http if request else "-",
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
        # "keep-alive" is what the server would like: h11 turns it into "close" where the
        # request rules that out (Connection: close, HTTP/1.0).
        return [
            ("Date", _http_date(time.time())),
            ("Server", SERVER_NAME),
            ("Connection", "keep-alive" if keep else "close"),
        ]

    def _send(
        self,
        k: KTLSConnection,
        conn: h11.Connection,
        status: int,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> int:
        """A whole response with a small body (none for HEAD) in one write; body bytes."""
        out = conn.send(
            h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase)
        )
        if body:
            out += conn.send(h11.Data(data=body))
        out += conn.send(h11.EndOfMessage())
        k.sendall(out)
        return len(body)

    def _error(
        self,
        k: KTLSConnection,
        conn: h11.Connection,
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
        return self._send(k, conn, status, headers, b"" if head_only else body)

    def _respond(
        self, k: KTLSConnection, conn: h11.Connection, request: Request, keep: bool
    ) -> tuple[int, int]:
        head_only = request.method == "HEAD"
        if request.method not in ("GET", "HEAD"):
            extra = [("Allow", "GET, HEAD")]
            return 405, self._error(k, conn, 405, head_only=False, close=not keep, extra=extra)
        path = resolve(self.root, request.path)
        if path is None:
            return 404, self._error(k, conn, 404, head_only=head_only, close=not keep, extra=[])
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            if os.path.isdir(path):
                return self._directory(k, conn, request, path, keep)
            return 404, self._error(k, conn, 404, head_only=head_only, close=not keep, extra=[])
        except PermissionError:
            return 403, self._error(k, conn, 403, head_only=head_only, close=not keep, extra=[])
        except OSError:
            return 404, self._error(k, conn, 404, head_only=head_only, close=not keep, extra=[])
        with f:
            st = os.fstat(f.fileno())
            if stat.S_ISDIR(st.st_mode):
                return self._directory(k, conn, request, path, keep)
            if not stat.S_ISREG(st.st_mode):
                return 404, self._error(k, conn, 404, head_only=head_only, close=not keep, extra=[])
            return self._file(k, conn, request, f, st, keep)

    def _file(
        self,
        k: KTLSConnection,
        conn: h11.Connection,
        request: Request,
        f: BinaryIO,
        st: os.stat_result,
        keep: bool,
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
        range_header = request.field(b"range")
        if_range = request.field(b"if-range")
        if range_header is not None and (if_range is None or if_range == last_modified):
            try:
                selected = parse_range(range_header, size)
            except Unsatisfiable:
                extra = [("Content-Range", f"bytes */{size}")]
                head_only = request.method == "HEAD"
                return 416, self._error(
                    k, conn, 416, head_only=head_only, close=not keep, extra=extra
                )
            if selected is not None:
                first, last = selected
                status, length = 206, last - first + 1
                headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
        headers.append(("Content-Length", str(length)))
        if request.method == "HEAD" or length == 0:
            return status, self._send(k, conn, status, headers, b"")
        head = conn.send(
            h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase)
        )
        k.sendall(head, more=True)  # shares a record with the start of the body
        # h11's sendfile support (see FileRange): with Content-Length framing the list is
        # just the placeholder; chunked framing would put its size line and CRLF around it.
        body = FileRange(f, first, length)
        data = cast(bytes, body)  # h11 types Data.data as bytes, and documents placeholders
        pieces = conn.send_with_data_passthrough(h11.Data(data=data))
        assert pieces is not None  # None is only for ConnectionClosed
        sent = 0
        for piece in pieces:
            if piece is data:
                sent = _sendfile(k, body)
            else:
                k.sendall(piece, more=True)
        tail = conn.send(h11.EndOfMessage())  # nothing with Content-Length framing
        if tail:
            k.sendall(tail)
        return status, sent

    def _directory(
        self,
        k: KTLSConnection,
        conn: h11.Connection,
        request: Request,
        path: str,
        keep: bool,
    ) -> tuple[int, int]:
        head_only = request.method == "HEAD"
        if not request.path.endswith("/"):
            location = request.path + "/"
            extra = [("Location", location)]
            return 301, self._error(k, conn, 301, head_only=head_only, close=not keep, extra=extra)
        index = os.path.join(path, "index.html")
        if os.path.isfile(index) and resolve(self.root, request.path + "index.html"):
            with open(index, "rb") as f:
                return self._file(k, conn, request, f, os.fstat(f.fileno()), keep)
        try:
            names = sorted(os.listdir(path))
        except OSError:
            return 403, self._error(k, conn, 403, head_only=head_only, close=not keep, extra=[])
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
        return 200, self._send(k, conn, 200, headers, b"" if head_only else body)


def _sendfile(k: KTLSConnection, body: FileRange) -> int:
    """Send *body* with ``sendfile`` (kernel TX: zero-copy), in chunks of SEND_CHUNK."""
    sent = 0
    while sent < body.count:
        n = k.sendfile(body.file, body.offset + sent, min(SEND_CHUNK, body.count - sent))
        if n == 0:
            raise _Incomplete(f"the file ended after {sent} of {body.count} bytes")
        sent += n
    return sent


def _linger(k: KTLSConnection, most: float, wait: float) -> None:
    """Send close_notify and the FIN, then read and drop what the client still sends, until
    it closes its side (or breaks it off), sends nothing for *wait* seconds, or *most*
    seconds passed."""
    deadline = time.monotonic() + most
    buf = bytearray(65536)
    try:
        k.shutdown()
        while (left := deadline - time.monotonic()) > 0:
            k.settimeout(min(left, wait))
            if k.recv_into(buf) == 0:
                return
    except (TimeoutError, Error, OSError, SSL.Error):
        return


def _check(request: Request) -> None:
    """What h11 accepts but this server does not serve: 505, and targets not "/path"."""
    if not request.http.startswith("1."):
        raise BadRequest(505, "only HTTP/1.x is spoken here")
    if not request.target.startswith("/"):
        raise BadRequest(400, "only origin-form request targets (/path) are accepted")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, SSL.Error) and exc.args and isinstance(exc.args[0], list):
        reasons = [str(r[2]) for r in exc.args[0] if isinstance(r, tuple) and len(r) >= 3]
        if reasons:
            return "; ".join(reasons)
    return str(exc) or type(exc).__name__
