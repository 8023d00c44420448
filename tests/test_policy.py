"""The placement plan: where each direction goes at hand-over, and why (pure, on the host).

Each rule of ``ossl_ktls._policy`` is exercised through ``plan()`` with hand-made
handshake facts and kernel capabilities: no socket, no OpenSSL. The behaviour suites
check the same rules end to end in the kernels (``tests/expectations.py``).
"""

from __future__ import annotations

import pytest

from ossl_ktls._linux_tls import Capabilities
from ossl_ktls._observer import RecordObserver
from ossl_ktls._policy import Handshake, Plan, Request, plan
from ossl_ktls._records import EXT_MAX_FRAGMENT_LENGTH
from ossl_ktls._suites import SUITES
from tests.expectations import ALL_CIPHERS

ALL = ALL_CIPHERS


def caps(
    *, ulp: bool = True, rekey: bool = True, cap: bool = True, tx: tuple[str, ...] = ALL
) -> Capabilities:
    """A kernel like 7.2 (everything) unless told otherwise."""
    return Capabilities(
        kernel="test",
        ulp=ulp,
        tx={"1.2": tx, "1.3": tx} if ulp else {"1.2": (), "1.3": ()},
        rx={"1.2": ALL, "1.3": ALL} if ulp else {"1.2": (), "1.3": ()},
        rekey=rekey,
        tx_max_payload_len=cap,
        ulp_error=None if ulp else "the kernel has no 'tls' ULP (ENOENT)",
    )


def hs(version: str = "1.3", suite: str | None = "aes-128-gcm", **kw: object) -> Handshake:
    names = {"1.2": "TLSv1.2", "1.3": "TLSv1.3", "": "TLSv1.1"}
    return Handshake(
        version=version,
        version_name=names[version],
        cipher_name="SOME-CIPHER",
        suite=SUITES[suite] if suite else None,
        **kw,  # type: ignore[arg-type]
    )


def observer(**attrs: object) -> RecordObserver:
    obs = RecordObserver()
    for name, value in attrs.items():
        setattr(obs, name, value)
    return obs


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_everything_in_the_kernel(version: str) -> None:
    """A kernel that takes the suite both ways, can rekey and cap: both directions, no
    reason, full-size records."""
    assert plan(hs(version), caps(), Request()) == Plan(True, True, (), 16384)


@pytest.mark.parametrize(
    ("handshake", "kernel", "phrase"),
    [
        (hs(""), caps(), "TLSv1.1 is not TLS 1.2 or 1.3"),
        (hs(suite=None), caps(), "SOME-CIPHER has no kernel TLS equivalent"),
        (hs("1.2", renegotiated=True), caps(), "renegotiated"),
        (hs("1.2", observer=observer(compression=1)), caps(), "compression (method 1)"),
        (hs(), caps(ulp=False), "no 'tls' ULP"),
    ],
)
def test_whole_connection_stays_in_user_space(
    handshake: Handshake, kernel: Capabilities, phrase: str
) -> None:
    """What the kernel can never carry keeps both directions in user space, with one
    reason naming it (the first rule that applies)."""
    got = plan(handshake, kernel, Request())
    assert (got.tx, got.rx) == (False, False)
    assert len(got.reasons) == 1 and phrase in got.reasons[0]


def test_cipher_per_direction() -> None:
    """A suite the kernel takes on RX but not on TX: only TX stays in user space."""
    got = plan(hs("1.2", "aes-128-ccm"), caps(tx=("aes-128-gcm",)), Request())
    assert (got.tx, got.rx) == (False, True)
    assert got.reasons == ("the kernel does not take TLS 1.2 aes-128-ccm on TX",)


