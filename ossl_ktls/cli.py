"""The ``ossl-ktls`` command line (also ``python -m ossl_ktls``).

Commands::

    ossl-ktls probe [--json]
    ossl-ktls send HOST:PORT FILE [TLS options] [--json]
    ossl-ktls recv HOST:PORT [-o FILE] [TLS options] [--json]
    ossl-ktls serve [--cert C [--key K]] [--host H] [--port P] [TLS options] ROOT
    ossl-ktls stats [--watch [SEC]] [--count N] [--json]

Every command that moves data ends with one summary line on stdout: bytes, seconds,
throughput, TLS version, cipher, and whether kernel TLS carries TX and RX (and why not,
when not); ``--json`` prints one JSON object instead, for scripts. Errors are one line on
stderr. Exit status: 0 success, 1 failure (refused connection, certificate failure,
missing file, truncated stream, kernel without kTLS under ``--require-ktls``), 2 usage
error, 130 interrupted.

Security defaults: clients verify the server's certificate chain *and* its name (the
``--servername``, or the host of HOST:PORT), against the system trust store unless
``--cafile`` is given; ``--insecure`` turns both checks off. TLS 1.2 is the lowest version
offered, and TLS 1.2 is restricted to forward-secret AEAD suites the kernel can carry.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import IO, Any

from OpenSSL import SSL
from OpenSSL._util import ffi
from OpenSSL._util import lib as _lib

from . import __version__, _openssl
from ._connection import KTLSConnection, wrap
from ._errors import Error, TruncatedStream, UsageError
from ._linux_tls import Capabilities, probe
from ._suites import SUITES, openssl_tls12_names, openssl_tls13_name

PROG = "ossl-ktls"
CIPHERS = ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305", "aes-128-ccm")
VERSIONS = ("1.2", "1.3")
# Offered when no --cipher is given: the AEAD suites every kTLS kernel since 5.11 takes.
# AES-128-CCM stays opt-in (not in OpenSSL's default TLS 1.3 list, rarely offered).
DEFAULT_CIPHERS = ("aes-256-gcm", "aes-128-gcm", "chacha20-poly1305")
_CHUNK = 8 << 20  # sendfile per call: bounds each call's time so --timeout means "no progress"
_RECV_BUFFER = 256 << 10
_OPENSSL_VERSION = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
TLS_STAT = "/proc/net/tls_stat"


class CLIError(Exception):
    """A failure to report as one line on stderr, with an exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- output helpers


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


@dataclass
class Summary:
    """What one transfer did; printed as the command's last line or as JSON."""

    command: str
    peer: str
    nbytes: int
    seconds: float
    version: str
    cipher: str
    openssl_cipher: str
    ktls_tx: bool
    ktls_rx: bool
    fallback_reason: str | None

    @property
    def throughput(self) -> float:
        """Bytes per second (0 when nothing was timed)."""
        return self.nbytes / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, object]:
        """The ``--json`` form."""
        return {
            "command": self.command,
            "peer": self.peer,
            "bytes": self.nbytes,
            "seconds": round(self.seconds, 6),
            "throughput": round(self.throughput, 1),
            "tls_version": self.version,
            "cipher": self.cipher,
            "openssl_cipher": self.openssl_cipher,
            "ktls_tx": self.ktls_tx,
            "ktls_rx": self.ktls_rx,
            "fallback_reason": self.fallback_reason,
        }

    def line(self) -> str:
        """The one human summary line."""
        verb = {"send": "sent", "recv": "received"}.get(self.command, self.command)
        text = (
            f"{verb} {self.nbytes} bytes ({human_bytes(self.nbytes)}) in {self.seconds:.2f} s "
            f"({human_bytes(self.throughput)}/s), TLS {self.version or '?'} "
            f"{self.cipher or '?'}, kTLS TX {_on_off(self.ktls_tx)} RX {_on_off(self.ktls_rx)}"
        )
        if self.fallback_reason:
            text += f" ({self.fallback_reason})"
        return text


def _emit(summary: Summary, as_json: bool, stream: IO[str]) -> None:
    if as_json:
        print(json.dumps(summary.as_json()), file=stream, flush=True)
    else:
        print(summary.line(), file=stream, flush=True)


