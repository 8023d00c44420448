"""The main job (``make demo``): really move a file over kernel TLS, and show it.

Usage::

    python -m lab.demo [--size-mib 64] [--series 7.2] [--here]

It makes a file of random bytes, serves it with ``ossl-ktls serve`` on 127.0.0.1 (a
throwaway certificate), fetches it with curl over TLS 1.3 and then TLS 1.2, checks each
copy's SHA-256, and says in plain words what happened: the probe table, each fetch's
throughput, which directions the kernel carried, and the kernel's own TLS counters.

Where to run: if this machine's kernel has kernel TLS, right here; otherwise it boots the
newest kernel of the lab (``lab/vm.py``, series 7.2 by default) under QEMU and runs
itself inside with ``--here --expect-ktls``. ``--here`` alone runs on this kernel
whatever it has (without kTLS that shows the user-space fallback).

Exit status: 0 when every copy matches (and, with ``--expect-ktls``, the kernel carried
the file); 1 otherwise; the VM runner's status when the boot itself fails.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ossl_ktls import probe
from ossl_ktls.cli import human_bytes, read_tls_stat

REPO = Path(__file__).resolve().parent.parent
WAIT = 900.0  # any single step; generous for TCG emulation
FETCHES = (
    ("TLS 1.3", ["--tlsv1.3"]),
    ("TLS 1.2", ["--tlsv1.2", "--tls-max", "1.2"]),
)


def say(text: str = "") -> None:
    """One line of the report."""
    print(text, flush=True)


@dataclass
class Fetch:
    """One curl download and what the server said about it."""

    label: str
    ok: bool
    status: str
    nbytes: int
    seconds: float
    speed: float
    digest_ok: bool
    event: dict[str, Any] | None
    error: str = ""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def make_file(path: Path, size: int) -> str:
    """Write *size* random bytes; return their SHA-256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Server:
    """``python -m ossl_ktls serve --json`` with its events read by a thread."""

    def __init__(self, root: Path) -> None:
        cmd = [sys.executable, "-m", "ossl_ktls", "serve", str(root)]
        cmd += ["--host", "127.0.0.1", "--port", "0", "--json", "--timeout", "120"]
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        threading.Thread(target=self._events, args=(self.proc.stdout,), daemon=True).start()
        threading.Thread(target=self._errors, args=(self.proc.stderr,), daemon=True).start()

    def _events(self, stream: IO[str]) -> None:
        for line in stream:
            with contextlib.suppress(json.JSONDecodeError):
                self.events.put(json.loads(line))

    def _errors(self, stream: IO[str]) -> None:
        for line in stream:
            self.stderr.append(line.rstrip("\n"))

    def next(self, kind: str, timeout: float = WAIT) -> dict[str, Any] | None:
        """The next event of *kind*, or None if none came in time."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                event = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if event.get("event") == kind:
                return event
            if time.monotonic() > deadline:
                return None

    def stop(self) -> int | None:
        """SIGTERM, then the exit status (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None


def fetch(
    server: Server, ready: dict[str, Any], label: str, flags: list[str], out: Path, digest: str
) -> Fetch:
    """Download the file with curl and check it."""
    url = f"{ready['url']}demo.bin"
    cmd = ["curl", "--silent", "--show-error", "--noproxy", "*", "--max-time", str(int(WAIT))]
    cmd += ["--cacert", ready["cert"], *flags, "-o", str(out)]
    cmd += ["-w", "%{http_code} %{size_download} %{time_total} %{speed_download}", url]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT + 30, check=False)
    except subprocess.TimeoutExpired:
        return Fetch(label, False, "-", 0, 0.0, 0.0, False, None, "curl timed out")
    parts = done.stdout.split()
    status, nbytes, seconds, speed = ([*parts, "-", "0", "0", "0"])[:4]
    event = server.next("request", timeout=30)
    digest_ok = done.returncode == 0 and out.exists() and file_digest(out) == digest
    with contextlib.suppress(FileNotFoundError):
        out.unlink()
    return Fetch(
        label=label,
        ok=done.returncode == 0 and status == "200",
        status=status,
        nbytes=int(float(nbytes)),
        seconds=float(seconds),
        speed=float(speed),
        digest_ok=digest_ok,
        event=event,
        error=done.stderr.strip(),
    )


def describe(f: Fetch) -> list[str]:
    """Plain words about one fetch."""
    if not f.ok:
        return [f"{f.label}: the download FAILED (HTTP {f.status}): {f.error or 'no detail'}"]
    lines = [
        f"{f.label}: curl downloaded {human_bytes(f.nbytes)} in {f.seconds:.2f} s "
        f"= {human_bytes(f.speed)}/s; SHA-256 "
        + ("matches the original." if f.digest_ok else "DOES NOT MATCH the original!")
    ]
    e = f.event
    if e is None:
        lines.append("  (the server reported nothing about this request)")
        return lines
    lines.append(f"  negotiated TLS {e['tls_version']} with {e['cipher']}.")
    if e["ktls_tx"]:
        lines.append("  The server sent the file with sendfile() through kernel TLS (kTLS TX on):")
        lines.append("  the kernel encrypted every record, the file never passed through Python.")
    else:
        lines.append("  The server encrypted the file in user space with OpenSSL (kTLS TX off).")
    if e["ktls_rx"]:
        lines.append("  The request came in through kernel TLS too (kTLS RX on).")
    else:
        lines.append("  The request was decrypted in user space (kTLS RX off).")
    if e.get("fallback_reason"):
        lines.append(f"  Why not all in the kernel: {e['fallback_reason']}.")
    return lines


