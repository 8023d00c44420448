"""What ossl_ktls needs from OpenSSL, reached through pyOpenSSL's cffi binding.

``prepare(ctx)`` installs two Context-level callbacks before any Connection exists:

* a keylog callback that keeps the TLS 1.3 application traffic secrets of each
  Connection (in mutable buffers, wiped once installed) and then hands every line to
  the user's own keylog callback, whether it was set before or after ``prepare()``;
* a message callback that feeds every record header and handshake message into a
  :class:`~ossl_ktls._observer.RecordObserver`, which yields exact sequence numbers.

It also sets ``SSL_OP_NO_RENEGOTIATION``: kernel TLS cannot follow a TLS 1.2
renegotiation, so the Context refuses it from the start.

The per-Connection state lives on the pyOpenSSL Connection object itself (found from
the ``SSL *`` through pyOpenSSL's own reverse mapping), so it dies with it.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from OpenSSL import SSL
from OpenSSL._util import ffi, lib

from . import _records
from ._errors import (
    Error,
    ProtocolError,
    TruncatedStream,
    UsageError,
    from_alerts,
    from_errno,
)
from ._observer import RecordObserver

_STATE_ATTR = "_ossl_ktls_state"
_PREPARED_ATTR = "_ossl_ktls_prepared"

_HANDSHAKE = _records.CONTENT_HANDSHAKE
# The messages copied whole for the observer (their extensions decide record sizes).
_HELLOS = tuple(
    bytes([t])
    for t in (_records.CLIENT_HELLO, _records.SERVER_HELLO, _records.ENCRYPTED_EXTENSIONS)
)

_SECRET_LABELS = {b"CLIENT_TRAFFIC_SECRET_0": "client", b"SERVER_TRAFFIC_SECRET_0": "server"}
_SECRET_LABEL_LEN = 23  # both labels

KeylogCallback = Callable[[SSL.Connection, bytes], None]

#: pyOpenSSL's own Connection class, whatever ``OpenSSL.SSL.Connection`` names later
#: (``ossl_ktls.patch()`` puts ``ossl_ktls.Connection`` there). The engine calls its
#: methods directly, never a subclass's overrides.
BaseConnection: type[SSL.Connection] = getattr(
    SSL.Connection, "_ossl_ktls_original", SSL.Connection
)


@dataclass
class ConnState:
    """What the callbacks learned about one Connection."""

    observer: RecordObserver = field(default_factory=RecordObserver)
    secrets: dict[str, bytearray] = field(default_factory=dict)

    def wipe(self) -> None:
        """Zero and forget the captured secrets."""
        for buf in self.secrets.values():
            buf[:] = bytes(len(buf))
        self.secrets.clear()

    def __repr__(self) -> str:
        return f"ConnState(observer={self.observer!r}, secrets=<{len(self.secrets)} hidden>)"


#: pyOpenSSL's ``SSL *`` -> Connection mapping (a WeakValueDictionary, made once).
_connection_by_ssl: Callable[[Any], SSL.Connection | None] = cast(
    Any, BaseConnection
)._reverse_mapping.get


def state_of(conn: SSL.Connection) -> ConnState:
    """The state the callbacks keep for *conn* (created on first use)."""
    st: ConnState | None = vars(conn).get(_STATE_ATTR)
    if st is None:
        st = ConnState()
        setattr(conn, _STATE_ATTR, st)
    return st


def _on_message(
    write_p: int, version: int, content_type: int, buf: Any, length: int, ssl: Any, _arg: Any
) -> None:
    # Called some twenty times per handshake, inside OpenSSL: as little work as possible.
    conn = _connection_by_ssl(ssl)
    if conn is None:
        return
    st: ConnState | None = vars(conn).get(_STATE_ATTR)
    if st is None:
        st = state_of(conn)
    if not length:
        data = b""
    elif content_type == _HANDSHAKE and length > 8 and ffi.buffer(buf, 1)[:] in _HELLOS:
        # The hellos whole: their record-size extensions decide how large records may be.
        data = ffi.buffer(buf, length)[:]
    else:
        # Only the first bytes matter: a header's type and length, a message's type and a
        # KeyUpdate's flag.
        data = ffi.buffer(buf, length if length < 8 else 8)[:]
    st.observer.event(write_p != 0, version, content_type, data, length)


_msg_callback: Any = ffi.callback(
    "void (*)(int, int, int, const void *, size_t, SSL *, void *)", _on_message
)


class _Keylog:
    """The keylog callback of one prepared Context, chaining to the user's."""

    def __init__(self, ctx: SSL.Context) -> None:
        previous = lib.SSL_CTX_get_keylog_callback(ctx._context)
        self.previous_c: Any = previous if previous != ffi.NULL else None
        self.previous_ref: Any = getattr(ctx, "_keylog_callback", None)  # keep it alive
        self.user: KeylogCallback | None = None
        self.c_callback = ffi.callback("void (*)(const SSL *, const char *)", self._called)

    def _called(self, ssl: Any, line_p: Any) -> None:
        line = ffi.string(line_p)
        side = _SECRET_LABELS.get(line[:_SECRET_LABEL_LEN])
        if side is None and self.user is None:
            if self.previous_c is not None:
                self.previous_c(ssl, line_p)
            return
        conn = _connection_by_ssl(ssl)
        if (
            side is not None
            and conn is not None
            and line[_SECRET_LABEL_LEN : _SECRET_LABEL_LEN + 1] == b" "
        ):
            secret_hex = line.rpartition(b" ")[2]
            with contextlib.suppress(ValueError):
                state_of(conn).secrets[side] = bytearray(bytes.fromhex(secret_hex.decode()))
        if self.user is not None:
            if conn is not None:
                self.user(conn, line)
        elif self.previous_c is not None:
            self.previous_c(ssl, line_p)