class Progress:
    """A progress bar on stderr when it is a terminal and ``tqdm`` is installed; else nothing."""

    def __init__(self, total: int | None, desc: str, enabled: bool) -> None:
        self._bar: Any = None
        if not enabled or not sys.stderr.isatty():
            return
        try:
            tqdm = importlib.import_module("tqdm")
        except ImportError:
            return
        self._bar = tqdm.tqdm(
            total=total,
            desc=desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
        )

    def update(self, n: int) -> None:
        """Advance by *n* bytes."""
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        """Remove the bar (the summary line takes its place)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- probe


def format_probe(caps: Capabilities) -> str:
    """The human ``probe`` report: a yes/no table per cipher, direction and version."""
    lines = []
    if caps.ulp:
        lines.append(f"kernel {caps.kernel}: kernel TLS is available (the 'tls' ULP attaches)")
    else:
        lines.append(f"kernel {caps.kernel}: no kernel TLS: {caps.ulp_error}")
    columns = [(d, v) for d in ("tx", "rx") for v in VERSIONS]
    width = max(len(c) for c in CIPHERS) + 2
    header = "".ljust(width) + "".join(f"{d.upper()} {v}".rjust(9) for d, v in columns)
    lines.append(header)
    for cipher in CIPHERS:
        cells = "".join(
            ("yes" if caps.supports(d, v, cipher) else "no").rjust(9) for d, v in columns
        )
        lines.append(cipher.ljust(width) + cells)
    yes_no = {True: "yes", False: "no"}
    lines.append(f"TLS 1.3 rekey (KeyUpdate, Linux 6.14+): {yes_no[caps.rekey]}")
    lines.append(f"zero-copy sendfile (TLS_TX_ZEROCOPY_RO): {yes_no[caps.zerocopy_sendfile]}")
    lines.append(f"RX expect no padding (TLS_RX_EXPECT_NO_PAD): {yes_no[caps.rx_expect_no_pad]}")
    return "\n".join(lines)


def cmd_probe(args: argparse.Namespace) -> int:
    """``probe``: what the running kernel takes, found by trying. Always exit 0."""
    caps = probe()
    if args.json:
        print(json.dumps(caps.as_json()), flush=True)
    else:
        print(format_probe(caps), flush=True)
    return 0


# ---------------------------------------------------------------- TLS contexts


def _suites_for(cipher: str | None) -> tuple[str, ...]:
    return (cipher,) if cipher else DEFAULT_CIPHERS


def configure_context(ctx: SSL.Context, tls: str | None, cipher: str | None) -> None:
    """Versions and cipher suites, then ``prepare()``; shared by clients and the server."""
    ctx.set_min_proto_version(_OPENSSL_VERSION["1.3" if tls == "1.3" else "1.2"])
    if tls == "1.2":
        ctx.set_max_proto_version(SSL.TLS1_2_VERSION)
    names: list[str] = []
    for name in _suites_for(cipher):
        ecdsa, rsa = openssl_tls12_names(SUITES[name])
        names += [ecdsa] + ([rsa] if rsa else [])
    ctx.set_cipher_list(":".join(names).encode())
    if cipher:
        ctx.set_tls13_ciphersuites(openssl_tls13_name(SUITES[cipher]).encode())
    ctx.set_options(SSL.OP_NO_COMPRESSION)
    _openssl.prepare(ctx)


def client_context(args: argparse.Namespace) -> SSL.Context:
    """A client Context: verification on (system store or ``--cafile``) unless ``--insecure``."""
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if args.insecure:
        ctx.set_verify(SSL.VERIFY_NONE)
    else:
        ctx.set_verify(SSL.VERIFY_PEER)
        if args.cafile:
            try:
                ctx.load_verify_locations(args.cafile)
            except SSL.Error as exc:
                raise CLIError(f"cannot load CA file {args.cafile}: {_ssl_reason(exc)}") from exc
        else:
            ctx.set_default_verify_paths()
    configure_context(ctx, args.tls, args.cipher)
    return ctx


def _ssl_reason(exc: BaseException) -> str:
    """The reasons of a pyOpenSSL error, as one short phrase."""
    if isinstance(exc, SSL.SysCallError):
        code = exc.args[0] if exc.args else -1
        if code in (-1, 0):
            return "the peer closed the connection during the handshake"
        return os.strerror(int(code))
    args = exc.args[0] if exc.args else None
    if isinstance(args, list):
        reasons = [str(r[2]) for r in args if isinstance(r, tuple) and len(r) >= 3]
        if reasons:
            return "; ".join(dict.fromkeys(reasons))
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def set_peer_name(conn: SSL.Connection, name: str, verify: bool) -> None:
    """SNI and the name the certificate must carry (see ``_openssl.set_peer_name``)."""
    try:
        _openssl.set_peer_name(conn, name, verify)
    except UsageError as exc:
        raise CLIError(str(exc)) from exc


def _verify_failure(conn: SSL.Connection) -> str | None:
    """OpenSSL's reason when certificate verification failed, else None."""
    code = _lib.SSL_get_verify_result(_openssl.raw_ssl(conn))
    if code == 0:
        return None
    text = ffi.string(_lib.X509_verify_cert_error_string(code)).decode(errors="replace")
    return f"{text} (X509 error {code})"


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CLIError(f"expected HOST:PORT, got {text!r}", status=2)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def connect(args: argparse.Namespace, ctx: SSL.Context) -> KTLSConnection:
    """TCP connect, handshake with verification, hand over to the kernel."""
    host, port = parse_address(args.address)
    try:
        sock = socket.create_connection((host, port), timeout=args.timeout)
    except socket.gaierror as exc:
        raise CLIError(f"cannot resolve {host}: {exc.strerror}") from exc
    except TimeoutError as exc:
        raise CLIError(f"cannot connect to {args.address}: timed out") from exc
    except OSError as exc:
        raise CLIError(f"cannot connect to {args.address}: {exc.strerror or exc}") from exc
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = SSL.Connection(ctx, sock)
        conn.set_connect_state()
        set_peer_name(conn, args.servername or host, verify=not args.insecure)
        try:
            return wrap(conn, rx_without_rekey=args.rx_without_rekey)
        except SSL.Error as exc:
            failure = _verify_failure(conn)
            if failure is not None:
                raise CLIError(
                    f"certificate verification failed for {args.servername or host}: {failure}"
                ) from exc
            raise CLIError(f"TLS handshake with {args.address} failed: {_ssl_reason(exc)}") from exc
        except TimeoutError as exc:
            raise CLIError(f"TLS handshake with {args.address} timed out") from exc
        except OSError as exc:
            raise CLIError(
                f"TLS handshake with {args.address} failed: {exc.strerror or exc}"
            ) from exc
    except BaseException:
        sock.close()
        raise


