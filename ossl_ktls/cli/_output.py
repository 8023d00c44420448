"""What every command of the command line prints: summary lines, warnings, progress, errors.

Standard library only (``probe`` and ``stats`` must start fast); ``tqdm`` is imported only
when a progress bar is shown.
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass
from typing import IO, Any

PROG = "ossl-ktls"
VERSIONS = ("1.2", "1.3")
# Offered when no --cipher is given: the AEAD suites every kTLS kernel since 5.11 takes.
# AES-128-CCM stays opt-in (not in OpenSSL's default TLS 1.3 list, rarely offered).
DEFAULT_CIPHERS = ("aes-256-gcm", "aes-128-gcm", "chacha20-poly1305")


class CLIError(Exception):
    """A failure to report as one line on stderr, with an exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------- output helpers


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def warn(message: str) -> None:
    """One warning line on stderr."""
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


@dataclass
class Summary:
    """What one transfer did; printed as the command's last line or as JSON."""

    command: str
    peer: str
    nbytes: int
    seconds: float
    version: str
    cipher: str
    openssl_cipher: str
    ktls_tx: bool
    ktls_rx: bool
    fallback_reason: str | None

    @property
    def throughput(self) -> float:
        """Bytes per second (0 when nothing was timed)."""
        return self.nbytes / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, object]:
        """The ``--json`` form."""
        return {
            "command": self.command,
            "peer": self.peer,
            "bytes": self.nbytes,
            "seconds": round(self.seconds, 6),
            "throughput": round(self.throughput, 1),
            "tls_version": self.version,
            "cipher": self.cipher,
            "openssl_cipher": self.openssl_cipher,
            "ktls_tx": self.ktls_tx,
            "ktls_rx": self.ktls_rx,
            "fallback_reason": self.fallback_reason,
        }

    def line(self) -> str:
        """The one human summary line."""
        verb = {"send": "sent", "recv": "received"}.get(self.command, self.command)
        text = (
            f"{verb} {self.nbytes} bytes ({human_bytes(self.nbytes)}) in {self.seconds:.2f} s "
            f"({human_bytes(self.throughput)}/s), TLS {self.version or '?'} "
            f"{self.cipher or '?'}, kTLS TX {_on_off(self.ktls_tx)} RX {_on_off(self.ktls_rx)}"
        )
        if self.fallback_reason:
            text += f" ({self.fallback_reason})"
        return text


def _emit(summary: Summary, as_json: bool, stream: IO[str]) -> None:
    if as_json:
        print(json.dumps(summary.as_json()), file=stream, flush=True)
    else:
        print(summary.line(), file=stream, flush=True)


class Progress:
    """A progress bar on stderr when it is a terminal; else nothing.

    ``tqdm`` comes with the ``cli`` extra (``pip install ossl-ktls[cli]``), imported here
    only when a bar is shown (it costs start-up time otherwise); without it the transfer
    goes on without a bar, and says once how to get one.
    """

    def __init__(self, total: int | None, desc: str, enabled: bool) -> None:
        self._bar: Any = None
        if not enabled or not sys.stderr.isatty():
            return
        try:
            tqdm = importlib.import_module("tqdm")
        except ImportError:
            print(
                "ossl-ktls: no progress bar: tqdm is not installed (pip install ossl-ktls[cli])",
                file=sys.stderr,
            )
            return
        self._bar = tqdm.tqdm(
            total=total,
            desc=desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
        )

    def update(self, n: int) -> None:
        """Advance by *n* bytes."""
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        """Remove the bar (the summary line takes its place)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- probe
