"""sock_diag: the kernel's view of its TLS sockets (``ossl-ktls stats --sockets``).

The parser, on made-up dumps (attributes built field by field, the way the kernel lays
them out: 4-byte aligned, nested). The live sockets are tests/test_sockets_live.py.
"""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ossl_ktls import _sock_diag as diag


def nlattr(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + bytes(-len(data) % 4)


def nlmsg(kind: int, body: bytes) -> bytes:
    data = struct.pack("=IHHII", 16 + len(body), kind, 2, 1, 0) + body
    return data + bytes(-len(data) % 4)


def diag_msg(
    *,
    family: int = socket.AF_INET,
    state: int = 1,
    sport: int = 443,
    dport: int = 51000,
    src: str = "127.0.0.1",
    dst: str = "127.0.0.2",
    uid: int = 0,
    inode: int = 4242,
    attrs: bytes = b"",
) -> bytes:
    raw = socket.inet_pton(family, src).ljust(16, b"\0")
    peer = socket.inet_pton(family, dst).ljust(16, b"\0")
    head = struct.pack("=BBBB", family, state, 0, 0)
    sockid = struct.pack(">HH", sport, dport) + raw + peer + struct.pack("=I2I", 0, 1, 2)
    tail = struct.pack("=IIIII", 0, 0, 0, uid, inode)
    return nlmsg(diag.SOCK_DIAG_BY_FAMILY, head + sockid + tail + attrs)


def tls_ulp(
    *,
    version: int | None = 0x0304,
    cipher: int | None = 51,
    tx: int = 2,
    rx: int = 2,
    zc: bool = False,
    nopad: bool = False,
    cap: int | None = None,
    name: bytes = b"tls\0",
) -> bytes:
    info = b""
    if version is not None:
        info += nlattr(diag.TLS_INFO_VERSION, struct.pack("=H", version))
    if cipher is not None:
        info += nlattr(diag.TLS_INFO_CIPHER, struct.pack("=H", cipher))
    info += nlattr(diag.TLS_INFO_TXCONF, struct.pack("=H", tx))
    info += nlattr(diag.TLS_INFO_RXCONF, struct.pack("=H", rx))
    if zc:
        info += nlattr(diag.TLS_INFO_ZC_RO_TX, b"")
    if nopad:
        info += nlattr(diag.TLS_INFO_RX_NO_PAD, b"")
    if cap is not None:
        info += nlattr(diag.TLS_INFO_TX_MAX_PAYLOAD_LEN, struct.pack("=H", cap))
    nested = nlattr(diag.INET_ULP_INFO_NAME, name) + nlattr(
        diag.INET_ULP_INFO_TLS | 0x8000,
        info,  # NLA_F_NESTED, as the kernel sets it
    )
    return nlattr(diag.INET_DIAG_ULP_INFO | 0x8000, nested)


DONE = nlmsg(diag.NLMSG_DONE, struct.pack("=i", 0))


def test_parses_a_tls_socket_and_skips_the_others() -> None:
    dump = (
        diag_msg(attrs=nlattr(5, b"\x00"))  # a TCP socket without a ULP (INET_DIAG_TOS only)
        + diag_msg(
            family=socket.AF_INET6,
            src="::1",
            dst="::1",
            sport=8443,
            dport=40000,
            uid=1000,
            inode=77,
            attrs=tls_ulp(version=0x0303, cipher=54, tx=2, rx=1, nopad=True, cap=512),
        )
        + diag_msg(attrs=nlattr(diag.INET_DIAG_ULP_INFO, nlattr(1, b"mptcp\0")))
        + DONE
    )
    found, done = diag.parse_dump(dump)
    assert done
    [s] = found
    assert (s.local, s.peer, s.state, s.uid, s.inode) == (
        "[::1]:8443",
        "[::1]:40000",
        "ESTABLISHED",
        1000,
        77,
    )
    assert (s.version, s.cipher, s.tx, s.rx) == ("1.2", "chacha20-poly1305", "sw", "none")
    assert (s.rx_no_pad, s.zerocopy_sendfile, s.tx_max_payload_len) == (True, False, 512)


def test_a_socket_before_its_keys() -> None:
    """The ULP attached, no key installed yet: no version, no cipher, both 'none'."""
    found, _ = diag.parse_dump(diag_msg(attrs=tls_ulp(version=None, cipher=None, tx=1, rx=1)))
    [s] = found
    assert (s.version, s.cipher, s.tx, s.rx) == (None, None, "none", "none")


def test_dump_split_over_reads_and_errors() -> None:
    first, done = diag.parse_dump(diag_msg(attrs=tls_ulp()))
    assert len(first) == 1 and not done
    with pytest.raises(OSError) as info:
        diag.parse_dump(nlmsg(diag.NLMSG_ERROR, struct.pack("=i", -1) + bytes(16)))
    assert info.value.errno == 1
    with pytest.raises(ValueError, match="overruns"):
        diag.parse_dump(diag_msg(attrs=tls_ulp())[:-6])


_FULL = (
    diag_msg(attrs=tls_ulp())
    + diag_msg(attrs=tls_ulp(version=0x0303, cipher=52, cap=4096), inode=9)
    + diag_msg(attrs=nlattr(5, b"\x00"))
    + DONE
)


@given(st.integers(min_value=0, max_value=len(_FULL) - 1), st.integers(0, 255), st.booleans())
def test_a_damaged_dump_is_a_value_error_or_a_prefix(cut: int, byte: int, flip: bool) -> None:
    """Any read cut short, or with one byte changed: a ValueError, or sockets that are a
    prefix of the whole dump's (a changed byte may only alter a field's value), or an
    OSError where the change made a message a netlink error; never another exception,
    and never "done" before the end."""
    whole, _ = diag.parse_dump(_FULL)
    data = bytearray(_FULL[:cut] if not flip else _FULL)
    if flip:
        data[cut] = byte
    try:
        found, done = diag.parse_dump(bytes(data))
    except (ValueError, OSError):
        return
    assert len(found) <= len(whole)
    if not flip:
        assert found == whole[: len(found)] and not done