def _rekey_hint(reason: str) -> str:
    if "rekey" in reason:
        return reason.replace("rx_without_rekey=True", "--rx-without-rekey")
    return reason


def check_ktls(k: KTLSConnection, args: argparse.Namespace, direction: str) -> None:
    """``--require-ktls``: fail unless *direction* went to the kernel; else warn if it did not."""
    on = k.ktls_tx if direction == "tx" else k.ktls_rx
    if on:
        return
    reason = _rekey_hint(k.fallback_reason or "not requested")
    name = direction.upper()
    if args.require_ktls:
        raise CLIError(f"kernel TLS required, but {name} stayed in user space: {reason}")
    warn(f"kernel TLS {name} is off ({reason}); using the user-space path")


def _precheck_require(args: argparse.Namespace) -> None:
    if not args.require_ktls:
        return
    caps = probe()
    if not caps.ulp:
        raise CLIError(f"kernel TLS required, but this kernel has none: {caps.ulp_error}")


def _summary(command: str, peer: str, k: KTLSConnection, n: int, seconds: float) -> Summary:
    reason = k.fallback_reason
    return Summary(
        command=command,
        peer=peer,
        nbytes=n,
        seconds=seconds,
        version=k.version,
        cipher=k.suite.name if k.suite else "",
        openssl_cipher=k.get_cipher_name() or "",
        ktls_tx=k.ktls_tx,
        ktls_rx=k.ktls_rx,
        fallback_reason=_rekey_hint(reason) if reason else None,
    )


# ---------------------------------------------------------------- send / recv


def _await_peer_close(k: KTLSConnection, timeout: float) -> None:
    """After our close_notify: read (and drop) until the peer closes, so nothing is reset."""
    k.settimeout(min(timeout, 10.0))
    with contextlib.suppress(Error, OSError, SSL.Error):
        for _ in range(4096):
            if not k.recv(65536):
                return


