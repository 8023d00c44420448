"""What the orchestrator and the workers share: suites, certificates, contexts, accounting.

CPU accounting is the same for every measured process, ours or OpenSSL's: the kernel's
own figures in ``/proc/<pid>/stat`` (user and system clock ticks) and, for
single-threaded processes, ``/proc/<pid>/schedstat`` (run time in nanoseconds). The
precise run time gives the total; the tick counts give its user/system split (which is
exactly how the kernel itself splits ``getrusage`` figures). Multi-threaded processes
(the ``serve`` server) use the tick counts alone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

from OpenSSL import SSL

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
HOST = "127.0.0.1"
#: Seconds any single blocking socket operation may take (TCG is 10-30x slower).
IO_TIMEOUT = float(os.environ.get("OSSL_KTLS_BENCH_IO_TIMEOUT", "300"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
SOL_TLS = 282
TLS_TX = 1
TLS_RX = 2
#: SSL_OP_ENABLE_KTLS of OpenSSL 3.x (Python 3.12+ names it ``ssl.OP_ENABLE_KTLS``).
SSL_OP_ENABLE_KTLS = 1 << 3


@dataclass(frozen=True)
class Suite:
    """One TLS version + cipher configuration of the benchmark."""

    key: str
    label: str
    version: str
    openssl_name: str  # TLS 1.3: IANA suite name; TLS 1.2: OpenSSL cipher string (ECDSA)
    kernel_cipher: str

    @property
    def pyopenssl_version(self) -> int:
        return SSL.TLS1_3_VERSION if self.version == "1.3" else SSL.TLS1_2_VERSION

    @property
    def stdlib_version(self) -> ssl.TLSVersion:
        return ssl.TLSVersion.TLSv1_3 if self.version == "1.3" else ssl.TLSVersion.TLSv1_2


SUITES: dict[str, Suite] = {
    s.key: s
    for s in (
        Suite(
            "tls13-aes128gcm", "TLS 1.3 AES-128-GCM", "1.3", "TLS_AES_128_GCM_SHA256", "aes-128-gcm"
        ),
        Suite(
            "tls12-aes256gcm",
            "TLS 1.2 AES-256-GCM",
            "1.2",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "aes-256-gcm",
        ),
    )
}


@dataclass(frozen=True)
class Certs:
    """A self-signed ECDSA P-256 certificate for localhost/127.0.0.1 and its key."""

    cert: str
    key: str


def make_certs(directory: Path) -> Certs:
    """A throwaway ECDSA P-256 certificate and key (PEM) in *directory*: the one ``serve``
    makes for itself, for localhost and the loopback address."""
    from ossl_ktls.cli._tls import throwaway_certificate

    return Certs(*throwaway_certificate(str(directory), ["localhost", HOST]))


def pyopenssl_context(suite: Suite, *, server: bool, certs: Certs, prepared: bool) -> SSL.Context:
    """A pyOpenSSL Context offering exactly *suite*; ``prepared``: ``ossl_ktls.prepare()``."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD if server else SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(suite.pyopenssl_version)
    ctx.set_max_proto_version(suite.pyopenssl_version)
    if suite.version == "1.3":
        ctx.set_tls13_ciphersuites(suite.openssl_name.encode())
    else:
        ctx.set_cipher_list(suite.openssl_name.encode())
    ctx.set_options(SSL.OP_NO_COMPRESSION)
    if server:
        ctx.use_certificate_chain_file(certs.cert)
        ctx.use_privatekey_file(certs.key)
    else:
        ctx.set_verify(SSL.VERIFY_NONE)
    if prepared:
        import ossl_ktls

        ossl_ktls.prepare(ctx)
    return ctx


def stdlib_context(suite: Suite, *, server: bool, certs: Certs, ktls_bit: bool) -> ssl.SSLContext:
    """A stdlib ``ssl`` context for *suite*'s version.

    Python 3.11's ``ssl`` cannot choose TLS 1.3 suites: the suite is pinned by the peer
    (every peer of a stdlib endpoint here is pyOpenSSL or OpenSSL, configured to offer
    only *suite*). ``ktls_bit`` sets OpenSSL's SSL_OP_ENABLE_KTLS by its number.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = suite.stdlib_version
    ctx.maximum_version = suite.stdlib_version
    if suite.version == "1.2":
        ctx.set_ciphers(suite.openssl_name)
    if server:
        ctx.load_cert_chain(certs.cert, certs.key)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if ktls_bit:
        ctx.options |= SSL_OP_ENABLE_KTLS
    return ctx


def openssl_suite_args(suite: Suite) -> list[str]:
    """``openssl s_server``/``s_client`` options offering exactly *suite*."""
    if suite.version == "1.3":
        return ["-tls1_3", "-ciphersuites", suite.openssl_name]
    return ["-tls1_2", "-cipher", suite.openssl_name]


def write_ktls_conf(path: Path) -> Path:
    """An OPENSSL_CONF turning OpenSSL's own kernel TLS on (``Options = KTLS``)."""
    path.write_text(
        "openssl_conf = openssl_init\n\n"
        "[openssl_init]\nssl_conf = ssl_module\n\n"
        "[ssl_module]\nsystem_default = ssl_defaults\n\n"
        "[ssl_defaults]\nOptions = KTLS\n",
        encoding="ascii",
    )
    return path


