"""Load: ``serve`` under 200 concurrent clients, each fetching 4 MiB.

Every download is checked by size and SHA-256; the server process must end where it
started: no descriptor leaked, no thread left behind, memory bounded. The clients are
threads of this process using the stdlib ``ssl`` module (a peer we did not write).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests._serve import Serve, stop

CLIENTS = int(os.environ.get("OSSL_KTLS_LOAD_CLIENTS", "200"))
SIZE = 4 << 20
RSS_GROWTH_LIMIT = 128 << 20  # bytes the server may grow by (200 threads, their buffers)


def _proc_status(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Threads", "VmRSS"):
                out[key] = int(value.split()[0]) * (1024 if key == "VmRSS" else 1)
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def _wait_idle(pid: int, idle: dict[str, int], seconds: float = 120) -> dict[str, int]:
    """The server's status once it has as many descriptors and threads as when idle."""
    deadline = time.monotonic() + seconds
    while True:
        now = _proc_status(pid)
        if (now["fds"], now["Threads"]) == (idle["fds"], idle["Threads"]):
            return now
        assert time.monotonic() < deadline, f"leak: idle {idle}, now {now}"
        time.sleep(0.2)


def _fetch(port: int, cafile: str) -> tuple[int, str]:
    """One HTTPS GET over its own connection; (body length, SHA-256 of the body)."""
    ctx = ssl.create_default_context(cafile=cafile)
    deadline = time.monotonic() + 600
    while True:  # the listen queue may overflow for a moment: retry refused connects
        try:
            raw = socket.create_connection(("127.0.0.1", port), timeout=600)
            break
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "serve refused connections for 10 minutes"
            time.sleep(0.2)
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = bytearray()
        while True:
            try:
                chunk = tls.recv(1 << 20)
            except ssl.SSLZeroReturnError:
                break
            if not chunk:
                break
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:100]
    return len(body), hashlib.sha256(body).hexdigest()


@pytest.mark.timeout(2400)  # under TCG, beside another guest, it takes 5-15 minutes
def test_serve_under_200_concurrent_clients(tmp_path: Path) -> None:
    """200 clients at once each get the whole 4 MiB file (size and SHA-256); afterwards the
    server has as many descriptors and threads as before, and grew by less than 128 MiB."""
    root = tmp_path / "www"
    root.mkdir()
    content = os.urandom(SIZE)
    (root / "big.bin").write_bytes(content)
    want = (SIZE, hashlib.sha256(content).hexdigest())
    # Under TCG 200 client threads of one process can leave a connection unread for long:
    # a generous idle timeout, so the test measures leaks, not the emulator's speed.
    server = Serve(root, "--timeout", "600")
    try:
        pid = server.proc.pid
        port, cafile = server.ready["port"], server.ready["cert"]
        idle = _proc_status(pid)  # listening, no connection: the counts to come back to
        # One warm-up fetch, so lazily created state (imports, caches) is in the RSS baseline.
        # Its connection thread may outlive the response for a moment: wait until it is gone.
        assert _fetch(port, cafile) == want
        server.next("request")
        before = _wait_idle(pid, idle)
        with concurrent.futures.ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            results = list(pool.map(lambda _i: _fetch(port, cafile), range(CLIENTS)))
        assert results == [want] * CLIENTS
        events = [server.next("request") for _ in range(CLIENTS)]
        assert all((e["status"], e["bytes"]) == (200, SIZE) for e in events)
        # Connection threads end after the clients hang up: give them a moment.
        after = _wait_idle(pid, idle)
        assert after["VmRSS"] - before["VmRSS"] < RSS_GROWTH_LIMIT, (before, after)
    finally:
        stop(server.proc)
