"""pytest plumbing of the interop suite: peers as fixtures, their logs in failure reports.

* ``peers``: starts external programs (see :mod:`interop.peers`), waits for listening
  servers through ``/proc/net/tcp``, stops every one of them at teardown, and on a
  failure stops them first and attaches each one's command line, exit status, stdout
  summary and log to the report.
* A watchdog per test (``OSSL_KTLS_INTEROP_TEST_TIMEOUT`` seconds, default 600): when it
  fires, the test's peers are killed and its sockets shut down, so a blocked call returns
  and the test fails instead of hanging. Every single wait has its own shorter timeout
  too (``OSSL_KTLS_INTEROP_TIMEOUT``).
* ``handover``: checks a :class:`~ossl_ktls.KTLSConnection` against what
  ``tests/expectations.py`` declares for ``OSSL_KTLS_ENV``, and records the path taken
  (kernel or user space, per direction) for the summary table printed at the end.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

import ossl_ktls
from interop.peers import (
    TIMEOUT,
    CertSet,
    Listener,
    Peer,
    PeerError,
    expected_directions,
    free_port,
    make_certs,
)
from tests.expectations import current

TEST_TIMEOUT = float(os.environ.get("OSSL_KTLS_INTEROP_TEST_TIMEOUT", "600"))

_PEERS = pytest.StashKey["PeerFactory"]()
_ROWS = pytest.StashKey[dict[str, "Row"]]()


# --------------------------------------------------------------------------- certificates


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    """A trustme CA and an ECDSA (P-256) server certificate for localhost/127.0.0.1."""
    return make_certs(tmp_path_factory.mktemp("certs-ecdsa"), "ecdsa")


@pytest.fixture(scope="session")
def rsa_certs(tmp_path_factory: pytest.TempPathFactory) -> CertSet:
    """A trustme CA and an RSA server certificate for localhost/127.0.0.1."""
    return make_certs(tmp_path_factory.mktemp("certs-rsa"), "rsa")


@pytest.fixture(scope="session")
def certs_by_type(certs: CertSet, rsa_certs: CertSet) -> dict[str, CertSet]:
    """Both certificate sets by key type ("ecdsa", "rsa")."""
    return {"ecdsa": certs, "rsa": rsa_certs}


@pytest.fixture(scope="session")
def dhparams(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RFC 7919 ffdhe2048 parameters (for an ossl_ktls server offering DHE-RSA suites)."""
    path = tmp_path_factory.mktemp("dh") / "ffdhe2048.pem"
    subprocess.run(
        [
            *("openssl", "genpkey", "-genparam", "-algorithm", "DH"),
            *("-pkeyopt", "group:ffdhe2048", "-out", str(path)),
        ],
        check=True,
        timeout=TIMEOUT,
        capture_output=True,
    )
    return path


# --------------------------------------------------------------------------- peers


class PeerFactory:
    """Starts peers for one test and guarantees they end with it."""

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self._sockets: list[socket.socket] = []
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def server(
        self,
        name: str,
        argv_for_port: Callable[[int], Sequence[str]],
        *,
        stdout: str = "data",
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        logfiles: Sequence[Path] = (),
    ) -> tuple[Peer, int]:
        """Start a listening peer on a free port; returns it and the port once it listens.

        A port taken between choosing and binding (another process on the machine) makes
        the peer exit before listening: that is retried on a new port, twice.
        """
        last: PeerError | None = None
        for _attempt in range(3):
            port = free_port()
            peer = self.client(
                name, argv_for_port(port), stdout=stdout, env=env, cwd=cwd, logfiles=logfiles
            )
            try:
                peer.wait_listening(port)
                return peer, port
            except PeerError as exc:
                if peer.returncode is None:
                    raise
                last = exc
        assert last is not None
        raise last

    def client(
        self,
        name: str,
        argv: Sequence[str],
        *,
        stdout: str = "data",
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        logfiles: Sequence[Path] = (),
    ) -> Peer:
        """Start a peer that connects by itself (or any peer not awaited as a listener)."""
        peer = Peer(name, argv, stdout=stdout, env=env, cwd=cwd, logfiles=logfiles)
        with self._lock:
            self.peers.append(peer)
        return peer.start()

    def listen(self) -> Listener:
        """An ossl_ktls listening socket on a free loopback port, closed at teardown."""
        listener = Listener()
        with self._lock:
            self._listeners.append(listener)
        return listener

    def track(self, conn: ossl_ktls.KTLSConnection | socket.socket) -> None:
        """Let the watchdog shut *conn*'s socket down if the test runs out of time."""
        with contextlib.suppress(OSError):
            dup = socket.socket(fileno=os.dup(conn.fileno()))
            with self._lock:
                self._sockets.append(dup)

    def stop_all(self) -> None:
        with self._lock:
            peers = list(self.peers)
        for peer in peers:
            peer.stop()

    def abort(self) -> None:
        """Watchdog: kill every peer and shut every tracked socket down."""
        with self._lock:
            socks = list(self._sockets)
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.stop_all()

    def close(self) -> None:
        self.stop_all()
        with self._lock:
            socks, self._sockets = self._sockets, []
            listeners, self._listeners = self._listeners, []
        for sock in socks:
            sock.close()
        for listener in listeners:
            listener.close()


