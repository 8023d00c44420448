"""The TLS commands of the ``ossl-ktls`` command line: ``send``, ``recv`` and ``serve``.

Kept apart from the package's ``__init__`` because they need pyOpenSSL and cryptography, which
take a while to import: ``cli`` imports this module only when one of these commands runs,
so ``probe``, ``stats`` and ``--help`` start without them. The command line's options,
output and exit statuses are described in :mod:`ossl_ktls.cli`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
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
from types import FrameType
from typing import IO

from OpenSSL import SSL
from OpenSSL._util import ffi
from OpenSSL._util import lib as _lib

from .. import _openssl
from .._connection import KTLSConnection, wrap
from .._errors import Error, TruncatedStream, UsageError
from .._linux_tls import Capabilities, probe
from .._policy import Handshake, Request, plan
from .._suites import SUITES, openssl_tls12_names, openssl_tls13_name
from ._output import DEFAULT_CIPHERS, PROG, VERSIONS, CLIError, Progress, Summary, _emit, warn

_CHUNK = 8 << 20  # sendfile per call: bounds each call's time so --timeout means "no progress"
_OPENSSL_VERSION = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}


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


def load_certificate(ctx: SSL.Context, cert: str, key: str) -> None:
    """The server's certificate chain and key (PEM files), checked to match."""
    try:
        ctx.use_certificate_chain_file(cert)
        ctx.use_privatekey_file(key)
        ctx.check_privatekey()
    except SSL.Error as exc:
        raise CLIError(f"cannot use certificate {cert} / key {key}: {_ssl_reason(exc)}") from exc


def server_context(cert: str, key: str | None) -> SSL.Context:
    """A server Context with *cert* and *key* (default: in *cert*), not yet configured."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    load_certificate(ctx, cert, key or cert)
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
            started = time.monotonic()
            with Progress(None, "recv", not args.json) as bar:
                # recvfile: spliced from kernel RX into the output (kernel to kernel), in
                # steps of _CHUNK for the progress bar; a short step is the close_notify.
                while True:
                    try:
                        n = k.recvfile(out, _CHUNK)
                    except TruncatedStream as exc:
                        received += exc.bytes_received or 0
                        raise CLIError(
                            f"truncated: the peer closed the connection without close_notify "
                            f"after {received} bytes; the data may be incomplete"
                        ) from exc
                    received += n
                    bar.update(n)
                    if n < _CHUNK:
                        break
            out.flush()
            summary = _summary("recv", args.address, k, received, time.monotonic() - started)
        except (Error, OSError, SSL.Error) as exc:
            received += int(getattr(exc, "bytes_received", 0) or 0)
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
    """What the kernel will carry for the configured versions, by the library's own
    placement plan (``_policy.plan``) for a handshake of each version and cipher.

    Returns (tx, rx), each ``on``, ``off`` or the versions that get it (``TLS1.2-only``).
    """
    request = Request(rx_without_rekey=rx_without_rekey)

    def placed(direction: str, version: str, cipher: str) -> bool:
        handshake = Handshake(
            version=version, version_name=f"TLSv{version}", cipher_name=cipher, suite=SUITES[cipher]
        )
        chosen = plan(handshake, caps, request)
        return chosen.tx if direction == "tx" else chosen.rx

    def state(direction: str) -> str:
        good = []
        for v in versions:
            if any(placed(direction, v, c) for c in ciphers):
                good.append(v)
        if len(good) == len(versions):
            return "on"
        if not good:
            return "off"
        return "TLS" + "+".join(good) + "-only"

    return state("tx"), state("rx")


def cmd_serve(args: argparse.Namespace) -> int:
    """``serve``: a static HTTPS/1.1 file server over kernel TLS."""
    try:
        from . import _http
    except ModuleNotFoundError as exc:
        if exc.name != "h11":
            raise
        # h11 (HTTP/1.1) comes with the cli extra, like tqdm; serve cannot run without it.
        raise CLIError(
            "serve needs h11, which is not installed: pip install 'ossl-ktls[cli]'"
        ) from exc

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
        load_certificate(ctx, cert, key)
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
