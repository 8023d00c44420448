"""The live kernel against this environment's declaration (tests/expectations.py)."""

from __future__ import annotations

import json
import platform

import pytest

import ossl_ktls
from tests import expectations


def test_probe_matches_declaration(declared: expectations.Expectation | None) -> None:
    """probe() finds by trying exactly what the environment declares: ULP, TX and RX
    ciphers per TLS version, TLS 1.3 rekey, and the TX record size cap. Any difference
    fails the run, so a wrong declaration (or a kernel that changed) cannot go unnoticed."""
    caps = ossl_ktls.probe()
    if declared is None:
        pytest.fail(
            "OSSL_KTLS_ENV is not set: this environment declares nothing, so the probe "
            f"result cannot be checked (found: {caps.as_json()})"
        )
    assert caps.kernel == platform.release()
    assert caps.ulp == declared.ulp, caps.ulp_error
    for version in ("1.2", "1.3"):
        assert sorted(caps.tx.get(version, ())) == sorted(declared.tx.get(version, ())), version
        assert sorted(caps.rx.get(version, ())) == sorted(declared.rx.get(version, ())), version
    assert caps.rekey == declared.rekey
    assert caps.tx_max_payload_len == declared.tx_max_payload_len
    if not caps.ulp:
        assert caps.ulp_error and "tls" in caps.ulp_error


def test_probe_json_shape() -> None:
    """as_json() has exactly the documented keys and JSON types, cipher names from the
    documented set."""
    data = json.loads(json.dumps(ossl_ktls.probe().as_json()))
    assert set(data) == {
        "kernel",
        "ulp",
        "tx",
        "rx",
        "rekey",
        "zerocopy_sendfile",
        "rx_expect_no_pad",
        "tx_max_payload_len",
    }
    assert isinstance(data["ulp"], bool) and isinstance(data["rekey"], bool)
    names = set(expectations.ALL_CIPHERS)
    for direction in ("tx", "rx"):
        assert set(data[direction]) == {"1.2", "1.3"}
        for ciphers in data[direction].values():
            assert set(ciphers) <= names


def test_probe_is_cached() -> None:
    """probe() answers from a per-process cache: the same object twice."""
    assert ossl_ktls.probe() is ossl_ktls.probe()