def prepare(ctx: SSL.Context) -> SSL.Context:
    """Make *ctx* ready for :func:`ossl_ktls.wrap`; returns *ctx*. Idempotent.

    Must be called before the first Connection is made from *ctx* (OpenSSL copies a
    Context's callbacks into each Connection when it is created).

    Installs key capture (a keylog callback chained with any the user set, before or
    after this call: theirs keeps receiving every line), record observation for exact
    sequence numbers, and refuses renegotiation (``SSL_OP_NO_RENEGOTIATION``): kernel
    TLS cannot follow a TLS 1.2 renegotiation, so a peer asking for one gets a
    no_renegotiation warning alert and the connection goes on.

    Raises:
        UsageError: *ctx* is not a pyOpenSSL Context, or Connections were already made
            from it.
    """
    if not isinstance(ctx, SSL.Context):
        raise UsageError(f"prepare() takes an OpenSSL.SSL.Context, not {type(ctx).__name__}")
    if getattr(ctx, _PREPARED_ATTR, False):
        return ctx
    if getattr(ctx, "_used", False):
        raise UsageError(
            "prepare() must be called before the first Connection is made from this Context"
        )
    keylog = _Keylog(ctx)
    raw_ctx = ctx._context
    lib.SSL_CTX_set_keylog_callback(raw_ctx, keylog.c_callback)
    lib.SSL_CTX_set_msg_callback(raw_ctx, _msg_callback)
    lib.SSL_CTX_set_options(raw_ctx, lib.SSL_OP_NO_RENEGOTIATION)

    def set_keylog_callback(callback: KeylogCallback) -> None:
        """pyOpenSSL's ``set_keylog_callback``, kept working after ``prepare()``."""
        if getattr(ctx, "_used", False):
            raise ValueError(
                "Context has already been used to create a Connection, it cannot be mutated again"
            )
        keylog.user = callback

    # Connections must keep the callbacks alive: hang them on the Context.
    ctx._ossl_ktls_keylog = keylog  # type: ignore[attr-defined]
    cast(Any, ctx).set_keylog_callback = set_keylog_callback
    setattr(ctx, _PREPARED_ATTR, True)
    return ctx


def is_prepared(ctx: SSL.Context) -> bool:
    """Whether ``prepare()`` ran on *ctx*."""
    return bool(getattr(ctx, _PREPARED_ATTR, False))


def raw_ssl(conn: SSL.Connection) -> Any:
    """The ``SSL *`` of a pyOpenSSL Connection."""
    return conn._ssl


def detach_from_socket(conn: SSL.Connection) -> None:
    """Give OpenSSL memory BIOs instead of the socket.

    From then on OpenSSL can never write to (or read from) the socket on its own:
    ciphertext is fed in with ``conn.bio_write`` and anything it tries to send lands
    in ``conn.bio_read``, where the caller detects it. The old socket BIO was created
    with BIO_NOCLOSE, so freeing it leaves the file descriptor open.
    """
    rbio = lib.BIO_new(lib.BIO_s_mem())
    wbio = lib.BIO_new(lib.BIO_s_mem())
    if rbio == ffi.NULL or wbio == ffi.NULL:
        raise MemoryError("BIO_new failed")
    lib.SSL_set_bio(raw_ssl(conn), rbio, wbio)
    cast(Any, conn)._into_ssl = rbio
    cast(Any, conn)._from_ssl = wbio


