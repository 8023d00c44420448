"""``python -m bench.tunnel``: ``ossl-ktls tunnel`` against stunnel4 and a pyOpenSSL copy
loop, side by side in one run; and ``recvfile`` against ``recv_into`` + ``write``.

Usage::

    python -m bench.tunnel --vm 7.2     # inside the lab's 7.2 kernel (QEMU TCG); the report
                                        # goes to docs/tunnel-benchmark.{md,json}
    python -m bench.tunnel              # here (needs kernel TLS for the ossl_ktls rows)

What is measured, per repetition, every variant once in an order rotated from one
repetition to the next (interleaved pairs, as in ``python -m bench``):

* **bulk**: one connection moves ``--size`` bytes through the tunnel, in each mode
  (server: TLS in, plain out; client: plain in, TLS out) and each direction (down: from
  the plain/TLS server towards the client; up: the other way), TLS 1.3 AES-128-GCM and
  TLS 1.2 AES-256-GCM. Figures: throughput (bytes / wall time of the transfer, from the
  client's first byte to the receiver's last) and the CPU the *tunnel process* used per
  GiB (``/proc/<pid>/stat``, all threads: user and system time, the kernel's TLS work in
  the syscalls included).
* **concurrency**: ``--clients`` connections at once through a server-mode tunnel, each
  downloading ``--conc-size`` bytes: total wall time and tunnel CPU per GiB.
* **recvfile**: a receiver process takes ``--size`` bytes from a kernel-TX sender with
  kernel RX, either by ``KTLSConnection.recvfile(file)`` (splice, kernel to kernel) or by a
  ``recv_into`` + ``write`` loop; its own CPU (``getrusage``) per GiB.

The endpoints are not measured: the TLS ends are ossl_ktls connections with both
directions in the kernel (``sendfile``/``recvfile``), the plain ends Python sockets with
``sendfile`` and ``recv_into``; every transfer is checked by size and SHA-256 after the
clock stopped. Absolute figures under TCG mean nothing; the report gives ratios taken
within each repetition, then their median.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from OpenSSL import SSL

import ossl_ktls
from bench.common import (
    HOST,
    SUITES,
    Certs,
    MiB,
    Suite,
    cpu_model,
    make_certs,
    proc_cpu,
    pyopenssl_context,
)
from bench.run import free_port, listening

Json = dict[str, Any]
REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
VM_OUT = REPO / "build" / "bench-tunnel-vm"
TUNNELS = ("ossl_ktls", "stunnel", "pyopenssl")
RECEIVERS = ("recvfile", "recv_into_write")
TIMEOUT = 120.0  # a stalled sample fails after this, with diagnostics, and the run goes on


def log(msg: str) -> None:
    print(f"bench.tunnel: {msg}", file=sys.stderr, flush=True)


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    """Until *port* is in LISTEN state (read from /proc, never probed by connecting)."""
    deadline = time.monotonic() + timeout
    while not listening(port):
        if proc.poll() is not None:
            raise RuntimeError(f"the tunnel exited with {proc.returncode} before listening")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {port} after {timeout} s")
        time.sleep(0.01)


# ---------------------------------------------------------------- the tunnels


def _stunnel_conf(
    path: Path, suite: Suite, certs: Certs, mode: str, accept: int, connect: int
) -> Path:
    lines = ["foreground = yes", "pid =", "debug = 4", "syslog = no", "", "[bench]"]
    lines += [f"accept = {HOST}:{accept}", f"connect = {HOST}:{connect}"]
    if mode == "server":
        lines += [f"cert = {certs.cert}", f"key = {certs.key}"]
    else:
        lines += ["client = yes", "verifyChain = no", "verifyPeer = no"]
    version = "TLSv1.3" if suite.version == "1.3" else "TLSv1.2"
    lines += [f"sslVersionMin = {version}", f"sslVersionMax = {version}"]
    if suite.version == "1.3":
        lines.append(f"ciphersuites = {suite.openssl_name}")
    else:
        lines.append(f"ciphers = {suite.openssl_name}")
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def start_tunnel(
    variant: str, suite: Suite, certs: Certs, mode: str, connect: int, work: Path
) -> tuple[subprocess.Popen[bytes], int]:
    """One tunnel process of *variant* in *mode*; (process, accept port) once it listens."""
    port = free_port()
    if variant == "ossl_ktls":
        argv = [sys.executable, "-m", "ossl_ktls", "tunnel", "--accept", f"{HOST}:{port}"]
        argv += ["--connect", f"{HOST}:{connect}", "--tls", suite.version]
        argv += ["--cipher", suite.kernel_cipher, "--timeout", str(TIMEOUT), "--max-clients", "128"]
        argv += ["--require-ktls"]
        argv += ["--cert", certs.cert, "--key", certs.key] if mode == "server" else []
        argv += ["--client", "--insecure"] if mode == "client" else []
    elif variant == "stunnel":
        conf = _stunnel_conf(work / f"stunnel-{mode}.conf", suite, certs, mode, port, connect)
        argv = ["stunnel4", str(conf)]
    else:
        argv = [sys.executable, "-m", "bench.tunnel", "--copy-tunnel", mode, "--accept", str(port)]
        argv += ["--connect", str(connect), "--suite", suite.key, "--cert", certs.cert]
        argv += ["--key", certs.key]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=open(work / f"{variant}-{mode}.log", "ab"),  # noqa: SIM115 - the child's
        start_new_session=True,
    )
    wait_listening(port, proc)
    return proc, port


def stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def copy_tunnel(args: argparse.Namespace) -> int:
    """The pyOpenSSL copy-loop tunnel a user would write: per connection one thread,
    ``select`` on both sockets, ``recv`` and ``sendall`` through pyOpenSSL."""
    import select

    suite = SUITES[args.suite]
    certs = Certs(args.cert, args.key)
    server_mode = args.copy_tunnel == "server"
    ctx = pyopenssl_context(suite, server=server_mode, certs=certs, prepared=False)
    listener = socket.create_server((HOST, args.accept), backlog=128)

    def pump(raw: socket.socket) -> None:
        other = socket.create_connection((HOST, args.connect))
        tls_sock, plain = (raw, other) if server_mode else (other, raw)
        conn = SSL.Connection(ctx, tls_sock)
        if server_mode:
            conn.set_accept_state()
        else:
            conn.set_connect_state()
        conn.do_handshake()
        # Non-blocking TLS socket: a record that is not data (a TLS 1.3 ticket) makes recv
        # raise WantReadError instead of waiting for data that may never come.
        tls_sock.setblocking(False)
        open_ends = {"tls", "plain"}

        def tls_sendall(data: bytes) -> None:
            view = memoryview(data)
            while view:
                try:
                    view = view[conn.send(view) :]
                except SSL.WantWriteError:
                    select.select([], [tls_sock], [])
                except SSL.WantReadError:
                    select.select([tls_sock], [], [])

        try:
            while open_ends:
                watch = [s for s, n in ((tls_sock, "tls"), (plain, "plain")) if n in open_ends]
                ready = [tls_sock] if conn.pending() else select.select(watch, [], [])[0]
                if tls_sock in ready and "tls" in open_ends:
                    try:
                        data = conn.recv(65536)
                    except SSL.ZeroReturnError:
                        data = b""
                    except (SSL.WantReadError, SSL.WantWriteError):
                        continue
                    if data:
                        plain.sendall(data)
                    else:
                        open_ends.discard("tls")
                        plain.shutdown(socket.SHUT_WR)
                if plain in ready and "plain" in open_ends:
                    data = plain.recv(65536)
                    if data:
                        tls_sendall(data)
                    else:
                        open_ends.discard("plain")
                        tls_sock.setblocking(True)
                        conn.shutdown()
                        tls_sock.setblocking(False)
        except (OSError, SSL.Error):
            pass
        finally:
            plain.close()
            tls_sock.close()

    while True:
        raw, _ = listener.accept()
        threading.Thread(target=pump, args=(raw,), daemon=True).start()


# ---------------------------------------------------------------- the endpoints


class Endpoints:
    """The two ends of a tunnel, in this process: a TLS end (ossl_ktls, both directions in
    the kernel) and a plain end (Python sockets)."""

    def __init__(self, suite: Suite, certs: Certs, payload: Path) -> None:
        self.suite = suite
        self.payload = payload
        self.server_ctx = pyopenssl_context(suite, server=True, certs=certs, prepared=True)
        self.client_ctx = pyopenssl_context(suite, server=False, certs=certs, prepared=True)

    def tls_server(self, listener: socket.socket) -> ossl_ktls.KTLSConnection:
        sock, _ = listener.accept()
        sock.settimeout(TIMEOUT)
        conn = SSL.Connection(self.server_ctx, sock)
        conn.set_accept_state()
        return ossl_ktls.wrap(conn, require=True, half_close=True)

    def tls_client(self, port: int) -> ossl_ktls.KTLSConnection:
        sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
        conn = SSL.Connection(self.client_ctx, sock)
        conn.set_connect_state()
        return ossl_ktls.wrap(conn, require=True, half_close=True)


def _send_file(send: Callable[[Any], int], path: Path) -> None:
    with open(path, "rb") as f:
        send(f)


def _receive(k: ossl_ktls.KTLSConnection | socket.socket, out: Path) -> int:
    with open(out, "wb") as f:
        if isinstance(k, ossl_ktls.KTLSConnection):
            return k.recvfile(f)
        total = 0
        buf = memoryview(bytearray(1 << 20))
        while n := k.recv_into(buf):
            f.write(buf[:n])
            total += n
        return total


def _digest(path: Path) -> tuple[int, str]:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return path.stat().st_size, sha.hexdigest()


def transfer(
    ends: Endpoints, tunnel_port: int, backend: socket.socket, mode: str, direction: str, out: Path
) -> tuple[float, int]:
    """One connection through the tunnel moving the payload *direction*; (seconds, bytes).

    The far end listens on *backend* (TLS in client mode, plain in server mode); the near
    end connects to the tunnel (TLS in server mode, plain in client mode). "down" is from
    the far end to the near one. The clock runs from the near end's connect to the
    receiver's end of stream."""
    result: dict[str, Any] = {}

    def far() -> None:
        try:
            if mode == "client":
                k = ends.tls_server(backend)
                if direction == "down":
                    _send_file(k.sendfile, ends.payload)
                    k.shutdown()
                    k.recvfile(open(os.devnull, "wb"))  # noqa: SIM115 - the end of stream
                else:
                    result["got"] = _receive(k, out)
                    k.shutdown()
                k.close()
            else:
                sock, _ = backend.accept()
                sock.settimeout(TIMEOUT)
                if direction == "down":
                    _send_file(sock.sendfile, ends.payload)
                    sock.shutdown(socket.SHUT_WR)
                    while sock.recv(65536):
                        pass
                else:
                    result["got"] = _receive(sock, out)
                    sock.shutdown(socket.SHUT_WR)
                sock.close()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=far, daemon=True)
    thread.start()
    started = time.monotonic()
    near: ossl_ktls.KTLSConnection | socket.socket
    if mode == "server":
        near = ends.tls_client(tunnel_port)
    else:
        near = socket.create_connection((HOST, tunnel_port), timeout=TIMEOUT)
    if direction == "down":
        got = _receive(near, out)
        seconds = time.monotonic() - started
        if isinstance(near, ossl_ktls.KTLSConnection):
            near.shutdown()
        else:
            near.shutdown(socket.SHUT_WR)
    else:
        _send_file(near.sendfile, ends.payload)
        if isinstance(near, ossl_ktls.KTLSConnection):
            near.shutdown()
            near.recvfile(open(os.devnull, "wb"))  # noqa: SIM115
        else:
            near.shutdown(socket.SHUT_WR)
            while near.recv(65536):
                pass
        thread.join(TIMEOUT)
        seconds = time.monotonic() - started
        got = result.get("got", -1)
    near.close()
    thread.join(TIMEOUT)
    if "error" in result:
        raise RuntimeError(f"the far end failed: {result['error']!r}")
    return seconds, got


