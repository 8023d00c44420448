"""The hand-over: from a pyOpenSSL Connection to an :class:`~ossl_ktls._engine.Engine`.

``hand_over(conn, options)``:

1. finishes the handshake through pyOpenSSL, honouring the socket's blocking mode;
2. reads the negotiated version and cipher, asks ``probe()`` what the kernel takes, and
   lets ``_policy.plan`` decide where each direction goes (every fallback reason comes
   from there);
3. derives each direction's key/IV (TLS 1.2: key block from the master secret; TLS 1.3:
   from the traffic secrets the keylog callback caught, advanced once per KeyUpdate
   OpenSSL already processed) and takes the next record sequence number of each
   direction from the message-callback accounting (``_observer``);
4. takes the plaintext OpenSSL already decrypted but nobody read (``conn.pending()``) to
   deliver it first;
5. swaps OpenSSL's socket BIO for memory BIOs (``_openssl.detach_from_socket``): from
   here on OpenSSL never touches the socket by itself;
6. attaches the ``tls`` ULP, installs TLS_TX and/or TLS_RX, and gives the engine its two
   direction paths.
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import socket
import sys
import termios
from dataclasses import dataclass

from OpenSSL import SSL

from . import _engine, _openssl, _records
from . import _linux_tls as uapi
from ._engine import MAX_RECORD, Engine
from ._errors import KTLSUnavailable, NotPrepared, UsageError
from ._keys import tls12_key_block
from ._openssl import BaseConnection
from ._policy import Handshake, Plan, Request, plan
from ._relay import TicketSealer
from ._rx import KernelRx, UserRx
from ._secrets import TrafficSecrets, crypto_state
from ._suites import Suite, suite_for_openssl_name
from ._tx import KernelTx, UserTx
from ._wire import Direction

_VERSION_NAMES = {"TLSv1.2": "1.2", "TLSv1.3": "1.3"}
_socket_type = _socket.socket.type.__get__
_socket_family = _socket.socket.family.__get__
_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


@dataclass(frozen=True)
class Options:
    """wrap()'s keyword arguments (documented there)."""

    tx: bool = True
    rx: bool = True
    require: bool = False
    rx_without_rekey: bool = False
    rx_expect_no_pad: bool = False
    zerocopy_sendfile: bool = False
    ragged_eof: bool = False
    key_update_after: int | None = None
    half_close: bool = False


def socket_of(conn: object) -> socket.socket:
    """The TCP socket of a prepared, not yet wrapped pyOpenSSL Connection."""
    if not isinstance(conn, BaseConnection):
        raise UsageError(f"wrap() takes an OpenSSL.SSL.Connection, not {type(conn).__name__}")
    # Instance attributes are read from __dict__: pyOpenSSL's __getattr__ would look a
    # missing one up on the socket, raising twice (on the path of every connection).
    if vars(conn).get("_ossl_ktls_wrapped", False):
        raise UsageError("this Connection is already wrapped")
    if not _openssl.is_prepared(conn.get_context()):
        raise NotPrepared(
            "the Connection's Context was not prepared: call ossl_ktls.prepare(ctx) "
            "before making Connections from it"
        )
    sock = vars(conn).get("_socket")
    if not isinstance(sock, socket.socket):
        raise UsageError("wrap() needs a Connection made over a socket (not memory BIOs)")
    # The raw integers (socket.socket's own properties convert them to enums, slowly).
    if _socket_type(sock) != socket.SOCK_STREAM or _socket_family(sock) not in _TCP_FAMILIES:
        raise UsageError("kernel TLS needs a TCP socket (AF_INET or AF_INET6, SOCK_STREAM)")
    return sock


def finish_handshake(conn: SSL.Connection, sock: socket.socket) -> None:
    """Run (or confirm) the handshake the way the socket's blocking mode says.

    Blocking sockets block; a socket with a timeout waits up to it (TimeoutError); a
    non-blocking socket lets pyOpenSSL's WantReadError/WantWriteError through, so the
    caller retries ``wrap()`` when the socket is ready, as with ``do_handshake``.
    """
    deadline = _engine.deadline_of(sock)
    while True:
        try:
            BaseConnection.do_handshake(conn)
            return
        except SSL.WantReadError:
            if sock.gettimeout() == 0.0:
                raise
            _engine.wait(sock, write=False, deadline=deadline)
        except SSL.WantWriteError:
            if sock.gettimeout() == 0.0:
                raise
            _engine.wait(sock, write=True, deadline=deadline)


def hand_over(conn: SSL.Connection, options: Options) -> Engine:
    """Hand *conn*'s record layer over (see the module docstring); returns its engine."""
    sock = socket_of(conn)
    finish_handshake(conn, sock)
    conn._ossl_ktls_wrapped = True  # type: ignore[attr-defined]
    engine, chosen, caps = _decide(conn, sock, options)
    if options.require and ((options.tx and not chosen.tx) or (options.rx and not chosen.rx)):
        raise KTLSUnavailable("kernel TLS cannot take over: " + "; ".join(chosen.reasons))
    return _complete(engine, chosen, caps, options)