def cmd_send(args: argparse.Namespace) -> int:
    """``send``: sendfile FILE over kernel TX; exit 0 only if every byte went out."""
    try:
        f = open(args.file, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise CLIError(f"cannot open {args.file}: {exc.strerror}") from exc
    try:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise CLIError(f"{args.file} is not a regular file")
        size = st.st_size
        _precheck_require(args)
        k = connect(args, client_context(args))
        sent = 0
        try:
            check_ktls(k, args, "tx")
            started = time.monotonic()
            with Progress(size, "send", not args.json) as bar:
                while sent < size:
                    n = k.sendfile(f, sent, min(_CHUNK, size - sent))
                    sent += n
                    bar.update(n)
            k.shutdown()
            summary = _summary("send", args.address, k, sent, time.monotonic() - started)
            _await_peer_close(k, args.timeout)
        except (Error, OSError, SSL.Error) as exc:
            sent += int(getattr(exc, "bytes_sent", 0) or 0)
            raise CLIError(f"send failed after {sent} of {size} bytes: {_ssl_reason(exc)}") from exc
        finally:
            k.close()
        _emit(summary, args.json, sys.stdout)
        return 0
    finally:
        f.close()


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[IO[bytes]]:
    """stdout, or FILE written under a temporary name and renamed only on success."""
    if path is None or path == "-":
        yield sys.stdout.buffer
        return
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".ossl-ktls-", suffix=".part", dir=directory)
    except OSError as exc:
        raise CLIError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def cmd_recv(args: argparse.Namespace) -> int:
    """``recv``: write what arrives until close_notify; truncation is an error."""
    if args.json and (args.output is None or args.output == "-"):
        raise CLIError("--json needs -o FILE (stdout carries the data)", status=2)
    to_stdout = args.output is None or args.output == "-"
    _precheck_require(args)
    with _output(args.output) as out:
        k = connect(args, client_context(args))
        received = 0
        try:
            check_ktls(k, args, "rx")
            buf = bytearray(_RECV_BUFFER)
            view = memoryview(buf)
            started = time.monotonic()
            with Progress(None, "recv", not args.json) as bar:
                while True:
                    try:
                        n = k.recv_into(view)
                    except TruncatedStream as exc:
                        raise CLIError(
                            f"truncated: the peer closed the connection without close_notify "
                            f"after {received} bytes; the data may be incomplete"
                        ) from exc
                    if n == 0:
                        break
                    try:
                        out.write(view[:n])
                    except BrokenPipeError as exc:
                        raise CLIError("the output was closed before the end") from exc
                    received += n
                    bar.update(n)
            out.flush()
            summary = _summary("recv", args.address, k, received, time.monotonic() - started)
        except (Error, OSError, SSL.Error) as exc:
            if isinstance(exc, TimeoutError):
                raise CLIError(f"receive timed out after {received} bytes") from exc
            raise CLIError(f"receive failed after {received} bytes: {_ssl_reason(exc)}") from exc
        finally:
            k.close()
    _emit(summary, args.json, sys.stderr if to_stdout else sys.stdout)
    return 0


# ---------------------------------------------------------------- serve


