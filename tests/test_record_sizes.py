"""Record sizes: the hellos' record-size extensions, the negotiated send limit, and the
TX decision built on them (issue 14). Pure, on the host.

Hellos are built by hand (every field, then fed whole, truncated at every byte, and with
trailing data) and captured live: the observer of a prepared pyOpenSSL server sees the
ClientHellos of ``openssl s_client -maxfraglen`` and ``gnutls-cli --recordsize`` and the
answers OpenSSL wrote. Record padding from an OpenSSL configuration is found by the
observer's accounting in a fresh interpreter (OpenSSL reads its configuration once).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL

import ossl_ktls
from ossl_ktls import _openssl
from ossl_ktls import _records as r
from ossl_ktls._errors import DecodeError, UsageError
from ossl_ktls._observer import RecordObserver
from ossl_ktls._policy import tx_record_plan
from tests._pairs import Certs

from ._hypothesis_profiles import load

load()

MFL, RSL = r.EXT_MAX_FRAGMENT_LENGTH, r.EXT_RECORD_SIZE_LIMIT


def ext(ext_type: int, data: bytes) -> bytes:
    return ext_type.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def vec(len_size: int, data: bytes) -> bytes:
    return len(data).to_bytes(len_size, "big") + data


def client_hello(extensions: list[bytes] | None, session_id: bytes = b"\x11" * 32) -> bytes:
    """A ClientHello body (RFC 8446 4.1.2); ``None``: a TLS 1.2 hello without extensions."""
    body = b"\x03\x03" + bytes(range(32)) + vec(1, session_id)
    body += vec(2, b"\x13\x01\xc0\x2b") + vec(1, b"\x00")
    return body if extensions is None else body + vec(2, b"".join(extensions))


def server_hello(extensions: list[bytes] | None) -> bytes:
    """A ServerHello body (RFC 8446 4.1.3 / RFC 5246 7.4.1.3)."""
    body = b"\x03\x03" + bytes(range(32, 64)) + vec(1, b"\x22" * 32) + b"\xc0\x2b" + b"\x00"
    return body if extensions is None else body + vec(2, b"".join(extensions))


def encrypted_extensions(extensions: list[bytes]) -> bytes:
    """An EncryptedExtensions body (RFC 8446 4.3.1)."""
    return vec(2, b"".join(extensions))


OTHERS = [ext(0, b"\x00\x0e\x00\x00\x0blocalhost"), ext(43, b"\x02\x03\x04"), ext(10, b"")]

BUILDERS = [
    (r.CLIENT_HELLO, client_hello),
    (r.SERVER_HELLO, server_hello),
    (r.ENCRYPTED_EXTENSIONS, encrypted_extensions),
]


# --- hello_extensions ---------------------------------------------------------------------


@pytest.mark.parametrize(("msg_type", "build"), BUILDERS)
def test_hello_extensions_keeps_only_record_size_extensions(msg_type: int, build: object) -> None:
    """Among other extensions, exactly max_fragment_length (1) and record_size_limit (28)
    are returned, with their data, from each of the three messages."""
    body = build([OTHERS[0], ext(MFL, b"\x02"), OTHERS[1], ext(RSL, b"\x02\x00"), OTHERS[2]])  # type: ignore[operator]
    assert r.hello_extensions(msg_type, body) == {MFL: b"\x02", RSL: b"\x02\x00"}
    assert r.hello_extensions(msg_type, build(OTHERS)) == {}  # type: ignore[operator]
    everything = r.hello_extensions(msg_type, build(OTHERS), keep=frozenset({0, 43, 10}))  # type: ignore[operator]
    assert everything == {0: b"\x00\x0e\x00\x00\x0blocalhost", 43: b"\x02\x03\x04", 10: b""}


@pytest.mark.parametrize(("msg_type", "build"), BUILDERS)
def test_hello_extensions_every_truncation_and_trailing_byte_fails(
    msg_type: int, build: object
) -> None:
    """Cut short at any byte, or followed by one more byte, a hello is a DecodeError
    (every length checked, every byte accounted for)."""
    body = build([ext(MFL, b"\x01"), *OTHERS])  # type: ignore[operator]
    for cut in range(len(body)):
        if msg_type != r.ENCRYPTED_EXTENSIONS and cut == len(body) - len(
            vec(2, b"".join([ext(MFL, b"\x01"), *OTHERS]))
        ):
            continue  # a TLS 1.2 hello may end before its extensions: tested below
        with pytest.raises(DecodeError):
            r.hello_extensions(msg_type, body[:cut])
    with pytest.raises(DecodeError, match="trailing"):
        r.hello_extensions(msg_type, body + b"\x00")


@pytest.mark.parametrize(("msg_type", "build"), BUILDERS[:2])
def test_tls12_hello_without_extensions(msg_type: int, build: object) -> None:
    """A TLS 1.2 hello may have no extension block at all (RFC 5246 7.4.1.2): none found."""
    assert r.hello_extensions(msg_type, build(None)) == {}  # type: ignore[operator]


def test_hello_extensions_duplicate_is_illegal_parameter() -> None:
    """An extension type twice is illegal_parameter (RFC 8446 section 4.2)."""
    body = encrypted_extensions([ext(MFL, b"\x01"), ext(MFL, b"\x01")])
    with pytest.raises(DecodeError) as info:
        r.hello_extensions(r.ENCRYPTED_EXTENSIONS, body)
    assert info.value.alert == 47


def test_hello_extensions_bounds() -> None:
    """A session id over 32 bytes, no cipher suites, no compression method: DecodeError;
    another message type: UsageError."""
    with pytest.raises(DecodeError, match="legacy_session_id"):
        r.hello_extensions(r.CLIENT_HELLO, client_hello([], session_id=b"\x00" * 33))
    no_suites = b"\x03\x03" + bytes(32) + vec(1, b"") + vec(2, b"") + vec(1, b"\x00")
    with pytest.raises(DecodeError, match="cipher_suites"):
        r.hello_extensions(r.CLIENT_HELLO, no_suites)
    no_comp = b"\x03\x03" + bytes(32) + vec(1, b"") + vec(2, b"\x13\x01") + vec(1, b"")
    with pytest.raises(DecodeError, match="compression"):
        r.hello_extensions(r.CLIENT_HELLO, no_comp)
    with pytest.raises(UsageError):
        r.hello_extensions(r.CERTIFICATE, b"")


@given(
    st.dictionaries(st.integers(0, 0xFFFF), st.binary(max_size=40), max_size=8),
    st.sampled_from(BUILDERS),
)
def test_hello_extensions_round_trip(
    extensions: dict[int, bytes], case: tuple[int, object]
) -> None:
    """Any set of distinct extensions built into a hello comes back exactly (all kept)."""
    msg_type, build = case
    body = build([ext(t, d) for t, d in extensions.items()])  # type: ignore[operator]
    assert r.hello_extensions(msg_type, body, keep=frozenset(extensions)) == extensions


@given(
    st.binary(max_size=120),
    st.sampled_from([r.CLIENT_HELLO, r.SERVER_HELLO, r.ENCRYPTED_EXTENSIONS]),
)
def test_hello_extensions_random_bytes_only_decode_errors(data: bytes, msg_type: int) -> None:
    """Arbitrary bytes either parse or raise DecodeError: never another exception."""
    with contextlib.suppress(DecodeError):
        r.hello_extensions(msg_type, data)


def test_server_hello_compression() -> None:
    """The ServerHello's compression method, read by the observer from the message it is
    fed: 0 normally, what the server chose otherwise (kernel TLS cannot compress)."""
    assert r.parse_hello(r.SERVER_HELLO, server_hello([])).compression == 0
    compressed = bytearray(server_hello(None))
    compressed[-1] = 1  # DEFLATE (RFC 3749)
    assert r.parse_hello(r.SERVER_HELLO, compressed).compression == 1
    with pytest.raises(DecodeError):
        r.parse_hello(r.SERVER_HELLO, compressed[:-1])
    obs = RecordObserver()
    message = bytes([r.SERVER_HELLO]) + len(compressed).to_bytes(3, "big") + compressed
    obs.event(False, 0x0303, r.HANDSHAKE, message)
    assert (obs.compression, obs.hello_error) == (1, None)


def test_observer_records_a_malformed_hello_as_unknown() -> None:
    """A hello the observer cannot parse never raises into OpenSSL's callback: it is kept
    as ``hello_error`` (TX then stays in user space)."""
    obs = RecordObserver()
    obs.event(True, 0x0303, r.HANDSHAKE, bytes([r.CLIENT_HELLO, 0, 0, 3]) + b"\x03\x03\x00")
    assert obs.hello_error is not None and "truncated" in obs.hello_error


# --- the two extension values -------------------------------------------------------------


def test_max_fragment_length_values() -> None:
    """RFC 6066 section 4: codes 1..4 are 2^9..2^12; others illegal_parameter, another
    length decode_error."""
    assert [r.parse_max_fragment_length(bytes([c])) for c in (1, 2, 3, 4)] == [
        512,
        1024,
        2048,
        4096,
    ]
    for bad in (0, 5, 255):
        with pytest.raises(DecodeError) as info:
            r.parse_max_fragment_length(bytes([bad]))
        assert info.value.alert == 47
    for data in (b"", b"\x01\x01"):
        with pytest.raises(DecodeError) as info:
            r.parse_max_fragment_length(data)
        assert info.value.alert == 50


def test_record_size_limit_values() -> None:
    """RFC 8449 section 4: a uint16, at least 64 (below: illegal_parameter)."""
    assert r.parse_record_size_limit(b"\x00\x40") == 64
    assert r.parse_record_size_limit(b"\x40\x01") == 16385
    with pytest.raises(DecodeError) as info:
        r.parse_record_size_limit(b"\x00\x3f")
    assert info.value.alert == 47
    with pytest.raises(DecodeError):
        r.parse_record_size_limit(b"\x40")


# --- send_limit ---------------------------------------------------------------------------

M512, M4096 = {MFL: b"\x01"}, {MFL: b"\x04"}


def rsl(value: int) -> dict[int, bytes]:
    return {RSL: value.to_bytes(2, "big")}


@pytest.mark.parametrize(
    ("tls13", "is_server", "client", "server", "resumed", "want"),
    [
        # nothing negotiated
        (True, True, {}, {}, False, (16384, "")),
        # max_fragment_length binds both sides once the server echoed it
        (False, True, M512, M512, False, (512, "max_fragment_length")),
        (True, False, M4096, M4096, False, (4096, "max_fragment_length")),
        # offered, not echoed: no limit on a full handshake ...
        (False, True, M512, {}, False, (16384, "")),
        # ... but a resumed session may carry it (RFC 6066: "including session resumptions")
        (False, True, M512, {}, True, (512, "max_fragment_length")),
        (True, False, M512, {}, True, (512, "max_fragment_length")),
        # record_size_limit binds only when both sent it; the peer's value counts
        (False, True, rsl(1000), rsl(16384), False, (1000, "record_size_limit")),
        (False, False, rsl(16384), rsl(1000), False, (1000, "record_size_limit")),
        (False, False, rsl(1000), rsl(16384), False, (16384, "")),
        (False, True, rsl(1000), {}, False, (16384, "")),
        # TLS 1.3: the limit counts the inner content type byte
        (True, True, rsl(1000), rsl(16385), False, (999, "record_size_limit")),
        (True, True, rsl(64), rsl(16385), False, (63, "record_size_limit")),
        (True, True, rsl(16385), rsl(16385), False, (16384, "")),
        # above the protocol's maximum: no limit
        (False, True, rsl(20000), rsl(20000), False, (16384, "")),
        # both: the smaller binds
        (
            False,
            True,
            {**M512, **rsl(300)},
            {**M512, **rsl(300)},
            False,
            (300, "record_size_limit"),
        ),
        (
            True,
            True,
            {**M512, **rsl(4000)},
            {**M512, **rsl(4000)},
            False,
            (512, "max_fragment_length"),
        ),
    ],
)
def test_send_limit(
    tls13: bool,
    is_server: bool,
    client: dict[int, bytes],
    server: dict[int, bytes],
    resumed: bool,
    want: tuple[int, str],
) -> None:
    """The limit of what one record we send may carry, per RFC 6066 and RFC 8449."""
    got = r.send_limit(
        tls13=tls13, is_server=is_server, client=client, server=server, resumed=resumed
    )
    assert tuple(got) == want
    assert got.limited == (want[0] < 16384)


def test_send_limit_malformed_value_raises() -> None:
    """A malformed value the handshake let through is an error, never a guess."""
    with pytest.raises(DecodeError):
        r.send_limit(tls13=False, is_server=True, client={MFL: b"\x09"}, server={MFL: b"\x09"})


# --- the TX decision ----------------------------------------------------------------------


def observer_with(client: dict[int, bytes], server: dict[int, bytes]) -> RecordObserver:
    obs = RecordObserver()
    obs.client_extensions, obs.server_extensions = client, server
    return obs


def test_tx_record_plan() -> None:
    """No limit: TX may go anywhere. A limit: kept by a kernel that can cap records, else
    TX stays in user space, the reason naming the size, the extension and the option.
    An unparsable hello or padded TLS 1.3 records keep TX in user space whatever the
    kernel."""
    plain = observer_with({}, {})
    assert tx_record_plan(plain, "1.3", is_server=True, resumed=False, can_cap=False) == (
        r.SendLimit(16384, ""),
        None,
    )
    limited = observer_with(M512, M512)
    limit, reason = tx_record_plan(limited, "1.2", is_server=True, resumed=False, can_cap=True)
    assert (limit, reason) == (r.SendLimit(512, "max_fragment_length"), None)
    limit, reason = tx_record_plan(limited, "1.2", is_server=True, resumed=False, can_cap=False)
    assert limit.size == 512 and reason is not None
    assert "limited records to 512 bytes (max_fragment_length)" in reason
    assert "TLS_TX_MAX_PAYLOAD_LEN" in reason and reason.startswith("TX stays in user space")

    broken = observer_with({}, {})
    broken.hello_error = "handshake message 1: ClientHello is truncated"
    _limit, reason = tx_record_plan(broken, "1.3", is_server=True, resumed=False, can_cap=True)
    assert reason is not None and "unknown" in reason and "truncated" in reason

    padded = observer_with({}, {})
    padded.written_sealed_records, padded.written_sealed_bytes = 2, 2 * 17 + 300 + 212
    padded.written_sealed_content = 300
    assert padded.padding_written(16) == 212
    _limit, reason = tx_record_plan(padded, "1.3", is_server=False, resumed=False, can_cap=True)
    assert reason is not None and "pads" in reason
    # TLS 1.2 has no record padding: the 1.3 accounting is not consulted.
    assert tx_record_plan(padded, "1.2", is_server=False, resumed=False, can_cap=True)[1] is None


# --- live hellos from real clients ----------------------------------------------------------


def _server_sees(certs: Certs, version: str, client_argv: list[str]) -> tuple[RecordObserver, bool]:
    """Run a prepared pyOpenSSL server for one handshake with *client_argv* (``{port}``
    replaced); return its observer and whether the session was resumed."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate_chain_file(str(certs.ecdsa))
    ctx.use_privatekey_file(str(certs.ecdsa))
    proto = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}[version]
    ctx.set_min_proto_version(proto)
    ctx.set_max_proto_version(proto)
    ossl_ktls.prepare(ctx)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        argv = [a.replace("{port}", str(port)) for a in client_argv]
        client = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # pyOpenSSL needs a blocking socket; the client's death (after 30 s at most)
        # ends any wait with an error.
        watchdog = threading.Timer(30, client.kill)
        watchdog.start()
        try:
            listener.settimeout(30)
            sock, _ = listener.accept()
            with sock:
                sock.settimeout(None)
                conn = SSL.Connection(ctx, sock)
                conn.set_accept_state()
                conn.do_handshake()
                conn.sendall(b"x")
                obs = _openssl.state_of(conn).observer
                resumed = _openssl.session_reused(conn)
        finally:
            watchdog.cancel()
            client.kill()
            client.wait(30)
    return obs, resumed


