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
"""

from ._connection import KTLSConnection, wrap
from ._errors import (
    BadRecordMAC,
    ConnectionClosed,
    DecodeError,
    Error,
    KernelError,
    KeyUpdateUnsupported,
    KTLSUnavailable,
    NotPrepared,
    ProtocolError,
    RecordOverflow,
    TLSAlertError,
    TruncatedStream,
    UnexpectedMessage,
    UsageError,
)
from ._linux_tls import Capabilities, probe
from ._openssl import prepare

__version__ = "0.1.0"

__all__ = [
    "BadRecordMAC",
    "Capabilities",
    "ConnectionClosed",
    "DecodeError",
    "Error",
    "KTLSConnection",
    "KTLSUnavailable",
    "KernelError",
    "KeyUpdateUnsupported",
    "NotPrepared",
    "ProtocolError",
    "RecordOverflow",
    "TLSAlertError",
    "TruncatedStream",
    "UnexpectedMessage",
    "UsageError",
    "prepare",
    "probe",
    "wrap",
]
