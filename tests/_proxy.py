"""A loopback TCP proxy that can damage the server-to-client byte stream on request.

Faults are armed after the handshake (``arm``) and count bytes from that moment, so
the handshake always passes untouched. Modes: ``split`` (deliver one byte per send),
``flip`` (xor one bit at an offset), ``inject`` (insert bytes at an offset), ``fin`` /
``rst`` (cut the connection at an offset with FIN or RST). ``downstream()`` returns every
server→client byte that was forwarded, for checks of what a client really saw on the wire
(record sizes). Bounded: every socket has a
timeout, and ``close()`` ends both pump threads.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time


class FaultProxy:
    """Proxy one connection from a client to *upstream*, damaging server→client bytes."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self._upstream = upstream
        self._lock = threading.Lock()
        self._mode = "pass"
        self._offset = 0
        self._payload = b""
        self._count = 0
        self._seen = 0
        self._forwarded = bytearray()
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._accepted = threading.Event()
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def arm(self, mode: str, offset: int = 0, payload: bytes = b"", count: int = 0) -> None:
        """Apply *mode* to the server→client stream, *offset* bytes from now.

        Modes: ``pass``, ``split`` (one byte per segment), ``flip`` (one bit), ``inject``
        (*payload*), ``drop`` / ``duplicate`` (*count* bytes), ``fin``, ``rst``.
        """
        with self._lock:
            self._mode, self._offset, self._payload, self._seen = mode, offset, payload, 0
            self._count = count

    def _accept(self) -> None:
        self.listener.settimeout(60)
        try:
            down, _ = self.listener.accept()
        except OSError:
            return
        up = socket.create_connection(self._upstream, timeout=60)
        down.settimeout(120)
        up.settimeout(120)
        self._socks += [down, up]
        self._accepted.set()
        for src, dst, damage in ((down, up, False), (up, down, True)):
            t = threading.Thread(target=self._pump, args=(src, dst, damage), daemon=True)
            t.start()
            self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, damage: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if damage and not self._forward(data, dst):
                    return
                if not damage:
                    dst.sendall(data)
        except OSError:
            return

    def _forward(self, data: bytes, dst: socket.socket) -> bool:
        with self._lock:
            mode, offset, payload, count = self._mode, self._offset, self._payload, self._count
            start = self._seen
            self._seen += len(data)
        at = offset - start  # position of the fault inside this chunk
        if mode == "split":
            for i in range(len(data)):
                dst.sendall(data[i : i + 1])
                time.sleep(0.0005)
            with self._lock:
                self._forwarded += data
            return True
        if mode in ("flip", "inject") and 0 <= at < len(data):
            if mode == "flip":
                data = data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]
            else:
                data = data[:at] + payload + data[at:]
        if mode == "drop" and 0 <= at < len(data):
            data = data[:at] + data[at + count :]
        if mode == "duplicate" and 0 <= at < len(data):
            data = data[: at + count] + data[at : at + count] + data[at + count :]
        if mode in ("fin", "rst") and at < len(data):
            if at > 0:
                dst.sendall(data[:at])
            if mode == "rst":
                dst.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # The other pump may wait in poll() on dst, which holds the socket: close()
                # alone would send the RST only when that wait ends. SHUT_RD (nothing goes
                # on the wire) wakes it, and the last reference then goes with an RST.
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_RD)
                dst.close()
            else:
                dst.shutdown(socket.SHUT_WR)
            return False
        dst.sendall(data)
        with self._lock:
            self._forwarded += data
        return True

    def downstream(self) -> bytes:
        """The server→client bytes forwarded so far, in order (damaged as forwarded)."""
        with self._lock:
            return bytes(self._forwarded)

    def close(self) -> None:
        """Stop everything."""
        for s in [self.listener, *self._socks]:
            # shutdown() wakes a thread blocked in recv() on it; close() alone does not.
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        for t in self._threads:
            t.join(10)
