"""What each test environment declares its kernel can do.

The environment is named by ``OSSL_KTLS_ENV`` (set by tox: ``host``, ``kernel-5.10``,
``kernel-6.1``, ``kernel-6.12``, ``kernel-7.2``). ``tests/test_probe.py`` checks the live
kernel against the declaration and fails when they differ; tests that need a capability
skip only when the declaration says the kernel lacks it, and fail otherwise.

An environment outside this table (a developer's own machine) declares nothing: every
kTLS test then runs and fails if the kernel cannot do it. Set ``OSSL_KTLS_ENV=host`` there
to declare a kernel without kTLS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

ALL_CIPHERS: tuple[str, ...] = ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305", "aes-128-ccm")


@dataclass(frozen=True)
class Expectation:
    """One environment's declared kernel capabilities."""

    name: str
    ulp: bool
    tx: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rx: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rekey: bool = False
    #: TLS_TX_MAX_PAYLOAD_LEN (Linux 6.19+): kernel TX keeps to a record size the peer
    #: negotiated; without it TX stays in user space on such connections.
    tx_max_payload_len: bool = False

    def has(self, direction: str, version: str, cipher: str) -> bool:
        table = self.tx if direction == "tx" else self.rx
        return cipher in table.get(version, ())


def _full(name: str, *, rekey: bool, tx_max_payload_len: bool = False) -> Expectation:
    both = {"1.2": ALL_CIPHERS, "1.3": ALL_CIPHERS}
    return Expectation(
        name=name, ulp=True, tx=both, rx=both, rekey=rekey, tx_max_payload_len=tx_max_payload_len
    )


_NONE: dict[str, tuple[str, ...]] = {"1.2": (), "1.3": ()}

DECLARED: dict[str, Expectation] = {
    # The development and CI host: a 6.18 kernel built without CONFIG_TLS.
    "host": Expectation(name="host", ulp=False, tx=_NONE, rx=_NONE),
    # Debian bullseye's 5.10 is built without CONFIG_TLS.
    "kernel-5.10": Expectation(name="kernel-5.10", ulp=False, tx=_NONE, rx=_NONE),
    # Before 6.19 TLS_TX_MAX_PAYLOAD_LEN is unknown (ENOPROTOOPT).
    "kernel-6.1": _full("kernel-6.1", rekey=False),
    "kernel-6.12": _full("kernel-6.12", rekey=False),
    # 6.14+ can rekey TLS 1.3 in both directions; 6.19+ caps TX record sizes.
    "kernel-7.2": _full("kernel-7.2", rekey=True, tx_max_payload_len=True),
}


def current() -> Expectation | None:
    """The declaration for ``OSSL_KTLS_ENV``, or None when the environment declares nothing."""
    name = os.environ.get("OSSL_KTLS_ENV", "")
    if not name:
        return None
    if name not in DECLARED:
        raise LookupError(f"OSSL_KTLS_ENV={name!r} is not declared in tests/expectations.py")
    return DECLARED[name]
