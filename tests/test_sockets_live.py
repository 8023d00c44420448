"""The kernel's own view of live TLS sockets: sock_diag and ``ossl-ktls stats --sockets``.

A wrapped pair must show up with the version, cipher and placement ``wrap()`` reported,
and agree with ``ss -tie`` (iproute2), which reads the same attributes with its own code.
Where the environment declares no kernel TLS, nothing may show up.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable

import pytest

import ossl_ktls
from ossl_ktls import _sock_diag as diag
from tests._pairs import Certs, connected_pair, make_context

ExpectKernel = Callable[[str, str, str], bool]


def _address(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def _ss_tls() -> dict[tuple[str, str], dict[str, str]]:
    """``ss -tieH``'s tcp-ulp-tls fields per (local, peer) address pair."""
    out = subprocess.run(["ss", "-tieHn"], capture_output=True, text=True, check=True).stdout
    result: dict[tuple[str, str], dict[str, str]] = {}
    for block in re.split(r"\n(?=\S)", out):
        fields = block.split()
        if len(fields) < 5 or "tcp-ulp-tls" not in block:
            continue
        local, peer = fields[3], fields[4]
        tail = block.split("tcp-ulp-tls", 1)[1]
        result[(local, peer)] = dict(re.findall(r"(\w+):\s*(\S+)", tail))
    return result


@pytest.mark.parametrize(
    ("version", "cipher"), [("1.3", "aes-128-gcm"), ("1.2", "chacha20-poly1305")]
)
def test_a_wrapped_pair_as_the_kernel_sees_it(
    certs: Certs, expect_kernel: ExpectKernel, version: str, cipher: str
) -> None:
    """Both ends of a wrapped pair: found by sock_diag with the version and cipher
    negotiated and each direction where ``wrap()`` put it (sw: the kernel; none: user
    space); ``ss -tie`` reports the same for the same address pairs."""
    client, server = connected_pair(
        make_context(certs, server=False, version=version, cipher=cipher),
        make_context(certs, server=True, version=version, cipher=cipher),
    )
    a = ossl_ktls.wrap(client, rx_without_rekey=True)
    b = ossl_ktls.wrap(server, rx_expect_no_pad=version == "1.3")
    try:
        names = {
            (_address(conn.getsockname()), _address(conn.getpeername())): k
            for k, conn in ((a, client), (b, server))
        }
        found = {(s.local, s.peer): s for s in diag.tls_sockets()}
        if not expect_kernel("tx", version, cipher):
            assert not (set(names) & set(found)), "sock_diag shows a ULP the kernel lacks"
            return
        ss = _ss_tls()
        for pair, k in names.items():
            s = found[pair]
            assert (s.version, s.cipher) == (version, cipher)
            assert s.tx == ("sw" if k.ktls_tx else "none")
            assert s.rx == ("sw" if k.ktls_rx else "none")
            asked = k is b and k.ktls_rx and version == "1.3" and k.fallback_reason is None
            assert s.rx_no_pad == asked
            mine = ss[pair]
            assert mine["version"] == version
            assert mine["txconf"] == s.tx and mine["rxconf"] == s.rx
    finally:
        a.close()
        b.close()


def test_stats_sockets_command(certs: Certs, expect_kernel: ExpectKernel) -> None:
    """``ossl-ktls stats --sockets --json`` lists a live wrapped pair as sock_diag does
    (both ends, where the kernel has TLS), and the human table names both local ends."""
    client, server = connected_pair(
        make_context(certs, server=False, version="1.2", cipher="aes-256-gcm"),
        make_context(certs, server=True, version="1.2", cipher="aes-256-gcm"),
    )
    a, b = ossl_ktls.wrap(client), ossl_ktls.wrap(server)
    try:
        ends = {_address(client.getsockname()), _address(server.getsockname())}
        command = [sys.executable, "-m", "ossl_ktls", "stats", "--sockets"]
        done = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        listed = {s["local"]: s for s in report["sockets"] if s["local"] in ends}
        if not expect_kernel("tx", "1.2", "aes-256-gcm"):
            assert not listed
            return
        assert set(listed) == ends
        for s in listed.values():
            assert (s["tls_version"], s["cipher"], s["tx"], s["rx"]) == (
                "1.2",
                "aes-256-gcm",
                "sw",
                "sw",
            )
        table = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert table.returncode == 0, table.stderr
        lines = [
            line for line in table.stdout.splitlines() if line.split()[:1] in ([e] for e in ends)
        ]
        assert len(lines) == 2 and all(
            "aes-256-gcm" in line and " kernel " in line for line in lines
        )
    finally:
        a.close()
        b.close()
