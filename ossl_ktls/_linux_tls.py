"""The Linux kernel TLS uAPI (``include/uapi/linux/tls.h``) and the probe.

This is the only module that touches kTLS socket options. Structures are packed with
``struct`` layouts built once per cipher (``_layout``, the header's field order) into a
``bytearray``, passed to ``setsockopt`` by buffer (no copy), and zeroed right after, so
the key bytes live in exactly one mutable buffer for the duration of one system call.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import platform
import socket
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from ._suites import SUITES
from ._wire import Direction

# setsockopt levels and names
SOL_TLS = 282
TCP_ULP = 31
TLS_TX = Direction.TX
TLS_RX = Direction.RX
TLS_TX_ZEROCOPY_RO = 3
TLS_RX_EXPECT_NO_PAD = 4
TLS_TX_MAX_PAYLOAD_LEN = 5
# cmsg types
TLS_SET_RECORD_TYPE = 1
TLS_GET_RECORD_TYPE = 2

TLS_1_2_VERSION = 0x0303
TLS_1_3_VERSION = 0x0304

REC_SEQ_SIZE = 8

# The TLS_CIPHER_* values and the iv/key/salt sizes of each tls12_crypto_info_* struct
# come from the one cipher table, _suites.SUITES.
CIPHER_NAMES: tuple[str, ...] = tuple(SUITES)
VERSIONS = {"1.2": TLS_1_2_VERSION, "1.3": TLS_1_3_VERSION}


@functools.cache
def _layout(cipher: str) -> struct.Struct:
    """The ``tls12_crypto_info_*`` structure of *cipher*, as in linux/tls.h: ``struct
    tls_crypto_info { __u16 version; __u16 cipher_type; }`` (native byte order), then
    ``iv``, ``key``, ``salt`` (absent for ChaCha20) and ``rec_seq``, unpadded. The same
    layout serves TLS 1.2 and 1.3."""
    suite = SUITES[cipher]
    return struct.Struct(f"=HH{suite.kernel_iv_len}s{suite.key_len}s{suite.salt_len}s8s")


def crypto_info_size(cipher: str) -> int:
    """``sizeof`` the kernel structure for *cipher* (40 or 56 bytes)."""
    return _layout(cipher).size


@dataclass
class CryptoState:
    """What one direction of a kTLS socket is keyed with.

    ``iv`` is what goes in the structure's ``iv`` field: the 8-byte explicit nonce part
    (GCM/CCM) or the whole 12-byte IV (ChaCha20); ``salt`` the 4-byte implicit part
    (empty for ChaCha20). Buffers are bytearrays so :meth:`wipe` can clear them.
    """

    version: str
    cipher: str
    key: bytearray
    iv: bytearray
    salt: bytearray
    rec_seq: int

    def wipe(self) -> None:
        """Overwrite the key material with zeros."""
        for buf in (self.key, self.iv, self.salt):
            buf[:] = bytes(len(buf))

    def __repr__(self) -> str:  # never show key material
        return (
            f"CryptoState(version={self.version!r}, cipher={self.cipher!r}, rec_seq={self.rec_seq})"
        )


def _fill(state: CryptoState) -> bytearray:
    """The structure for *state*, in the one mutable buffer :func:`_wipe_struct` clears."""
    suite = SUITES[state.cipher]
    if (len(state.iv), len(state.key), len(state.salt)) != (
        suite.kernel_iv_len,
        suite.key_len,
        suite.salt_len,
    ):
        raise ValueError(f"wrong key material sizes for {state.cipher}")
    if not 0 <= state.rec_seq < 2**64:
        raise ValueError("record sequence number out of range")
    layout = _layout(state.cipher)
    info = bytearray(layout.size)
    layout.pack_into(
        info,
        0,
        VERSIONS[state.version],
        suite.kernel_cipher,
        state.iv,
        state.key,
        state.salt,
        state.rec_seq.to_bytes(REC_SEQ_SIZE, "big"),
    )
    return info


def _wipe_struct(info: bytearray) -> None:
    info[:] = bytes(len(info))


def set_ulp(sock: socket.socket) -> None:
    """Attach the ``tls`` upper layer protocol (ENOENT: no tls module; ENOTCONN: not connected)."""
    sock.setsockopt(socket.IPPROTO_TCP, TCP_ULP, b"tls")


def install(sock: socket.socket, direction: int, state: CryptoState) -> None:
    """``setsockopt(SOL_TLS, TLS_TX|TLS_RX)`` with *state*; the structure is wiped after.

    Raises ``OSError`` with the kernel's errno (EBUSY: rekey unsupported, EINVAL: bad
    parameters, ENOPROTOOPT: no ULP attached).
    """
    info = _fill(state)
    try:
        sock.setsockopt(SOL_TLS, direction, info)
    finally:
        _wipe_struct(info)


def read_rec_seq(sock: socket.socket, direction: int, cipher: str) -> int:
    """The record sequence number the kernel will use next in *direction*.

    ``getsockopt`` returns the whole structure, key included; only ``rec_seq`` is kept
    and the copy is dropped at once. Meant for tests and diagnostics.
    """
    raw = bytearray(sock.getsockopt(SOL_TLS, direction, crypto_info_size(cipher)))
    try:
        return int.from_bytes(raw[-REC_SEQ_SIZE:], "big")
    finally:
        raw[:] = bytes(len(raw))


def get_u32(sock: socket.socket, option: int) -> int:
    """Read a 32-bit SOL_TLS option back (TLS_TX_ZEROCOPY_RO, TLS_RX_EXPECT_NO_PAD)."""
    return int.from_bytes(sock.getsockopt(SOL_TLS, option, 4), "little")


def set_u32(sock: socket.socket, option: int, value: int) -> None:
    """Set a 32-bit SOL_TLS option (TLS_TX_ZEROCOPY_RO, TLS_RX_EXPECT_NO_PAD)."""
    sock.setsockopt(SOL_TLS, option, value.to_bytes(4, "little"))


def get_u16(sock: socket.socket, option: int) -> int:
    """Read a 16-bit SOL_TLS option back (TLS_TX_MAX_PAYLOAD_LEN)."""
    return int.from_bytes(sock.getsockopt(SOL_TLS, option, 2), sys.byteorder)


def set_u16(sock: socket.socket, option: int, value: int) -> None:
    """Set a 16-bit SOL_TLS option (TLS_TX_MAX_PAYLOAD_LEN; the kernel reads a u16)."""
    sock.setsockopt(SOL_TLS, option, value.to_bytes(2, sys.byteorder))


def set_tx_max_payload(sock: socket.socket, size: int) -> None:
    """Cap the plaintext of every record kernel TX will build at *size* bytes.

    ``TLS_TX_MAX_PAYLOAD_LEN`` (Linux 6.19+): 64..16384 for TLS 1.2, 63..16384 for TLS
    1.3 (a TLS 1.3 record_size_limit counts the content type byte: pass limit - 1). It
    is taken after the ULP and before TLS_TX, and kept when TLS_TX is installed; EBUSY
    while a MSG_MORE record is open. The value is read back: a kernel that answers
    success but keeps another value raises ``OSError(EINVAL)``.
    """
    set_u16(sock, TLS_TX_MAX_PAYLOAD_LEN, size)
    got = get_u16(sock, TLS_TX_MAX_PAYLOAD_LEN)
    if got != size:
        raise OSError(errno.EINVAL, f"TLS_TX_MAX_PAYLOAD_LEN reads back {got}, not {size}")


_CMSG_SPACE = socket.CMSG_SPACE(1)


def send_record(sock: socket.socket, content_type: int, payload: bytes) -> int:
    """Send one non-data record (alert 21, handshake 22) through kernel TX.

    Any open MSG_MORE data record is pushed out by the kernel first.
    """
    return sock.sendmsg([payload], [(SOL_TLS, TLS_SET_RECORD_TYPE, bytes([content_type]))])


def recv_record_into(
    sock: socket.socket, buf: memoryview, flags: int = 0
) -> tuple[int, int | None]:
    """One ``recvmsg`` through kernel RX: ``(nbytes, record type or None)``.

    The type is None when the kernel sent no ``TLS_GET_RECORD_TYPE`` cmsg, which with
    ``nbytes == 0`` means the TCP stream ended.
    """
    nbytes, ancdata, _msg_flags, _addr = sock.recvmsg_into([buf], _CMSG_SPACE, flags)
    for level, kind, data in ancdata:
        if level == SOL_TLS and kind == TLS_GET_RECORD_TYPE and data:
            return nbytes, data[0]
    return nbytes, None


# ---------------------------------------------------------------- probe


@dataclass(frozen=True)
class Capabilities:
    """What the running kernel accepted when tried on a loopback socket.

    ``tx``/``rx`` map a TLS version ("1.2", "1.3") to the cipher names the kernel took.
    ``rekey`` is TLS 1.3 rekeying of a live socket (Linux 6.14+). ``tx_max_payload_len``
    is ``TLS_TX_MAX_PAYLOAD_LEN`` (Linux 6.19+): kernel TX can keep to a record size the
    peer negotiated (max_fragment_length, record_size_limit); without it TX stays in user
    space on such connections. ``ulp_error`` says why the ``tls`` ULP could not be
    attached, when it could not.
    """

    kernel: str
    ulp: bool
    tx: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rx: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rekey: bool = False
    zerocopy_sendfile: bool = False
    rx_expect_no_pad: bool = False
    tx_max_payload_len: bool = False
    ulp_error: str | None = None

    def supports(self, direction: str, version: str, cipher: str) -> bool:
        """Whether *direction* ("tx" or "rx") accepted *cipher* under TLS *version*."""
        table = self.tx if direction == "tx" else self.rx
        return cipher in table.get(version, ())

    def as_json(self) -> dict[str, object]:
        """The shape ``ossl-ktls probe --json`` prints."""
        return {
            "kernel": self.kernel,
            "ulp": self.ulp,
            "tx": {v: list(c) for v, c in self.tx.items()},
            "rx": {v: list(c) for v, c in self.rx.items()},
            "rekey": self.rekey,
            "zerocopy_sendfile": self.zerocopy_sendfile,
            "rx_expect_no_pad": self.rx_expect_no_pad,
            "tx_max_payload_len": self.tx_max_payload_len,
        }


class _Loopback:
    """A loopback listener handing out established client sockets, for probing."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)

    @contextlib.contextmanager
    def pair(self) -> Iterator[socket.socket]:
        client = socket.create_connection(self.listener.getsockname(), timeout=5)
        server, _ = self.listener.accept()
        try:
            yield client
        finally:
            client.close()
            server.close()

    def close(self) -> None:
        self.listener.close()


