"""The cipher table: which negotiated suites the kernel can carry, and with what sizes.

One row per kernel cipher this library drives (``include/uapi/linux/tls.h``). A row says
how to cut the key schedule's output into the kernel's ``tls12_crypto_info_*`` struct:

* GCM and CCM: the 12-byte write IV splits into a 4-byte ``salt`` and an 8-byte ``iv``
  (the TLS 1.3 static IV tail, or the TLS 1.2 explicit nonce; RFC 5288 section 3,
  RFC 6655 section 3). ChaCha20-Poly1305 puts all 12 IV bytes in ``iv`` and has no salt
  (RFC 7905 section 2).
* The struct is ``{u16 version, u16 cipher_type}`` then ``iv, key, salt, rec_seq[8]``,
  unpadded: its size is ``4 + iv + key + salt + 8``.

:func:`suite_for_openssl_name` maps the name ``Connection.get_cipher_name()`` returns to a
row, or to ``None`` for a suite the kernel cannot carry (CBC, CCM_8, ARIA, CAMELLIA, SM4,
AES-256-CCM): the caller then stays in user space or raises ``KTLSUnavailable``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

__all__ = [
    "SUITES",
    "Suite",
    "Tls12CipherNames",
    "openssl_tls12_names",
    "openssl_tls13_name",
    "suite_for_openssl_name",
]

# Linux include/uapi/linux/tls.h: TLS_CIPHER_* values.
_TLS_CIPHER_AES_GCM_128 = 51
_TLS_CIPHER_AES_GCM_256 = 52
_TLS_CIPHER_AES_CCM_128 = 53
_TLS_CIPHER_CHACHA20_POLY1305 = 54

# The kernel struct's trailing rec_seq field and leading {version, cipher_type} header.
_REC_SEQ_LEN = 8
_INFO_HEADER_LEN = 4


@dataclass(frozen=True)
class Suite:
    """One AEAD the kernel can run, with every size the key handover needs.

    Attributes:
        name: the library's name ("aes-128-gcm", "aes-256-gcm", "chacha20-poly1305",
            "aes-128-ccm").
        kernel_cipher: the ``TLS_CIPHER_*`` value of ``linux/tls.h``.
        key_len: AEAD key length in bytes.
        salt_len: bytes of the write IV the kernel struct takes as ``salt``.
        kernel_iv_len: size of the kernel struct's ``iv`` field.
        fixed_iv_len_tls12: the TLS 1.2 key-block IV length (the implicit nonce part;
            RFC 5246 section 6.3 ``fixed_iv_length``).
        hash_name: the PRF / HKDF hash of every suite this row stands for.
        crypto_info_size: the exact ``optlen`` of ``setsockopt(SOL_TLS, TLS_TX/RX)``.
    """

    name: str
    kernel_cipher: int
    key_len: int
    salt_len: int
    kernel_iv_len: int
    fixed_iv_len_tls12: int
    hash_name: str
    crypto_info_size: int

    @property
    def tls13_iv_len(self) -> int:
        """The TLS 1.3 write IV length: 12 for every suite (RFC 8446 section 5.3)."""
        return self.salt_len + self.kernel_iv_len


def _suite(
    name: str,
    kernel_cipher: int,
    key_len: int,
    salt_len: int,
    kernel_iv_len: int,
    fixed_iv_len_tls12: int,
    hash_name: str,
) -> Suite:
    return Suite(
        name=name,
        kernel_cipher=kernel_cipher,
        key_len=key_len,
        salt_len=salt_len,
        kernel_iv_len=kernel_iv_len,
        fixed_iv_len_tls12=fixed_iv_len_tls12,
        hash_name=hash_name,
        crypto_info_size=_INFO_HEADER_LEN + kernel_iv_len + key_len + salt_len + _REC_SEQ_LEN,
    )


#: Every suite the library can hand to the kernel, by :attr:`Suite.name`.
SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        # RFC 5288 (TLS 1.2 AES-GCM: 4-byte fixed IV + 8-byte explicit nonce), RFC 8446 B.4.
        _suite("aes-128-gcm", _TLS_CIPHER_AES_GCM_128, 16, 4, 8, 4, "sha256"),
        _suite("aes-256-gcm", _TLS_CIPHER_AES_GCM_256, 32, 4, 8, 4, "sha384"),
        # RFC 7905 section 2: a 12-byte fixed IV, no explicit nonce, in TLS 1.2 too.
        _suite("chacha20-poly1305", _TLS_CIPHER_CHACHA20_POLY1305, 32, 0, 12, 12, "sha256"),
        # RFC 6655 section 3 / RFC 7251: like GCM, 4-byte salt + 8-byte explicit nonce.
        _suite("aes-128-ccm", _TLS_CIPHER_AES_CCM_128, 16, 4, 8, 4, "sha256"),
    )
}

# RFC 8446 appendix B.4: the TLS 1.3 suites, as OpenSSL names them (IANA names).
# TLS_AES_128_CCM_8_SHA256 is absent on purpose: the kernel has no 8-byte-tag CCM.
_TLS13_NAMES: dict[str, str] = {
    "TLS_AES_128_GCM_SHA256": "aes-128-gcm",
    "TLS_AES_256_GCM_SHA384": "aes-256-gcm",
    "TLS_CHACHA20_POLY1305_SHA256": "chacha20-poly1305",
    "TLS_AES_128_CCM_SHA256": "aes-128-ccm",
}
_TLS13_BY_SUITE: dict[str, str] = {v: k for k, v in _TLS13_NAMES.items()}

# TLS 1.2 suites in OpenSSL's naming ("openssl ciphers -V"): an optional key exchange /
# authentication prefix, then the bulk cipher. The bulk part decides the kernel cipher; the
# prefix is matched against the list OpenSSL uses so an unknown name never maps by accident.
# Plain "AES128-GCM-SHA256" (no prefix) is RSA key transport.
_TLS12_PREFIXES = (
    "ECDHE-ECDSA",
    "ECDHE-RSA",
    "ECDHE-PSK",
    "DHE-RSA",
    "DHE-DSS",
    "DHE-PSK",
    "RSA-PSK",
    "PSK",
    "ADH",
)
_TLS12_BULK: dict[str, str] = {
    "AES128-GCM-SHA256": "aes-128-gcm",  # RFC 5288, RFC 5289
    "AES256-GCM-SHA384": "aes-256-gcm",  # RFC 5288, RFC 5289
    "CHACHA20-POLY1305": "chacha20-poly1305",  # RFC 7905
    "AES128-CCM": "aes-128-ccm",  # RFC 6655, RFC 7251 (16-byte tag; CCM8 is not matched)
}
_TLS12_RE = re.compile(
    r"(?:(?:{})-)?({})".format(
        "|".join(re.escape(p) for p in _TLS12_PREFIXES),
        "|".join(re.escape(b) for b in _TLS12_BULK),
    )
)


def suite_for_openssl_name(name: str) -> Suite | None:
    """The kernel suite for an OpenSSL cipher name, or ``None`` if the kernel lacks it.

    ``name`` is what pyOpenSSL's ``Connection.get_cipher_name()`` returns: IANA names
    for TLS 1.3 ("TLS_AES_128_GCM_SHA256") and OpenSSL names for TLS 1.2
    ("ECDHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES128-CCM", "AES256-GCM-SHA384").
    Returns ``None`` for CBC suites, 8-byte-tag CCM (CCM8, CCM_8), AES-256-CCM, ARIA,
    CAMELLIA, SM4 and anything unknown: better to refuse than to guess key sizes.
    """
    key = _TLS13_NAMES.get(name)
    if key is None:
        m = _TLS12_RE.fullmatch(name)
        if m is None:
            return None
        key = _TLS12_BULK[m.group(1)]
    return SUITES[key]


def openssl_tls13_name(suite: Suite) -> str:
    """The TLS 1.3 cipher suite name (for ``Context.set_tls13_ciphersuites``) of ``suite``.

    TLS_AES_128_CCM_SHA256 is not in OpenSSL's default TLS 1.3 list: both ends must
    enable it explicitly.
    """
    return _TLS13_BY_SUITE[suite.name]


class Tls12CipherNames(NamedTuple):
    """TLS 1.2 OpenSSL cipher strings selecting one suite, per certificate key type.

    Attributes:
        ecdsa: the ECDHE-ECDSA suite, for a server with an ECDSA certificate.
        rsa: a suite for a server with an RSA certificate, or ``None`` if there is none.
    """

    ecdsa: str
    rsa: str | None


# For AES-128-CCM there is no ECDHE-RSA suite at all (RFC 6655 defines RSA and DHE-RSA,
# RFC 7251 only ECDHE-ECDSA), so RSA certificates get finite-field DHE.
_TLS12_NAMES: dict[str, Tls12CipherNames] = {
    "aes-128-gcm": Tls12CipherNames("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"),
    "aes-256-gcm": Tls12CipherNames("ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384"),
    "chacha20-poly1305": Tls12CipherNames(
        "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305"
    ),
    "aes-128-ccm": Tls12CipherNames("ECDHE-ECDSA-AES128-CCM", "DHE-RSA-AES128-CCM"),
}


def openssl_tls12_names(suite: Suite) -> Tls12CipherNames:
    """TLS 1.2 ``set_cipher_list`` strings that negotiate ``suite``, for ECDSA and RSA keys.

    Every name returned maps back to ``suite`` through :func:`suite_for_openssl_name`.
    For AES-128-CCM the RSA entry is ``DHE-RSA-AES128-CCM``: the server needs
    finite-field DH parameters (or OpenSSL's automatic ones) for it.
    """
    return _TLS12_NAMES[suite.name]
