"""Cipher table tests: sizes against the kernel uAPI, and OpenSSL name mapping.

The kernel sizes are those of Linux ``include/uapi/linux/tls.h`` (the
``tls12_crypto_info_*`` structs: ``{u16 version, u16 cipher_type}``, then iv, key, salt and
an 8-byte rec_seq, unpadded). The OpenSSL names are those
``openssl ciphers -V 'ALL:COMPLEMENTOFALL'`` lists with OpenSSL 3.0 (checked live below
when the ``openssl`` command exists).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ossl_ktls._suites import (
    SUITES,
    Suite,
    openssl_tls12_names,
    openssl_tls13_name,
    suite_for_openssl_name,
)

from ._hypothesis_profiles import load

load()

# name: (TLS_CIPHER_*, iv, key, salt, struct size, TLS 1.2 fixed IV, hash), from linux/tls.h.
# The TLS 1.2 fixed IV lengths are RFC 5288 section 3 (GCM), RFC 6655 section 3 (CCM) and
# RFC 7905 section 2 (ChaCha20-Poly1305).
KERNEL_TABLE: dict[str, tuple[int, int, int, int, int, int, str]] = {
    "aes-128-gcm": (51, 8, 16, 4, 40, 4, "sha256"),
    "aes-256-gcm": (52, 8, 32, 4, 56, 4, "sha384"),
    "aes-128-ccm": (53, 8, 16, 4, 40, 4, "sha256"),
    "chacha20-poly1305": (54, 12, 32, 0, 56, 12, "sha256"),
}


def test_suite_names_are_exactly_the_four_kernel_aeads() -> None:
    """SUITES holds the four kernel AEADs this library drives, keyed by their own name."""
    assert set(SUITES) == set(KERNEL_TABLE)
    for name, suite in SUITES.items():
        assert suite.name == name


@pytest.mark.parametrize("name", sorted(KERNEL_TABLE))
def test_suite_sizes_match_kernel_uapi(name: str) -> None:
    """Each row's cipher number, field sizes, struct size and hash equal the uAPI table,
    and the struct size is 4 + iv + key + salt + 8 (unpadded)."""
    cipher, iv, key, salt, size, fixed12, hash_name = KERNEL_TABLE[name]
    s = SUITES[name]
    assert (s.kernel_cipher, s.kernel_iv_len, s.key_len, s.salt_len) == (cipher, iv, key, salt)
    assert s.crypto_info_size == size == 4 + iv + key + salt + 8
    assert s.fixed_iv_len_tls12 == fixed12
    assert s.hash_name == hash_name
    # Every TLS 1.3 AEAD has a 12-byte IV, split into salt + kernel iv (RFC 8446 5.3).
    assert s.tls13_iv_len == 12


@pytest.mark.parametrize("name", sorted(KERNEL_TABLE))
def test_uapi_structs_are_built_from_the_table(name: str) -> None:
    """The ctypes ``tls12_crypto_info_*`` struct ``_linux_tls`` passes to setsockopt has
    exactly the table's size (the kernel wants optlen to equal it), and the probe tries
    every suite of the table."""
    from ossl_ktls import _linux_tls as uapi

    assert uapi.crypto_info_size(name) == SUITES[name].crypto_info_size
    assert set(uapi.CIPHER_NAMES) == set(SUITES)


def test_suite_is_frozen() -> None:
    """Suite rows are immutable: the table is shared by every connection."""
    s = SUITES["aes-128-gcm"]
    with pytest.raises(AttributeError):
        s.key_len = 32  # type: ignore[misc]


MAPPED: dict[str, str] = {
    # TLS 1.3 (IANA names, RFC 8446 appendix B.4).
    "TLS_AES_128_GCM_SHA256": "aes-128-gcm",
    "TLS_AES_256_GCM_SHA384": "aes-256-gcm",
    "TLS_CHACHA20_POLY1305_SHA256": "chacha20-poly1305",
    "TLS_AES_128_CCM_SHA256": "aes-128-ccm",
    # TLS 1.2, OpenSSL names.
    "ECDHE-ECDSA-AES128-GCM-SHA256": "aes-128-gcm",
    "ECDHE-RSA-AES128-GCM-SHA256": "aes-128-gcm",
    "DHE-RSA-AES128-GCM-SHA256": "aes-128-gcm",
    "DHE-DSS-AES128-GCM-SHA256": "aes-128-gcm",
    "ADH-AES128-GCM-SHA256": "aes-128-gcm",
    "AES128-GCM-SHA256": "aes-128-gcm",
    "PSK-AES128-GCM-SHA256": "aes-128-gcm",
    "DHE-PSK-AES128-GCM-SHA256": "aes-128-gcm",
    "RSA-PSK-AES128-GCM-SHA256": "aes-128-gcm",
    "ECDHE-ECDSA-AES256-GCM-SHA384": "aes-256-gcm",
    "ECDHE-RSA-AES256-GCM-SHA384": "aes-256-gcm",
    "DHE-RSA-AES256-GCM-SHA384": "aes-256-gcm",
    "DHE-DSS-AES256-GCM-SHA384": "aes-256-gcm",
    "ADH-AES256-GCM-SHA384": "aes-256-gcm",
    "AES256-GCM-SHA384": "aes-256-gcm",
    "PSK-AES256-GCM-SHA384": "aes-256-gcm",
    "DHE-PSK-AES256-GCM-SHA384": "aes-256-gcm",
    "RSA-PSK-AES256-GCM-SHA384": "aes-256-gcm",
    "ECDHE-ECDSA-CHACHA20-POLY1305": "chacha20-poly1305",
    "ECDHE-RSA-CHACHA20-POLY1305": "chacha20-poly1305",
    "DHE-RSA-CHACHA20-POLY1305": "chacha20-poly1305",
    "ECDHE-PSK-CHACHA20-POLY1305": "chacha20-poly1305",
    "DHE-PSK-CHACHA20-POLY1305": "chacha20-poly1305",
    "RSA-PSK-CHACHA20-POLY1305": "chacha20-poly1305",
    "PSK-CHACHA20-POLY1305": "chacha20-poly1305",
    "ECDHE-ECDSA-AES128-CCM": "aes-128-ccm",
    "DHE-RSA-AES128-CCM": "aes-128-ccm",
    "AES128-CCM": "aes-128-ccm",
    "PSK-AES128-CCM": "aes-128-ccm",
    "DHE-PSK-AES128-CCM": "aes-128-ccm",
}

UNMAPPED: list[str] = [
    # 8-byte-tag CCM: no kernel cipher.
    "TLS_AES_128_CCM_8_SHA256",
    "ECDHE-ECDSA-AES128-CCM8",
    "DHE-RSA-AES128-CCM8",
    "AES128-CCM8",
    # AES-256-CCM: the kernel has only the 128-bit CCM.
    "ECDHE-ECDSA-AES256-CCM",
    "DHE-RSA-AES256-CCM",
    "AES256-CCM",
    # CBC suites.
    "ECDHE-RSA-AES128-SHA256",
    "ECDHE-ECDSA-AES256-SHA384",
    "ECDHE-RSA-AES128-SHA",
    "AES128-SHA",
    "AES256-SHA256",
    # ARIA, CAMELLIA, SM4 and other AEADs / ciphers the library does not drive.
    "ECDHE-ECDSA-ARIA128-GCM-SHA256",
    "ECDHE-ARIA256-GCM-SHA384",
    "ARIA128-GCM-SHA256",
    "ECDHE-RSA-CAMELLIA128-SHA256",
    "CAMELLIA256-SHA",
    "TLS_SM4_GCM_SM3",
    "TLS_SM4_CCM_SM3",
    # Mismatched hashes or garbage must not map by substring.
    "ECDHE-RSA-AES128-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA256",
    "XECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256-X",
    "tls_aes_128_gcm_sha256",
    "",
    "(NONE)",
]


@pytest.mark.parametrize(("openssl_name", "suite_name"), sorted(MAPPED.items()))
def test_suite_for_openssl_name_maps_aead_suites(openssl_name: str, suite_name: str) -> None:
    """Every TLS 1.3 IANA name and TLS 1.2 OpenSSL name of a kernel AEAD maps to its row."""
    assert suite_for_openssl_name(openssl_name) is SUITES[suite_name]


@pytest.mark.parametrize("openssl_name", UNMAPPED)
def test_suite_for_openssl_name_refuses_others(openssl_name: str) -> None:
    """CCM8, AES-256-CCM, CBC, ARIA, CAMELLIA, SM4, mismatched and malformed names give
    None: the caller must not hand such a connection to the kernel."""
    assert suite_for_openssl_name(openssl_name) is None


@pytest.mark.parametrize("name", sorted(SUITES))
def test_openssl_tls13_name_round_trips(name: str) -> None:
    """openssl_tls13_name gives the IANA name that maps back to the same suite."""
    suite = SUITES[name]
    tls13 = openssl_tls13_name(suite)
    assert tls13.startswith("TLS_")
    assert suite_for_openssl_name(tls13) is suite


@pytest.mark.parametrize("name", sorted(SUITES))
def test_openssl_tls12_names_round_trip(name: str) -> None:
    """Each per-certificate TLS 1.2 cipher string maps back to the same suite, the ECDSA
    one is an ECDHE-ECDSA suite, and the RSA one an RSA-authenticated suite."""
    suite = SUITES[name]
    names = openssl_tls12_names(suite)
    assert names.ecdsa.startswith("ECDHE-ECDSA-")
    assert suite_for_openssl_name(names.ecdsa) is suite
    assert names.rsa is not None
    assert names.rsa.startswith(("ECDHE-RSA-", "DHE-RSA-"))
    assert suite_for_openssl_name(names.rsa) is suite


def test_ccm_rsa_uses_finite_field_dhe() -> None:
    """No ECDHE-RSA suite with AES-CCM exists (RFC 6655, RFC 7251): RSA gets DHE-RSA."""
    assert openssl_tls12_names(SUITES["aes-128-ccm"]).rsa == "DHE-RSA-AES128-CCM"


def _openssl_cipher_names(spec: str) -> list[str] | None:
    exe = shutil.which("openssl")
    if exe is None:
        return None
    proc = subprocess.run(
        [exe, "ciphers", spec], capture_output=True, text=True, check=False, timeout=30
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.strip().split(":")


def test_names_agree_with_local_openssl() -> None:
    """Against the local OpenSSL's full cipher list: every TLS 1.2 name this module hands
    out exists there, and every listed name that maps is one of MAPPED above, mapped to
    the same suite. A new OpenSSL name that maps makes this fail, for a human to review.

    Fails without an ``openssl`` command (a missing tool is a failure, not a skip).
    """
    listed = _openssl_cipher_names("ALL:COMPLEMENTOFALL")
    if listed is None:
        pytest.fail("no `openssl ciphers` on this machine (make setup installs openssl)")
    for suite in SUITES.values():
        names = openssl_tls12_names(suite)
        assert names.ecdsa in listed
        assert names.rsa in listed
    for name in listed:
        mapped = suite_for_openssl_name(name)
        if mapped is not None:
            assert MAPPED.get(name) == mapped.name, name


@given(st.text(max_size=60))
def test_suite_for_openssl_name_total(name: str) -> None:
    """Any string gives a Suite or None, never an exception."""
    result = suite_for_openssl_name(name)
    assert result is None or isinstance(result, Suite)