def _dummy_state(version: str, cipher: str) -> CryptoState:
    suite = SUITES[cipher]
    return CryptoState(
        version,
        cipher,
        bytearray(suite.key_len),
        bytearray(suite.kernel_iv_len),
        bytearray(suite.salt_len),
        0,
    )


def _errname(err: int | None) -> str:
    return errno.errorcode.get(err or 0, str(err))


@functools.cache
def probe() -> Capabilities:
    """Find out what the running kernel's TLS layer accepts, by really trying.

    Each (direction, version, cipher) is tried on a fresh established loopback TCP
    socket with dummy keys; nothing is sent. The answer is cached for the process.
    """
    kernel = platform.release()
    tx: dict[str, list[str]] = {v: [] for v in VERSIONS}
    rx: dict[str, list[str]] = {v: [] for v in VERSIONS}
    rekey = zerocopy = no_pad = max_payload = False
    with contextlib.closing(_Loopback()) as loop:
        with loop.pair() as sock:
            try:
                set_ulp(sock)
            except OSError as exc:
                reason = f"the kernel has no 'tls' ULP ({_errname(exc.errno)}: {exc.strerror})"
                if exc.errno == errno.ENOENT:
                    reason = (
                        "the kernel has no 'tls' ULP (ENOENT: built without CONFIG_TLS "
                        "or the tls module cannot be loaded)"
                    )
                return Capabilities(
                    kernel=kernel,
                    ulp=False,
                    tx={v: () for v in VERSIONS},
                    rx={v: () for v in VERSIONS},
                    ulp_error=reason,
                )
        for direction, table in ((TLS_TX, tx), (TLS_RX, rx)):
            for version in VERSIONS:
                for cipher in CIPHER_NAMES:
                    with loop.pair() as sock:
                        set_ulp(sock)
                        try:
                            install(sock, direction, _dummy_state(version, cipher))
                        except OSError:
                            continue
                        table[version].append(cipher)
                        if version == "1.3" and cipher == "aes-128-gcm":
                            if direction == TLS_TX:
                                with contextlib.suppress(OSError):
                                    install(sock, TLS_TX, _dummy_state(version, cipher))
                                    rekey = True
                            else:
                                with contextlib.suppress(OSError):
                                    set_u32(sock, TLS_RX_EXPECT_NO_PAD, 1)
                                    no_pad = True
                        if direction == TLS_TX and version == "1.2" and cipher == "aes-128-gcm":
                            with contextlib.suppress(OSError):
                                set_u32(sock, TLS_TX_ZEROCOPY_RO, 1)
                                zerocopy = True
                            with contextlib.suppress(OSError):
                                set_tx_max_payload(sock, 512)
                                max_payload = True
    return Capabilities(
        kernel=kernel,
        ulp=True,
        tx={v: tuple(c) for v, c in tx.items()},
        rx={v: tuple(c) for v, c in rx.items()},
        rekey=rekey,
        zerocopy_sendfile=zerocopy,
        rx_expect_no_pad=no_pad,
        tx_max_payload_len=max_payload,
    )