@pytest.mark.parametrize("size", [512, 1024, 2048, 4096])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_live_s_client_max_fragment_length(certs: Certs, version: str, size: int) -> None:
    """``openssl s_client -maxfraglen N``: its ClientHello and OpenSSL's answer (ServerHello
    in TLS 1.2, EncryptedExtensions in 1.3) both carry the code; the limit is N."""
    code = {512: 1, 1024: 2, 2048: 3, 4096: 4}[size]
    argv = [
        "openssl",
        "s_client",
        "-connect",
        "127.0.0.1:{port}",
        "-quiet",
        "-maxfraglen",
        str(size),
    ]
    argv.append("-tls1_3" if version == "1.3" else "-tls1_2")
    obs, resumed = _server_sees(certs, version, argv)
    assert obs.hello_error is None
    assert obs.client_extensions.get(MFL) == bytes([code])
    assert obs.server_extensions.get(MFL) == bytes([code])
    plan = tx_record_plan(obs, version, is_server=True, resumed=resumed, can_cap=True)
    assert plan == (r.SendLimit(size, "max_fragment_length"), None)
    assert obs.padding_written(16) == 0


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_live_gnutls_record_size(certs: Certs, version: str) -> None:
    """``gnutls-cli --recordsize 512`` offers record_size_limit and max_fragment_length;
    OpenSSL answers only the latter (no RFC 8449 support), which then binds."""
    argv = ["gnutls-cli", "--insecure", "--recordsize", "512", "-p", "{port}", "127.0.0.1"]
    argv[1:1] = ["--priority", f"NORMAL:-VERS-ALL:+VERS-TLS{version}"]
    obs, resumed = _server_sees(certs, version, argv)
    # GnuTLS states 512 of content: TLS 1.3 counts the content type byte (RFC 8449 4).
    offered = r.parse_record_size_limit(obs.client_extensions[RSL])
    assert offered == (513 if version == "1.3" else 512)
    assert r.parse_max_fragment_length(obs.client_extensions[MFL]) == 512
    assert RSL not in obs.server_extensions
    plan = tx_record_plan(obs, version, is_server=True, resumed=resumed, can_cap=False)
    assert plan[0] == r.SendLimit(512, "max_fragment_length") and plan[1] is not None


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_live_plain_client_has_no_limit(certs: Certs, version: str) -> None:
    """A client asking for nothing: no record-size extension, no padding, no limit."""
    argv = ["openssl", "s_client", "-connect", "127.0.0.1:{port}", "-quiet"]
    argv.append("-tls1_3" if version == "1.3" else "-tls1_2")
    obs, resumed = _server_sees(certs, version, argv)
    assert MFL not in obs.client_extensions and MFL not in obs.server_extensions
    assert (obs.compression, obs.hello_error, obs.padding_written(16)) == (0, None, 0)
    assert tx_record_plan(obs, version, is_server=True, resumed=resumed, can_cap=False) == (
        r.SendLimit(16384, ""),
        None,
    )


