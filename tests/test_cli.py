"""The command line, driven as a subprocess against real peers.

Each command runs as ``python -m ossl_ktls ...`` against ``openssl s_server`` /
``s_client``, curl, or (for the failure cases) a stdlib ``ssl`` peer in this process;
bytes are compared by size and SHA-256. Whether kernel TLS must carry a direction follows
the environment's declaration (``tests/expectations.py``, through the ``expect_kernel`` and
``can_rekey`` fixtures): declared kTLS means the ``--json`` summary must say on, declared
none means it must say off and give a reason.

Ports: free ones from the kernel. A peer's listening port is awaited in /proc/net/tcp,
never by connecting (``s_server -naccept 1`` would count the probe). Every subprocess has
a timeout and is killed in a ``finally``; sizes stay at a few MiB because in-VM runs are
10-30x slower under TCG.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ossl_ktls.cli import main
from tests import expectations
from tests._pairs import Certs
from tests._serve import CURL, REPO, TIMEOUT, Serve, cli_env, stop

PAYLOAD = 2 << 20
ExpectKernel = Callable[[str, str, str], bool]


# ---------------------------------------------------------------- helpers


def cli(
    *args: str, timeout: float = TIMEOUT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ossl_ktls ARGS`` to completion (*env*: extra variables)."""
    return subprocess.run(
        [sys.executable, "-m", "ossl_ktls", *args],
        cwd=REPO,
        env={**cli_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _listening(port: int) -> bool:
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def wait_listening(port: int, proc: subprocess.Popen[Any], timeout: float = 60.0) -> None:
    """Wait until *port* is in LISTEN state without connecting to it."""
    deadline = time.monotonic() + timeout
    while not _listening(port):
        if proc.poll() is not None:
            pytest.fail(f"peer exited with {proc.returncode} before listening on {port}")
        if time.monotonic() > deadline:
            pytest.fail(f"nothing listened on port {port} within {timeout} s")
        time.sleep(0.05)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def one_error_line(stderr: str) -> str:
    """Errors are exactly one line on stderr (warnings may precede it)."""
    lines = [line for line in stderr.splitlines() if "warning:" not in line]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("ossl-ktls: error: "), stderr
    return lines[0]


def check_ktls_state(summary: dict[str, Any], direction: str, expected: bool) -> None:
    """The summary says *direction* is in the kernel exactly when expected, else why not."""
    assert summary[f"ktls_{direction}"] is expected, summary
    if not expected:
        assert summary["fallback_reason"], summary


@contextlib.contextmanager
def s_server(
    certs: Certs, out: Path, *extra: str, msgfile: Path | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``openssl s_server -quiet -naccept 1`` on a free port, stdin a pipe, stdout to *out*."""
    port = free_port()
    cmd = ["openssl", "s_server", "-quiet", "-naccept", "1", "-accept", f"127.0.0.1:{port}"]
    cmd += ["-cert", str(certs.ecdsa), "-key", str(certs.ecdsa), *extra]
    if msgfile is not None:
        cmd += ["-msg", "-msgfile", str(msgfile)]
    with open(out, "wb") as sink:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=sink, stderr=subprocess.PIPE)
    try:
        wait_listening(port, proc)
        yield proc, port
    finally:
        stop(proc)


class PyPeer:
    """A stdlib ``ssl`` server thread for the failure cases; ``mode`` says what it does.

    ``truncate``: send ``payload`` and close TCP without close_notify. ``sink``: read until
    the client's close_notify. Handshake failures (the client rejecting us) are expected.
    """

    def __init__(self, certs: Certs, mode: str, payload: bytes = b"") -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(certs.ecdsa))
        self.mode, self.payload = mode, payload
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port: int = self.listener.getsockname()[1]
        self.received = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                raw, _ = self.listener.accept()
                raw.settimeout(TIMEOUT)
                try:
                    tls = self.ctx.wrap_socket(raw, server_side=True)
                except (OSError, ssl.SSLError):
                    raw.close()
                    continue
                with contextlib.suppress(OSError):
                    if self.mode == "truncate":
                        tls.sendall(self.payload)
                    else:
                        while data := tls.recv(65536):
                            self.received += len(data)
                tls.close()  # no unwrap(): no close_notify from us

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the thread
        self.listener.close()
        self.thread.join(timeout=10)


@pytest.fixture
def payload_file(tmp_path: Path) -> Path:
    """PAYLOAD random bytes."""
    path = tmp_path / "payload.bin"
    path.write_bytes(os.urandom(PAYLOAD))
    return path


# ---------------------------------------------------------------- probe and stats


def test_probe_json_and_table(
    declared: expectations.Expectation | None, capsys: pytest.CaptureFixture[str]
) -> None:
    """``probe --json`` prints exactly the documented shape for the running kernel, equal to
    the declaration where there is one, and exits 0 also on a kernel without kTLS; the human
    form is a yes/no table per cipher, direction and version."""
    done = cli("probe", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert set(data) == {
        *("kernel", "ulp", "tx", "rx", "rekey", "zerocopy_sendfile", "rx_expect_no_pad"),
        "tx_max_payload_len",
    }
    assert data["kernel"] == os.uname().release
    for direction in ("tx", "rx"):
        assert set(data[direction]) == {"1.2", "1.3"}
        for ciphers in data[direction].values():
            assert set(ciphers) <= set(expectations.ALL_CIPHERS)
    if declared is not None:
        assert data["ulp"] == declared.ulp
        assert data["rekey"] == declared.rekey
        assert data["tx_max_payload_len"] == declared.tx_max_payload_len
        for version in ("1.2", "1.3"):
            assert sorted(data["tx"][version]) == sorted(declared.tx[version])
            assert sorted(data["rx"][version]) == sorted(declared.rx[version])
    # The table, in-process (one interpreter start per command is all TCG can afford).
    assert main(["probe"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == ["TX", "1.2", "TX", "1.3", "RX", "1.2", "RX", "1.3"]
    rows = {line.split()[0]: line.split()[1:] for line in table[2:6]}
    assert set(rows) == set(expectations.ALL_CIPHERS)
    for cipher, cells in rows.items():
        want = [cipher in data[d][v] for d in ("tx", "rx") for v in ("1.2", "1.3")]
        assert cells == ["yes" if w else "no" for w in want]


def test_stats(declared: expectations.Expectation | None) -> None:
    """``stats --watch SEC --count N --json`` samples /proc/net/tls_stat (loading the tls
    module if needed): gauges and per-second rates, then the total change; a kernel
    declared without kTLS gets a one-line error and exit 1 instead."""
    done = cli("stats", "--watch", "0.2", "--count", "2", "--json")
    if declared is not None and not declared.ulp:
        assert done.returncode == 1
        assert "tls_stat" in one_error_line(done.stderr)
        return
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 3, done.stdout
    assert "TlsCurrTxSw" in lines[0]["gauges"] and "TlsTxSw" in lines[0]["rates"]
    assert "TlsTxSw" in lines[2]["changes"]


# ---------------------------------------------------------------- send


def test_send_to_s_server(
    certs: Certs, payload_file: Path, tmp_path: Path, expect_kernel: ExpectKernel
) -> None:
    """``send`` delivers the file to ``openssl s_server`` over TLS 1.3 byte for byte
    (SHA-256), ends with close_notify, exits 0, and its JSON summary has the size, the
    version and cipher, and kTLS TX on exactly where the environment declares it.
    (TLS 1.2 TX and RX through the CLI are covered by the ``serve`` test.)"""
    version = "1.3"
    received = tmp_path / "received.bin"
    with s_server(certs, received) as (server, port):
        done = cli(
            *("send", f"127.0.0.1:{port}", str(payload_file), "--json"),
            *("--tls", version, "--cipher", "aes-128-gcm", "--cafile", str(certs.ca)),
            *("--servername", "localhost"),
        )
        assert done.returncode == 0, done.stderr
        server.wait(timeout=TIMEOUT)  # -naccept 1: exits after our close_notify
    summary = json.loads(done.stdout)
    assert summary["bytes"] == PAYLOAD
    assert (summary["tls_version"], summary["cipher"]) == (version, "aes-128-gcm")
    check_ktls_state(summary, "tx", expect_kernel("tx", version, "aes-128-gcm"))
    assert received.stat().st_size == PAYLOAD
    assert sha256(received) == sha256(payload_file)


def test_send_keeps_record_padding(
    certs: Certs, tmp_path: Path, expect_kernel: ExpectKernel
) -> None:
    """``RecordPadding = 256`` in the OpenSSL configuration (``OPENSSL_CONF``) keeps its
    effect: kernel TX cannot pad, so ``send`` keeps TX in user space and says why, RX goes
    as declared; every TLS 1.3 record s_server reads from us that is not full-size is
    padded to the block (length - 16-byte tag a multiple of 256, by s_server's own ``-msg``
    trace), and the
    file arrives intact (size, SHA-256)."""
    version, block = "1.3", 256
    conf = tmp_path / "openssl.cnf"
    conf.write_text(
        "openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_module\n"
        "[ssl_module]\nsystem_default = ssl_defaults\n"
        f"[ssl_defaults]\nRecordPadding = {block}\n",
        encoding="ascii",
    )
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom((256 << 10) + 1000))
    received, msgfile = tmp_path / "received.bin", tmp_path / "s_server.msg"
    with s_server(certs, received, msgfile=msgfile) as (server, port):
        done = cli(
            *("send", f"127.0.0.1:{port}", str(payload), "--json"),
            *("--tls", version, "--cipher", "aes-128-gcm", "--cafile", str(certs.ca)),
            *("--servername", "localhost"),
            env={"OPENSSL_CONF": str(conf)},
        )
        assert done.returncode == 0, done.stderr
        server.wait(timeout=TIMEOUT)
    summary = json.loads(done.stdout)
    assert summary["ktls_tx"] is False, summary
    if expect_kernel("tx", version, "aes-128-gcm"):
        assert "pads our TLS 1.3 records" in summary["fallback_reason"], summary
    assert (received.stat().st_size, sha256(received)) == (payload.stat().st_size, sha256(payload))
    lines = msgfile.read_text(encoding="ascii", errors="replace").splitlines()
    lengths = [
        int.from_bytes(bytes.fromhex(lines[i + 1].strip())[3:5], "big")
        for i, line in enumerate(lines[:-1])
        if line.startswith("<<< ")
        and "RecordHeader" in line
        and lines[i + 1].strip().startswith("17 03 03")
    ]
    # OpenSSL pads only where the block fits under the 2^14 + 1 inner plaintext limit:
    # full records stay full; every other record (Finished, the tail, close_notify) pads.
    full = 16384 + 1 + 16
    assert lengths.count(full) == (256 << 10) // 16384, lengths
    padded = [n for n in lengths if n != full]
    assert len(padded) >= 3 and all((n - 16) % block == 0 for n in padded), lengths


def test_client_errors(certs: Certs, payload_file: Path, tmp_path: Path) -> None:
    """A refused connection, a missing file, an untrusted certificate (checked against the
    system store by default) and a wrong server name each end with one error line on
    stderr and exit 1 (run side by side: each costs an interpreter start)."""
    peer = PyPeer(certs, "sink")
    cases = {
        "refused": ["recv", f"127.0.0.1:{free_port()}", "--insecure"],
        "No such file": ["send", "127.0.0.1:9", str(tmp_path / "nope"), "--insecure"],
        "certificate verification failed": ["send", f"localhost:{peer.port}", str(payload_file)],
        "hostname mismatch": [
            *("recv", f"127.0.0.1:{peer.port}", "-o", str(tmp_path / "out")),
            *("--cafile", str(certs.ca), "--servername", "wrong.example"),
        ],
    }
    procs = {
        want: subprocess.Popen(
            [sys.executable, "-m", "ossl_ktls", *args],
            cwd=REPO,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for want, args in cases.items()
    }
    try:
        for want, proc in procs.items():
            _, stderr = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 1, (want, stderr)
            assert want.lower() in one_error_line(stderr).lower()
    finally:
        for proc in procs.values():
            stop(proc)
        peer.close()


def test_require_ktls(
    certs: Certs, payload_file: Path, declared: expectations.Expectation | None
) -> None:
    """``--require-ktls``: where the environment declares kernel TX for TLS 1.3 AES-128-GCM
    the transfer goes through kTLS and succeeds; where it declares none, the command
    refuses with one error line and exit 1 instead of falling back."""
    peer = PyPeer(certs, "sink")
    try:
        done = cli(
            *("send", f"127.0.0.1:{peer.port}", str(payload_file), "--json", "--require-ktls"),
            *("--tls", "1.3", "--cipher", "aes-128-gcm", "--cafile", str(certs.ca)),
        )
    finally:
        peer.close()
    if declared is None or declared.has("tx", "1.3", "aes-128-gcm"):
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["ktls_tx"] is True
    else:
        assert done.returncode == 1
        assert "kernel TLS required" in one_error_line(done.stderr)


# ---------------------------------------------------------------- recv


def _feed_after_handshake(proc: subprocess.Popen[bytes], msgfile: Path, data: bytes) -> None:
    """Give s_server its data only once both Finished messages passed.

    s_server reads stdin and the socket in one select loop; stdin data that is already
    there when the ClientHello arrives makes it write during the handshake and then block
    in a read, and the client sees the stream stop after one record.
    """
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(FileNotFoundError):
            if msgfile.read_text(errors="replace").count("Finished") >= 2:
                break
        time.sleep(0.05)
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write(data)
        proc.stdin.close()


def test_recv_from_s_server(certs: Certs, tmp_path: Path, expect_kernel: ExpectKernel) -> None:
    """``recv -o FILE`` writes exactly what ``openssl s_server`` sent over TLS 1.3 up to its
    close_notify (SHA-256), exits 0, and its summary has kTLS RX on exactly where the
    environment declares it (``--rx-without-rekey`` lets TLS 1.3 RX into kernels that
    cannot rekey; the server's session tickets then arrive through kernel RX)."""
    version = "1.3"
    import base64

    # s_server in -quiet mode passes stdin through; text keeps its command parser out.
    data = base64.encodebytes(os.urandom(PAYLOAD * 3 // 4))
    output = tmp_path / "out.txt"
    msgfile = tmp_path / "msg.txt"
    with s_server(certs, tmp_path / "server-stdout", msgfile=msgfile) as (server, port):
        feeder = threading.Thread(
            target=_feed_after_handshake, args=(server, msgfile, data), daemon=True
        )
        feeder.start()
        done = cli(
            *("recv", f"127.0.0.1:{port}", "-o", str(output), "--json", "--rx-without-rekey"),
            *("--tls", version, "--cipher", "aes-128-gcm", "--cafile", str(certs.ca)),
        )
        feeder.join(timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["bytes"] == len(data)
    check_ktls_state(summary, "rx", expect_kernel("rx", version, "aes-128-gcm"))
    assert hashlib.sha256(output.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()


def test_recv_truncated_is_an_error(certs: Certs, tmp_path: Path) -> None:
    """A peer that closes TCP without close_notify makes ``recv`` exit 1 with one line
    saying the stream was truncated, and ``-o FILE`` is not left behind half-written."""
    output = tmp_path / "out.bin"
    peer = PyPeer(certs, "truncate", payload=os.urandom(100_000))
    try:
        done = cli(
            *("recv", f"127.0.0.1:{peer.port}", "-o", str(output), "--cafile", str(certs.ca)),
            *("--rx-without-rekey",),
        )
    finally:
        peer.close()
    assert done.returncode == 1
    assert "truncated" in one_error_line(done.stderr)
    assert not output.exists()
    assert not list(tmp_path.glob(".ossl-ktls-*"))


# ---------------------------------------------------------------- serve


@pytest.fixture
def www(tmp_path: Path) -> Path:
    """A served folder: a 3 MiB file, a small one, and a symlink pointing out of it."""
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    (root / "sub" / "a.txt").write_text("hello\n")
    (root / "sub" / "out").symlink_to("/etc/hostname")
    return root


def test_serve(www: Path, tmp_path: Path, expect_kernel: ExpectKernel, can_rekey: bool) -> None:
    """``serve`` (throwaway certificate, trusted by curl with --cacert):

    * curl fetches a file over TLS 1.3 and TLS 1.2 byte for byte; each request's event has
      kTLS TX on where declared, RX too except TLS 1.3 on kernels that cannot rekey;
    * ranges (206 with the right bytes, 416), HEAD (Content-Length, no body), 404 for
      missing files and anything outside ROOT (``..``, symlinks), 405 for other methods,
      301 for a folder without its slash; three requests share one keep-alive connection;
    * four clients at once all get the whole file; garbage from ``openssl s_client`` gets
      400; SIGTERM stops it with exit 0 and a summary that counts every request.
    One server process for all of it: an interpreter start is expensive under TCG.
    """
    server = Serve(www)
    try:
        assert server.ready["throwaway_cert"] is True
        want = sha256(www / "big.bin")
        for flags in (["--tlsv1.3"], ["--tlsv1.2", "--tls-max", "1.2"]):
            out = tmp_path / "got.bin"
            done = server.curl(*flags, "-o", str(out), server.url("/big.bin"))
            assert done.returncode == 0, done.stderr
            assert sha256(out) == want
            event = server.next("request")
            assert (event["status"], event["bytes"]) == (200, 3 << 20)
            version, cipher = event["tls_version"], event["cipher"]
            assert version == ("1.3" if "--tlsv1.3" in flags else "1.2")
            check_ktls_state(event, "tx", expect_kernel("tx", version, cipher))
            rx = expect_kernel("rx", version, cipher) and (version == "1.2" or can_rekey)
            check_ktls_state(event, "rx", rx)

        part = tmp_path / "part"
        done = server.curl(
            *("-r", "100-199", "-o", str(part), "-w", "%{http_code}", server.url("/big.bin"))
        )
        assert done.stdout == "206", done.stderr
        assert part.read_bytes() == (www / "big.bin").read_bytes()[100:200]
        codes = {
            "416": ["-r", "99999999-", server.url("/big.bin")],
            "404": ["--path-as-is", server.url("/../../etc/hostname")],
            "405": ["-X", "POST", server.url("/big.bin")],
            "301": [server.url("/sub")],
        }
        for code, args in codes.items():
            done = server.curl("-o", os.devnull, "-w", "%{http_code}", *args)
            assert done.stdout == code, (code, done.stderr)
        head = server.curl("-I", server.url("/big.bin"))
        assert f"Content-Length: {3 << 20}" in head.stdout
        for _ in range(6):
            server.next("request")
        three = server.curl(
            *("-o", os.devnull, "-o", os.devnull, "-o", os.devnull, "-w", "%{http_code} "),
            *(server.url("/sub/a.txt"), server.url("/sub/out"), server.url("/nope")),
        )
        assert three.stdout.split() == ["200", "404", "404"]
        assert len({server.next("request")["client"] for _ in range(3)}) == 1

        big = server.url("/big.bin")
        clients = [
            subprocess.Popen(
                [*CURL, "--cacert", server.ready["cert"], "-o", str(tmp_path / f"c{i}"), big]
            )
            for i in range(4)
        ]
        try:
            for c in clients:
                assert c.wait(timeout=TIMEOUT + 10) == 0
        finally:
            for c in clients:
                stop(c)
        assert {sha256(tmp_path / f"c{i}") for i in range(4)} == {want}

        garbage = subprocess.run(
            ["openssl", "s_client", "-quiet", "-connect", f"127.0.0.1:{server.ready['port']}"],
            input=b"NOT HTTP\r\n\r\n",
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert garbage.stdout.startswith(b"HTTP/1.1 400 "), garbage.stdout

        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=TIMEOUT) == 0
        summary = server.next("summary")
        assert summary["requests"] == 2 + 6 + 3 + 4 + 1
        assert summary["statuses"]["200"] == 2 + 1 + 1 + 4  # GETs, HEAD, a.txt, parallel
    finally:
        stop(server.proc)


# ---------------------------------------------------------------- run

_PROGRAM = '''\
"""A plain pyOpenSSL client, nothing of ossl_ktls in it: download until close_notify."""
import socket
import sys

from OpenSSL import SSL

host, port, out, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
ctx.load_verify_locations(cafile)
ctx.set_verify(SSL.VERIFY_PEER)
conn = SSL.Connection(ctx, socket.create_connection((host, port)))
conn.set_connect_state()
conn.set_tlsext_host_name(b"localhost")
conn.sendall(b"hello")  # the handshake happens inside this first send
with open(out, "wb") as f:
    while True:
        try:
            f.write(conn.recv(65536))
        except SSL.ZeroReturnError:
            break
conn.shutdown()
conn.close()
sys.exit(3)
'''


@pytest.mark.parametrize("form", ["script", "module"])
def test_run_patches_an_unmodified_program(
    certs: Certs,
    tmp_path: Path,
    payload_file: Path,
    expect_kernel: ExpectKernel,
    can_rekey: bool,
    form: str,
) -> None:
    """``run --log SCRIPT ARGS`` (and ``run --log -m MODULE ARGS``, the module found on
    PYTHONPATH) runs a pyOpenSSL program that knows nothing of us with its arguments and
    its own exit status (3). It downloads 2 MiB from a stdlib ``ssl`` server byte-exact,
    and the log says its Connection went to the kernel where this environment declares
    kTLS (RX too only where TLS 1.3 can be rekeyed), else why not."""
    program = tmp_path / "pyopenssl_client.py"
    program.write_text(_PROGRAM)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(certs.ecdsa))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    payload = payload_file.read_bytes()
    got_hello: list[bytes] = []

    def serve() -> None:
        raw, _ = listener.accept()
        raw.settimeout(TIMEOUT)
        with ctx.wrap_socket(raw, server_side=True) as tls:
            got_hello.append(tls.recv(5))
            tls.sendall(payload)
            tls.unwrap()  # close_notify, and the client's answer

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    out = tmp_path / "got.bin"
    port = str(listener.getsockname()[1])
    args = (port, str(out), str(certs.ca))
    if form == "script":
        done = cli("run", "--log", str(program), "127.0.0.1", *args)
    else:
        path = os.pathsep.join(filter(None, [str(tmp_path), cli_env().get("PYTHONPATH")]))
        done = cli("run", "--log", "-m", program.stem, "127.0.0.1", *args, env={"PYTHONPATH": path})
    server.join(TIMEOUT)
    listener.close()
    assert done.returncode == 3, done.stderr
    assert got_hello == [b"hello"]
    assert sha256(out) == hashlib.sha256(payload).hexdigest()
    logged = [line for line in done.stderr.splitlines() if line.startswith("ossl_ktls: ")]
    assert len(logged) == 1, done.stderr
    if expect_kernel("tx", "1.3", "aes-256-gcm"):
        rx = "kernel" if expect_kernel("rx", "1.3", "aes-256-gcm") and can_rekey else "user space"
        assert logged[0].startswith(f"ossl_ktls: kernel TLS 1.3 aes-256-gcm: TX kernel, RX {rx}")
    else:
        assert logged[0].startswith("ossl_ktls: stays in user space: "), logged