def pending_output(conn: SSL.Connection) -> bytes:
    """Bytes OpenSSL wrote into its (memory) write BIO since the last call."""
    out = b""
    while True:
        try:
            chunk = conn.bio_read(65536)
        except SSL.WantReadError:
            return out
        if not chunk:
            return out
        out += chunk


def session_reused(conn: SSL.Connection) -> bool:
    """Whether the handshake resumed a session (``SSL_session_reused``)."""
    return bool(lib.SSL_session_reused(raw_ssl(conn)))


def total_renegotiations(conn: SSL.Connection) -> int:
    """How many renegotiations OpenSSL performed on *conn*."""
    return int(lib.SSL_total_renegotiations(raw_ssl(conn)))


def set_peer_name(conn: SSL.Connection, name: str, verify: bool) -> None:
    """SNI (for DNS names) and, when verifying, the name the certificate must carry.

    pyOpenSSL checks only the chain; the name check is OpenSSL's own
    (``X509_VERIFY_PARAM_set1_host`` / ``set1_ip`` on the Connection's parameters), done
    during the handshake, so a wrong name fails the handshake like a bad chain does.
    Partial wildcards (``f*.example``) are refused.

    Raises:
        UsageError: *name* is not a valid DNS name or IP address.
    """
    try:
        ip: bytes | None = ipaddress.ip_address(name).packed
    except ValueError:
        ip = None
    ascii_name = b""
    if ip is None:
        try:
            ascii_name = name.encode("idna")
        except UnicodeError as exc:
            raise UsageError(f"invalid server name {name!r}") from exc
        conn.set_tlsext_host_name(ascii_name)
    if not verify:
        return
    param = lib.SSL_get0_param(raw_ssl(conn))
    lib.X509_VERIFY_PARAM_set_hostflags(param, lib.X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS)
    if ip is not None:
        ok = lib.X509_VERIFY_PARAM_set1_ip(param, ip, len(ip))
    else:
        ok = lib.X509_VERIFY_PARAM_set1_host(param, ascii_name, len(ascii_name))
    if ok != 1:
        raise UsageError(f"cannot set the expected server name {name!r}")


def map_error(
    exc: SSL.Error, operation: str, observer: RecordObserver, marks: tuple[int, int]
) -> Error:
    """Map a pyOpenSSL error of the user-space path to the library's hierarchy.

    From codes: the errno of a system call error, else the alerts the record observer
    saw cross during the failed call (*marks*: the lengths of its ``alerts_read`` and
    ``alerts_written`` before it). Only OpenSSL's "unexpected eof" (a TCP end without
    close_notify, which moves no alert) is recognised by its reason text, which
    pyOpenSSL hands over without the code. The result's ``__cause__`` is a copy of *exc*
    (a façade with pyOpenSSL's exceptions raises OpenSSL's own words again).
    """
    mapped = _map_error(exc, operation, observer, marks)
    # A copy without the traceback: the mapped error may be kept (a receive path holds it
    # until buffered data is read), and the traceback's frames would keep the caller's
    # buffer exported.
    mapped.__cause__ = type(exc)(*exc.args)
    return mapped


def _map_error(
    exc: SSL.Error, operation: str, observer: RecordObserver, marks: tuple[int, int]
) -> Error:
    if isinstance(exc, SSL.SysCallError):
        code = exc.args[0] if exc.args else -1
        if code in (-1, 0):
            return TruncatedStream(f"{operation}: the peer closed TCP without close_notify")
        return from_errno(int(code), operation)
    reasons = [str(r[2]) for r in (exc.args[0] if exc.args else []) if len(r) >= 3]
    text = "; ".join(reasons) or str(exc)
    mapped = from_alerts(
        operation, observer.alerts_read[marks[0] :], observer.alerts_written[marks[1] :], text
    )
    if mapped is not None:
        return mapped
    if "unexpected eof" in text.lower():
        return TruncatedStream(f"{operation}: the peer closed TCP without close_notify")
    return ProtocolError(f"{operation}: {text}")