# ---------------------------------------------------------------- recvfile


def receiver(args: argparse.Namespace) -> int:
    """``--receiver MODE PORT``: take the stream from PORT by MODE; print JSON (own CPU)."""
    suite = SUITES[args.suite]
    ctx = pyopenssl_context(suite, server=False, certs=Certs(args.cert, args.key), prepared=True)
    sock = socket.create_connection((HOST, args.port), timeout=TIMEOUT)
    conn = SSL.Connection(ctx, sock)
    conn.set_connect_state()
    k = ossl_ktls.wrap(conn, require=True)
    out = Path(args.out)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    with open(out, "wb") as f:
        if args.receiver == "recvfile":
            n = k.recvfile(f)
        else:
            n = 0
            buf = memoryview(bytearray(1 << 20))
            while got := k.recv_into(buf):
                f.write(buf[:got])
                n += got
    seconds = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    k.close()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(json.dumps({"bytes": n, "seconds": seconds, "cpu_s": cpu}), flush=True)
    return 0


def receive_sample(ends: Endpoints, certs: Certs, mode: str, out: Path) -> Json:
    listener = socket.create_server((HOST, 0))
    port = listener.getsockname()[1]
    argv = [sys.executable, "-m", "bench.tunnel", "--receiver", mode, "--port", str(port)]
    argv += ["--suite", ends.suite.key, "--cert", certs.cert, "--key", certs.key]
    argv += ["--out", str(out)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    k = ends.tls_server(listener)
    listener.close()
    _send_file(k.sendfile, ends.payload)
    k.shutdown()
    stdout, _ = proc.communicate(timeout=TIMEOUT)
    k.close()
    sample: Json = json.loads(stdout)
    return sample


# ---------------------------------------------------------------- the run


def measure(args: argparse.Namespace) -> Json:
    caps = ossl_ktls.probe()
    if not caps.ulp:
        raise SystemExit(f"bench.tunnel needs kernel TLS here: {caps.ulp_error}")
    work = Path(tempfile.mkdtemp(prefix="bench-tunnel-"))
    certs = make_certs(work)
    payload = work / "payload.bin"
    payload.write_bytes(os.urandom(args.size))
    expected = _digest(payload)
    small = work / "small.bin"
    small.write_bytes(os.urandom(args.conc_size))
    out = work / "out.bin"
    samples: list[Json] = []
    suites = [SUITES[k] for k in args.suites.split(",")]
    configs = [(m, d) for m in ("server", "client") for d in ("down", "up")]
    for rep in range(args.reps):
        for suite in suites:
            ends = Endpoints(suite, certs, payload)
            for mode, direction in configs:
                order = TUNNELS[rep % 3 :] + TUNNELS[: rep % 3]
                for variant in order:
                    backend = socket.create_server((HOST, 0), backlog=128)
                    proc, port = start_tunnel(
                        variant, suite, certs, mode, backend.getsockname()[1], work
                    )
                    error = None
                    try:
                        c0 = proc_cpu(proc.pid, threaded=True)
                        seconds, got = transfer(ends, port, backend, mode, direction, out)
                        c1 = proc_cpu(proc.pid, threaded=True)
                    except Exception as exc:
                        error = _diagnose(exc, variant, mode, work)
                        seconds, got, c1 = 0.0, -1, c0
                    finally:
                        stop(proc)
                        backend.close()
                    ok = error is None and _digest(out) == expected and got == args.size
                    cpu = (c1 - c0).total
                    samples.append(
                        {
                            "part": "bulk",
                            "rep": rep,
                            "suite": suite.key,
                            "mode": mode,
                            "direction": direction,
                            "variant": variant,
                            "bytes": args.size,
                            "seconds": seconds,
                            "tunnel_cpu_s": cpu,
                            "ok": ok,
                            "error": error,
                        }
                    )
                    log(
                        f"rep {rep} {suite.key} {mode}/{direction} {variant}: "
                        f"{args.size / seconds / MiB:.1f} MiB/s, {cpu:.2f} s CPU, ok={ok}"
                    )
            # 64 connections at once, server mode, downloads.
            conc_ends = Endpoints(suite, certs, small)
            small_expected = _digest(small)
            for variant in TUNNELS[rep % 3 :] + TUNNELS[: rep % 3]:
                backend = socket.create_server((HOST, 0), backlog=256)
                proc, port = start_tunnel(
                    variant, suite, certs, "server", backend.getsockname()[1], work
                )
                try:
                    c0 = proc_cpu(proc.pid, threaded=True)
                    seconds, oks = _concurrent(conc_ends, port, backend, args.clients, work)
                    c1 = proc_cpu(proc.pid, threaded=True)
                except Exception as exc:
                    _diagnose(exc, variant, "server", work)
                    seconds, oks, c1 = 0.0, [], c0
                finally:
                    stop(proc)
                    backend.close()
                ok = all(d == small_expected for d in oks) and len(oks) == args.clients
                samples.append(
                    {
                        "part": "concurrency",
                        "rep": rep,
                        "suite": suite.key,
                        "variant": variant,
                        "clients": args.clients,
                        "bytes": args.clients * args.conc_size,
                        "seconds": seconds,
                        "tunnel_cpu_s": (c1 - c0).total,
                        "ok": ok,
                    }
                )
                clients = f"{args.clients} clients"
                log(f"rep {rep} {suite.key} {clients} {variant}: {seconds:.1f} s, ok={ok}")
        for mode in RECEIVERS[rep % 2 :] + RECEIVERS[: rep % 2]:
            ends = Endpoints(suites[0], certs, payload)
            try:
                s = receive_sample(ends, certs, mode, out)
            except Exception as exc:
                s = {"bytes": -1, "seconds": 0.0, "cpu_s": 0.0, "error": repr(exc)}
            s.update({"part": "recvfile", "rep": rep, "suite": suites[0].key, "variant": mode})
            s["ok"] = _digest(out) == expected and s["bytes"] == args.size
            samples.append(s)
            log(f"rep {rep} receiver {mode}: {s['cpu_s']:.2f} s CPU, ok={s['ok']}")
    banner = subprocess.run(["stunnel4", "-version"], capture_output=True, text=True, check=False)
    stunnel_version = [
        line.strip()
        for line in (banner.stdout + banner.stderr).splitlines()
        if line.strip().lower().startswith("stunnel ")
    ][:1]
    return {
        "kernel": platform.release(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "stunnel": stunnel_version[0] if stunnel_version else "?",
        "size": args.size,
        "conc_size": args.conc_size,
        "clients": args.clients,
        "reps": args.reps,
        "samples": samples,
    }


def _diagnose(exc: BaseException, variant: str, mode: str, work: Path) -> str:
    """What a failed sample left behind: the error, the sockets as the kernel sees them,
    the tunnel's log. Printed, and kept in the raw results."""
    parts = [repr(exc)]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        ss = subprocess.run(["ss", "-tieHn"], capture_output=True, text=True, timeout=30)
        parts.append(ss.stdout)
    with contextlib.suppress(OSError):
        parts.append((work / f"{variant}-{mode}.log").read_text(errors="replace")[-4000:])
    text = "\n".join(parts)
    log(f"sample failed: {text}")
    return text


def _concurrent(
    ends: Endpoints, port: int, backend: socket.socket, clients: int, work: Path
) -> tuple[float, list[tuple[int, str]]]:
    """*clients* TLS clients download the small payload at once; (wall seconds, digests)."""

    def serve() -> None:
        def one(sock: socket.socket) -> None:
            with sock:
                sock.settimeout(TIMEOUT)
                _send_file(sock.sendfile, ends.payload)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass

        for _ in range(clients):
            sock, _ = backend.accept()
            threading.Thread(target=one, args=(sock,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    digests: list[tuple[int, str]] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        out = work / f"conc-{i}.bin"
        k = ends.tls_client(port)
        _receive(k, out)
        k.shutdown()
        k.close()
        with lock:
            digests.append(_digest(out))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    return time.monotonic() - started, digests


# ---------------------------------------------------------------- the report


def _pairs(
    samples: list[Json], key: Callable[[Json], Any]
) -> dict[Any, dict[int, dict[str, Json]]]:
    grouped: dict[Any, dict[int, dict[str, Json]]] = {}
    for s in samples:
        grouped.setdefault(key(s), {}).setdefault(s["rep"], {})[s["variant"]] = s
    return grouped


def _median_ratio(
    reps: dict[int, dict[str, Json]], a: str, b: str, f: Callable[[Json], float]
) -> float:
    ratios = [f(r[a]) / f(r[b]) for r in reps.values() if a in r and b in r and f(r[b]) > 0]
    return statistics.median(ratios) if ratios else float("nan")


def report(results: Json, out: Path) -> None:
    """docs/tunnel-benchmark.md (and .json)."""
    samples = [s for s in results["samples"] if s.get("ok")]
    bad = len(results["samples"]) - len(samples)
    lines = [
        "# ossl-ktls tunnel against stunnel4 and a pyOpenSSL copy loop",
        "",
        f"One run of `python -m bench.tunnel` inside the lab kernel {results['kernel']} under "
        f"QEMU TCG (host CPU: {results['cpu_model']}; Python {results['python']}; "
        f"{results['stunnel']}). {results['reps']} repetitions, every variant once per "
        "repetition in a rotated order; ratios are taken within a repetition, then the "
        "median. Absolute figures under emulation mean nothing: read the ratios.",
        "",
        "Throughput: bytes over the wall time of one transfer (one connection, "
        f"{results['size'] // MiB} MiB). CPU per GiB: user + system time of the tunnel "
        "process (all threads; the kernel's TLS work in its syscalls included) over the "
        "bytes moved. server mode: TLS in, plain out; client mode: plain in, TLS out; "
        "down: towards the side that connected. Every transfer was checked by size and "
        f"SHA-256 ({bad} failed and are left out).",
        "",
        "## Bulk, one connection",
        "",
        "| suite | mode | direction | throughput vs stunnel4 | vs pyOpenSSL "
        "| tunnel CPU/GiB vs stunnel4 | vs pyOpenSSL |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    tput: Callable[[Json], float] = lambda s: s["bytes"] / s["seconds"]  # noqa: E731
    cpu: Callable[[Json], float] = lambda s: s["tunnel_cpu_s"] / s["bytes"]  # noqa: E731
    bulk = _pairs(
        [s for s in samples if s["part"] == "bulk"],
        lambda s: (s["suite"], s["mode"], s["direction"]),
    )
    for (suite, mode, direction), reps in bulk.items():
        lines.append(
            f"| {SUITES[suite].label} | {mode} | {direction} "
            f"| {_median_ratio(reps, 'ossl_ktls', 'stunnel', tput):.2f}x "
            f"| {_median_ratio(reps, 'ossl_ktls', 'pyopenssl', tput):.2f}x "
            f"| {_median_ratio(reps, 'ossl_ktls', 'stunnel', cpu):.2f}x "
            f"| {_median_ratio(reps, 'ossl_ktls', 'pyopenssl', cpu):.2f}x |"
        )
    lines += [
        "",
        f"## {results['clients']} connections at once (server mode, "
        f"{results['conc_size'] / MiB:g} MiB down each)",
        "",
        "Throughput: all the bytes over the wall time from the first connect to the last "
        "client's end of stream.",
        "",
        "| suite | throughput vs stunnel4 | vs pyOpenSSL | tunnel CPU/GiB vs stunnel4 "
        "| vs pyOpenSSL |",
        "| --- | --- | --- | --- | --- |",
    ]
    conc = _pairs([s for s in samples if s["part"] == "concurrency"], lambda s: s["suite"])
    for suite, reps in conc.items():
        lines.append(
            f"| {SUITES[suite].label} "
            f"| {_median_ratio(reps, 'ossl_ktls', 'stunnel', tput):.2f}x "
            f"| {_median_ratio(reps, 'ossl_ktls', 'pyopenssl', tput):.2f}x "
            f"| {_median_ratio(reps, 'ossl_ktls', 'stunnel', cpu):.2f}x "
            f"| {_median_ratio(reps, 'ossl_ktls', 'pyopenssl', cpu):.2f}x |"
        )
    rcpu: Callable[[Json], float] = lambda s: s["cpu_s"] / s["bytes"]  # noqa: E731
    recv = _pairs([s for s in samples if s["part"] == "recvfile"], lambda s: s["suite"])
    lines += [
        "",
        "## Receiving to a file: `recvfile` against `recv_into` + `write`",
        "",
        "The receiver's own CPU (getrusage) per GiB, kernel RX, from a kernel-TX sender.",
        "",
        "| suite | recvfile CPU/GiB vs recv_into + write | throughput |",
        "| --- | --- | --- |",
    ]
    for suite, reps in recv.items():
        lines.append(
            f"| {SUITES[suite].label} "
            f"| {_median_ratio(reps, 'recvfile', 'recv_into_write', rcpu):.2f}x "
            f"| {_median_ratio(reps, 'recvfile', 'recv_into_write', tput):.2f}x |"
        )
    lines += ["", "Raw samples: tunnel-benchmark.json.", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "tunnel-benchmark.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "tunnel-benchmark.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    log(f"wrote {out / 'tunnel-benchmark.md'}")


def run_in_vm(args: argparse.Namespace) -> int:
    VM_OUT.mkdir(parents=True, exist_ok=True)
    raw = VM_OUT / "raw.json"
    with contextlib.suppress(FileNotFoundError):
        raw.unlink()
    inner = [sys.executable, "-m", "bench.tunnel", "--raw", str(raw), "--reps", str(args.reps)]
    inner += ["--size", str(args.size), "--clients", str(args.clients)]
    inner += ["--conc-size", str(args.conc_size), "--suites", args.suites]
    cmd = [sys.executable, "-m", "lab.vm", "--series", args.vm, "--timeout", "3000"]
    cmd += ["--rwdir", str(VM_OUT), "--", *inner]
    log(" ".join(cmd))
    status = subprocess.run(cmd, cwd=str(REPO), check=False).returncode
    if status != 0 or not raw.exists():
        log(f"the VM run failed (status {status})")
        return status or 1
    report(json.loads(raw.read_text()), Path(args.out))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tunnel", description=__doc__.split("\n")[0])
    p.add_argument("--vm", metavar="SERIES", help="measure inside this lab kernel (TCG)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--size", type=int, default=32 * MiB, help="bytes per bulk transfer")
    p.add_argument("--clients", type=int, default=64, help="connections at once")
    p.add_argument("--conc-size", type=int, default=1 * MiB, help="bytes per concurrent one")
    p.add_argument("--suites", default="tls13-aes128gcm,tls12-aes256gcm")
    p.add_argument("--out", default=str(DOCS))
    p.add_argument("--raw", help="only measure; write the raw results here")
    p.add_argument("--report-only", metavar="FILE")
    # Internal: the copy-loop tunnel and the recvfile receiver run as their own processes.
    p.add_argument("--copy-tunnel", choices=["server", "client"], help=argparse.SUPPRESS)
    p.add_argument("--receiver", choices=RECEIVERS, help=argparse.SUPPRESS)
    p.add_argument("--accept", type=int, help=argparse.SUPPRESS)
    p.add_argument("--connect", type=int, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--suite", help=argparse.SUPPRESS)
    p.add_argument("--cert", help=argparse.SUPPRESS)
    p.add_argument("--key", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.copy_tunnel:
        return copy_tunnel(args)
    if args.receiver:
        return receiver(args)
    if args.report_only:
        report(json.loads(Path(args.report_only).read_text()), Path(args.out))
        return 0
    if args.vm:
        return run_in_vm(args)
    results = measure(args)
    if args.raw:
        Path(args.raw).write_text(json.dumps(results, indent=1))
        return 0
    report(results, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
