"""External TLS peers for the interop suite: processes, certificates, contexts, payloads.

Everything here is plumbing the tests in ``interop/`` share; the fixtures in
``interop/conftest.py`` wrap it. The rules it keeps:

* A peer is a subprocess in its own session (its own process group), started on a free
  loopback port. Readiness of a listening peer is read from ``/proc/net/tcp`` and
  ``/proc/net/tcp6`` (the port in LISTEN state), never probed with a connection: a
  probe would use up ``-naccept`` of ``openssl s_server``.
* Its stderr (and stdout, when stdout is not the data channel) is collected line by
  line into a :class:`PeerLog`, also sent to the ``interop.peer.<name>`` logger at DEBUG
  level (``pytest --log-cli-level=DEBUG`` streams it live); the conftest attaches the
  whole log to the report of a failing test.
* Data a peer writes to stdout goes into a :class:`Sink` that keeps its size and
  SHA-256 (and the bytes themselves when asked), so every transfer is checked by length
  and digest against what was sent.
* Every wait has a timeout (:data:`TIMEOUT`, ``OSSL_KTLS_INTEROP_TIMEOUT`` seconds), and
  :meth:`Peer.stop` always ends the process group (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import random
import re
import select
import signal
import socket
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme
from OpenSSL import SSL

import ossl_ktls
from ossl_ktls._suites import SUITES, openssl_tls12_names, openssl_tls13_name
from tests.expectations import ALL_CIPHERS, current

__all__ = [
    "BIG_BYTES",
    "CIPHERS",
    "HOST",
    "MATRIX",
    "MATRIX_BYTES",
    "REPLY_BYTES",
    "TIMEOUT",
    "VERSIONS",
    "CertSet",
    "Listener",
    "Payload",
    "Peer",
    "PeerError",
    "PeerLog",
    "Sink",
    "assert_received",
    "check_new_session_ticket",
    "client_context",
    "connect",
    "curl_argv",
    "digest",
    "exchange_with_client",
    "expected_directions",
    "framed",
    "free_port",
    "gnutls_cli_argv",
    "gnutls_priority",
    "gnutls_serv_argv",
    "kernel_can_rekey",
    "listening_ports",
    "make_certs",
    "make_payload",
    "make_text_payload",
    "matrix_id",
    "openssl_ktls_conf",
    "read_exactly",
    "read_to_eof",
    "s_client_argv",
    "s_server_argv",
    "send_mixed",
    "server_context",
    "unframe",
    "wait_port_free",
]

#: Seconds any single wait may take. Generous: under TCG everything is 10-30x slower.
TIMEOUT = float(os.environ.get("OSSL_KTLS_INTEROP_TIMEOUT", "90"))
HOST = "127.0.0.1"
VERSIONS = ("1.2", "1.3")
CIPHERS = ALL_CIPHERS

#: The (version, cipher) matrix every peer is run through.
MATRIX = [(v, c) for v in VERSIONS for c in CIPHERS]
#: Bytes sent by ossl_ktls per matrix case, and bytes sent back by the peer.
MATRIX_BYTES = int(os.environ.get("OSSL_KTLS_INTEROP_MATRIX_BYTES", str(1 << 20)))
REPLY_BYTES = int(os.environ.get("OSSL_KTLS_INTEROP_REPLY_BYTES", str(256 << 10)))
#: The one big transfer of the suite (curl download through kernel sendfile).
BIG_BYTES = int(os.environ.get("OSSL_KTLS_INTEROP_BIG_BYTES", str(64 << 20)))

_TCP_LISTEN = "0A"
_LOG_LIMIT = 400_000  # characters of a peer's log kept for the report
_log = logging.getLogger("interop.peer")


class PeerError(AssertionError):
    """A peer did not start, did not listen, or did not do what the test waited for.

    An ``AssertionError`` so pytest reports it as a test failure, with the message.
    """


# --------------------------------------------------------------------------- payloads


@dataclass(frozen=True)
class Payload:
    """Bytes to transfer, with the size and SHA-256 the receiving end must report."""

    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def write_to(self, path: Path) -> Path:
        """Write the bytes to *path* (for sendfile, curl uploads, s_server -WWW)."""
        path.write_bytes(self.data)
        return path


def make_payload(size: int, seed: int) -> Payload:
    """*size* pseudo-random bytes, reproducible from *seed* (binary: every byte value)."""
    return Payload(random.Random(seed).randbytes(size))


def matrix_id(version: str, cipher: str) -> str:
    """A test id for a matrix case: ``tls1.3-aes-128-gcm``."""
    return f"tls{version}-{cipher}"


def send_mixed(k: ossl_ktls.KTLSConnection, payload: Payload, file: Path) -> None:
    """Send *payload*: its first half with ``sendall``, the rest with ``sendfile``.

    *file* receives the payload's bytes first (``sendfile`` reads from it at the offset).
    """
    payload.write_to(file)
    half = payload.size // 2
    k.sendall(payload.data[:half])
    with open(file, "rb") as f:
        sent = k.sendfile(f, offset=half)
        assert sent == payload.size - half, f"sendfile sent {sent} of {payload.size - half}"
        assert f.tell() == payload.size, "sendfile did not leave the file position at the end"


def framed(tag: str, data: bytes) -> tuple[bytes, bytes, bytes]:
    """``(begin, data, end)`` with unique markers, to find *data* in a peer's mixed stdout."""
    token = os.urandom(8).hex().encode()
    return b"\n<<" + tag.encode() + b":" + token + b">>", data, b"<</" + token + b">>\n"


