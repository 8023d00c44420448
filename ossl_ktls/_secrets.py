"""Key material of a handed-over connection: the kernel structures, and the TLS 1.3
traffic secrets kept for rekeying.

``crypto_state`` splits a write key and IV the way ``struct tls12_crypto_info_*`` wants
them (see shared/REFERENCE.md). :class:`TrafficSecrets` holds the current TLS 1.3
application traffic secret of each direction in a mutable buffer, only while the kernel
carries that direction and can rekey it; advancing a secret (a KeyUpdate) overwrites
the old buffer, and :meth:`TrafficSecrets.wipe` zeroes all of them.
"""

from __future__ import annotations

from . import _linux_tls as uapi
from ._keys import tls13_next_traffic_secret, tls13_traffic_key_iv
from ._suites import Suite
from ._wire import Direction


def crypto_state(
    version: str, suite: Suite, key: bytearray, iv: bytearray, seq: int
) -> uapi.CryptoState:
    """Split a write IV into what the kernel structure wants (see REFERENCE.md)."""
    if suite.salt_len:
        salt = iv[: suite.salt_len]
        # TLS 1.2 GCM/CCM: the iv field is the explicit nonce, unique per record; like
        # OpenSSL, start it at the sequence number (the kernel increments it).
        explicit = bytearray(seq.to_bytes(8, "big"))
        kernel_iv = iv[suite.salt_len :] if version == "1.3" else explicit
    else:
        salt = bytearray()
        kernel_iv = iv
    return uapi.CryptoState(version, suite.name, key, bytearray(kernel_iv), bytearray(salt), seq)


class TrafficSecrets:
    """The TLS 1.3 traffic secrets of the directions that may still be rekeyed."""

    def __init__(self, suite: Suite) -> None:
        self._suite = suite
        self._buffers: dict[Direction, bytearray] = {}

    def keep(self, direction: Direction, secret: bytes | bytearray, epochs: int) -> None:
        """Keep a copy of *secret*, advanced *epochs* times (KeyUpdates OpenSSL already
        processed before the hand-over)."""
        self._buffers[direction] = bytearray(secret)
        for _ in range(epochs):
            self.advance(direction)

    def has(self, direction: Direction) -> bool:
        return direction in self._buffers

    def advance(self, direction: Direction) -> None:
        """Move *direction* to its next traffic secret (RFC 8446 section 7.2)."""
        old = self._buffers[direction]
        self._buffers[direction] = bytearray(
            tls13_next_traffic_secret(self._suite.hash_name, bytes(old))
        )
        old[:] = bytes(len(old))

    def state(self, direction: Direction, seq: int) -> uapi.CryptoState:
        """The kernel structure for *direction*'s current secret, at sequence *seq*."""
        return crypto_state("1.3", self._suite, *self.key_iv(direction), seq)

    def key_iv(self, direction: Direction) -> tuple[bytearray, bytearray]:
        """The write key and IV of *direction*'s current secret, in mutable buffers."""
        key, iv = tls13_traffic_key_iv(
            self._suite.hash_name, bytes(self._buffers[direction]), self._suite.key_len
        )
        return bytearray(key), bytearray(iv)

    def buffers(self) -> list[bytearray]:
        """The live buffers (for tests that check they are wiped)."""
        return list(self._buffers.values())

    def wipe(self) -> None:
        """Zero and forget every kept secret."""
        for buf in self._buffers.values():
            buf[:] = bytes(len(buf))
        self._buffers.clear()

    def __bool__(self) -> bool:
        return bool(self._buffers)

    def __repr__(self) -> str:
        return f"<TrafficSecrets {[d.name for d in sorted(self._buffers)]} hidden>"