def test_tls13_rx_needs_rekey_unless_overridden() -> None:
    """TLS 1.3 RX stays in user space where the kernel cannot rekey; rx_without_rekey puts
    it in the kernel anyway; TLS 1.2 RX is not affected (it never rekeys)."""
    got = plan(hs("1.3"), caps(rekey=False), Request())
    assert (got.tx, got.rx) == (True, False)
    assert "cannot rekey TLS 1.3" in got.reasons[0] and "rx_without_rekey" in got.reasons[0]
    assert plan(hs("1.3"), caps(rekey=False), Request(rx_without_rekey=True)).rx
    assert plan(hs("1.2"), caps(rekey=False), Request()).rx


def test_rx_not_at_a_record_boundary() -> None:
    """RX goes to the kernel only at a record boundary: TLS 1.3 from the observer (OpenSSL
    holds part of a record), TLS 1.2 from a look at the socket's queue."""
    got = plan(hs("1.3", observer=observer(read_open=True)), caps(), Request())
    assert (got.tx, got.rx) == (True, False) and "holds part of a record" in got.reasons[0]
    got = plan(hs("1.2", rx_at_record_boundary=False), caps(), Request())
    assert (got.tx, got.rx) == (True, False) and "not at a record boundary" in got.reasons[0]
    # A TLS 1.3 connection never consults the TLS 1.2 look.
    assert plan(hs("1.3", rx_at_record_boundary=False), caps(), Request()).rx


def test_record_size_limit_needs_the_cap() -> None:
    """A peer's max_fragment_length keeps kernel TX where the kernel caps records (the
    limit in the plan), and TX in user space where it cannot; RX is unaffected."""
    limited = observer(
        client_extensions={EXT_MAX_FRAGMENT_LENGTH: b"\x02"},
        server_extensions={EXT_MAX_FRAGMENT_LENGTH: b"\x02"},
    )
    assert plan(hs("1.2", observer=limited), caps(), Request()) == Plan(True, True, (), 1024)
    got = plan(hs("1.2", observer=limited), caps(cap=False), Request())
    assert (got.tx, got.rx, got.tx_record_limit) == (False, True, 1024)
    assert "limited records to 1024 bytes (max_fragment_length)" in got.reasons[0]
    # The limit is known (and given) even when the connection stays in user space.
    assert plan(hs("1.2", observer=limited), caps(ulp=False), Request()).tx_record_limit == 1024


def test_not_requested_directions_give_no_reason() -> None:
    """A direction the caller did not ask for is not placed and needs no reason."""
    assert plan(hs(), caps(), Request(tx=False)) == Plan(False, True, (), 16384)
    assert plan(hs(), caps(rekey=False), Request(rx=False)) == Plan(True, False, (), 16384)


def test_reasons_accumulate_in_rule_order() -> None:
    """Several rules, several reasons, in the module's order."""
    limited = observer(
        read_open=True,
        client_extensions={EXT_MAX_FRAGMENT_LENGTH: b"\x01"},
        server_extensions={EXT_MAX_FRAGMENT_LENGTH: b"\x01"},
    )
    got = plan(hs("1.3", observer=limited), caps(cap=False), Request())
    assert (got.tx, got.rx) == (False, False)
    assert ["holds part of a record" in got.reasons[0], "limited records" in got.reasons[1]] == [
        True,
        True,
    ]


def test_cli_outlook_reads_the_plan() -> None:
    """``ossl-ktls serve``'s start-up line ("kTLS TX on, RX TLS1.2-only") is the plan for
    each configured version: all of them, some, or none, per direction."""
    from ossl_ktls.cli._tls import ktls_outlook

    both, ciphers = ("1.2", "1.3"), ("aes-128-gcm",)
    assert ktls_outlook(caps(), both, ciphers, False) == ("on", "on")
    assert ktls_outlook(caps(rekey=False), both, ciphers, False) == ("on", "TLS1.2-only")
    assert ktls_outlook(caps(rekey=False), both, ciphers, True) == ("on", "on")
    assert ktls_outlook(caps(ulp=False), both, ciphers, False) == ("off", "off")