def throwaway_certificate(directory: str, hosts: Sequence[str]) -> tuple[str, str]:
    """A one-day self-signed ECDSA P-256 certificate for *hosts*; returns (cert, key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ossl-ktls throwaway")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


def ktls_outlook(
    caps: Capabilities, versions: Sequence[str], ciphers: Sequence[str], rx_without_rekey: bool
) -> tuple[str, str]:
    """What the kernel will carry for the configured versions.

    Returns (tx, rx), each ``on``, ``off`` or the versions that get it (``TLS1.2-only``).
    """

    def state(direction: str) -> str:
        good = []
        for v in versions:
            ok = any(caps.supports(direction, v, c) for c in ciphers)
            if direction == "rx" and v == "1.3" and not caps.rekey and not rx_without_rekey:
                ok = False
            if ok:
                good.append(v)
        if len(good) == len(versions):
            return "on"
        if not good:
            return "off"
        return "TLS" + "+".join(good) + "-only"

    return state("tx"), state("rx")


def cmd_serve(args: argparse.Namespace) -> int:
    """``serve``: a static HTTPS/1.1 file server over kernel TLS."""
    from . import _http

    root = args.root
    if not os.path.isdir(root):
        raise CLIError(f"{root} is not a directory")
    versions = (args.tls,) if args.tls else VERSIONS
    caps = probe()
    tx, rx = ktls_outlook(caps, versions, _suites_for(args.cipher), args.rx_without_rekey)
    if args.require_ktls and tx != "on":
        reason = caps.ulp_error or "the kernel does not take the configured versions/ciphers"
        raise CLIError(f"kernel TLS required, but TX would stay in user space: {reason}")
    if tx != "on" or rx != "on":
        why = caps.ulp_error or "see 'ossl-ktls probe'"
        warn(f"kernel TLS TX {tx}, RX {rx} here ({why}); the rest goes through user space")
    tmpdir = None
    try:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        if args.cert:
            cert, key = args.cert, args.key or args.cert
            throwaway = False
        else:
            if args.key:
                raise CLIError("--key needs --cert", status=2)
            tmpdir = tempfile.mkdtemp(prefix="ossl-ktls-serve-")
            hosts = ["localhost", "127.0.0.1", "::1"]
            if args.host not in ("", "0.0.0.0", "::"):
                hosts.insert(0, args.host)
            cert, key = throwaway_certificate(tmpdir, hosts)
            throwaway = True
        try:
            ctx.use_certificate_chain_file(cert)
            ctx.use_privatekey_file(key)
            ctx.check_privatekey()
        except SSL.Error as exc:
            raise CLIError(
                f"cannot use certificate {cert} / key {key}: {_ssl_reason(exc)}"
            ) from exc
        configure_context(ctx, args.tls, args.cipher)
        try:
            listener = _http.listen(args.host, args.port)
        except OSError as exc:
            raise CLIError(
                f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
            ) from exc
        port = listener.getsockname()[1]
        shown_host = f"[{args.host}]" if ":" in args.host else args.host
        url = f"https://{shown_host}:{port}/"
        log = _http.EventLog(json_mode=args.json, quiet=args.quiet)
        if throwaway and not args.json:
            print(
                f"{PROG}: no --cert given: using a throwaway self-signed certificate "
                f"(trust it with: curl --cacert {cert}); it is deleted when the server stops",
                file=sys.stderr,
                flush=True,
            )
        options = _http.Options(
            root=root,
            require_ktls=args.require_ktls,
            rx_without_rekey=args.rx_without_rekey,
            max_clients=args.max_clients,
            idle_timeout=args.timeout,
            handshake_timeout=min(args.timeout, 30.0),
        )
        server = _http.StaticServer(ctx, listener, options, log)
        stop = threading.Event()

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if args.json:
                log.event(
                    {
                        "event": "ready",
                        "root": root,
                        "url": url,
                        "host": args.host,
                        "port": port,
                        "ktls_tx": tx,
                        "ktls_rx": rx,
                        "cert": cert,
                        "throwaway_cert": throwaway,
                    }
                )
            else:
                print(f"serving {root} on {url} (kTLS tx={tx} rx={rx})", flush=True)
            server.serve(stop)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        totals = server.totals()
        if args.json:
            log.event({"event": "summary", **totals.as_json()})
        else:
            print(totals.line(), flush=True)
        return 0
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


# ---------------------------------------------------------------- stats


def read_tls_stat(path: str = TLS_STAT) -> dict[str, int] | None:
    """The kernel's TLS counters, or None when the file does not exist."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    counters: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            counters[parts[0]] = int(parts[1])
    return counters


def _load_counters() -> dict[str, int]:
    counters = read_tls_stat()
    if counters is None:
        # The counters appear when the tls module is loaded; attaching the ULP loads it.
        caps = probe()
        counters = read_tls_stat()
        if counters is None:
            why = caps.ulp_error or "the tls module exposes no counters"
            raise CLIError(f"no kernel TLS counters ({TLS_STAT} is missing): {why}")
    return counters


def _is_gauge(name: str) -> bool:
    return name.startswith("TlsCurr")


def cmd_stats(args: argparse.Namespace) -> int:
    """``stats``: /proc/net/tls_stat, and with ``--watch`` the rate of each counter."""
    counters = _load_counters()
    kernel = os.uname().release
    if args.watch is None:
        if args.json:
            print(json.dumps({"kernel": kernel, "counters": counters}), flush=True)
        else:
            width = max((len(n) for n in counters), default=10)
            for name, value in counters.items():
                note = "  (open now)" if _is_gauge(name) else ""
                print(f"{name.ljust(width)}  {value}{note}")
            print(f"{len(counters)} counters from {TLS_STAT} (kernel {kernel})", flush=True)
        return 0
    interval = max(0.1, args.watch)
    samples = 0
    started = time.monotonic()
    first = dict(counters)
    previous, then = counters, started
    try:
        while args.count is None or samples < args.count:
            time.sleep(interval)
            current = _load_counters()
            now = time.monotonic()
            dt = now - then
            rates = {
                n: (v - previous.get(n, 0)) / dt for n, v in current.items() if not _is_gauge(n)
            }
            gauges = {n: v for n, v in current.items() if _is_gauge(n)}
            samples += 1
            if args.json:
                print(
                    json.dumps(
                        {"seconds": round(now - started, 3), "gauges": gauges, "rates": rates}
                    ),
                    flush=True,
                )
            else:
                stamp = time.strftime("%H:%M:%S")
                moving = " ".join(f"{n} {r:+.1f}/s" for n, r in rates.items() if r)
                fixed = " ".join(f"{n}={v}" for n, v in gauges.items())
                print(f"{stamp} {fixed} {moving or '(no change)'}", flush=True)
            previous, then = current, now
    except KeyboardInterrupt:
        pass
    elapsed = time.monotonic() - started
    changed = {n: previous[n] - first.get(n, 0) for n in previous if not _is_gauge(n)}
    if args.json:
        print(json.dumps({"seconds": round(elapsed, 3), "changes": changed}), flush=True)
    else:
        moved = ", ".join(f"{n} +{d}" for n, d in changed.items() if d) or "no counter moved"
        print(f"watched {TLS_STAT} for {elapsed:.1f} s ({samples} samples): {moved}", flush=True)
    return 0