def make_text_payload(size: int, seed: int) -> Payload:
    """*size* bytes of lowercase hex lines: data for interactive peers (see :func:`unframe`)."""
    raw = random.Random(seed).randbytes(size // 2 + 64).hex().encode()
    lines = [raw[i : i + 63] + b"\n" for i in range(0, len(raw), 63)]
    return Payload(b"".join(lines)[:size])


# What interactive s_server / s_client print on their own between records of data. stdout
# is a stdio stream for them (flushed at odd times) but data goes out with write(2), so
# these lines can land anywhere between two records. None can occur in a hex payload.
_STATUS_TEXT = re.compile(
    rb"SSL_do_handshake -> -?\d+\n"
    rb"|(?:read|write) [RWX] BLOCK\n|Read BLOCK\n|Write BLOCK\n"
    rb"|KEYUPDATE\n|RENEGOTIATING\n"
    rb"|---\nPost-Handshake New Session Ticket arrived:\n.*?\n---\n",
    re.DOTALL,
)


def unframe(stdout: bytes, begin: bytes, end: bytes) -> bytes:
    """The bytes between *begin* and *end* in an interactive peer's *stdout*.

    Each marker must occur exactly once. The peer's own status lines (``Read BLOCK``,
    ``SSL_do_handshake -> 1``, ...) are removed from the result: use a payload from
    :func:`make_text_payload`, which cannot contain them.
    """
    assert stdout.count(begin) == 1, f"marker {begin!r} found {stdout.count(begin)} times"
    assert stdout.count(end) == 1, f"marker {end!r} found {stdout.count(end)} times"
    start = stdout.index(begin) + len(begin)
    return _STATUS_TEXT.sub(b"", stdout[start : stdout.index(end)])


def check_new_session_ticket(raw: bytes) -> None:
    """Fail unless *raw* is one whole TLS 1.3 NewSessionTicket message (type 4)."""
    assert raw[:1] == b"\x04", f"not a NewSessionTicket: {raw[:8]!r}"
    assert int.from_bytes(raw[1:4], "big") == len(raw) - 4, "NewSessionTicket length mismatch"


def digest(data: bytes | bytearray) -> tuple[int, str]:
    """``(size, sha256 hex)`` of *data*: the pair every transfer is compared by."""
    return len(data), hashlib.sha256(data).hexdigest()


def assert_received(what: str, size: int, sha256: str, sent: Payload | bytes) -> None:
    """Fail unless (*size*, *sha256*) is what was *sent*: the check of every transfer."""
    want = sent if isinstance(sent, Payload) else Payload(sent)
    assert (size, sha256) == (want.size, want.sha256), (
        f"{what}: received {size} bytes sha256 {sha256}, "
        f"sent {want.size} bytes sha256 {want.sha256}"
    )


# --------------------------------------------------------------------------- expectations


def expected_directions(
    version: str, cipher: str, *, rx_without_rekey: bool = False
) -> tuple[bool, bool]:
    """``(tx, rx)``: which directions the kernel must carry, per ``tests/expectations.py``.

    Undeclared environments expect everything (rekey included). TLS 1.3 RX goes to the
    kernel only where it can rekey, or when the caller asked ``rx_without_rekey``: the
    library's documented policy.
    """
    env = current()
    if env is None:
        return True, True
    tx = env.has("tx", version, cipher)
    rx = env.has("rx", version, cipher)
    if version == "1.3" and not env.rekey and not rx_without_rekey:
        rx = False
    return tx, rx


def kernel_can_rekey() -> bool:
    """Whether the environment declares TLS 1.3 rekey (undeclared: yes)."""
    env = current()
    return True if env is None else env.rekey


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def listening_ports() -> set[int]:
    """Local ports in TCP LISTEN state, from ``/proc/net/tcp`` and ``/proc/net/tcp6``."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == _TCP_LISTEN:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# --------------------------------------------------------------------------- logs/sinks


class PeerLog:
    """The text a peer printed (stderr, and stdout when it is not data), time-stamped."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lines: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._logger = _log.getChild(re.sub(r"[^A-Za-z0-9_-]", "_", name))
        self._cond = threading.Condition(self._lock)

    def add(self, source: str, text: str) -> None:
        stamp = time.monotonic() - self._start
        for line in text.splitlines() or [""]:
            entry = f"{stamp:8.3f} {source}: {line}"
            self._logger.debug("%s", entry)
            with self._lock:
                if self._size < _LOG_LIMIT:
                    self._lines.append(entry)
                    self._size += len(entry)
                self._cond.notify_all()

    def text(self) -> str:
        with self._lock:
            return "\n".join(self._lines)

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """Wait until a logged line matches the regular expression *pattern*."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for line in self._lines:
                    m = rx.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerError(f"{self.name}: no log line matched {pattern!r} in {timeout}s")
                self._cond.wait(min(left, 0.5))


class Sink:
    """What a peer wrote on its data channel (stdout): size, SHA-256, optionally the bytes."""

    def __init__(self, name: str, *, keep: bool) -> None:
        self.name = name
        self._keep = keep
        self._data = bytearray()
        self._head = bytearray()
        self._sha = hashlib.sha256()
        self._size = 0
        self._closed = False
        self._cond = threading.Condition()

    def feed(self, chunk: bytes) -> None:
        with self._cond:
            self._sha.update(chunk)
            self._size += len(chunk)
            if self._keep:
                self._data += chunk
            elif len(self._head) < 256:
                self._head += chunk[: 256 - len(self._head)]
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def size(self) -> int:
        with self._cond:
            return self._size

    @property
    def sha256(self) -> str:
        with self._cond:
            return self._sha.copy().hexdigest()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def data(self) -> bytes:
        """Everything received (only for a sink made with ``keep=True``)."""
        if not self._keep:
            raise PeerError(f"{self.name}: the sink does not keep its bytes")
        with self._cond:
            return bytes(self._data)

    def _wait(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ready():
                if self._closed:
                    raise PeerError(f"{self.name}: stdout ended before {what} ({self._size} bytes)")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerError(
                        f"{self.name}: no {what} within {timeout}s ({self._size} bytes)"
                    )
                self._cond.wait(min(left, 0.5))

    def wait_size(self, size: int, timeout: float = TIMEOUT) -> None:
        """Wait until at least *size* bytes arrived."""
        self._wait(lambda: self._size >= size, f"{size} bytes", timeout)

    def wait_contains(self, needle: bytes, timeout: float = TIMEOUT) -> None:
        """Wait until the kept bytes contain *needle*."""
        self._wait(lambda: needle in self._data, f"{needle[:40]!r}", timeout)

    def wait_count(self, needle: bytes, count: int, timeout: float = TIMEOUT) -> None:
        """Wait until the kept bytes contain *needle* at least *count* times."""
        self._wait(lambda: self._data.count(needle) >= count, f"{count}x {needle!r}", timeout)

    def wait_closed(self, timeout: float = TIMEOUT) -> None:
        """Wait until the peer closed its stdout (normally: it exited)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerError(f"{self.name}: stdout still open after {timeout}s")
                self._cond.wait(min(left, 0.5))

    def summary(self) -> str:
        with self._cond:
            shown = bytes(self._data[:256] if self._keep else self._head)
            return f"{self._size} bytes, sha256 {self._sha.copy().hexdigest()}, head {shown!r}"


# --------------------------------------------------------------------------- peers


class Peer:
    """One external TLS program run as a subprocess, always torn down by :meth:`stop`.

    ``stdout`` is ``"data"`` (a :class:`Sink` hashing it, bytes not kept), ``"keep"``
    (a Sink that also keeps the bytes: interactive peers mixing status text and data)
    or ``"log"`` (stdout is more log text).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        stdout: str = "data",
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        logfiles: Sequence[Path] = (),
    ) -> None:
        if stdout not in ("data", "keep", "log"):
            raise ValueError(stdout)
        self.name = name
        self.argv = list(argv)
        self.log = PeerLog(name)
        self.sink = Sink(name, keep=stdout == "keep")
        self._stdout_mode = stdout
        self._env = env
        self._cwd = cwd
        self.logfiles = list(logfiles)
        self.proc: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._stdin_lock = threading.Lock()
        self._feeders: list[threading.Thread] = []
        self.feed_error: BaseException | None = None

    # -- life cycle

    def start(self) -> Peer:
        env = dict(os.environ)
        if self._env:
            env.update(self._env)
        self.log.add("cmd", " ".join(self.argv) + (f"  (cwd {self._cwd})" if self._cwd else ""))
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self._cwd,
            start_new_session=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._reader(self.proc.stderr.fileno(), "stderr", to_sink=False)
        self._reader(self.proc.stdout.fileno(), "stdout", to_sink=self._stdout_mode != "log")
        return self

    def _reader(self, fd: int, source: str, *, to_sink: bool) -> None:
        def run() -> None:
            pending = b""
            try:
                while True:
                    try:
                        chunk = os.read(fd, 65536)
                    except OSError:
                        break
                    if not chunk:
                        break
                    if to_sink:
                        self.sink.feed(chunk)
                        continue
                    pending += chunk
                    head, sep, pending = pending.rpartition(b"\n")
                    if sep:
                        self.log.add(source, head.decode("utf-8", "replace"))
            finally:
                if pending:
                    self.log.add(source, pending.decode("utf-8", "replace"))
                if to_sink:
                    self.sink.close()

        t = threading.Thread(target=run, name=f"{self.name}-{source}", daemon=True)
        t.start()
        self._threads.append(t)

    def wait_listening(self, port: int, timeout: float = TIMEOUT) -> None:
        """Wait until the peer listens on *port* (read from /proc, never by connecting)."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while port not in listening_ports():
            if self.returncode is not None:
                raise PeerError(
                    f"{self.name} exited with status {self.returncode} before listening on {port}"
                )
            if time.monotonic() > deadline:
                raise PeerError(f"{self.name} did not listen on port {port} within {timeout}s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)
        self.log.add("test", f"listening on port {port}")

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def wait(self, timeout: float = TIMEOUT) -> int:
        """Wait for the peer to exit by itself; its exit status.

        Also waits for the reader threads to reach the end of its output, so the log and
        the sink are complete when this returns (a check of the log right after an exit
        must not race the last lines).
        """
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise PeerError(f"{self.name} still running after {timeout}s") from None
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise PeerError(f"{self.name} exited but its {t.name} pipe is still open")
        self.log.add("test", f"exited with status {rc}")
        return rc

    def stop(self) -> None:
        """End the peer's process group (SIGTERM, SIGKILL after 3 s) and its readers."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
            self.log.add("test", f"stopped (status {proc.returncode})")
        else:
            # The group may still hold children of the peer (none expected): end them.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        for t in self._threads + self._feeders:
            t.join(5)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    # -- stdin

    def write(self, data: bytes) -> None:
        """Write *data* to the peer's stdin (blocking until the pipe took it)."""
        assert self.proc is not None and self.proc.stdin is not None
        with self._stdin_lock:
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except BrokenPipeError:
                raise PeerError(f"{self.name} closed its stdin (exited?)") from None

    def command(self, line: bytes, timeout: float = TIMEOUT) -> None:
        """Send an interactive command (``k``, ``K``, ``R``...) as a read of its own.

        OpenSSL's s_server/s_client only treat a stdin read that *starts* with the
        command letter and a newline as a command, and drop the rest of that read. So
        the pipe is first drained (anything written before was read), the command is
        written, and the pipe is drained again before the caller writes more.
        """
        self.wait_stdin_drained(timeout)
        self.write(line)
        self.wait_stdin_drained(timeout)
        self.log.add("test", f"command {line!r} was read by the peer")

    def wait_stdin_drained(self, timeout: float = TIMEOUT) -> None:
        """Wait until the peer read everything written to its stdin (FIONREAD of the pipe)."""
        assert self.proc is not None and self.proc.stdin is not None
        fd = self.proc.stdin.fileno()
        deadline = time.monotonic() + timeout
        buf = bytearray(4)
        while True:
            fcntl.ioctl(fd, termios.FIONREAD, buf)
            if int.from_bytes(buf, "little") == 0:
                return
            if self.returncode is not None:
                raise PeerError(f"{self.name} exited with unread input")
            if time.monotonic() > deadline:
                raise PeerError(f"{self.name} did not read its input within {timeout}s")
            time.sleep(0.01)

    def feed(self, data: bytes, *, close: bool) -> threading.Thread:
        """Write *data* to stdin from a thread (then close stdin if *close*)."""
        assert self.proc is not None and self.proc.stdin is not None
        stdin = self.proc.stdin

        def run() -> None:
            try:
                with self._stdin_lock:
                    view = memoryview(data)
                    for i in range(0, len(view), 65536):
                        stdin.write(view[i : i + 65536])
                    stdin.flush()
                    if close:
                        stdin.close()
            except (BrokenPipeError, ValueError, OSError) as exc:
                self.feed_error = exc

        t = threading.Thread(target=run, name=f"{self.name}-stdin", daemon=True)
        t.start()
        self._feeders.append(t)
        return t

    def close_stdin(self) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        with self._stdin_lock, contextlib.suppress(OSError):
            self.proc.stdin.close()

    def report(self) -> str:
        """The peer's command line, exit status, stdout summary and log, for a failure."""
        head = [f"argv: {' '.join(self.argv)}", f"status: {self.returncode}"]
        if self._stdout_mode != "log":
            head.append(f"stdout: {self.sink.summary()}")
            if self._stdout_mode == "keep":
                kept = self.sink.data()
                head.append("stdout (kept, last 6000 bytes):")
                head.append(kept[-6000:].decode("utf-8", "backslashreplace"))
        text = "\n".join(head) + "\n--- log ---\n" + self.log.text()
        for path in self.logfiles:
            with contextlib.suppress(OSError):
                text += f"\n--- {path} ---\n" + path.read_text("utf-8", "replace")[-20000:]
        return text

    def logfile_text(self) -> str:
        """The text of the peer's own log files (e.g. gnutls-cli ``--logfile``)."""
        parts = []
        for path in self.logfiles:
            with contextlib.suppress(OSError):
                parts.append(path.read_text("utf-8", "replace"))
        return "\n".join(parts)


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class CertSet:
    """A CA and a server certificate for ``localhost``/127.0.0.1, as PEM files."""

    key_type: str  # "ecdsa" or "rsa"
    ca: Path
    cert: Path  # leaf + chain
    key: Path
    combined: Path  # key + leaf + chain (openssl s_server -cert)


def make_certs(directory: Path, key_type: str) -> CertSet:
    """Issue a fresh CA and server certificate with trustme (ECDSA or RSA keys)."""
    kt = {"ecdsa": trustme.KeyType.ECDSA, "rsa": trustme.KeyType.RSA}[key_type]
    ca = trustme.CA(key_type=kt)
    leaf = ca.issue_cert("localhost", HOST, key_type=kt)
    directory.mkdir(parents=True, exist_ok=True)
    paths = CertSet(
        key_type=key_type,
        ca=directory / "ca.pem",
        cert=directory / "cert.pem",
        key=directory / "key.pem",
        combined=directory / "combined.pem",
    )
    ca.cert_pem.write_to_path(str(paths.ca))
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    paths.cert.write_bytes(chain)
    leaf.private_key_pem.write_to_path(str(paths.key))
    paths.combined.write_bytes(leaf.private_key_pem.bytes() + chain)
    return paths


# --------------------------------------------------------------------------- ossl_ktls side


def _tls12_cipher(cipher: str, key_type: str) -> str:
    names = openssl_tls12_names(SUITES[cipher])
    name = names.ecdsa if key_type == "ecdsa" else names.rsa
    if name is None:  # pragma: no cover - every suite has an RSA form (DHE for CCM)
        raise PeerError(f"no TLS 1.2 {cipher} suite for {key_type} keys")
    return name


def _context(version: str, cipher: str, key_type: str) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    proto = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}[version]
    ctx.set_min_proto_version(proto)
    ctx.set_max_proto_version(proto)
    if version == "1.3":
        ctx.set_tls13_ciphersuites(openssl_tls13_name(SUITES[cipher]).encode())
    else:
        ctx.set_cipher_list(_tls12_cipher(cipher, key_type).encode())
    return ctx


def client_context(certs: CertSet, version: str, cipher: str) -> SSL.Context:
    """A prepared client Context offering exactly one version and suite, verifying the peer."""
    ctx = _context(version, cipher, certs.key_type)
    ctx.load_verify_locations(str(certs.ca))
    ctx.set_verify(SSL.VERIFY_PEER, lambda *_args: bool(_args[-1]))
    ossl_ktls.prepare(ctx)
    return ctx


def server_context(
    certs: CertSet, version: str, cipher: str, *, dhparams: Path | None = None
) -> SSL.Context:
    """A prepared server Context with *certs*, offering exactly one version and suite."""
    ctx = _context(version, cipher, certs.key_type)
    ctx.use_certificate_chain_file(str(certs.cert))
    ctx.use_privatekey_file(str(certs.key))
    if dhparams is not None:
        ctx.load_tmp_dh(str(dhparams))
    ossl_ktls.prepare(ctx)
    return ctx


def _handshake(conn: SSL.Connection, sock: socket.socket, timeout: float) -> None:
    """Run the TLS handshake with pyOpenSSL on a socket with a timeout (no wrap yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.do_handshake()
            return
        except SSL.WantReadError:
            want = select.POLLIN
        except SSL.WantWriteError:
            want = select.POLLOUT
        left = deadline - time.monotonic()
        poller = select.poll()
        poller.register(sock.fileno(), want)
        if left <= 0 or not poller.poll(left * 1000):
            raise TimeoutError(f"TLS handshake not done within {timeout}s")


def _hand_over(
    conn: SSL.Connection,
    sock: socket.socket,
    timeout: float,
    handshake_first: bool,
    wrap_kwargs: dict[str, object],
) -> ossl_ktls.KTLSConnection:
    if not handshake_first:
        sock.settimeout(timeout)
        return ossl_ktls.wrap(conn, **wrap_kwargs)  # type: ignore[arg-type]
    sock.settimeout(timeout)
    _handshake(conn, sock, timeout)
    return ossl_ktls.wrap(conn, **wrap_kwargs)  # type: ignore[arg-type]


def connect(
    ctx: SSL.Context,
    port: int,
    *,
    timeout: float = TIMEOUT,
    session: SSL.Session | None = None,
    handshake_first: bool = False,
    **wrap_kwargs: object,
) -> ossl_ktls.KTLSConnection:
    """Connect to a peer on loopback as a TLS client and hand over (``wrap``).

    *session* (an earlier connection's ``get_session()``) is offered for resumption.

    By default ``wrap()`` runs the handshake itself on the socket with *timeout* (the
    usual way). ``handshake_first=True`` does the handshake with pyOpenSSL first and
    hands an established session over (the other documented way).
    """
    sock = socket.create_connection((HOST, port), timeout=timeout)
    try:
        conn = SSL.Connection(ctx, sock)
        conn.set_tlsext_host_name(b"localhost")
        if session is not None:
            conn.set_session(session)
        conn.set_connect_state()
        return _hand_over(conn, sock, timeout, handshake_first, wrap_kwargs)
    except BaseException:
        sock.close()
        raise


class Listener:
    """An ossl_ktls server socket on a free loopback port."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(8)
        self.port: int = self.sock.getsockname()[1]

    def accept(
        self,
        ctx: SSL.Context,
        *,
        timeout: float = TIMEOUT,
        handshake_first: bool = False,
        **wrap_kwargs: object,
    ) -> ossl_ktls.KTLSConnection:
        """Accept one connection as a TLS server and hand over (``wrap``); see :func:`connect`."""
        self.sock.settimeout(timeout)
        sock, _addr = self.sock.accept()
        try:
            conn = SSL.Connection(ctx, sock)
            conn.set_accept_state()
            return _hand_over(conn, sock, timeout, handshake_first, wrap_kwargs)
        except BaseException:
            sock.close()
            raise

    def close(self) -> None:
        self.sock.close()


def read_exactly(k: ossl_ktls.KTLSConnection, size: int) -> bytes:
    """Receive exactly *size* bytes (fails on an early EOF)."""
    buf = bytearray()
    while len(buf) < size:
        chunk = k.recv(min(size - len(buf), 1 << 20))
        if not chunk:
            raise PeerError(f"EOF after {len(buf)} of {size} bytes")
        buf += chunk
    return bytes(buf)


def read_to_eof(k: ossl_ktls.KTLSConnection, limit: int = 1 << 28) -> bytes:
    """Receive until ``recv`` returns ``b""`` (the peer's close_notify)."""
    buf = bytearray()
    while True:
        chunk = k.recv(1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            raise PeerError(f"more than {limit} bytes without EOF")


Sender = Callable[[ossl_ktls.KTLSConnection, Payload, Path], None]


def exchange_with_client(
    k: ossl_ktls.KTLSConnection,
    client: Peer,
    tmp_path: Path,
    seed: int,
    *,
    send: Sender = send_mixed,
    down_bytes: int = MATRIX_BYTES,
    reply_bytes: int = REPLY_BYTES,
) -> None:
    """The server side's contract with a client program reading stdin to EOF.

    *down_bytes* from us (by *send*: ``sendall`` + ``sendfile`` by default) reach the
    client intact (size and SHA-256); *reply_bytes* from it reach us intact, then its
    close_notify (``recv`` returns ``b""``); we answer with ours, and the client exits
    with status 0.
    """
    down = make_payload(down_bytes, seed=seed)
    send(k, down, tmp_path / "down.bin")
    client.sink.wait_size(down.size)
    assert_received(f"{client.name} received", client.sink.size, client.sink.sha256, down)
    up = make_payload(reply_bytes, seed=seed + 1)
    client.feed(up.data, close=True)
    assert_received("we received", *digest(read_exactly(k, up.size)), up)
    assert k.recv(4096) == b"", f"{client.name}'s close_notify should end our stream"
    k.shutdown()
    k.close()
    assert client.wait() == 0


# --------------------------------------------------------------------------- peer command lines


def s_server_argv(
    port: int,
    certs: CertSet,
    version: str,
    cipher: str,
    *,
    quiet: bool = True,
    naccept: int = 1,
    extra: Iterable[str] = (),
) -> list[str]:
    """``openssl s_server`` offering exactly one version and suite, on loopback *port*."""
    argv = ["openssl", "s_server", "-accept", f"{HOST}:{port}", "-naccept", str(naccept)]
    argv += ["-cert", str(certs.cert), "-key", str(certs.key)]
    argv += _openssl_suite_args(version, cipher, certs.key_type)
    if quiet:
        argv.append("-quiet")
    return argv + list(extra)


def s_client_argv(
    port: int,
    certs: CertSet,
    version: str,
    cipher: str,
    *,
    quiet: bool = True,
    extra: Iterable[str] = (),
) -> list[str]:
    """``openssl s_client`` offering exactly one version and suite, verifying the server.

    With ``quiet`` its input is data: ``-nocommands``, since s_client takes *any* read
    of its input that starts with ``Q``, ``R``, ``k`` or ``K`` for a command unless
    input EOF is ignored (``-quiet`` alone ignores it; add ``-no_ign_eof`` to make the
    end of the input send close_notify).
    """
    argv = ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", "localhost"]
    argv += ["-CAfile", str(certs.ca), "-verify_return_error", "-verify_hostname", "localhost"]
    argv += _openssl_suite_args(version, cipher, certs.key_type)
    if quiet:
        argv += ["-quiet", "-nocommands"]
    return argv + list(extra)


def _openssl_suite_args(version: str, cipher: str, key_type: str) -> list[str]:
    if version == "1.3":
        return ["-tls1_3", "-ciphersuites", openssl_tls13_name(SUITES[cipher])]
    return ["-tls1_2", "-cipher", _tls12_cipher(cipher, key_type)]


_GNUTLS_CIPHER = {
    "aes-128-gcm": "AES-128-GCM",
    "aes-256-gcm": "AES-256-GCM",
    "chacha20-poly1305": "CHACHA20-POLY1305",
    "aes-128-ccm": "AES-128-CCM",
}


def gnutls_priority(version: str, cipher: str, key_type: str) -> str:
    """A GnuTLS priority string allowing exactly one version and bulk cipher."""
    prio = f"NORMAL:-VERS-ALL:+VERS-TLS{version}:-CIPHER-ALL:+{_GNUTLS_CIPHER[cipher]}"
    if version == "1.2":
        kx = {"ecdsa": "+ECDHE-ECDSA", "rsa": "+ECDHE-RSA:+DHE-RSA"}[key_type]
        prio += f":-KX-ALL:{kx}"
    return prio


def gnutls_serv_argv(
    port: int, certs: CertSet, version: str, cipher: str, *, extra: Iterable[str] = ()
) -> list[str]:
    """``gnutls-serv --echo`` (binary-safe: ``--crlf`` keeps CR LF) on *port*."""
    argv = ["gnutls-serv", "--port", str(port), "--echo", "--crlf", "--disable-client-cert"]
    argv += ["--x509certfile", str(certs.cert), "--x509keyfile", str(certs.key)]
    argv += ["--priority", gnutls_priority(version, cipher, certs.key_type)]
    return argv + list(extra)


def gnutls_cli_argv(
    port: int,
    certs: CertSet,
    version: str,
    cipher: str,
    *,
    logfile: Path,
    extra: Iterable[str] = (),
) -> list[str]:
    """``gnutls-cli`` to loopback *port*, verifying against the CA, info text to *logfile*."""
    argv = ["gnutls-cli", "--port", str(port), "--x509cafile", str(certs.ca)]
    argv += ["--priority", gnutls_priority(version, cipher, certs.key_type)]
    argv += ["--logfile", str(logfile), "--sni-hostname", "localhost", "--verify-hostname"]
    argv += ["localhost"]
    argv += list(extra)
    return [*argv, HOST]


_CURL_TLS13 = {
    "aes-128-gcm": "TLS_AES_128_GCM_SHA256",
    "aes-256-gcm": "TLS_AES_256_GCM_SHA384",
    "chacha20-poly1305": "TLS_CHACHA20_POLY1305_SHA256",
    "aes-128-ccm": "TLS_AES_128_CCM_SHA256",
}


def curl_argv(
    port: int,
    certs: CertSet,
    version: str,
    cipher: str,
    *,
    path: str,
    output: Path,
    upload: Path | None = None,
) -> list[str]:
    """``curl`` (OpenSSL backend) for ``https://localhost:<port><path>`` over HTTP/1.1."""
    argv = ["curl", "--silent", "--show-error", "--fail", "--http1.1", "--max-time", str(TIMEOUT)]
    argv += ["--cacert", str(certs.ca), "--resolve", f"localhost:{port}:{HOST}"]
    if version == "1.3":
        argv += ["--tlsv1.3", "--tls-max", "1.3", "--tls13-ciphers", _CURL_TLS13[cipher]]
    else:
        argv += [
            "--tlsv1.2",
            "--tls-max",
            "1.2",
            "--ciphers",
            _tls12_cipher(cipher, certs.key_type),
        ]
    if upload is not None:
        argv += ["--data-binary", f"@{upload}", "-H", "Content-Type: application/octet-stream"]
    argv += ["--output", str(output), "--write-out", "%{http_code} %{size_download}\\n"]
    return [*argv, f"https://localhost:{port}{path}"]


# --------------------------------------------------------------------------- OpenSSL's kTLS


def openssl_ktls_conf(path: Path) -> Path:
    """An ``OPENSSL_CONF`` file switching OpenSSL's own kernel TLS on (``Options = KTLS``)."""
    path.write_text(
        "openssl_conf = openssl_init\n\n"
        "[openssl_init]\nssl_conf = ssl_module\n\n"
        "[ssl_module]\nsystem_default = ssl_defaults\n\n"
        "[ssl_defaults]\nOptions = KTLS\n",
        encoding="ascii",
    )
    return path


def wait_port_free(port: int, timeout: float = TIMEOUT) -> None:
    """Wait until nothing listens on *port* any more."""
    deadline = time.monotonic() + timeout
    while port in listening_ports():
        if time.monotonic() > deadline:
            raise PeerError(f"port {port} still listening after {timeout}s")
        time.sleep(0.05)