# --- padding configured through OpenSSL's configuration ---------------------------------------

_PADDING_PROBE = r"""
import json, socket, sys
from OpenSSL import SSL
import ossl_ktls
from ossl_ktls import _openssl
from ossl_ktls._policy import tx_record_plan

cert, key = sys.argv[1], sys.argv[2]
server_ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
server_ctx.use_certificate_chain_file(cert)
server_ctx.use_privatekey_file(key)
client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
for ctx in (server_ctx, client_ctx):
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ossl_ktls.prepare(ctx)
a, b = socket.socketpair()
server, client = SSL.Connection(server_ctx, a), SSL.Connection(client_ctx, b)
server.set_accept_state()
client.set_connect_state()
for sock in (a, b):
    sock.setblocking(False)
done = set()
while len(done) < 2:
    for name, conn in (("server", server), ("client", client)):
        try:
            conn.do_handshake()
            done.add(name)
        except SSL.WantReadError:
            pass
out = {}
for name, conn, is_server in (("server", server, True), ("client", client, False)):
    obs = _openssl.state_of(conn).observer
    reason = tx_record_plan(obs, "1.3", is_server=is_server, resumed=False, can_cap=True)[1]
    out[name] = {"padding": obs.padding_written(16), "records": obs.written_sealed_records,
                 "reason": reason}
print(json.dumps(out))
"""


