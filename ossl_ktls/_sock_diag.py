"""The kernel's own view of its TLS sockets, through sock_diag (``ss -tie`` reads the same).

One ``SOCK_DIAG_BY_FAMILY`` dump per address family over a ``NETLINK_SOCK_DIAG`` socket
lists the TCP sockets; the kernel adds ``INET_DIAG_ULP_INFO`` to those with an upper layer
protocol, and for ``tls`` it nests what kernel TLS really does: the version, the cipher,
where each direction runs (``TLS_CONF_SW``: the kernel's software crypto; ``HW``: NIC
offload; ``BASE``, "none" as ss says: not installed), zero-copy sendfile, RX no-padding,
and the TX record size cap. The kernel shows ULP info only to callers with CAP_NET_ADMIN.

:func:`parse_dump` is pure (bytes in, records out) and tested on the host; :func:`tls_sockets`
does the one netlink exchange.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ._suites import SUITES

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
INET_DIAG_INFO = 2
INET_DIAG_ULP_INFO = 19
INET_ULP_INFO_NAME = 1
INET_ULP_INFO_TLS = 2
TLS_INFO_VERSION = 1
TLS_INFO_CIPHER = 2
TLS_INFO_TXCONF = 3
TLS_INFO_RXCONF = 4
TLS_INFO_ZC_RO_TX = 5
TLS_INFO_RX_NO_PAD = 6
TLS_INFO_TX_MAX_PAYLOAD_LEN = 7
ALL_STATES = 0xFFFFFFFF
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

_NLMSGHDR = struct.Struct("=IHHII")
_REQ_V2 = struct.Struct("=BBBBI48s")
_DIAG_MSG = struct.Struct("=BBBB2s2s16s16sI2IIIIII")  # inet_diag_msg: 72 bytes
_RTATTR = struct.Struct("=HH")

# TLS_CONF_* as ss (iproute2) names them: BASE is "none" (not in the kernel).
CONF_NAMES = {1: "none", 2: "sw", 3: "hw", 4: "hw-record"}
_TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN-SENT",
    3: "SYN-RECV",
    4: "FIN-WAIT-1",
    5: "FIN-WAIT-2",
    6: "TIME-WAIT",
    7: "CLOSE",
    8: "CLOSE-WAIT",
    9: "LAST-ACK",
    10: "LISTEN",
    11: "CLOSING",
}
_CIPHER_NAMES = {suite.kernel_cipher: name for name, suite in SUITES.items()}
_VERSIONS = {0x0303: "1.2", 0x0304: "1.3"}


@dataclass(frozen=True)
class TLSSocket:
    """One TCP socket with the ``tls`` ULP, as the kernel describes it."""

    local: str
    peer: str
    state: str
    inode: int
    uid: int
    version: str | None  # "1.2", "1.3"; None before keys were installed
    cipher: str | None  # our name ("aes-128-gcm"), or "kernel cipher N"
    tx: str  # "sw", "hw", "hw-record", "none" (not in the kernel)
    rx: str
    zerocopy_sendfile: bool
    rx_no_pad: bool
    tx_max_payload_len: int | None  # 7.x kernels that report it

    def as_json(self) -> dict[str, object]:
        return {
            "local": self.local,
            "peer": self.peer,
            "state": self.state,
            "inode": self.inode,
            "uid": self.uid,
            "tls_version": self.version,
            "cipher": self.cipher,
            "tx": self.tx,
            "rx": self.rx,
            "zerocopy_sendfile": self.zerocopy_sendfile,
            "rx_no_pad": self.rx_no_pad,
            "tx_max_payload_len": self.tx_max_payload_len,
        }


def _attributes(data: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
    """The (type, payload) netlink attributes packed in *data* (4-byte aligned)."""
    view = memoryview(data)
    offset = 0
    while offset + _RTATTR.size <= len(view):
        length, kind = _RTATTR.unpack_from(view, offset)
        if length < _RTATTR.size or offset + length > len(view):
            raise ValueError(f"a netlink attribute overruns its message at {offset}")
        yield kind & NLA_TYPE_MASK, view[offset + _RTATTR.size : offset + length]
        offset += (length + 3) & ~3


def _address(family: int, raw: bytes, port: bytes) -> str:
    number = int.from_bytes(port, "big")
    if family == socket.AF_INET6:
        return f"[{socket.inet_ntop(socket.AF_INET6, raw)}]:{number}"
    return f"{socket.inet_ntop(socket.AF_INET, raw[:4])}:{number}"


def _socket(message: memoryview) -> TLSSocket | None:
    """One inet_diag_msg and its attributes; None unless its ULP is ``tls``."""
    if len(message) < _DIAG_MSG.size:
        raise ValueError("an inet_diag_msg shorter than 72 bytes")
    fields = _DIAG_MSG.unpack_from(message)
    family, state = fields[0], fields[1]
    sport, dport, src, dst = fields[4], fields[5], fields[6], fields[7]
    uid, inode = fields[14], fields[15]
    ulp: dict[int, memoryview] | None = None
    for kind, payload in _attributes(message[_DIAG_MSG.size :]):
        if kind == INET_DIAG_ULP_INFO:
            ulp = dict(_attributes(payload))
    if ulp is None or bytes(ulp.get(INET_ULP_INFO_NAME, b"")).rstrip(b"\0") != b"tls":
        return None
    info = dict(_attributes(ulp[INET_ULP_INFO_TLS])) if INET_ULP_INFO_TLS in ulp else {}

    def u16(kind: int) -> int | None:
        value = info.get(kind)
        if value is None:
            return None
        if len(value) < 2:
            raise ValueError(f"TLS_INFO attribute {kind} is shorter than a u16")
        return int(struct.unpack_from("=H", value)[0])

    version_code = u16(TLS_INFO_VERSION)
    version = None
    if version_code is not None:
        version = _VERSIONS.get(version_code, f"0x{version_code:04x}")
    cipher_code = u16(TLS_INFO_CIPHER)
    cipher = None
    if cipher_code is not None:
        cipher = _CIPHER_NAMES.get(cipher_code, f"kernel cipher {cipher_code}")
    return TLSSocket(
        local=_address(family, src, sport),
        peer=_address(family, dst, dport),
        state=_TCP_STATES.get(state, str(state)),
        inode=inode,
        uid=uid,
        version=version,
        cipher=cipher,
        tx=CONF_NAMES.get(u16(TLS_INFO_TXCONF) or 0, "?"),
        rx=CONF_NAMES.get(u16(TLS_INFO_RXCONF) or 0, "?"),
        zerocopy_sendfile=TLS_INFO_ZC_RO_TX in info,
        rx_no_pad=TLS_INFO_RX_NO_PAD in info,
        tx_max_payload_len=u16(TLS_INFO_TX_MAX_PAYLOAD_LEN),
    )


def parse_dump(data: bytes) -> tuple[list[TLSSocket], bool]:
    """The TLS sockets in one read of a sock_diag dump, and whether the dump ended.

    Raises:
        OSError: the kernel answered the request with an error.
        ValueError: a message that does not parse.
    """
    found: list[TLSSocket] = []
    view = memoryview(data)
    offset = 0
    while offset + _NLMSGHDR.size <= len(view):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(view, offset)
        if length < _NLMSGHDR.size or offset + length > len(view):
            raise ValueError(f"a netlink message overruns the read at {offset}")
        body = view[offset + _NLMSGHDR.size : offset + length]
        if kind == NLMSG_DONE:
            return found, True
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else errno.EIO
            if code:
                raise OSError(code, f"sock_diag: {os.strerror(code)}")
        elif kind == SOCK_DIAG_BY_FAMILY:
            record = _socket(body)
            if record is not None:
                found.append(record)
        offset += (length + 3) & ~3
    return found, False


def request(family: int, seq: int) -> bytes:
    """A dump request for every TCP socket of *family*, in every state, with
    INET_DIAG_INFO: the kernel adds the ULP's info only when that is asked for."""
    ext = 1 << (INET_DIAG_INFO - 1)
    body = _REQ_V2.pack(family, socket.IPPROTO_TCP, ext, 0, ALL_STATES, bytes(48))
    header = _NLMSGHDR.pack(
        _NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + body


def tls_sockets() -> list[TLSSocket]:
    """Every TCP socket of this network namespace that carries the ``tls`` ULP.

    Raises:
        OSError: no sock_diag (``EPROTONOSUPPORT``: the kernel lacks INET_DIAG).
    """
    found: list[TLSSocket] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(10)
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            nl.send(request(family, seq))
            while True:
                records, done = parse_dump(nl.recv(1 << 20))
                found += records
                if done:
                    break
    return found