@pytest.fixture
def peers(request: pytest.FixtureRequest) -> Iterator[PeerFactory]:
    """Start external peers; all are stopped at teardown, and logged on failure."""
    factory = PeerFactory()
    request.node.stash[_PEERS] = factory
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        factory.abort()

    timer = threading.Timer(TEST_TIMEOUT, expire)
    timer.daemon = True
    timer.start()
    try:
        yield factory
    finally:
        timer.cancel()
        factory.close()
    if fired.is_set():
        pytest.fail(f"watchdog: the test ran longer than {TEST_TIMEOUT}s; its peers were killed")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    rows = item.config.stash.get(_ROWS, None)
    if rows is not None and item.nodeid in rows and report.when == "call":
        rows[item.nodeid].outcome = report.outcome
    if report.failed or (report.when == "call" and report.outcome == "failed"):
        factory = item.stash.get(_PEERS, None)
        if factory is not None:
            factory.stop_all()  # the logs are complete once the peers ended
            for peer in factory.peers:
                report.sections.append((f"peer {peer.name} ({report.when})", peer.report()))


# --------------------------------------------------------------------------- expectations


@dataclass
class Row:
    """One handover seen by a test: for the summary table."""

    peer: str
    role: str
    version: str
    cipher: str
    ktls_tx: bool
    ktls_rx: bool
    outcome: str = "?"


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_ROWS] = {}


Handover = Callable[..., None]


@pytest.fixture
def handover(
    request: pytest.FixtureRequest, record_property: Callable[[str, object], None]
) -> Handover:
    """``handover(k, peer=..., role=..., rx_without_rekey=False)``: check and record the path.

    The kernel must carry exactly the directions the environment declares (undeclared:
    all of them; TLS 1.3 RX only where the kernel can rekey, unless
    ``rx_without_rekey``); a direction left in user space must come with a
    ``fallback_reason``. A kernel that lacks kTLS without declaring so fails here.
    """

    def check(
        k: ossl_ktls.KTLSConnection,
        *,
        peer: str,
        role: str,
        version: str,
        cipher: str,
        rx_without_rekey: bool = False,
    ) -> None:
        assert k.version == version, f"negotiated TLS {k.version}, wanted {version}"
        assert k.suite is not None and k.suite.name == cipher, f"negotiated {k.suite}"
        tx, rx = expected_directions(version, cipher, rx_without_rekey=rx_without_rekey)
        rows = request.config.stash[_ROWS]
        rows[request.node.nodeid] = Row(peer, role, version, cipher, k.ktls_tx, k.ktls_rx)
        record_property("ktls_tx", k.ktls_tx)
        record_property("ktls_rx", k.ktls_rx)
        record_property("fallback_reason", k.fallback_reason or "")
        env = current()
        declared = env.name if env else "undeclared (expect full kTLS)"
        assert (k.ktls_tx, k.ktls_rx) == (tx, rx), (
            f"{declared}: expected kernel tx={tx} rx={rx}, got tx={k.ktls_tx} "
            f"rx={k.ktls_rx}; fallback_reason={k.fallback_reason!r}"
        )
        if tx and rx:
            assert k.fallback_reason is None, k.fallback_reason
        else:
            assert k.fallback_reason, "a direction stayed in user space without a reason"

    return check


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """A table of what was verified against which peer, and by which path."""
    rows = terminalreporter.config.stash.get(_ROWS, {})
    if not rows:
        return
    env = current()
    title = f"interop: peers x path ({env.name if env else 'undeclared env'})"
    terminalreporter.write_sep("=", title)
    groups: dict[tuple[str, str, str, str], list[Row]] = {}
    for row in rows.values():
        groups.setdefault((row.peer, row.role, row.version, row.cipher), []).append(row)
    terminalreporter.write_line("| peer | ossl_ktls as | TLS | cipher | TX | RX | tests passed |")
    terminalreporter.write_line("| --- | --- | --- | --- | --- | --- | --- |")

    def path(flags: set[bool]) -> str:
        return "/".join(sorted("kernel" if f else "user" for f in flags))

    for (peer, role, version, cipher), group in sorted(groups.items()):
        passed = sum(r.outcome == "passed" for r in group)
        terminalreporter.write_line(
            f"| {peer} | {role} | {version} | {cipher} | {path({r.ktls_tx for r in group})} "
            f"| {path({r.ktls_rx for r in group})} | {passed}/{len(group)} |"
        )