@pytest.mark.parametrize("padding", [None, 256])
def test_record_padding_from_openssl_configuration(
    certs: Certs, tmp_path: Path, padding: int | None
) -> None:
    """``RecordPadding`` in an OpenSSL configuration (``OPENSSL_CONF``) makes OpenSSL pad
    TLS 1.3 records, which kernel TX cannot do: the observer's accounting finds it on both
    sides of a real handshake and TX stays in user space; without it the accounting adds
    up to exactly zero."""
    conf = tmp_path / "openssl.cnf"
    lines = [
        "openssl_conf = openssl_init",
        "[openssl_init]",
        "ssl_conf = ssl_module",
        "[ssl_module]",
        "system_default = ssl_defaults",
        "[ssl_defaults]",
    ]
    if padding is not None:
        lines.append(f"RecordPadding = {padding}")
    conf.write_text("\n".join(lines) + "\n", encoding="ascii")
    done = subprocess.run(
        [sys.executable, "-c", _PADDING_PROBE, str(certs.ecdsa), str(certs.ecdsa)],
        env={**os.environ, "OPENSSL_CONF": str(conf)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for side in ("server", "client"):
        assert result[side]["records"] > 0, result
        if padding is None:
            assert result[side]["padding"] == 0 and result[side]["reason"] is None, result
        else:
            assert result[side]["padding"] > 0, result
            assert "pads our TLS 1.3 records" in result[side]["reason"], result