def run_here(size_mib: int, expect_ktls: bool) -> int:
    """The demo on the running kernel."""
    caps = probe()
    say(f"== ossl-ktls demo on Linux {caps.kernel} ==")
    say()
    say("What this kernel's TLS layer can do (ossl-ktls probe):")
    table = subprocess.run(
        [sys.executable, "-m", "ossl_ktls", "probe"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    for line in table.stdout.splitlines():
        say(f"  {line}")
    say()
    if shutil.which("curl") is None:
        say("curl is not installed: the demo needs it (apt-get install curl).")
        return 1
    problems: list[str] = []
    counters_before: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="ossl-ktls-demo-") as tmp:
        root = Path(tmp) / "www"
        root.mkdir()
        size = size_mib << 20
        say(f"Making a {size_mib} MiB file of random bytes...")
        digest = make_file(root / "demo.bin", size)
        say(f"  SHA-256 {digest}")
        server = Server(root)
        try:
            ready = server.next("ready", timeout=WAIT)
            if ready is None:
                say("The server did not start:")
                for line in server.stderr:
                    say(f"  {line}")
                return 1
            counters_before = read_tls_stat() or {}  # after the server's own probe
            say(
                f"Serving it with 'python -m ossl_ktls serve' on {ready['url']} "
                f"(kTLS tx={ready['ktls_tx']} rx={ready['ktls_rx']}; throwaway certificate "
                "that curl trusts with --cacert)."
            )
            say()
            fetches = []
            for label, flags in FETCHES:
                say(f"Fetching it with curl over {label}...")
                f = fetch(server, ready, label, flags, Path(tmp) / "copy.bin", digest)
                fetches.append(f)
                for line in describe(f):
                    say(line)
                say()
        finally:
            status = server.stop()
        summary = server.next("summary", timeout=5)
    counters_after = read_tls_stat() or {}

    if status != 0:
        problems.append(f"the server did not stop cleanly (exit status {status})")
    for f in fetches:
        if not f.ok:
            problems.append(f"the {f.label} download failed")
        elif not f.digest_ok:
            problems.append(f"the {f.label} copy differs from the original")
        if expect_ktls and not (f.event and f.event["ktls_tx"]):
            problems.append(f"the {f.label} download did not go through kernel TLS TX")
    if summary is not None:
        say(
            f"The server answered {summary['requests']} requests on {summary['connections']} "
            f"connections and stopped cleanly on SIGTERM."
        )
    moved = {
        name: counters_after[name] - counters_before.get(name, 0)
        for name in counters_after
        if not name.startswith("TlsCurr") and counters_after[name] != counters_before.get(name, 0)
    }
    if counters_after:
        words = ", ".join(f"{n} +{d}" for n, d in moved.items()) or "no change"
        say(f"The kernel's own counters (/proc/net/tls_stat) moved during the fetches: {words}.")
    else:
        say("This kernel has no TLS counters (/proc/net/tls_stat): no kernel TLS here.")
    if problems:
        say()
        for p in problems:
            say(f"PROBLEM: {p}.")
        if server.stderr:
            say("The server said:")
            for line in server.stderr[-20:]:
                say(f"  {line}")
        return 1
    say()
    if all(f.event and f.event["ktls_tx"] for f in fetches):
        say(
            "Done: both copies are byte-for-byte identical, and the kernel encrypted the file "
            "on the way out for TLS 1.3 and TLS 1.2."
        )
    else:
        say(
            "Done: both copies are byte-for-byte identical; this kernel has no kernel TLS, "
            "so the same API carried them through user space."
        )
    return 0


def run_in_vm(series: str, size_mib: int, reason: str | None) -> int:
    """Boot the lab kernel and run the demo inside it."""
    say(f"This machine's kernel ({os.uname().release}) has no kernel TLS: {reason}.")
    say(
        f"So the demo boots the lab's Linux {series} under QEMU (software emulation, a few "
        "minutes; everything inside runs 10-30x slower than native) and runs there."
    )
    say()
    cmd = [sys.executable, "-m", "lab.vm", "--series", series, "--"]
    cmd += [sys.executable, "-m", "lab.demo", "--here", "--expect-ktls"]
    cmd += ["--size-mib", str(size_mib)]
    return subprocess.call(cmd, cwd=REPO)


def main(argv: list[str] | None = None) -> int:
    """Parse the options and run the demo where kTLS is."""
    parser = argparse.ArgumentParser(
        prog="python -m lab.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size-mib", type=int, default=64, help="file size (default 64)")
    parser.add_argument(
        "--series", default="7.2", help="lab kernel to boot when this one lacks kTLS"
    )
    parser.add_argument(
        "--here", action="store_true", help="run on this kernel, whatever it can do"
    )
    parser.add_argument(
        "--expect-ktls",
        action="store_true",
        help="fail unless kernel TLS carried every download (the default when not --here)",
    )
    args = parser.parse_args(argv)
    if args.size_mib < 1:
        parser.error("--size-mib must be at least 1")
    if args.here:
        return run_here(args.size_mib, args.expect_ktls)
    caps = probe()
    if caps.ulp:
        return run_here(args.size_mib, True)
    return run_in_vm(args.series, args.size_mib, caps.ulp_error)


if __name__ == "__main__":
    sys.exit(main())
