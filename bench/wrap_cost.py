"""What ``prepare()`` and ``wrap()`` cost in user space, measured where the kernel has no kTLS.

Under QEMU TCG the balance between Python and OpenSSL's C code is not the host's (the
calibration row of the report says by how much), so ``wrap()``'s share of the handshake
measured in the lab kernel says little about real hardware. This module measures the same
thing on the host itself: a client handshake with and without ``prepare()`` (against a
plain pyOpenSSL server thread), then
``wrap()`` with the kernel's part replaced by no-ops (``TCP_ULP`` and the TLS_TX/TLS_RX
``setsockopt`` calls are skipped; key derivation, the ``tls12_crypto_info`` structs,
record accounting and the socket hand-over all run for real). It is an estimate of the
user-space part only: the kernel's key set-up comes on top.

``python -m bench --vm`` runs it on the host and puts the result next to the in-VM
figures. ``python -m bench.wrap_cost`` prints it.
"""

from __future__ import annotations

import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, cast
from unittest import mock

from OpenSSL import SSL

import ossl_ktls
from bench.common import SUITES, Certs, make_certs, pyopenssl_context

Json = dict[str, Any]


def _handshake(sctx: SSL.Context, cctx: SSL.Context) -> tuple[SSL.Connection, float]:
    """A client handshake over a socket pair (the server in a thread); its wall time."""
    a, b = socket.socketpair(socket.AF_UNIX)
    server = SSL.Connection(sctx, b)
    server.set_accept_state()
    thread = threading.Thread(target=server.do_handshake)
    thread.start()
    client = SSL.Connection(cctx, a)
    client.set_connect_state()
    t0 = time.perf_counter()
    client.do_handshake()
    elapsed = time.perf_counter() - t0
    thread.join()
    b.close()
    return client, elapsed


def estimate(n: int = 100) -> Json:
    """Median client handshake (plain, prepared) and wrap() times, per suite, in ms."""
    from ossl_ktls import _linux_tls as uapi

    ciphers = uapi.CIPHER_NAMES
    caps = uapi.Capabilities(
        kernel="estimate",
        ulp=True,
        tx={v: ciphers for v in ("1.2", "1.3")},
        rx={v: ciphers for v in ("1.2", "1.3")},
        rekey=True,
    )

    def install(sock: socket.socket, direction: int, state: Any) -> None:
        uapi._wipe_struct(uapi._fill(state))  # the struct is built; the syscall is skipped

    out: Json = {}
    with tempfile.TemporaryDirectory() as tmp:
        certs: Certs = make_certs(Path(tmp))
        for key, suite in SUITES.items():
            times: dict[str, list[float]] = {"plain": [], "prepared": [], "wrap": []}
            # The server (a thread of this process) is never prepared: only the client's
            # costs are compared, and the two ends do not compete for the GIL in callbacks.
            server_ctx = pyopenssl_context(suite, server=True, certs=certs, prepared=False)
            ctx = {
                p: (server_ctx, pyopenssl_context(suite, server=False, certs=certs, prepared=p))
                for p in (False, True)
            }
            with (
                mock.patch.object(uapi, "probe", return_value=caps),
                mock.patch.object(uapi, "set_ulp", return_value=None),
                mock.patch.object(uapi, "install", new=install),
            ):
                for _ in range(n):
                    for prepared in (False, True):  # interleaved
                        client, hs = _handshake(*ctx[prepared])
                        times["prepared" if prepared else "plain"].append(hs)
                        if prepared:
                            # wrap() wants a TCP socket; the handshake ran over a pair.
                            old = client._socket
                            assert old is not None
                            with socket.socket() as tcp:
                                cast(Any, client)._socket = tcp
                                t0 = time.perf_counter()
                                k = ossl_ktls.wrap(client)
                                times["wrap"].append(time.perf_counter() - t0)
                                assert k.ktls_tx and k.ktls_rx
                            old.close()
                        else:
                            assert client._socket is not None
                            client._socket.close()
            med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
            out[key] = {
                "handshake_ms": med["plain"],
                "prepared_handshake_ms": med["prepared"],
                "wrap_ms": med["wrap"],
                "wrap_share": med["wrap"] / med["prepared"],
                "prepare_overhead": med["prepared"] / med["plain"] - 1,
                "n": n,
            }
    return out


if __name__ == "__main__":
    print(json.dumps(estimate(), indent=1))