# --------------------------------------------------------------------------- accounting


@dataclass(frozen=True)
class CpuReading:
    """One reading of a process's CPU counters."""

    user_ticks: int
    sys_ticks: int
    runtime_ns: int | None  # schedstat of the main thread; None when not used

    def __sub__(self, other: CpuReading) -> CpuDelta:
        du = self.user_ticks - other.user_ticks
        ds = self.sys_ticks - other.sys_ticks
        ticks_total = (du + ds) / CLK_TCK
        if self.runtime_ns is not None and other.runtime_ns is not None:
            total = (self.runtime_ns - other.runtime_ns) / 1e9
        else:
            total = ticks_total
        share = du / (du + ds) if du + ds > 0 else None
        return CpuDelta(total=total, user_share=share, user_ticks=du, sys_ticks=ds)


@dataclass(frozen=True)
class CpuDelta:
    """CPU seconds used between two readings and the user-space share of them.

    ``user_share`` is None when no tick fell into the interval (too short to split).
    """

    total: float
    user_share: float | None
    user_ticks: int
    sys_ticks: int

    @property
    def user(self) -> float | None:
        return None if self.user_share is None else self.total * self.user_share

    @property
    def sys(self) -> float | None:
        return None if self.user_share is None else self.total * (1.0 - self.user_share)

    def as_json(self) -> dict[str, float | int | None]:
        return {
            "cpu_s": self.total,
            "user_s": self.user,
            "sys_s": self.sys,
            "user_share": self.user_share,
            "user_ticks": self.user_ticks,
            "sys_ticks": self.sys_ticks,
        }


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        text = f.read()
    return text[text.rindex(")") + 2 :].split()


def proc_cpu(pid: int, *, threaded: bool = False) -> CpuReading:
    """Read *pid*'s CPU counters (``threaded``: ticks only, all threads)."""
    fields = _stat_fields(pid)
    # After "(comm) ": state is field 3 of the man page, utime 14, stime 15.
    utime, stime = int(fields[11]), int(fields[12])
    runtime: int | None = None
    if not threaded:
        try:
            with open(f"/proc/{pid}/schedstat", encoding="ascii") as f:
                runtime = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            runtime = None
    return CpuReading(utime, stime, runtime)


def proc_state(pid: int) -> str:
    """The one-letter scheduler state of *pid* (R, S, D, Z, ...)."""
    return _stat_fields(pid)[0]


def _states(pid: int, threads: bool) -> list[str]:
    if not threads:
        return [proc_state(pid)]
    states = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii") as f:
                text = f.read()
            states.append(text[text.rindex(")") + 2])
    return states


def wait_idle(pid: int, timeout: float = 5.0, *, threads: bool = False) -> bool:
    """Wait until *pid* (``threads``: each of its threads) sleeps in two readings in a
    row: it finished what it was doing."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        try:
            states = _states(pid, threads)
        except OSError:
            return False
        seen = seen + 1 if all(s in "SI" for s in states) else 0
        if seen >= 2:
            return True
        time.sleep(0.002)
    return False


def proc_wchar(pid: int) -> int:
    """Bytes *pid* has written with write() and friends (``/proc/<pid>/io`` wchar)."""
    with open(f"/proc/{pid}/io", encoding="ascii") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise OSError(f"no wchar in /proc/{pid}/io")


def kernel_tls_on(sock: socket.socket, direction: int) -> bool:
    """Whether kernel TLS carries *direction* (TLS_TX/TLS_RX) on *sock* (getsockopt)."""
    # optlen must be the exact size of the cipher's struct: 40 (AES-128-GCM) or 56 bytes
    # (AES-256-GCM, ChaCha20-Poly1305).
    for size in (40, 56):
        try:
            sock.getsockopt(SOL_TLS, direction, size)
        except OSError:
            continue
        return True
    return False


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


# --------------------------------------------------------------------------- what is measured


@dataclass(frozen=True)
class Variant:
    """One way of doing a part's job; ``label`` is what the report prints."""

    key: str
    part: str
    label: str
    note: str = ""


