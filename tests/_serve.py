"""Running the ``ossl-ktls`` command line in tests: the environment, teardown, and
``serve`` with its JSON events (used by the CLI tests and the load test)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

REPO = Path(__file__).resolve().parent.parent
# Per step (subprocess, curl, event): generous for TCG, but nothing may hang forever.
TIMEOUT = float(os.environ.get("OSSL_KTLS_CLI_TIMEOUT", "600"))
CURL = ("curl", "--silent", "--show-error", "--noproxy", "*", "--max-time", str(TIMEOUT))


def cli_env() -> dict[str, str]:
    """The environment for ``python -m ossl_ktls``: this checkout first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def stop(proc: subprocess.Popen[Any]) -> None:
    """Kill *proc* if it still runs, and reap it."""
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


class Serve:
    """``serve --json --port 0`` running; its stdout events are collected by a thread."""

    def __init__(self, root: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ossl_ktls",
                "serve",
                str(root),
                "--port",
                "0",
                "--json",
                *list(extra),
            ],
            cwd=REPO,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()
        self.ready = self.next("ready")

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.events.put(json.loads(line))

    def next(self, kind: str) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                event = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                assert self.proc.stderr is not None
                stop(self.proc)
                pytest.fail(f"no {kind} event from serve; stderr: {self.proc.stderr.read()}")
            if event["event"] == kind:
                return event

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CURL, "--cacert", self.ready["cert"], *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT + 10,
            check=False,
        )

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.ready['port']}{path}"
