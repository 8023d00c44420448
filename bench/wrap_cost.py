"""What ``prepare()`` and ``wrap()`` cost in user space, measured on the host itself.

Under QEMU TCG the balance between Python and OpenSSL's C code is not the host's (the
calibration row of the report says by how much), so a connection's Python share measured
in the lab kernel says little about real hardware. This module measures it on the host:
a plain pyOpenSSL server runs in **another process** (so it competes for neither the GIL
nor the client's caches), and the client, in this process, times each step in its own
thread's CPU time (``time.thread_time``: user + system of this thread alone):

* ``handshake``: a client handshake from a plain Context;
* ``floor``: the same with a message callback and a keylog callback that do nothing
  (what any callback costs: OpenSSL's calls into Python through cffi, and the GIL);
* ``prepared``: the same from a ``prepare()``-d Context (our callbacks at work);
* ``wrap``: ``wrap()`` of the prepared Connection, with the kernel's part skipped: the
  probe answers "everything", the ``TCP_ULP`` and ``TLS_TX``/``TLS_RX`` ``setsockopt``
  calls are replaced by plain functions (no ``unittest.mock``: its own overhead would be
  measured) that still build and wipe the kernel structures. Key derivation, sequence
  accounting, the plan and the socket hand-over run for real, on a real TCP socket.

The variants are interleaved, one connection each per round. The kernel's own key
set-up comes on top of ``wrap`` (measured in the lab kernel by the in-VM benchmark).

``python -m bench --vm`` runs it on the host and puts the result next to the in-VM
figures. ``python -m bench.wrap_cost [N]`` prints it; ``--profile`` prints where
``wrap()`` and the prepared handshake spend their time (cProfile, the slowest entries);
``--steps`` the thread CPU of each step of ``wrap()``.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import json
import multiprocessing
import pstats
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi, lib

import ossl_ktls
from bench.common import SUITES, Certs, make_certs, pyopenssl_context

Json = dict[str, Any]

VARIANTS = ("handshake", "floor", "prepared")


def _serve(listener: socket.socket, ctx: SSL.Context) -> None:
    """The server process: handshake each connection, then wait for the client's close."""
    while True:
        sock, _ = listener.accept()
        with sock:
            if sock.recv(1, socket.MSG_PEEK) == b"Q":
                return
            conn = SSL.Connection(ctx, sock)
            conn.set_accept_state()
            with contextlib.suppress(SSL.Error, OSError):
                conn.do_handshake()
                sock.recv(1)  # the client's close (or anything) ends it


@contextlib.contextmanager
def _server(ctx: SSL.Context) -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    proc = multiprocessing.get_context("fork").Process(
        target=_serve, args=(listener, ctx), daemon=True
    )
    proc.start()
    listener.close()
    try:
        yield port
    finally:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)) as q:
            q.sendall(b"Q")
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def _nothing_msg(*_args: Any) -> None:
    return None


def _nothing_keylog(*_args: Any) -> None:
    return None


_FLOOR_MSG = ffi.callback(
    "void (*)(int, int, int, const void *, size_t, SSL *, void *)", _nothing_msg
)
_FLOOR_KEYLOG = ffi.callback("void (*)(const SSL *, const char *)", _nothing_keylog)


def _floor_context(suite: Any, certs: Certs) -> SSL.Context:
    ctx = pyopenssl_context(suite, server=False, certs=certs, prepared=False)
    lib.SSL_CTX_set_msg_callback(ctx._context, _FLOOR_MSG)
    lib.SSL_CTX_set_keylog_callback(ctx._context, _FLOOR_KEYLOG)
    return ctx


