"""ossl_ktls: move the TLS record layer of pyOpenSSL connections into the Linux kernel.

OpenSSL does the handshake; :func:`wrap` then installs the traffic keys and sequence
numbers on the socket (kernel TLS) so that data, files (zero-copy ``sendfile``) and
control records go through the kernel. Where the kernel cannot take over, the same
API keeps working in user space and says why (``fallback_reason``).

Typical use::

    ctx = OpenSSL.SSL.Context(OpenSSL.SSL.TLS_METHOD)
    ossl_ktls.prepare(ctx)          # before any Connection is made from ctx
    conn = OpenSSL.SSL.Connection(ctx, sock)
    conn.set_connect_state()
    k = ossl_ktls.wrap(conn)        # finishes the handshake, hands over
    k.sendfile(open("big.iso", "rb"))
    k.shutdown(); k.close()

``probe``, ``Capabilities`` and the exception classes need only the standard library;
``wrap``, ``KTLSConnection`` and ``prepare`` (which need pyOpenSSL and cryptography) are
imported on first use, so ``import ossl_ktls`` and ``ossl-ktls probe`` start quickly.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    BadRecordMAC,
    ConnectionClosed,
    DecodeError,
    Error,
    KernelError,
    KeyUpdateUnsupported,
    KTLSUnavailable,
    LocalIOError,
    NotPrepared,
    ProtocolError,
    RecordOverflow,
    TLSAlertError,
    TruncatedStream,
    UnexpectedMessage,
    UsageError,
)
from ._linux_tls import Capabilities, probe

if TYPE_CHECKING:
    from ._connection import KTLSConnection, wrap
    from ._openssl import prepare
    from ._pyopenssl import Connection, patch, patched, unpatch

__version__ = "0.1.0"

__all__ = [
    "BadRecordMAC",
    "Capabilities",
    "Connection",
    "ConnectionClosed",
    "DecodeError",
    "Error",
    "KTLSConnection",
    "KTLSUnavailable",
    "KernelError",
    "KeyUpdateUnsupported",
    "LocalIOError",
    "NotPrepared",
    "ProtocolError",
    "RecordOverflow",
    "TLSAlertError",
    "TruncatedStream",
    "UnexpectedMessage",
    "UsageError",
    "patch",
    "patched",
    "prepare",
    "probe",
    "unpatch",
    "wrap",
]

# Public names imported on first access (PEP 562): the modules behind them load OpenSSL.
# Hidden from type checkers, which see the real names through the TYPE_CHECKING imports
# above (a visible module __getattr__ would make every misspelt attribute type-check).
_LAZY = {
    "Connection": "._pyopenssl",
    "KTLSConnection": "._connection",
    "wrap": "._connection",
    "prepare": "._openssl",
    "patch": "._pyopenssl",
    "patched": "._pyopenssl",
    "unpatch": "._pyopenssl",
}

if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, __name__), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(globals()) | set(_LAZY))