def hand_over_if_kernel(conn: SSL.Connection, options: Options) -> Engine | str:
    """For a Connection whose handshake is complete: hand it over when the kernel takes
    at least one direction; else leave it untouched (all OpenSSL's) and return why."""
    sock = socket_of(conn)
    engine, chosen, caps = _decide(conn, sock, options)
    if not (chosen.tx or chosen.rx):
        return "; ".join(chosen.reasons) or "not requested"
    try:
        # Before anything moves: where the kernel refuses the ULP (a socket the peer
        # already half-closed is ENOTCONN), the Connection stays all OpenSSL's.
        uapi.set_ulp(sock)
    except OSError as exc:
        return f"the kernel refused the tls ULP ({errno.errorcode.get(exc.errno or 0)})"
    conn._ossl_ktls_wrapped = True  # type: ignore[attr-defined]
    return _complete(engine, chosen, caps, options, ulp_attached=True)


def _decide(
    conn: SSL.Connection, sock: socket.socket, options: Options
) -> tuple[Engine, Plan, uapi.Capabilities]:
    """The engine (no paths yet) and where each direction goes, from the handshake."""
    state = _openssl.state_of(conn)
    obs = state.observer
    version_name = conn.get_protocol_version_name() or ""
    version = _VERSION_NAMES.get(version_name, "")
    cipher_name = conn.get_cipher_name() or ""
    suite = suite_for_openssl_name(cipher_name) if version else None
    engine = Engine(
        conn,
        sock,
        version=version,
        suite=suite,
        is_server=bool(obs.is_server),
        ragged_eof=options.ragged_eof,
    )
    # TLS 1.2 with half_close: the peer's close_notify ends its direction only, as in 1.3.
    engine.answer_close_notify = not options.half_close
    caps = uapi.probe()
    handshake = Handshake(
        version=version,
        version_name=version_name,
        cipher_name=cipher_name,
        suite=suite,
        is_server=engine.is_server,
        resumed=_openssl.session_reused(conn),
        renegotiated=bool(_openssl.total_renegotiations(conn)),
        # Only TLS 1.2 needs the look (TLS 1.3 knows exactly from the observer).
        rx_at_record_boundary=version != "1.2" or _peek_record_boundary(sock),
        observer=obs,
    )
    chosen = plan(handshake, caps, Request(options.tx, options.rx, options.rx_without_rekey))
    return engine, chosen, caps


def _complete(
    engine: Engine,
    chosen: Plan,
    caps: uapi.Capabilities,
    options: Options,
    *,
    ulp_attached: bool = False,
) -> Engine:
    """Move the record layer: buffered plaintext, memory BIOs, kernel keys, paths."""
    conn, sock, version, suite = engine.conn, engine.sock, engine.version, engine.suite
    state = _openssl.state_of(conn)
    # Plaintext OpenSSL already decrypted is delivered first.
    while BaseConnection.pending(conn) > 0:
        engine.rx_plain += BaseConnection.recv(conn, BaseConnection.pending(conn))
    _openssl.detach_from_socket(conn)

    reasons = list(chosen.reasons)
    refused: list[str] = []  # optional settings the kernel did not take
    in_tx = in_rx = False
    if chosen.tx or chosen.rx:
        assert suite is not None
        try:
            in_tx, in_rx, cap_refused = _install(engine, state, suite, chosen, caps, ulp_attached)
        except OSError as exc:
            reason = f"the kernel refused the keys ({errno.errorcode.get(exc.errno or 0)})"
            if options.require:
                raise KTLSUnavailable(f"kernel TLS cannot take over: {reason}") from exc
            reasons.append(reason)
        else:
            if cap_refused is not None:
                if options.require and options.tx:
                    raise KTLSUnavailable(f"kernel TLS cannot take over: {cap_refused}")
                reasons.append(cap_refused)
        if in_rx and options.rx_expect_no_pad and version == "1.3":
            try:
                uapi.set_u32(sock, uapi.TLS_RX_EXPECT_NO_PAD, 1)
            except OSError:
                refused.append("TLS_RX_EXPECT_NO_PAD not supported by this kernel")
        if in_tx and options.zerocopy_sendfile:
            try:
                uapi.set_u32(sock, uapi.TLS_TX_ZEROCOPY_RO, 1)
                engine.zerocopy_sendfile = True
            except OSError:
                refused.append("TLS_TX_ZEROCOPY_RO not supported by this kernel")
    if not engine.secrets:
        state.wipe()

    key_update_after = None
    if suite is not None and version == "1.3":
        key_update_after = options.key_update_after
        if key_update_after is None:
            key_update_after = _records.aead_record_limit(suite.name) // 2
    engine.tx_record_limit = chosen.tx_record_limit
    if in_tx:
        engine.tx = KernelTx(engine, chosen.tx_record_limit, key_update_after)
    else:
        engine.tx = UserTx(engine)
    engine.rx = KernelRx(engine) if in_rx else UserRx(engine)
    if (options.tx and not in_tx) or (options.rx and not in_rx):
        engine.fallback_reason = "; ".join(reasons + refused) or "not requested"
    elif refused:  # an optional setting the kernel refused
        engine.fallback_reason = "; ".join(refused)
    return engine


