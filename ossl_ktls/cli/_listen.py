"""The accept loop the command line's servers share (``serve``, ``tunnel``)."""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable

Spawn = Callable[[socket.socket, tuple[str, ...]], None]


def accept_until(
    listener: socket.socket, slots: threading.BoundedSemaphore, stop: threading.Event, spawn: Spawn
) -> None:
    """Accept connections until *stop* is set, each once a slot is free.

    ``spawn(sock, addr)`` starts the connection's handling and owns the slot it was given
    (it releases it when the connection ends). Both waits (a free slot, a connection)
    last at most 0.25 s, so *stop* is seen within that. Transient accept errors (a
    connection aborted before it was taken, EMFILE) are ridden out without spinning.
    """
    while not stop.is_set():
        if not slots.acquire(timeout=0.25):
            continue
        try:
            ready, _, _ = select.select([listener], [], [], 0.25)
            if not ready:
                slots.release()
                continue
            sock, addr = listener.accept()
        except (InterruptedError, BlockingIOError, ConnectionAbortedError):
            slots.release()
            continue
        except OSError:
            slots.release()
            if stop.is_set():
                return
            time.sleep(0.1)  # EMFILE and friends: do not spin
            continue
        spawn(sock, addr)