@contextlib.contextmanager
def _kernel_skipped() -> Iterator[None]:
    """The kernel's part of wrap() replaced by plain functions (restored after)."""
    from ossl_ktls import _linux_tls as uapi

    ciphers = uapi.CIPHER_NAMES
    caps = uapi.Capabilities(
        kernel="estimate",
        ulp=True,
        tx={v: ciphers for v in uapi.VERSIONS},
        rx={v: ciphers for v in uapi.VERSIONS},
        rekey=True,
    )

    def probe() -> uapi.Capabilities:
        return caps

    def set_ulp(sock: socket.socket) -> None:
        return None

    def install(sock: socket.socket, direction: int, state: Any) -> None:
        uapi._wipe_struct(uapi._fill(state))  # the structure is built; the syscall skipped

    saved = (uapi.probe, uapi.set_ulp, uapi.install)
    uapi.probe, uapi.set_ulp, uapi.install = probe, set_ulp, install  # type: ignore[assignment]
    try:
        yield
    finally:
        uapi.probe, uapi.set_ulp, uapi.install = saved


def _connect(
    port: int, ctx: SSL.Context, profile: cProfile.Profile | None
) -> tuple[SSL.Connection, socket.socket, float]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = SSL.Connection(ctx, sock)
    conn.set_connect_state()
    if profile is not None:
        profile.enable()
    t0 = time.thread_time()
    conn.do_handshake()
    elapsed = time.thread_time() - t0
    if profile is not None:
        profile.disable()
    return conn, sock, elapsed


def measure(n: int = 200, *, profile: bool = False) -> Json:
    """Medians (µs of client thread CPU) per suite; with *profile*, cProfile text too."""
    out: Json = {}
    with tempfile.TemporaryDirectory() as tmp, _kernel_skipped():
        certs: Certs = make_certs(Path(tmp))
        for key, suite in SUITES.items():
            contexts = {
                "handshake": pyopenssl_context(suite, server=False, certs=certs, prepared=False),
                "floor": _floor_context(suite, certs),
                "prepared": pyopenssl_context(suite, server=False, certs=certs, prepared=True),
            }
            times: dict[str, list[float]] = {name: [] for name in (*VARIANTS, "wrap")}
            hs_profile = cProfile.Profile() if profile else None
            wrap_profile = cProfile.Profile() if profile else None
            server_ctx = pyopenssl_context(suite, server=True, certs=certs, prepared=False)
            with _server(server_ctx) as port:
                for i in range(n + 10):  # the first 10 rounds warm up
                    for name in VARIANTS:
                        conn, sock, hs = _connect(
                            port, contexts[name], hs_profile if name == "prepared" else None
                        )
                        if i >= 10:
                            times[name].append(hs)
                        if name == "prepared":
                            if wrap_profile is not None:
                                wrap_profile.enable()
                            t0 = time.thread_time()
                            k = ossl_ktls.wrap(conn)
                            elapsed = time.thread_time() - t0
                            if wrap_profile is not None:
                                wrap_profile.disable()
                            assert k.ktls_tx and k.ktls_rx, k.fallback_reason
                            if i >= 10:
                                times["wrap"].append(elapsed)
                        sock.close()
            med = {name: statistics.median(v) * 1e6 for name, v in times.items()}
            out[key] = {
                "handshake_us": med["handshake"],
                "floor_us": med["floor"],
                "prepared_us": med["prepared"],
                "wrap_us": med["wrap"],
                "prepare_overhead": med["prepared"] / med["handshake"] - 1,
                "floor_overhead": med["floor"] / med["handshake"] - 1,
                "wrap_share": med["wrap"] / med["prepared"],
                "connection_ratio": (med["prepared"] + med["wrap"]) / med["handshake"],
                "n": n,
                "clock": "client thread CPU (time.thread_time)",
            }
            if hs_profile is not None and wrap_profile is not None:
                out[key]["profile"] = {
                    "prepared handshake": _top(hs_profile, n),
                    "wrap": _top(wrap_profile, n),
                }
    return out


#: The steps of wrap() timed by ``steps()``: (label, module, function). Nested steps are
#: included in their parents' times.
STEPS: tuple[tuple[str, str, str], ...] = (
    ("checks (socket_of)", "_handover", "socket_of"),
    ("handshake confirmed (finish_handshake)", "_handover", "finish_handshake"),
    ("decide: engine, probe, plan (_decide)", "_handover", "_decide"),
    ("  the plan, hellos parsed (plan)", "_handover", "plan"),
    ("  TLS 1.2 record boundary (_peek_record_boundary)", "_handover", "_peek_record_boundary"),
    ("complete: BIOs, keys, paths (_complete)", "_handover", "_complete"),
    ("  memory BIOs (detach_from_socket)", "_openssl", "detach_from_socket"),
    ("  keys and kernel structs (_install)", "_handover", "_install"),
    ("    TLS 1.2 key block (tls12_key_block)", "_handover", "tls12_key_block"),
    ("    TLS 1.3 key and IV, each (tls13_traffic_key_iv)", "_secrets", "tls13_traffic_key_iv"),
    ("    struct built and wiped, each (install)", "_linux_tls", "install"),
    ("the KTLSConnection", "_connection", "KTLSConnection"),
)