def _peek_record_boundary(sock: socket.socket) -> bool:
    """Whether the bytes waiting on *sock* (if any) start with a plausible TLS header."""
    waiting = bytearray(4)
    try:
        # How many bytes wait (FIONREAD): usually none, and then no exception to raise.
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, waiting)
        if not int.from_bytes(waiting, sys.byteorder):
            return True
        head = sock.recv(5, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return True
    if not head:
        return True
    if head[0] not in (20, 21, 22, 23):
        return False
    return len(head) < 3 or (head[1] == 3 and head[2] in (1, 2, 3, 4))


def _install(
    engine: Engine,
    state: _openssl.ConnState,
    suite: Suite,
    chosen: Plan,
    caps: uapi.Capabilities,
    ulp_attached: bool,
) -> tuple[bool, bool, str | None]:
    """Install the keys of the directions *chosen*; returns which went into the kernel,
    and why TX stayed in user space when the kernel refused the record size cap."""
    conn, sock, obs = engine.conn, engine.sock, state.observer
    want_tx, want_rx = chosen.tx, chosen.rx
    in_tx = in_rx = False
    cap_refused: str | None = None
    we, peer = ("server", "client") if engine.is_server else ("client", "server")
    tx_seq, rx_seq = obs.next_seq[1], obs.next_seq[0]
    secrets: TrafficSecrets | None = None
    sealer: TicketSealer | None = None
    if engine.version == "1.2":
        master = bytearray(conn.master_key() or b"")
        try:
            block = tls12_key_block(
                suite.hash_name,
                bytes(master),
                conn.client_random() or b"",
                conn.server_random() or b"",
                suite.key_len,
                suite.fixed_iv_len_tls12,
            )
        finally:
            master[:] = bytes(len(master))
        keys = {
            "client": (bytearray(block.client_key), bytearray(block.client_iv)),
            "server": (bytearray(block.server_key), bytearray(block.server_iv)),
        }
        tx_state = crypto_state("1.2", suite, *keys[we], tx_seq)
        rx_state = crypto_state("1.2", suite, *keys[peer], rx_seq)
    else:
        captured = state.secrets
        if we not in captured or peer not in captured:
            raise OSError(errno.ENOKEY, "TLS 1.3 traffic secrets were not captured")
        secrets = TrafficSecrets(suite)
        secrets.keep(Direction.TX, captured[we], obs.epoch[1])
        secrets.keep(Direction.RX, captured[peer], obs.epoch[0])
        state.wipe()
        tx_state = secrets.state(Direction.TX, tx_seq)
        rx_key, rx_iv = secrets.key_iv(Direction.RX)
        rx_state = crypto_state("1.3", suite, bytearray(rx_key), rx_iv, rx_seq)
        if not engine.is_server and want_rx and want_tx:
            # OpenSSL's read key and sequence number as they are now, for the tickets
            # kernel RX will receive (see _relay). crypto_state copied what it needs.
            sealer = TicketSealer(suite, rx_key, rx_iv, rx_seq)
        else:
            rx_key[:] = bytes(len(rx_key))
            rx_iv[:] = bytes(len(rx_iv))
    try:
        if not ulp_attached:
            uapi.set_ulp(sock)
        if want_tx and chosen.tx_record_limit < MAX_RECORD:
            # Before TLS_TX: a refusal then leaves TX to OpenSSL, which honours the limit.
            try:
                uapi.set_tx_max_payload(sock, chosen.tx_record_limit)
            except OSError as exc:
                want_tx = False
                cap_refused = (
                    f"TX stays in user space: the kernel refused to cap records at "
                    f"{chosen.tx_record_limit} bytes (TLS_TX_MAX_PAYLOAD_LEN: "
                    f"{errno.errorcode.get(exc.errno or 0, exc.errno)})"
                )
        if want_tx:
            uapi.install(sock, uapi.TLS_TX, tx_state)
            in_tx = True
        if want_rx:
            uapi.install(sock, uapi.TLS_RX, rx_state)
            in_rx = True
    finally:
        tx_state.wipe()
        rx_state.wipe()
        if sealer is not None:
            # Only with both directions in the kernel: OpenSSL then carries nothing else
            # that a record it refused could break.
            if in_tx and in_rx:
                engine.ticket_sealer = sealer
            else:
                sealer.wipe()
        if secrets is not None:
            # Kept for rekeying only where the kernel carries a direction and can rekey.
            if caps.rekey and (in_tx or in_rx):
                engine.secrets = secrets
            else:
                secrets.wipe()
    return in_tx, in_rx, cap_refused