VARIANTS: dict[str, Variant] = {
    v.key: v
    for v in (
        # bulk, sender measured
        Variant("ktls_sendfile", "tx", "ossl_ktls sendfile", "kernel TX, os.sendfile"),
        Variant("ktls_sendall", "tx", "ossl_ktls sendall", "kernel TX, send() of a buffer"),
        Variant(
            "pyopenssl_sendall",
            "tx",
            "pyOpenSSL sendall",
            "user space (OpenSSL 4 via cryptography)",
        ),
        Variant("stdlib_sendall", "tx", "stdlib ssl sendall", "user space (system OpenSSL)"),
        Variant(
            "stdlib_sendfile",
            "tx",
            "stdlib ssl sendfile",
            "Python 3.11: a send() loop of 8 KiB reads",
        ),
        Variant(
            "stdlib_ktls_sendall",
            "tx",
            "stdlib ssl sendall + KTLS bit",
            "ctx.options |= SSL_OP_ENABLE_KTLS (0x8): the system OpenSSL's own kernel TX",
        ),
        Variant(
            "openssl_c_ktls",
            "tx",
            "OpenSSL C kTLS sendfile",
            "openssl s_server -WWW -sendfile, Options = KTLS",
        ),
        Variant("openssl_c_user", "tx", "OpenSSL C user space", "openssl s_server -WWW, no kTLS"),
        Variant("tcp_sendfile", "tx", "plain TCP sendfile", "no TLS: the ceiling"),
        # bulk, receiver measured
        Variant("ktls_recv", "rx", "ossl_ktls recv_into", "kernel RX"),
        Variant("pyopenssl_recv", "rx", "pyOpenSSL recv_into", "user space"),
        Variant("stdlib_recv", "rx", "stdlib ssl recv_into", "user space"),
        Variant(
            "stdlib_ktls_recv",
            "rx",
            "stdlib ssl recv_into + KTLS bit",
            "system OpenSSL's own kernel RX (OpenSSL 3.0: TLS 1.2 only)",
        ),
        Variant(
            "openssl_c_recv",
            "rx",
            "OpenSSL C s_client",
            "Options = KTLS: kernel RX for TLS 1.2 (OpenSSL 3.0 has no TLS 1.3 kTLS RX)",
        ),
        Variant("tcp_recv", "rx", "plain TCP recv_into", "no TLS: the ceiling"),
        # 1 KiB request/response, and connections
        Variant("rr_ktls", "rr", "ossl_ktls", "both ends wrapped (kernel TX and RX)"),
        Variant("rr_pyopenssl", "rr", "pyOpenSSL", "both ends user space"),
        Variant("rr_stdlib", "rr", "stdlib ssl", "client stdlib, server pyOpenSSL"),
        Variant("rr_tcp", "rr", "plain TCP", "no TLS"),
        Variant("conn_ktls", "conn", "ossl_ktls", "handshake + wrap() on both ends"),
        Variant("conn_pyopenssl", "conn", "pyOpenSSL", "handshake only, no prepare()"),
        Variant("conn_stdlib", "conn", "stdlib ssl client", "server pyOpenSSL"),
        Variant(
            "conn_stdlib_ktls",
            "conn",
            "stdlib ssl client + KTLS bit",
            "OpenSSL's own kernel set-up, in C (server pyOpenSSL)",
        ),
        Variant("conn_srv_stdlib", "conn", "stdlib ssl server", "client pyOpenSSL"),
        Variant(
            "conn_srv_stdlib_ktls",
            "conn",
            "stdlib ssl server + KTLS bit",
            "OpenSSL's own kernel set-up, in C (client pyOpenSSL)",
        ),
        Variant("conn_tcp", "conn", "plain TCP", "connect only"),
        Variant(
            "conn_ktls_resumed",
            "conn",
            "ossl_ktls, resumed",
            "the client offers the previous connection's session",
        ),
        Variant(
            "conn_pyopenssl_resumed",
            "conn",
            "pyOpenSSL, resumed",
            "the client offers the previous connection's session",
        ),
        Variant(
            "serve", "conc", "ossl_ktls serve", "python -m ossl_ktls serve, N downloads at once"
        ),
    )
}