def steps(n: int = 200) -> Json:
    """Median client thread CPU (µs) of each step of ``wrap()`` (STEPS), per suite.

    Each step's function is wrapped with a timer for this measurement only (the wrappers
    add about a microsecond each); the kernel's part is skipped as in :func:`measure`.
    """
    import importlib

    out: Json = {}
    saved: list[tuple[Any, str, Any]] = []
    times: dict[str, list[int]] = {}

    def timed(label: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.thread_time_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                times.setdefault(label, []).append(time.thread_time_ns() - t0)

        return wrapper

    with tempfile.TemporaryDirectory() as tmp, _kernel_skipped():
        for label, module, name in STEPS:
            mod = importlib.import_module(f"ossl_ktls.{module}")
            saved.append((mod, name, getattr(mod, name)))
            setattr(mod, name, timed(label, getattr(mod, name)))
        try:
            certs: Certs = make_certs(Path(tmp))
            for key, suite in SUITES.items():
                times.clear()
                total: list[float] = []
                ctx = pyopenssl_context(suite, server=False, certs=certs, prepared=True)
                server_ctx = pyopenssl_context(suite, server=True, certs=certs, prepared=False)
                with _server(server_ctx) as port:
                    for i in range(n + 10):
                        conn, sock, _ = _connect(port, ctx, None)
                        t0 = time.thread_time()
                        ossl_ktls.wrap(conn)
                        if i >= 10:
                            total.append(time.thread_time() - t0)
                        sock.close()
                out[key] = {
                    "wrap_us": statistics.median(total) * 1e6,
                    "steps_us": {
                        label: statistics.median(v[10 * len(v) // (n + 10) :]) / 1e3
                        for label, _, _ in STEPS
                        if (v := times.get(label))
                    },
                    "n": n,
                }
        finally:
            for mod, name, fn in saved:
                setattr(mod, name, fn)
    return out


def _top(prof: cProfile.Profile, n: int, limit: int = 25) -> str:
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text).strip_dirs()
    stats.sort_stats("tottime").print_stats(limit)
    return f"(totals over {n} connections)\n" + "\n".join(
        ln for ln in text.getvalue().splitlines() if ln.strip()
    )


def estimate(n: int = 200) -> Json:
    """What ``python -m bench --vm`` records next to the in-VM figures."""
    out = measure(n)
    for key, value in steps(n).items():
        out.setdefault(key, {})["steps_us"] = value["steps_us"]
    return out


def main(argv: list[str]) -> None:
    profile = "--profile" in argv
    numbers = [int(a) for a in argv if a.isdigit()]
    n = numbers[0] if numbers else 200
    if "--steps" in argv:
        for key, v in steps(n).items():
            print(f"{key}: wrap() {v['wrap_us']:.0f} µs (timers included)")
            for label, us in v["steps_us"].items():
                print(f"  {label:55s} {us:7.1f} µs")
        return
    result = measure(n, profile=profile)
    for key, v in result.items():
        prof = v.pop("profile", None)
        print(
            f"{key}: client handshake {v['handshake_us']:.0f} µs; with do-nothing callbacks "
            f"+{v['floor_overhead']:.1%}; prepared +{v['prepare_overhead']:.1%}; "
            f"wrap() {v['wrap_us']:.0f} µs ({v['wrap_share']:.1%} of the prepared handshake); "
            f"a connection {v['connection_ratio']:.2f}x a plain handshake"
        )
        if prof:
            for name, text in prof.items():
                print(f"--- {key}: {name}\n{text}")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