# ---------------------------------------------------------------- parser


def _add_tls_options(p: argparse.ArgumentParser, *, client: bool) -> None:
    g = p.add_argument_group("TLS")
    g.add_argument(
        "--tls", choices=VERSIONS, help="use only this TLS version (default: 1.2 or 1.3)"
    )
    g.add_argument(
        "--cipher",
        choices=CIPHERS,
        help="use only this cipher (default: AES-GCM or ChaCha20, as negotiated)",
    )
    if client:
        trust = g.add_mutually_exclusive_group()
        trust.add_argument(
            "--cafile", metavar="F", help="trust these CA certificates instead of the system store"
        )
        trust.add_argument(
            "--insecure",
            action="store_true",
            help="do not verify the server's certificate or name (testing only)",
        )
        g.add_argument(
            "--servername",
            metavar="NAME",
            help="name to send (SNI) and to verify (default: the HOST of HOST:PORT)",
        )
    g.add_argument(
        "--require-ktls",
        action="store_true",
        help="fail instead of falling back to user space when the kernel cannot take over",
    )
    g.add_argument(
        "--rx-without-rekey",
        action="store_true",
        help="TLS 1.3 on kernels before 6.14: put RX in the kernel anyway "
        "(a peer's KeyUpdate then ends the connection)",
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="SEC",
        help="give up when the peer makes no progress for this long (default 30)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of every command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Move TLS connections into Linux kernel TLS (kTLS): probe, send, receive, "
        "serve files, watch the kernel's counters.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("probe", help="what the running kernel's TLS can do (found by trying)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("send", help="send a file to a TLS server (sendfile through kernel TX)")
    p.add_argument("address", metavar="HOST:PORT")
    p.add_argument("file", metavar="FILE")
    _add_tls_options(p, client=True)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("recv", help="receive from a TLS server until close_notify")
    p.add_argument("address", metavar="HOST:PORT")
    p.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    _add_tls_options(p, client=True)
    p.add_argument("--json", action="store_true", help="print the summary as JSON (needs -o)")
    p.set_defaults(func=cmd_recv)

    p = sub.add_parser("serve", help="static HTTPS/1.1 file server over kernel TLS")
    p.add_argument("root", metavar="ROOT", help="the folder to serve")
    p.add_argument("--cert", metavar="C", help="certificate chain (PEM); default: a throwaway one")
    p.add_argument("--key", metavar="K", help="private key (PEM; default: in --cert)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8443, help="port (default 8443; 0 picks a free one)")
    p.add_argument(
        "--max-clients", type=int, default=64, help="connections served at once (default 64)"
    )
    p.add_argument("--quiet", action="store_true", help="no access log on stderr")
    _add_tls_options(p, client=False)
    p.add_argument(
        "--json", action="store_true", help="JSON lines on stdout (ready, requests, summary)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("stats", help="the kernel's TLS counters (/proc/net/tls_stat)")
    p.add_argument(
        "--watch",
        type=float,
        nargs="?",
        const=1.0,
        metavar="SEC",
        help="print the counters' rates every SEC seconds (default 1) until Ctrl-C",
    )
    p.add_argument("--count", type=int, metavar="N", help="with --watch: stop after N samples")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
        return status
    except CLIError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return exc.status
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130
    except BrokenPipeError:
        # stdout went away (e.g. piped into head): nothing more to say, quietly.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
