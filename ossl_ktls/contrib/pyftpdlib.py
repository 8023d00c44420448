"""FTPS over kernel TLS for pyftpdlib: use :class:`KTLS_FTPHandler` where you would use
pyftpdlib's ``TLS_FTPHandler``::

    from pyftpdlib.servers import FTPServer
    from ossl_ktls.contrib.pyftpdlib import KTLS_FTPHandler

    KTLS_FTPHandler.certfile = "keycert.pem"
    FTPServer(("0.0.0.0", 2121), KTLS_FTPHandler).serve_forever()

Control and data connections are :class:`ossl_ktls.Connection` objects (pyOpenSSL's
semantics, which pyftpdlib's TLS mixin relies on), so their records go through the
kernel once the handshake is done. pyftpdlib turns ``sendfile`` off for TLS data
connections, because with user-space TLS the bytes must pass through OpenSSL; with TX in
the kernel, :class:`KTLS_DTPHandler` turns it back on, under pyftpdlib's own rules for
plain connections (binary transfers of real files), and pyftpdlib's own
``os.sendfile`` loop then sends file pages that the kernel encrypts. A transfer asked for
before the data connection's handshake completed (ftplib sends RETR first) starts when it
completes, so that the choice is made knowing where TX went. Where TX stayed in
user space, everything is as in pyftpdlib.

Needs pyftpdlib (2.2 or later), not installed with ossl_ktls.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from pyftpdlib.handlers import DTPHandler, TLS_DTPHandler, TLS_FTPHandler

from .._openssl import prepare
from .._pyopenssl import Connection

__all__ = ["KTLS_DTPHandler", "KTLS_FTPHandler"]


class _KernelConnections:
    """Make the connection secured by pyftpdlib's TLS mixin an ossl_ktls.Connection."""

    socket: Any

    def secure_connection(self, ssl_context: SSL.Context) -> None:
        plain = self.socket
        super().secure_connection(ssl_context)  # type: ignore[misc]
        made = self.socket
        if isinstance(made, SSL.Connection) and not isinstance(made, Connection):
            # pyftpdlib made pyOpenSSL's Connection; nothing happened on it yet (not even
            # the handshake): make ours over the same socket instead.
            ours = Connection(ssl_context, plain)
            ours.set_accept_state()
            self.socket = ours


class KTLS_DTPHandler(_KernelConnections, TLS_DTPHandler):  # type: ignore[misc]
    """pyftpdlib's TLS data channel, with ``sendfile`` where kernel TLS carries TX."""

    _deferred: Any = None

    def push_with_producer(self, producer: Any) -> None:
        if (
            isinstance(self.socket, Connection)
            and self._ssl_requested
            and not self._ssl_established
        ):
            # A client may send RETR before the data connection's handshake (ftplib
            # does): whether sendfile can be used is known only once the handshake is
            # done, so the transfer starts then (the handshake goes on meanwhile).
            self._deferred = producer
            return
        super().push_with_producer(producer)

    def handle_ssl_established(self) -> None:
        super().handle_ssl_established()
        producer, self._deferred = self._deferred, None
        if producer is not None:
            # What was queued meanwhile (the close-when-done marker) goes after the file.
            queued = list(self.producer_fifo)
            self.producer_fifo.clear()
            self.push_with_producer(producer)
            self.producer_fifo.extend(queued)

    def use_sendfile(self) -> bool:
        sock = self.socket
        if isinstance(sock, Connection) and sock.ktls_tx:
            return bool(DTPHandler.use_sendfile(self))  # the plain-socket rules
        return bool(super().use_sendfile())

    def initiate_sendfile(self) -> None:
        before = self.tot_bytes_sent
        super().initiate_sendfile()
        sent = self.tot_bytes_sent - before
        if sent > 0:
            # os.sendfile went around the Connection: count its records for the automatic
            # TLS 1.3 KeyUpdate (an upper bound, as for our own sendfile).
            self.socket.note_records_sent(-(-sent // self.socket.tx_record_limit))


class KTLS_FTPHandler(_KernelConnections, TLS_FTPHandler):  # type: ignore[misc]
    """pyftpdlib's FTPS control channel over kernel TLS; data channels are
    :class:`KTLS_DTPHandler`."""

    dtp_handler = KTLS_DTPHandler

    @classmethod
    def get_ssl_context(cls) -> SSL.Context:
        ctx: SSL.Context = super().get_ssl_context()
        if not getattr(ctx, "_used", False):
            prepare(ctx)  # before its first Connection (afterwards it stays user space)
        return ctx
