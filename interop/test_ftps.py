"""FTPS over kernel TLS: pyftpdlib with ``ossl_ktls.contrib.pyftpdlib``, judged by clients
nobody here wrote (curl, and Python's ``ftplib.FTP_TLS``).

The server runs pyftpdlib's own event loop in a thread of this process, with
``KTLS_FTPHandler`` (explicit FTPS: AUTH TLS, PROT P). Each client downloads (RETR) and
uploads (STOR) a 64 MiB file; both copies must have the file's size and SHA-256. Where
this environment declares kernel TX, RETR must go through pyftpdlib's own ``os.sendfile``
loop (counted here) and the kernel's TLS TX counter must grow; where it declares kernel RX
(TLS 1.3: with rekey), STOR's records must be counted by the kernel's RX counter.
"""

from __future__ import annotations

import ftplib
import hashlib
import os
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer

import ossl_ktls
from interop.peers import TIMEOUT, CertSet, expected_directions
from ossl_ktls.cli import read_tls_stat
from ossl_ktls.contrib.pyftpdlib import KTLS_DTPHandler, KTLS_FTPHandler

SIZE = 64 << 20
CIPHER = "aes-256-gcm"  # what curl and ftplib (OpenSSL's default TLS 1.3 order) agree on


def _sha256(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return path.stat().st_size, h.hexdigest()


@pytest.fixture
def ftps(certs: CertSet, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A pyftpdlib FTPS server (user "u", password "p", home *tmp_path*/home) on a free port."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "big.bin").write_bytes(os.urandom(SIZE))
    authorizer = DummyAuthorizer()
    authorizer.add_user("u", "p", str(home), perm="elradfmw")

    class Handler(KTLS_FTPHandler):
        certfile = str(certs.combined)
        ssl_context = None
        tls_control_required = True
        tls_data_required = True
        dtp_handler = KTLS_DTPHandler

    Handler.authorizer = authorizer
    loop = IOLoop()
    server = FTPServer(("127.0.0.1", 0), Handler, ioloop=loop)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield server.address[1], home
    finally:
        stop.set()
        thread.join(TIMEOUT)
        server.close_all()


def _counting_sendfile(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.sendfile

    def sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        n = real(out_fd, in_fd, offset, count)
        calls.append(n)
        return n

    monkeypatch.setattr(os, "sendfile", sendfile)
    return calls


def _stat(name: str) -> int:
    counters = read_tls_stat()
    return counters.get(name, 0) if counters else 0


def _check(sendfiles: list[int], before: dict[str, int]) -> None:
    tx, rx = expected_directions("1.3", CIPHER)
    assert (sum(sendfiles) >= SIZE) is tx, f"os.sendfile moved {sum(sendfiles)} bytes"
    assert (_stat("TlsTxSw") > before["TlsTxSw"]) is tx
    assert (_stat("TlsRxSw") > before["TlsRxSw"]) is rx


def _stats() -> dict[str, int]:
    ossl_ktls.probe()  # its own trial sockets count too: let them be counted before
    return {name: _stat(name) for name in ("TlsTxSw", "TlsRxSw")}


def test_curl_retr_and_stor(
    ftps: tuple[int, Path],
    certs: CertSet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """curl --ssl-reqd: RETR and STOR of 64 MiB, byte-exact both ways."""
    port, home = ftps
    sendfiles = _counting_sendfile(monkeypatch)
    before = _stats()
    base = f"ftp://u:p@127.0.0.1:{port}/"
    common = ["curl", "-sS", "--ssl-reqd", "--cacert", str(certs.ca), "--tlsv1.3"]
    got = tmp_path / "got.bin"
    done = subprocess.run(
        [*common, "-o", str(got), base + "big.bin"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert _sha256(got) == _sha256(home / "big.bin")
    done = subprocess.run(
        [*common, "-T", str(got), base + "up.bin"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 3,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert _sha256(home / "up.bin") == _sha256(got)
    _check(sendfiles, before)


def test_ftplib_retr_and_stor(
    ftps: tuple[int, Path],
    certs: CertSet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stdlib's ftplib.FTP_TLS (prot_p): RETR and STOR of 64 MiB, byte-exact both ways."""
    port, home = ftps
    sendfiles = _counting_sendfile(monkeypatch)
    before = _stats()
    ctx = ssl.create_default_context(cafile=str(certs.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    got = tmp_path / "got.bin"
    client = ftplib.FTP_TLS(context=ctx, timeout=TIMEOUT)  # noqa: S321 - FTPS is the subject
    client.connect("127.0.0.1", port)
    client.login("u", "p")
    client.prot_p()
    with open(got, "wb") as f:
        client.retrbinary("RETR big.bin", f.write, blocksize=1 << 16)
    assert _sha256(got) == _sha256(home / "big.bin")
    with open(got, "rb") as f:
        client.storbinary("STOR up.bin", f, blocksize=1 << 16)
    client.quit()
    assert _sha256(home / "up.bin") == _sha256(got)
    _check(sendfiles, before)
