"""The orchestrator and command line of ``python -m bench``.

Usage::

    python -m bench                 # measure here (needs kernel TLS for the kTLS rows)
    python -m bench --vm 7.2        # measure inside the lab's Debian 7.2 kernel (QEMU TCG),
                                    # then write the report on the host
    python -m bench --full          # bigger sizes (256 MiB, 1 GiB): real hosts only
    python -m bench --report-only docs/benchmarks.json   # redo Markdown and plots

Two long-lived worker processes (:mod:`bench.worker`) are the endpoints: worker A is
always the measured one, worker B its peer, so the peer's cost never pollutes the
figures. OpenSSL's C programs (``s_server``, ``s_client``) and ``ossl_ktls serve`` are
measured from outside through ``/proc/<pid>``. Each repetition runs every variant of a
configuration once, in an order rotated from one repetition to the next, so that drifts
of a shared, emulated machine hit every variant alike (interleaved pairs); the report
gives medians, the spread, and ratios computed pair by pair within a repetition.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from OpenSSL import SSL

import ossl_ktls
from bench import wrap_cost
from bench.common import (
    HOST,
    IO_TIMEOUT,
    SUITES,
    VARIANTS,
    Certs,
    KiB,
    MiB,
    cpu_model,
    make_certs,
    openssl_suite_args,
    pyopenssl_context,
    write_ktls_conf,
)
from bench.ftps import VARIANTS as FTPS_VARIANTS
from bench.ftps import curl_argv
from ossl_ktls.cli import read_tls_stat

Json = dict[str, Any]
REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
VM_OUT = REPO / "build" / "bench-vm"
TX_VARIANTS = [k for k, v in VARIANTS.items() if v.part == "tx"]
RX_VARIANTS = [k for k, v in VARIANTS.items() if v.part == "rx"]
RR_VARIANTS = [k for k, v in VARIANTS.items() if v.part == "rr"]
CONN_VARIANTS = [k for k, v in VARIANTS.items() if v.part == "conn"]
PARTS = ("tx", "rx", "rr", "conn", "anchor", "ftps", "conc", "prof")
#: The connection variants: (client stack, server stack, resume the previous session).
#: The stdlib's clients and servers face pyOpenSSL, which pins the suite (Python 3.11's
#: ssl cannot choose TLS 1.3 suites); the KTLS-bit pairs are the C anchor, one per side.
CONN_STACKS: dict[str, tuple[str, str, bool]] = {
    "conn_ktls": ("ktls", "ktls", False),
    "conn_pyopenssl": ("pyopenssl", "pyopenssl", False),
    "conn_stdlib": ("stdlib", "pyopenssl", False),
    "conn_stdlib_ktls": ("stdlib_ktls", "pyopenssl", False),
    "conn_srv_stdlib": ("pyopenssl", "stdlib", False),
    "conn_srv_stdlib_ktls": ("pyopenssl", "stdlib_ktls", False),
    "conn_tcp": ("tcp", "tcp", False),
    "conn_ktls_resumed": ("ktls", "ktls", True),
    "conn_pyopenssl_resumed": ("pyopenssl", "pyopenssl", True),
}
ANCHOR_VARIANTS = ["ktls_sendfile", "openssl_c_ktls", "pyopenssl_sendall"]


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


@dataclass
class Plan:
    """What one run measures; chosen by profile, adjustable from the command line."""

    profile: str
    reps: int
    tx_sizes: list[int]
    rx_sizes: list[int]
    suites: list[str]
    parts: list[str]
    rr_seconds: float
    rr_msg: int = 1024
    conn_seconds: float = 3.0
    conc_levels: list[int] = field(default_factory=lambda: [1, 8, 64])
    conc_size: int = 1 * MiB
    conc_reps: int = 2
    conc_suites: list[str] = field(default_factory=lambda: ["tls13-aes128gcm"])
    warmup_size: int = 256 * KiB
    #: Extra back-to-back triples (ossl_ktls sendfile, OpenSSL C kTLS sendfile, pyOpenSSL)
    #: at the largest TX size: the targets' pairs, repeated more than the full matrix.
    anchor_pairs: int = 8
    #: pyftpdlib FTPS: pairs of one RETR each (stock handlers, ossl_ktls's), order rotated.
    ftps_pairs: int = 5
    ftps_size: int = 16 * MiB
    ftps_suite: str = "tls13-aes128gcm"


def make_plan(profile: str) -> Plan:
    suites = list(SUITES)
    if profile == "quick":
        return Plan(
            "quick", 1, [1 * MiB], [1 * MiB], suites, list(PARTS), 0.5, conn_seconds=1.0,
            conc_levels=[1, 8], conc_size=1 * MiB, conc_reps=1, ftps_pairs=1,
            ftps_size=1 * MiB,
        )  # fmt: skip
    if profile == "tcg":
        # Sized for a ~10 minute run on a quiet 2-core host (TCG moves 5-30 MiB/s): the
        # issue's 1 and 16 MiB; 256 MiB and 1 GiB take --profile full on a real host.
        return Plan(
            "tcg", 3, [1 * MiB, 16 * MiB], [2 * MiB], suites, list(PARTS), 2.0,
            conn_seconds=3.0, conc_levels=[1, 8, 64], conc_size=256 * KiB, conc_reps=2,
        )  # fmt: skip
    if profile == "native":
        return Plan(
            "native", 7, [1 * MiB, 16 * MiB, 64 * MiB], [1 * MiB, 16 * MiB, 64 * MiB], suites,
            list(PARTS), 2.0, conn_seconds=3.0, conc_levels=[1, 8, 64], conc_size=16 * MiB,
            conc_reps=3,
        )  # fmt: skip
    if profile == "full":
        sizes = [1 * MiB, 16 * MiB, 256 * MiB, 1024 * MiB]
        return Plan(
            "full", 7, sizes, sizes[:3], suites, list(PARTS), 3.0, conn_seconds=5.0,
            conc_levels=[1, 8, 64], conc_size=64 * MiB, conc_reps=3,
        )  # fmt: skip
    raise SystemExit(f"bench: unknown profile {profile}")


# --------------------------------------------------------------------------- environment


def emulation() -> str:
    """``tcg`` (QEMU software emulation), ``vm`` (hardware virtualisation) or ``none``."""
    model = cpu_model()
    if "TCG" in model:
        return "tcg"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("flags") and " hypervisor" in line:
                return "vm"
    return "none"


def _command_output(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def _python_work() -> None:
    acc: dict[int, int] = {}
    for i in range(50_000):
        key = i & 63
        acc[key] = acc.get(key, 0) + len(str(i))


def _memory_handshake(certs: Certs) -> None:
    """One TLS 1.3 handshake between two pyOpenSSL Connections over memory BIOs."""
    suite = SUITES["tls13-aes128gcm"]
    server = SSL.Connection(pyopenssl_context(suite, server=True, certs=certs, prepared=False))
    client = SSL.Connection(pyopenssl_context(suite, server=False, certs=certs, prepared=False))
    server.set_accept_state()
    client.set_connect_state()
    for _ in range(20):
        done = True
        for a, b in ((client, server), (server, client)):
            try:
                a.do_handshake()
            except SSL.WantReadError:
                done = False
            with contextlib.suppress(SSL.WantReadError):
                b.bio_write(a.bio_read(1 << 16))
        if done:
            return
    raise RuntimeError("the in-memory handshake did not finish")


def calibrate() -> Json:
    """Two fixed workloads telling how much this machine slows Python down against C:
    a pure-Python loop, and a TLS 1.3 handshake in memory (OpenSSL's C crypto). Best of 5."""
    with tempfile.TemporaryDirectory() as tmp:
        certs = make_certs(Path(tmp))
        out: Json = {}
        for name, work in (
            ("python_loop_ms", _python_work),
            ("handshake_ms", lambda: _memory_handshake(certs)),
        ):
            best = float("inf")
            for _ in range(5):
                t0 = time.perf_counter()
                work()
                best = min(best, time.perf_counter() - t0)
            out[name] = best * 1e3
    return out


def commit() -> str:
    """HEAD, marked when the library's working tree differs from it."""
    head = _command_output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    changed = _command_output(["git", "-C", str(REPO), "status", "--porcelain", "ossl_ktls"])
    return f"{head} + uncommitted ossl_ktls changes" if head and changed else head


def environment(host: Json) -> Json:
    """Where the figures come from: kernel, CPU, emulation, library versions.

    *host*: what the ``--vm`` wrapper found out on the host (CPU, kernel, calibration,
    commit), read from the file it wrote; empty when measuring directly.
    """
    caps = ossl_ktls.probe()
    with open("/proc/meminfo", encoding="ascii") as f:
        mem_kib = int(f.readline().split()[1])
    uname = platform.uname()
    return {
        "kernel": uname.release,
        "kernel_version": uname.version,
        "machine": uname.machine,
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "memory_mib": mem_kib // 1024,
        "emulation": emulation(),
        "host_cpu_model": host.get("cpu_model"),
        "host_kernel": host.get("kernel"),
        "python": platform.python_version(),
        "pyopenssl": importlib.metadata.version("pyOpenSSL"),
        "pyopenssl_openssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
        "stdlib_ssl_openssl": ssl.OPENSSL_VERSION,
        "stdlib_ssl_has_op_enable_ktls": hasattr(ssl, "OP_ENABLE_KTLS"),
        "openssl_cli": _command_output(["openssl", "version"]),
        "ossl_ktls": ossl_ktls.__version__,
        "ktls_probe": {
            "ulp": caps.ulp,
            "ulp_error": caps.ulp_error,
            "rekey": caps.rekey,
            "repr": repr(caps),
        },
        "calibration": calibrate(),
        "host_calibration": host.get("calibration"),
        "host_wrap_estimate": host.get("wrap_estimate"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": host.get("commit") or commit(),
    }


# --------------------------------------------------------------------------- processes


class WorkerDied(RuntimeError):
    """A worker did not answer in time or exited."""


class Worker:
    """A :mod:`bench.worker` process and its JSON-lines channel."""

    def __init__(self, name: str, config: Json) -> None:
        self.name = name
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=str(REPO),
        )
        self._buf = b""
        self.port = 0
        self.pid = self.proc.pid

    def ready(self) -> None:
        """Wait for the worker's hello (Python start-up is slow under TCG)."""
        hello = self.read(300.0)
        self.port = int(hello["port"])
        self.pid = int(hello["pid"])

    def send(self, cmd: Json) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            self.proc.stdin.flush()
        except OSError as exc:
            raise WorkerDied(f"worker {self.name}: {exc}") from exc

    def read(self, timeout: float) -> Json:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerDied(f"worker {self.name} did not answer within {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise WorkerDied(f"worker {self.name} exited ({self.proc.poll()})")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        result: Json = json.loads(line)
        return result

    def close(self) -> None:
        with contextlib.suppress(WorkerDied):
            self.send({"op": "quit"})
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def listening(port: int) -> bool:
    """Whether something listens on loopback *port* (read from /proc/net/tcp)."""
    want = f":{port:04X}"
    with open("/proc/net/tcp", encoding="ascii") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if parts[1].endswith(want) and parts[3] == "0A":
                return True
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, then SIGKILL, a process we started (its own session)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class SServer:
    """A long-lived ``openssl s_server -WWW`` serving the payload folder."""

    def __init__(self, suite: str, certs: Certs, root: Path, conf: Path | None, log: Path):
        self.port = free_port()
        # Not -quiet: s_server then says "KTLS SENDFILE '<file>' OK" for each response
        # really sent with SSL_sendfile (and warns when it falls back to SSL_write).
        argv = ["openssl", "s_server", "-accept", f"{HOST}:{self.port}"]
        argv += ["-cert", certs.cert, "-key", certs.key, *openssl_suite_args(SUITES[suite])]
        argv += ["-WWW", "-http_server_binmode"]
        env = dict(os.environ)
        env.pop("OPENSSL_CONF", None)
        if conf is not None:
            argv.append("-sendfile")
            env["OPENSSL_CONF"] = str(conf)
        self.argv = argv
        self.log = log
        self._seen = 0
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=str(root),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    def new_output(self) -> str:
        """What s_server printed since the last call."""
        with open(self.log, "rb") as f:
            f.seek(self._seen)
            data = f.read()
        self._seen += len(data)
        return data.decode(errors="replace")

    def ready(self) -> None:
        deadline = time.monotonic() + 120
        while not listening(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"openssl s_server did not start ({' '.join(self.argv)})")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc)


class Serve:
    """``python -m ossl_ktls serve`` for the concurrency part.

    Started early (its start-up takes minutes under TCG on a loaded host) and waited
    for only when the concurrency part begins.
    """

    def __init__(
        self, suite: str, certs: Certs, root: Path, max_clients: int, log_file: IO[bytes]
    ) -> None:
        s = SUITES[suite]
        argv = [sys.executable, "-m", "ossl_ktls", "serve", str(root), "--host", HOST]
        argv += ["--port", "0", "--cert", certs.cert, "--key", certs.key, "--quiet"]
        argv += ["--tls", s.version, "--cipher", s.kernel_cipher]
        argv += ["--max-clients", str(max_clients)]
        # Handshakes of 64 clients take minutes under TCG: connections that finished
        # early wait for the others without being dropped as idle.
        argv += ["--timeout", "900"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            argv,
            cwd=str(REPO),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
        )
        self.port = 0
        self.ktls = ""

    def ready(self, timeout: float = 600.0) -> None:
        """Read the "serving ... on https://HOST:PORT/ (kTLS tx=.. rx=..)" line."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode(errors="replace") if ready else ""
        m = re.search(r"https://[^:]+:(\d+)/ \(kTLS tx=(\S+) rx=(\S+)\)", line)
        if m is None:
            stop_process(self.proc)
            raise RuntimeError(f"serve did not start within {timeout:.0f} s: {line.strip()!r}")
        self.port = int(m.group(1))
        self.ktls = f"tx={m.group(2)} rx={m.group(3)}"

    def stop(self) -> None:
        stop_process(self.proc)


# --------------------------------------------------------------------------- the run


def rotated(items: list[str], k: int) -> list[str]:
    k %= len(items)
    return items[k:] + items[:k]


class Bench:
    """One measurement run: setup, the parts, teardown. Results go to ``samples``."""

    def __init__(self, plan: Plan, allow_fallback: bool) -> None:
        self.plan = plan
        self.allow_fallback = allow_fallback
        self.samples: list[Json] = []
        self.notes: list[str] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="ossl-ktls-bench-"))
        self.payload_dir = self.tmp / "www"
        self.payload_dir.mkdir()
        self.certs = make_certs(self.tmp)
        self.ktls_conf = write_ktls_conf(self.tmp / "openssl-ktls.cnf")
        self.log_file = open(self.tmp / "openssl.log", "ab")  # noqa: SIM115
        sizes = set(plan.tx_sizes) | set(plan.rx_sizes) | {plan.conc_size, plan.warmup_size}
        sizes.add(plan.ftps_size)
        sizes.discard(0)
        for size in sorted(sizes):
            self._write_payload(size)
        self.config: Json = {
            "certs": asdict(self.certs),
            "payload_dir": str(self.payload_dir),
            "allow_fallback": allow_fallback,
        }
        self.a: Worker | None = None
        self.b: Worker | None = None
        self.started = time.monotonic()
        self.checkpoint: Callable[[], object] | None = None
        self._sha: dict[int, str] = {}

    def _write_payload(self, size: int) -> None:
        with open(self.payload_dir / f"payload-{size}", "wb") as f:
            left = size
            while left:
                n = min(left, 4 * MiB)
                f.write(os.urandom(n))
                left -= n

    # -- workers

    def workers(self) -> tuple[Worker, Worker]:
        if self.a is None or self.b is None:
            self.a = Worker("A", self.config)
            self.b = Worker("B", self.config)
            self.a.ready()
            self.b.ready()
            log(f"workers ready [{time.monotonic() - self.started:.0f} s]")
        return self.a, self.b

    def restart_workers(self) -> None:
        for w in (self.a, self.b):
            if w is not None:
                w.proc.kill()
                w.proc.wait()
        self.a = self.b = None

    def close(self) -> None:
        for w in (self.a, self.b):
            if w is not None:
                w.close()
        self.log_file.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def save(self) -> None:
        if self.checkpoint is not None:
            with contextlib.suppress(OSError):
                self.checkpoint()

    # -- one sample

    def record(self, base: Json, result: Json) -> Json:
        sample = {**base, **result}
        sample.setdefault("status", "error")
        if sample["rep"] >= 0:
            self.samples.append(sample)
        self._print(sample)
        return sample

    def _print(self, s: Json) -> None:
        rep = "warm-up" if s["rep"] < 0 else f"rep {s['rep'] + 1}"
        size = s.get("size") or 0
        what = f"{s['part']} {s.get('suite', '')} {size // 1024} KiB {s['variant']} {rep}"
        if s["status"] != "ok":
            log(f"{what}: {s['status']}: {s.get('reason', '')}")
            return
        extra = ""
        if s.get("bytes") and s.get("seconds"):
            mibs = s["bytes"] / s["seconds"] / MiB
            per_gib = s["cpu_s"] / (s["bytes"] / (1 << 30))
            extra = f"{mibs:8.1f} MiB/s  {per_gib:7.2f} CPU s/GiB"
        elif s.get("count"):
            extra = f"{s['count'] / s['seconds']:8.1f} /s"
        share = s.get("user_share")
        share_text = f"  user {share * 100:4.1f}%" if share is not None else ""
        log(f"{what}: {extra}{share_text}  [{time.monotonic() - self.started:6.0f} s]")

    def pair(self, measured: Json, peer: Json, timeout: float = IO_TIMEOUT + 60) -> Json:
        """Send *measured* to worker A and *peer* to worker B; return A's answer."""
        a, b = self.workers()
        try:
            a.send(measured)
            b.send(peer)
            ra = a.read(timeout)
            rb = b.read(timeout)
        except WorkerDied as exc:
            self.restart_workers()
            return {"status": "error", "reason": str(exc)}
        if ra.get("status") == "ok" and rb.get("status") not in ("ok", None):
            return {"status": "error", "reason": f"peer: {rb.get('reason')}"}
        if ra.get("status") == "ok" and "raw_bytes" in rb:
            ra["peer_raw_bytes"] = rb["raw_bytes"]
        if ra.get("status") == "ok" and "count" in rb:
            ra["peer"] = rb
        return ra

    def single(self, worker: str, cmd: Json, timeout: float = IO_TIMEOUT + 60) -> Json:
        a, b = self.workers()
        w = a if worker == "A" else b
        try:
            w.send(cmd)
            return w.read(timeout)
        except WorkerDied as exc:
            self.restart_workers()
            return {"status": "error", "reason": str(exc)}

    # -- parts

    def run(self, first_rep: int = 0, done: frozenset[str] = frozenset()) -> None:
        """Measure repetitions *first_rep*.. and every part not in *done* (resuming)."""
        plan = self.plan
        servers: dict[tuple[str, str], SServer] = {}
        serves: dict[str, Serve] = {}
        try:
            if "conc" in plan.parts and "conc" not in done and _has_serve():
                for suite in plan.conc_suites:
                    serves[suite] = Serve(
                        suite, self.certs, self.payload_dir, max(plan.conc_levels), self.log_file
                    )
            if "tx" in plan.parts or "anchor" in plan.parts:
                for suite in plan.suites:
                    for kind, conf in (
                        ("openssl_c_ktls", self.ktls_conf),
                        ("openssl_c_user", None),
                    ):
                        log_path = self.tmp / f"s_server-{suite}-{kind}.log"
                        servers[(suite, kind)] = SServer(
                            suite, self.certs, self.payload_dir, conf, log_path
                        )
            self.workers()
            for server in servers.values():
                server.ready()
            if plan.warmup_size:
                # One untimed pass: first-use costs (kernel crypto set-up, page cache,
                # lazy imports, the library's cached probe) stay out of the figures.
                log("warm-up pass (not recorded)")
                for suite in plan.suites:
                    if "tx" in plan.parts:
                        for variant in TX_VARIANTS:
                            self.tx_sample(-1, suite, plan.warmup_size, variant, servers)
                    if "rx" in plan.parts:
                        for variant in RX_VARIANTS:
                            self.rx_sample(-1, suite, plan.warmup_size, variant)
            for rep in range(first_rep, plan.reps):
                log(f"repetition {rep + 1} of {plan.reps}")
                k = 0
                for suite in plan.suites:
                    if "tx" in plan.parts:
                        for size in plan.tx_sizes:
                            for variant in rotated(TX_VARIANTS, rep + k):
                                self.tx_sample(rep, suite, size, variant, servers)
                            k += 1
                    if "rx" in plan.parts:
                        for size in plan.rx_sizes:
                            for variant in rotated(RX_VARIANTS, rep + k):
                                self.rx_sample(rep, suite, size, variant)
                            k += 1
                    if "rr" in plan.parts:
                        for variant in rotated(RR_VARIANTS, rep + k):
                            self.rr_sample(rep, suite, variant)
                        k += 1
                    if "conn" in plan.parts:
                        for variant in rotated(CONN_VARIANTS, rep + k):
                            self.conn_sample(rep, suite, variant)
                        k += 1
                self.save()
            if "anchor" in plan.parts and "anchor" not in done and plan.anchor_pairs:
                size = max(plan.tx_sizes)
                log(f"anchor triples: {plan.anchor_pairs} per suite at {size // MiB} MiB")
                for i in range(plan.anchor_pairs):
                    for suite in plan.suites:
                        for variant in rotated(ANCHOR_VARIANTS, i):
                            self.tx_sample(i, suite, size, variant, servers, part="anchor")
                self.save()
            for server in servers.values():
                server.stop()
            if "ftps" in plan.parts and "ftps" not in done and plan.ftps_pairs:
                self.ftps()
                self.save()
            if "prof" in plan.parts and "prof" not in done:
                self.profiles()
                self.save()
            if "conc" in plan.parts and "conc" not in done:
                self.concurrency(serves)
                self.save()
        finally:
            for server in servers.values():
                server.stop()
            for serve in serves.values():
                serve.stop()

    def ftps(self) -> None:
        """pyftpdlib FTPS, one RETR per sample: stock handlers against ossl_ktls's.

        One unrecorded warm-up per variant, then ``ftps_pairs`` pairs in rotated order,
        then one profiled ossl_ktls RETR (part ``ftps_prof``, not used for figures).
        """
        plan = self.plan
        if shutil.which("curl") is None:
            self.notes.append("FTPS skipped: curl is not installed")
            return
        log(f"pyftpdlib FTPS: {plan.ftps_pairs} pairs of {plan.ftps_size // MiB} MiB RETRs")
        variants = list(FTPS_VARIANTS)
        for variant in variants:
            self.ftps_sample(-1, variant)
        for i in range(plan.ftps_pairs):
            for variant in rotated(variants, i):
                self.ftps_sample(i, variant)
        self.ftps_sample(0, "ftps_ktls", part="ftps_prof", profile=True)

    def ftps_sample(
        self, rep: int, variant: str, part: str = "ftps", profile: bool = False
    ) -> None:
        suite, size = self.plan.ftps_suite, self.plan.ftps_size
        base = {"part": part, "suite": suite, "size": size, "variant": variant, "rep": rep}
        a, _ = self.workers()
        port = free_port()
        got = self.tmp / "ftps-download"
        argv = curl_argv(port, f"payload-{size}", str(got), SUITES[suite].openssl_name)
        cmd = {"op": "ftps_server", "variant": variant, "suite": suite, "size": size}
        cmd.update({"port": port, "profile": profile})
        try:
            a.send(cmd)
            deadline = time.monotonic() + 120
            while not listening(port):
                if time.monotonic() > deadline or a.proc.poll() is not None:
                    raise WorkerDied(f"the FTPS server did not listen on port {port}")
                time.sleep(0.02)
            usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            try:
                done = subprocess.run(
                    argv, capture_output=True, text=True, timeout=IO_TIMEOUT, check=False
                )
                client: Json = {"returncode": done.returncode, "out": done.stdout.strip()}
                client["stderr"] = done.stderr.strip()[-300:]
            except subprocess.TimeoutExpired:
                client = {"returncode": None, "out": "", "stderr": "curl timed out"}
            usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if client["returncode"] != 0:
                # The server waits for a session to end: give it one if curl never came.
                with contextlib.suppress(OSError):
                    socket.create_connection((HOST, port), timeout=5).close()
            result = a.read(IO_TIMEOUT + 60)
        except WorkerDied as exc:
            self.restart_workers()
            self.record(base, {"status": "error", "reason": str(exc)})
            return
        client_cpu = (usage1.ru_utime - usage0.ru_utime) + (usage1.ru_stime - usage0.ru_stime)
        result["client"] = "curl"
        result["client_cpu_s"] = client_cpu
        if result.get("status") == "ok":
            problem = verify_download(client, got if got.exists() else None, size, self.sha(size))
            if problem:
                result = {**result, "status": "error", "reason": problem}
            else:
                result["sha256_ok"] = True
        with contextlib.suppress(FileNotFoundError):
            got.unlink()
        self.record(base, result)

    def sha(self, size: int) -> str:
        if size not in self._sha:
            self._sha[size] = sha256_file(self.payload_dir / f"payload-{size}")
        return self._sha[size]

    def profiles(self) -> None:
        """cProfile of ossl_ktls's own Python code: a sendfile transfer, and wrap()."""
        log("profiles (cProfile; their timings are not used)")
        size = max(self.plan.tx_sizes)
        for suite in self.plan.suites:
            a, _ = self.workers()
            base = {"part": "prof", "suite": suite, "size": size, "rep": 0}
            measured = {
                "op": "tx",
                "variant": "ktls_sendfile",
                "suite": suite,
                "size": size,
                "profile": True,
            }
            peer = {"op": "sink", "suite": suite, "port": a.port, "tls": True}
            self.record({**base, "variant": "ktls_sendfile"}, self.pair(measured, peer))
            _, b = self.workers()
            measured = {
                "op": "conn_client",
                "stack": "ktls",
                "suite": suite,
                "port": b.port,
                "seconds": self.plan.conn_seconds,
                "profile": True,
            }
            peer = {"op": "conn_server", "stack": "ktls", "suite": suite}
            self.record({**base, "size": 0, "variant": "conn_ktls"}, self.pair(measured, peer))

    def tx_sample(
        self,
        rep: int,
        suite: str,
        size: int,
        variant: str,
        servers: dict[tuple[str, str], SServer],
        part: str = "tx",
    ) -> None:
        base = {"part": part, "suite": suite, "size": size, "variant": variant, "rep": rep}
        if variant.startswith("openssl_c_"):
            server = servers[(suite, variant)]
            cmd = {
                "op": "http_sink",
                "suite": suite,
                "size": size,
                "port": server.port,
                "pid": server.proc.pid,
                "expect_ktls": variant == "openssl_c_ktls",
            }
            server.new_output()
            result = self.single("B", cmd)
            said = server.new_output()
            result["s_server_sendfile"] = "KTLS SENDFILE" in said
            if "sendfile requested but KTLS is not available" in said:
                result["s_server_note"] = "s_server fell back from SSL_sendfile to SSL_write"
            self.record(base, result)
            return
        a, _ = self.workers()
        tls = variant != "tcp_sendfile"
        measured = {"op": "tx", "variant": variant, "suite": suite, "size": size}
        peer = {"op": "sink", "suite": suite, "port": a.port, "tls": tls}
        result = self.pair(measured, peer)
        if result.get("status") == "ok" and result.get("peer_raw_bytes", size) < size:
            result = {"status": "error", "reason": "the receiver got fewer bytes than sent"}
        self.record(base, result)

    def rx_sample(self, rep: int, suite: str, size: int, variant: str) -> None:
        base = {"part": "rx", "suite": suite, "size": size, "variant": variant, "rep": rep}
        _, b = self.workers()
        tls = variant != "tcp_recv"
        if variant == "openssl_c_recv":
            self.record(base, self.s_client_sample(suite, size))
            return
        measured = {"op": "rx", "variant": variant, "suite": suite, "size": size, "port": b.port}
        peer = {"op": "push", "suite": suite, "size": size, "tls": tls}
        self.record(base, self.pair(measured, peer))

    def s_client_sample(self, suite: str, size: int) -> Json:
        _, b = self.workers()
        argv = ["openssl", "s_client", "-connect", f"{HOST}:{b.port}", "-quiet"]
        argv += openssl_suite_args(SUITES[suite])
        env = dict(os.environ)
        env["OPENSSL_CONF"] = str(self.ktls_conf)
        stat0 = read_tls_stat()
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            result = self.single(
                "B",
                {"op": "push", "suite": suite, "size": size, "tls": True, "watch_pid": proc.pid},
            )
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(60)
        finally:
            stop_process(proc)
        stat1 = read_tls_stat()
        if stat0 is not None and stat1 is not None:
            result["ktls_rx"] = stat1.get("TlsRxSw", 0) > stat0.get("TlsRxSw", 0)
        else:
            result["ktls_rx"] = False
        return result

    def rr_sample(self, rep: int, suite: str, variant: str) -> None:
        base = {
            "part": "rr",
            "suite": suite,
            "size": self.plan.rr_msg,
            "variant": variant,
            "rep": rep,
        }
        _, b = self.workers()
        stack = variant.removeprefix("rr_")
        server_stack = "pyopenssl" if stack == "stdlib" else stack
        common = {"suite": suite, "msg_size": self.plan.rr_msg}
        measured = {
            "op": "rr_client",
            "stack": stack,
            "port": b.port,
            "seconds": self.plan.rr_seconds,
        }
        peer = {"op": "echo_server", "stack": server_stack}
        self.record(base, self.pair({**measured, **common}, {**peer, **common}))

    def conn_sample(self, rep: int, suite: str, variant: str) -> None:
        base = {"part": "conn", "suite": suite, "size": 0, "variant": variant, "rep": rep}
        _, b = self.workers()
        stack, server_stack, resume = CONN_STACKS[variant]
        measured = {
            "op": "conn_client",
            "stack": stack,
            "suite": suite,
            "port": b.port,
            "seconds": self.plan.conn_seconds,
            "resume": resume,
        }
        peer = {"op": "conn_server", "stack": server_stack, "suite": suite}
        self.record(base, self.pair(measured, peer))

    def concurrency(self, serves: dict[str, Serve]) -> None:
        plan = self.plan
        if not serves:
            reason = "python -m ossl_ktls serve is not available in this checkout"
            self.notes.append(f"concurrency skipped: {reason}")
            log(reason)
            return
        for suite, serve in serves.items():
            try:
                serve.ready()
            except RuntimeError as exc:
                self.notes.append(f"concurrency skipped for {suite}: {exc}")
                log(str(exc))
                continue
            try:
                for rep in range(plan.conc_reps):
                    for n in rotated([str(n) for n in plan.conc_levels], rep):
                        base = {
                            "part": "conc",
                            "suite": suite,
                            "size": plan.conc_size,
                            "n": int(n),
                            "variant": "serve",
                            "rep": rep,
                            "serve_ktls": serve.ktls,
                        }
                        cmd = {
                            "op": "http_many",
                            "suite": suite,
                            "n": int(n),
                            "size": plan.conc_size,
                            "pid": serve.proc.pid,
                            "port": serve.port,
                        }
                        self.record(base, self.single("B", cmd))
            finally:
                serve.stop()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_download(client: Json, got: Path | None, size: int, sha256: str) -> str | None:
    """Why curl's download of the *size*-byte payload is not byte-exact, or None."""
    if client.get("returncode") != 0:
        return f"curl failed ({client.get('returncode')}): {client.get('stderr', '')}"
    if client.get("out") != str(size):
        return f"curl reports {client.get('out')!r} bytes downloaded, expected {size}"
    if got is None:
        return "curl wrote no file"
    if got.stat().st_size != size:
        return f"the downloaded file has {got.stat().st_size} bytes, expected {size}"
    if sha256_file(got) != sha256:
        return "the downloaded file's SHA-256 differs from the payload's"
    return None


def _has_serve() -> bool:
    try:
        from ossl_ktls import cli
    except ImportError:
        return False
    return hasattr(cli, "cmd_serve")


# --------------------------------------------------------------------------- entry points


def measure(args: argparse.Namespace) -> Json:
    profile = args.profile or ("full" if args.full else None)
    if profile is None:
        profile = "tcg" if emulation() == "tcg" else "native"
    plan = make_plan(profile)
    if args.reps:
        plan.reps = args.reps
    if args.parts:
        plan.parts = [p for p in args.parts.split(",") if p]
        unknown = set(plan.parts) - set(PARTS)
        if unknown:
            raise SystemExit(f"bench: unknown parts {sorted(unknown)} (known: {PARTS})")
    previous: Json | None = None
    if args.resume and Path(args.resume).exists():
        previous = json.loads(Path(args.resume).read_text())
        plan = Plan(**previous["plan"])
    host: Json = json.loads(Path(args.host_info).read_text()) if args.host_info else {}
    env = environment(host)
    log(
        f"profile {plan.profile}: kernel {env['kernel']}, {env['cpu_model']}, "
        f"emulation {env['emulation']}, kTLS ulp={env['ktls_probe']['ulp']}"
    )
    started = time.time()
    bench = Bench(plan, args.allow_fallback)
    boots = [env]
    first_rep, done, spent = 0, frozenset[str](), 0.0
    if previous is not None:
        # Whole repetitions only: a repetition's pairs always come from one boot.
        bench.samples = list(previous["samples"])
        bench.notes = list(previous.get("notes", []))
        boots = [*previous.get("boots", [previous["environment"]]), env]
        reps = {s["rep"] for s in bench.samples if s["part"] in ("tx", "rx", "rr", "conn")}
        first_rep = len(reps)
        done = frozenset(
            s["part"] for s in bench.samples if s["part"] in ("anchor", "ftps", "prof", "conc")
        )
        spent = float(previous.get("duration_s", 0.0))
        log(f"resuming {args.resume}: repetition {first_rep + 1} on, done: {sorted(done)}")

    def results() -> Json:
        out: Json = {
            "schema": 1,
            "environment": boots[0],
            "plan": asdict(plan),
            "allow_fallback": args.allow_fallback,
            "duration_s": spent + time.time() - started,
            "notes": bench.notes,
            "samples": bench.samples,
        }
        if len(boots) > 1:
            out["boots"] = boots
        return out

    if args.raw:
        # A run killed from outside still leaves what it measured.
        partial = Path(args.raw + ".partial")
        bench.checkpoint = lambda: partial.write_text(json.dumps(results()))
    try:
        bench.run(first_rep, done)
    finally:
        bench.close()
    return results()


def run_in_vm(args: argparse.Namespace) -> int:
    """Measure inside the lab kernel (lab.vm), then write the report here."""
    VM_OUT.mkdir(parents=True, exist_ok=True)
    raw = VM_OUT / "raw.json"
    for stale in (raw, Path(str(raw) + ".partial")):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    # Host facts go through a file: the guest command's environment ends up on the
    # guest kernel's command line, which has a hard length limit (2048 bytes on x86).
    host_info = VM_OUT / "host.json"
    host_info.write_text(
        json.dumps(
            {
                "cpu_model": cpu_model(),
                "kernel": platform.release(),
                "calibration": calibrate(),
                "wrap_estimate": wrap_cost.estimate(),
                "commit": commit(),
            }
        )
    )
    partial = Path(str(raw) + ".partial")
    inner = [sys.executable, "-m", "bench", "--raw", str(raw), "--host-info", str(host_info)]
    inner += ["--resume", str(partial)]  # only used when an earlier boot left one
    if args.reps:
        inner += ["--reps", str(args.reps)]
    if args.parts:
        inner += ["--parts", args.parts]
    if args.profile:
        inner += ["--profile", args.profile]
    if args.full:
        inner.append("--full")
    if args.allow_fallback:
        inner.append("--allow-fallback")
    cmd = [sys.executable, "-m", "lab.vm", "--series", args.vm]
    cmd += ["--timeout", str(args.vm_timeout), "--rwdir", str(VM_OUT), "--", *inner]
    status = 1
    for attempt in range(1 + args.vm_retries):
        if attempt:
            log(f"the guest stopped early (status {status}); boot {attempt + 1}, resuming")
        log(f"running in the {args.vm} lab kernel: {' '.join(cmd)}")
        status = subprocess.run(cmd, cwd=str(REPO), check=False).returncode
        if status == 0 and raw.exists():
            break
    if status != 0 or not raw.exists():
        log(f"the VM run failed (status {status}); no report written")
        if partial.exists():
            log(f"what it measured before it stopped is in {partial} (--report-only takes it)")
        return status or 1
    results = json.loads(raw.read_text())
    results["command"] = "python -m bench " + " ".join(sys.argv[1:])
    write_outputs(results, Path(args.out))
    return 0


def write_outputs(results: Json, out: Path) -> None:
    from bench import report

    report.write(results, out)
    log(f"wrote {out / 'benchmarks.md'}, {out / 'benchmarks.json'} and plots")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="ossl_ktls against pyOpenSSL, the stdlib ssl, OpenSSL's C kTLS and plain "
        "TCP, side by side in one run; writes docs/benchmarks.{md,json} and PNG plots.",
    )
    p.add_argument("--vm", metavar="SERIES", help="run inside this lab kernel (e.g. 7.2) under TCG")
    p.add_argument("--vm-timeout", type=float, default=2400.0, help="seconds (default 2400)")
    p.add_argument(
        "--vm-retries",
        type=int,
        default=2,
        help="boot again and resume after whole repetitions when the guest is stopped "
        "from outside (default 2)",
    )
    p.add_argument("--resume", metavar="FILE", help="continue a run from its checkpoint")
    p.add_argument("--full", action="store_true", help="sizes up to 1 GiB (real hosts only)")
    p.add_argument("--profile", choices=["quick", "tcg", "native", "full"], help="preset sizes")
    p.add_argument("--reps", type=int, help="repetitions (default: the profile's)")
    p.add_argument("--parts", help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument(
        "--allow-fallback",
        action="store_true",
        help="measure the ossl_ktls rows even where the kernel cannot take over (user space)",
    )
    p.add_argument("--out", default=str(DOCS), help="report folder (default: docs/)")
    p.add_argument("--raw", metavar="FILE", help="only measure; write the raw results here")
    p.add_argument("--report-only", metavar="FILE", help="only write the report from this JSON")
    p.add_argument("--host-info", metavar="FILE", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report_only:
        results = json.loads(Path(args.report_only).read_text())
        write_outputs(results, Path(args.out))
        return 0
    if args.vm:
        return run_in_vm(args)
    results = measure(args)
    if args.raw:
        Path(args.raw).write_text(json.dumps(results, indent=1))
        log(f"raw results in {args.raw}")
        return 0
    results["command"] = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    write_outputs(results, Path(args.out))
    return 0
