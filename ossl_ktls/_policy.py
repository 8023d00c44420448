"""Where each direction goes at hand-over, and why: the placement plan (pure).

Everything that decides whether TX and RX move into the kernel lives here, as one
function of what the handshake negotiated (:class:`Handshake`), what the running kernel
accepts (``Capabilities`` from the probe) and what the caller asked for
(:class:`Request`). Every ``fallback_reason`` comes from :func:`plan`, except the kernel
refusing at install time what the plan chose (a ``setsockopt`` error), which ``wrap()``
adds.

The rules, in order (the first that applies to both directions ends the list):

* both directions stay in user space when the version is not TLS 1.2/1.3, the suite has
  no kernel equivalent, the session was renegotiated, TLS 1.2 compression is on, or the
  kernel has no ``tls`` ULP;
* a direction stays in user space when the kernel does not take the version and suite
  in that direction;
* TLS 1.3 RX stays in user space where the kernel cannot rekey (before 6.14; a peer's
  KeyUpdate would stop kernel RX), unless ``rx_without_rekey``; also when OpenSSL holds
  part of a record (it read past a record boundary), and TLS 1.2 RX when the socket's
  queue does not start with a record header;
* TX stays in user space when the records we may send are smaller than 2^14 and the
  kernel cannot cap them (``TLS_TX_MAX_PAYLOAD_LEN``), when OpenSSL pads our TLS 1.3
  records, or when the hellos could not be read (see :func:`tx_record_plan`).

Nothing here touches a socket or OpenSSL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import _records
from ._errors import Error
from ._observer import RecordObserver
from ._suites import Suite

if TYPE_CHECKING:
    from ._linux_tls import Capabilities

__all__ = ["Handshake", "Plan", "Request", "plan", "tx_record_plan"]

#: Every suite the kernel takes (GCM, CCM with a 16-byte tag, ChaCha20-Poly1305).
AEAD_TAG_LEN = 16
_FULL_RECORD = _records.MAX_PLAINTEXT


@dataclass(frozen=True)
class Request:
    """What the caller of ``wrap()`` asked for."""

    tx: bool = True
    rx: bool = True
    rx_without_rekey: bool = False


@dataclass(frozen=True)
class Handshake:
    """What the finished handshake negotiated, as the plan needs it.

    Attributes:
        version: "1.2", "1.3", or "" for any other version.
        version_name: OpenSSL's name of the version (for the reason text).
        cipher_name: OpenSSL's name of the suite.
        suite: the kernel's equivalent of the suite, or None.
        is_server: our role.
        resumed: the session was resumed.
        renegotiated: OpenSSL performed a renegotiation.
        rx_at_record_boundary: TLS 1.2: the socket's receive queue starts with a
            plausible record header (or is empty).
        observer: the record observer's findings (hellos, written record sizes,
            whether OpenSSL holds part of a read record, compression).
    """

    version: str
    version_name: str
    cipher_name: str
    suite: Suite | None
    is_server: bool = False
    resumed: bool = False
    renegotiated: bool = False
    rx_at_record_boundary: bool = True
    observer: RecordObserver = field(default_factory=RecordObserver)


@dataclass(frozen=True)
class Plan:
    """Where each direction goes and why.

    Attributes:
        tx, rx: the direction goes into the kernel.
        reasons: why a requested direction stays in user space, in rule order.
        tx_record_limit: the most plaintext one record we send may carry.
    """

    tx: bool
    rx: bool
    reasons: tuple[str, ...] = ()
    tx_record_limit: int = _FULL_RECORD


def _whole_connection_reason(hs: Handshake, caps: Capabilities) -> str | None:
    if not hs.version:
        return f"{hs.version_name} is not TLS 1.2 or 1.3"
    if hs.suite is None:
        return f"the cipher {hs.cipher_name} has no kernel TLS equivalent"
    if hs.renegotiated:
        return "the session was renegotiated"
    if hs.observer.compression:
        return f"the session uses TLS compression (method {hs.observer.compression})"
    if not caps.ulp:
        return caps.ulp_error or "the kernel has no 'tls' ULP"
    return None


def plan(hs: Handshake, caps: Capabilities, request: Request) -> Plan:
    """Decide where TX and RX go (see the module's rules). Pure: no I/O, no exceptions."""
    limit = _FULL_RECORD
    tx_reason: str | None = None
    if hs.version:
        send_limit, tx_reason = tx_record_plan(
            hs.observer,
            hs.version,
            is_server=hs.is_server,
            resumed=hs.resumed,
            can_cap=caps.tx_max_payload_len,
        )
        limit = send_limit.size
    whole = _whole_connection_reason(hs, caps)
    if whole is not None:
        return Plan(False, False, (whole,), limit)
    assert hs.suite is not None
    version, name = hs.version, hs.suite.name
    reasons: list[str] = []
    tx, rx = request.tx, request.rx
    if tx and not caps.supports("tx", version, name):
        reasons.append(f"the kernel does not take TLS {version} {name} on TX")
        tx = False
    if rx and not caps.supports("rx", version, name):
        reasons.append(f"the kernel does not take TLS {version} {name} on RX")
        rx = False
    if rx and version == "1.3" and not caps.rekey and not request.rx_without_rekey:
        reasons.append(
            "RX stays in user space: this kernel cannot rekey TLS 1.3 (before 6.14), so "
            "a peer's KeyUpdate would break kernel RX (rx_without_rekey=True overrides)"
        )
        rx = False
    if rx and version == "1.3" and hs.observer.read_open:
        reasons.append("RX stays in user space: OpenSSL holds part of a record")
        rx = False
    if tx and tx_reason is not None:
        reasons.append(tx_reason)
        tx = False
    if rx and version == "1.2" and not hs.rx_at_record_boundary:
        reasons.append("RX stays in user space: the socket is not at a record boundary")
        rx = False
    return Plan(tx, rx, tuple(reasons), limit)


def tx_record_plan(
    obs: RecordObserver, version: str, *, is_server: bool, resumed: bool, can_cap: bool
) -> tuple[_records.SendLimit, str | None]:
    """How large the records we send may be, and why TX must stay in user space if so.

    Decided from what the handshake showed (the hellos' record-size extensions, the
    sizes of the TLS 1.3 records OpenSSL wrote) and whether the kernel can cap kernel
    TX records (``TLS_TX_MAX_PAYLOAD_LEN``). Kernel TX would otherwise send 2^14-byte
    records to a peer that asked for smaller ones (it fails them: data loss), or stop
    the record padding OpenSSL was configured to do. OpenSSL in user space honours both.
    """
    unlimited = _records.SendLimit(_FULL_RECORD, "")
    why = "TX stays in user space: "
    if obs.hello_error is not None:
        return unlimited, why + f"the record size the peer accepts is unknown ({obs.hello_error})"
    try:
        limit = _records.send_limit(
            tls13=version == "1.3",
            is_server=is_server,
            client=obs.client_extensions,
            server=obs.server_extensions,
            resumed=resumed,
        )
    except Error as exc:
        return unlimited, why + f"the record size the peer accepts is unknown ({exc})"
    if version == "1.3":
        padding = obs.padding_written(AEAD_TAG_LEN)
        if padding > 0:
            return limit, why + (
                "OpenSSL pads our TLS 1.3 records (RecordPadding in its configuration), "
                "and kernel TX cannot pad"
            )
        if padding < 0:
            return limit, why + "the sizes of the TLS 1.3 records OpenSSL wrote do not add up"
    if limit.limited and not can_cap:
        return limit, why + (
            f"the peer limited records to {limit.size} bytes ({limit.source}), and this "
            "kernel cannot cap the records of kernel TX (TLS_TX_MAX_PAYLOAD_LEN, Linux 6.19+)"
        )
    return limit, None
