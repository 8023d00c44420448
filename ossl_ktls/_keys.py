"""Key schedule: the secrets OpenSSL hands out, turned into the keys the kernel wants.

Pure functions over bytes. HMAC is the standard library's one-shot ``hmac.digest``
(OpenSSL's HMAC in C, no object per call: this runs for every connection handed over,
and ``cryptography``'s HMAC and HKDFExpand objects cost several times more per call);
HKDF-Expand (RFC 5869 section 2.3) is its three-line chain over that HMAC. The results
are pinned to the RFC 8448 vectors and checked against ``cryptography``'s HKDFExpand
and OpenSSL's own KDF in the tests. Two schedules matter here:

* TLS 1.2 (RFC 5246 sections 5 and 6.3): the PRF expands the master secret and both
  hello randoms into a key block. Only AEAD suites are supported, so the block holds no
  MAC keys: ``client_write_key, server_write_key, client_write_IV, server_write_IV``.
* TLS 1.3 (RFC 8446 section 7): every traffic secret yields a key and an IV through
  HKDF-Expand-Label, and a KeyUpdate replaces a secret with the next one (section 7.2).

Every function validates its inputs and raises :class:`~ossl_ktls._errors.UsageError`
(a ``ValueError``) for a hash it does not know, a negative or oversized length, or a
hello random that is not 32 bytes: these are programming errors, never peer input.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from ._errors import UsageError

__all__ = [
    "HASH_NAMES",
    "BytesLike",
    "KeyBlock",
    "hash_length",
    "hkdf_expand_label",
    "tls12_key_block",
    "tls12_prf",
    "tls13_next_traffic_secret",
    "tls13_traffic_key_iv",
]

#: What the functions accept as key material: callers may keep secrets in a ``bytearray``
#: so they can wipe them. Results are always ``bytes``.
BytesLike = bytes | bytearray | memoryview

#: The hash functions TLS AEAD suites use, by the names this library passes around.
HASH_NAMES: tuple[str, ...] = ("sha256", "sha384")

# RFC 5246 section 7.4.1.2: ClientHello.random and ServerHello.random are 32 bytes.
_RANDOM_LEN = 32

# RFC 8446 section 7.1: HkdfLabel.label is opaque<7..255> and carries the "tls13 " prefix;
# HkdfLabel.context is opaque<0..255>; HkdfLabel.length is a uint16.
_TLS13_LABEL_PREFIX = b"tls13 "
_MAX_LABEL = 255
_MAX_CONTEXT = 255


#: Output lengths of the hashes TLS AEAD suites use.
_DIGEST_SIZES = {"sha256": 32, "sha384": 48}


def _digest_size(hash_name: str) -> int:
    """The output length of ``hash_name``; UsageError for anything else."""
    size = _DIGEST_SIZES.get(hash_name) if isinstance(hash_name, str) else None
    if size is None:
        raise UsageError(f"unsupported hash {hash_name!r}: expected one of {', '.join(HASH_NAMES)}")
    return size


def hash_length(hash_name: str) -> int:
    """The output length in bytes of ``hash_name`` ("sha256": 32, "sha384": 48).

    Raises:
        UsageError: ``hash_name`` is not one of :data:`HASH_NAMES`.
    """
    return _digest_size(hash_name)


def _as_bytes(name: str, value: object) -> bytes:
    """``value`` as immutable bytes; UsageError for anything that is not bytes-like."""
    if not isinstance(value, bytes | bytearray | memoryview):
        raise UsageError(f"{name} must be bytes, not {type(value).__name__}")
    return bytes(value)


def _check_length(name: str, value: object, *, minimum: int = 0) -> int:
    # bool is an int subclass; a True/False length is always a caller bug.
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise UsageError(f"{name} must be at least {minimum}, got {value}")
    return value


def tls12_prf(
    hash_name: str, secret: BytesLike, label: BytesLike, seed: BytesLike, length: int
) -> bytes:
    """The TLS 1.2 PRF: ``PRF(secret, label, seed) = P_<hash>(secret, label + seed)``.

    RFC 5246 section 5. ``P_hash`` chains HMAC: ``A(0) = seed``,
    ``A(i) = HMAC(secret, A(i-1))``, output ``HMAC(secret, A(1) + seed) + ...``,
    truncated to ``length`` bytes. TLS 1.2 AEAD suites use SHA-256, except the
    ``*_SHA384`` ones (AES-256-GCM), which use SHA-384 (RFC 5288 section 3).

    Raises:
        UsageError: unknown ``hash_name``, non-bytes arguments, or a negative ``length``.
    """
    _digest_size(hash_name)
    key = _as_bytes("secret", secret)
    full_seed = _as_bytes("label", label) + _as_bytes("seed", seed)
    _check_length("length", length)
    out = bytearray()
    a = full_seed  # A(0)
    while len(out) < length:
        a = hmac.digest(key, a, hash_name)  # A(i)
        out += hmac.digest(key, a + full_seed, hash_name)
    return bytes(out[:length])


@dataclass(frozen=True)
class KeyBlock:
    """The TLS 1.2 key block of an AEAD suite, split into its four parts.

    RFC 5246 section 6.3, with ``mac_key_length = 0`` as for every AEAD suite
    (RFC 5246 section 6.2.3.3): the IVs are the implicit ("fixed", "salt") parts of the
    nonce, 4 bytes for AES-GCM (RFC 5288 section 3) and AES-CCM (RFC 6655 section 3),
    12 bytes for ChaCha20-Poly1305 (RFC 7905 section 2).
    """

    client_key: bytes
    server_key: bytes
    client_iv: bytes
    server_iv: bytes

    def __repr__(self) -> str:
        # Never print key material: a KeyBlock ends up in logs and tracebacks.
        return f"KeyBlock(key_len={len(self.client_key)}, iv_len={len(self.client_iv)}, <secret>)"


def tls12_key_block(
    hash_name: str,
    master_secret: BytesLike,
    client_random: BytesLike,
    server_random: BytesLike,
    key_len: int,
    iv_len: int,
) -> KeyBlock:
    """Derive the client and server write keys and IVs of a TLS 1.2 AEAD connection.

    RFC 5246 section 6.3: ``key_block = PRF(master_secret, "key expansion",
    server_random + client_random)``, partitioned as ``client_write_key,
    server_write_key, client_write_IV, server_write_IV`` (no MAC keys for AEAD suites).
    Note the seed order: server random first, unlike the master secret derivation.

    Raises:
        UsageError: unknown ``hash_name``, a master secret that is not 48 bytes
            (RFC 5246 section 8.1), a random that is not 32 bytes, a ``key_len`` below 1
            or a negative ``iv_len``.
    """
    master = _as_bytes("master_secret", master_secret)
    crandom = _as_bytes("client_random", client_random)
    srandom = _as_bytes("server_random", server_random)
    if len(master) != 48:
        raise UsageError(f"TLS 1.2 master secret must be 48 bytes, got {len(master)}")
    for name, value in (("client_random", crandom), ("server_random", srandom)):
        if len(value) != _RANDOM_LEN:
            raise UsageError(f"{name} must be {_RANDOM_LEN} bytes, got {len(value)}")
    _check_length("key_len", key_len, minimum=1)
    _check_length("iv_len", iv_len)
    block = tls12_prf(
        hash_name,
        master,
        b"key expansion",
        srandom + crandom,
        2 * key_len + 2 * iv_len,
    )
    k, i = key_len, iv_len
    return KeyBlock(
        client_key=block[0:k],
        server_key=block[k : 2 * k],
        client_iv=block[2 * k : 2 * k + i],
        server_iv=block[2 * k + i : 2 * k + 2 * i],
    )


def hkdf_expand_label(
    hash_name: str, secret: BytesLike, label: BytesLike, context: BytesLike, length: int
) -> bytes:
    """HKDF-Expand-Label of TLS 1.3 (RFC 8446 section 7.1).

    ``HKDF-Expand(secret, HkdfLabel, length)`` with ``HkdfLabel = uint16 length ||
    opaque label<7..255> = "tls13 " + label || opaque context<0..255>``. Pass the label
    without the ``"tls13 "`` prefix (``b"key"``, ``b"traffic upd"``); it is added here.

    Raises:
        UsageError: unknown ``hash_name``; ``length`` outside 1..255 * Hash.length
            (RFC 5869 section 2.3); a label longer than 249 bytes or a context longer
            than 255 bytes (they would not fit their length prefixes); a secret shorter
            than Hash.length (RFC 5869 section 2.3).
    """
    digest_size = _digest_size(hash_name)
    prk = _as_bytes("secret", secret)
    label_bytes = _as_bytes("label", label)
    context_bytes = _as_bytes("context", context)
    _check_length("length", length, minimum=1)
    if length > 255 * digest_size:
        raise UsageError(f"HKDF-Expand length {length} exceeds 255 * {digest_size} (RFC 5869 2.3)")
    if len(prk) < digest_size:
        # RFC 5869 section 2.3: PRK is "a pseudorandom key of at least HashLen octets".
        raise UsageError(f"secret is {len(prk)} bytes, HKDF-Expand needs at least {digest_size}")
    full_label = _TLS13_LABEL_PREFIX + label_bytes
    if len(full_label) > _MAX_LABEL:
        raise UsageError(f"label too long: {len(full_label)} bytes with prefix, max 255")
    if len(context_bytes) > _MAX_CONTEXT:
        raise UsageError(f"context too long: {len(context_bytes)} bytes, max 255")
    info = (
        length.to_bytes(2, "big")
        + bytes([len(full_label)])
        + full_label
        + bytes([len(context_bytes)])
        + context_bytes
    )
    return _hkdf_expand(hash_name, prk, info, length)


def _hkdf_expand(hash_name: str, prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869 section 2.3): ``T(i) = HMAC(PRK, T(i-1) | info | i)``,
    the first *length* bytes of ``T(1) | T(2) | ...`` (lengths checked by the caller)."""
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), hash_name)
        out += block
        counter += 1
    return out[:length]


def _check_traffic_secret(hash_name: str, secret: BytesLike) -> None:
    # RFC 8446 section 7.1: Derive-Secret outputs Hash.length bytes, so a traffic secret of
    # any other length was derived under another suite's hash: refuse rather than mix them.
    expected = hash_length(hash_name)
    actual = len(_as_bytes("secret", secret))
    if actual != expected:
        raise UsageError(f"{hash_name} traffic secret must be {expected} bytes, got {actual}")


def tls13_traffic_key_iv(
    hash_name: str, secret: BytesLike, key_len: int, iv_len: int = 12
) -> tuple[bytes, bytes]:
    """The write key and IV of a TLS 1.3 traffic secret (RFC 8446 section 7.3).

    ``key = HKDF-Expand-Label(secret, "key", "", key_len)``,
    ``iv = HKDF-Expand-Label(secret, "iv", "", iv_len)``. Every TLS 1.3 AEAD has a
    12-byte IV (RFC 8446 section 5.3: ``iv_length = max(8, N_MIN)``, 12 for all suites).

    Raises:
        UsageError: as :func:`hkdf_expand_label`, or a ``secret`` that is not
            Hash.length bytes (every TLS 1.3 traffic secret is; RFC 8446 section 7.1).
    """
    _check_traffic_secret(hash_name, secret)
    _check_length("key_len", key_len, minimum=1)
    _check_length("iv_len", iv_len, minimum=1)
    prk = bytes(secret)
    if max(key_len, iv_len) > _digest_size(hash_name):  # never for a TLS 1.3 suite
        key = hkdf_expand_label(hash_name, prk, b"key", b"", key_len)
        iv = hkdf_expand_label(hash_name, prk, b"iv", b"", iv_len)
        return key, iv
    # One HMAC each: HKDF-Expand's first block, with the HkdfLabel built once per length.
    key = hmac.digest(prk, _one_block_label(b"key", key_len), hash_name)[:key_len]
    iv = hmac.digest(prk, _one_block_label(b"iv", iv_len), hash_name)[:iv_len]
    return key, iv


_LABELS: dict[tuple[bytes, int], bytes] = {}


def _one_block_label(label: bytes, length: int) -> bytes:
    """``HkdfLabel(label, "", length) | 0x01``: the input of HKDF-Expand's first block."""
    info = _LABELS.get((label, length))
    if info is None:
        full = _TLS13_LABEL_PREFIX + label
        info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00" + b"\x01"
        _LABELS[(label, length)] = info
    return info


def tls13_next_traffic_secret(hash_name: str, secret: BytesLike) -> bytes:
    """The traffic secret that follows ``secret`` after a KeyUpdate (RFC 8446 section 7.2).

    ``application_traffic_secret_N+1 = HKDF-Expand-Label(application_traffic_secret_N,
    "traffic upd", "", Hash.length)``.

    Raises:
        UsageError: unknown ``hash_name``, or a ``secret`` that is not Hash.length bytes.
    """
    _check_traffic_secret(hash_name, secret)
    return hkdf_expand_label(hash_name, secret, b"traffic upd", b"", hash_length(hash_name))
