"""Record and handshake framing tests: table-driven cases plus hypothesis properties.

Streams are fed whole, byte by byte, and with trailing data (h11 style). The
NewSessionTicket vector is the one RFC 8448 section 3 prints ("{server} construct a
NewSessionTicket handshake message", 205 octets).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ossl_ktls import _records as r
from ossl_ktls._errors import DecodeError, Error, RecordOverflow, UnexpectedMessage, UsageError
from ossl_ktls._suites import SUITES

from ._hypothesis_profiles import load

load()


def header(content_type: int, length: int, version: int = 0x0303) -> bytes:
    """A 5-byte record header built by hand (RFC 8446 section 5.1)."""
    return bytes([content_type]) + version.to_bytes(2, "big") + length.to_bytes(2, "big")


def record(content_type: int, body: bytes, version: int = 0x0303) -> bytes:
    """A whole record: header + body."""
    return header(content_type, len(body), version) + body


def hs(msg_type: int, body: bytes) -> bytes:
    """A handshake message built by hand: type, uint24 length, body (RFC 8446 section 4)."""
    return bytes([msg_type]) + len(body).to_bytes(3, "big") + body


# --- constants ----------------------------------------------------------------------------


def test_constants_match_the_rfcs() -> None:
    """Content types (RFC 8446 5.1), handshake types (RFC 8446 4 / RFC 5246 7.4) and the
    record size limits (RFC 8446 5.1/5.2, RFC 5246 6.2.3) have their RFC values."""
    assert (r.CONTENT_CHANGE_CIPHER_SPEC, r.CONTENT_ALERT) == (20, 21)
    assert (r.CONTENT_HANDSHAKE, r.CONTENT_APPLICATION_DATA) == (22, 23)
    assert (r.CHANGE_CIPHER_SPEC, r.ALERT, r.HANDSHAKE, r.APPLICATION_DATA) == (20, 21, 22, 23)
    assert {20, 21, 22, 23} == r.CONTENT_TYPES
    assert (r.HELLO_REQUEST, r.CLIENT_HELLO, r.NEW_SESSION_TICKET) == (0, 1, 4)
    assert (r.FINISHED, r.KEY_UPDATE) == (20, 24)
    assert r.MAX_PLAINTEXT == 16384
    assert r.MAX_CIPHERTEXT_TLS12 == 16384 + 2048
    assert r.MAX_CIPHERTEXT_TLS13 == 16384 + 256


# --- parse_record_header ------------------------------------------------------------------


@pytest.mark.parametrize("tls13", [False, True], ids=["tls12", "tls13"])
@pytest.mark.parametrize("content_type", [20, 21, 22, 23])
@pytest.mark.parametrize("version", [0x0301, 0x0303, 0x0304, 0x0300])
def test_parse_record_header_accepts_valid(tls13: bool, content_type: int, version: int) -> None:
    """Every known content type with major version 3 parses; the minor version is
    returned, not judged (RFC 8446 5.1: legacy_record_version is ignored)."""
    data = header(content_type, 100, version)
    assert r.parse_record_header(data, tls13=tls13) == r.RecordHeader(content_type, version, 100)


@pytest.mark.parametrize(
    ("tls13", "length", "ok"),
    [
        (True, 0, True),
        (True, r.MAX_CIPHERTEXT_TLS13, True),
        (True, r.MAX_CIPHERTEXT_TLS13 + 1, False),
        (True, r.MAX_CIPHERTEXT_TLS12, False),
        (False, r.MAX_CIPHERTEXT_TLS13 + 1, True),
        (False, r.MAX_CIPHERTEXT_TLS12, True),
        (False, r.MAX_CIPHERTEXT_TLS12 + 1, False),
        (False, 0xFFFF, False),
    ],
)
def test_parse_record_header_length_limits(tls13: bool, length: int, ok: bool) -> None:
    """Lengths up to 2^14+256 (TLS 1.3) / 2^14+2048 (TLS 1.2) pass; one more raises
    RecordOverflow with alert record_overflow (22)."""
    data = header(23, length)
    if ok:
        assert r.parse_record_header(data, tls13=tls13).length == length
    else:
        with pytest.raises(RecordOverflow) as info:
            r.parse_record_header(data, tls13=tls13)
        assert info.value.alert == 22


@pytest.mark.parametrize("content_type", [0, 19, 24, 25, 0x80, 0xFF])
def test_parse_record_header_unknown_type(content_type: int) -> None:
    """An unknown content type is a DecodeError carrying alert unexpected_message (10),
    as RFC 8446 section 5 requires for "an unexpected record type"."""
    with pytest.raises(DecodeError) as info:
        r.parse_record_header(header(content_type, 10), tls13=True)
    assert info.value.alert == 10


@pytest.mark.parametrize("version", [0x0000, 0x0203, 0x0403, 0xFEFD, 0x1603])
def test_parse_record_header_bad_major_version(version: int) -> None:
    """A major version other than 3 (SSLv2-ish, DTLS, garbage, an HTTP byte stream) is a
    DecodeError with alert decode_error (50)."""
    with pytest.raises(DecodeError) as info:
        r.parse_record_header(header(22, 10, version), tls13=False)
    assert info.value.alert == 50


def test_parse_record_header_short_input_is_usage_error() -> None:
    """Fewer than 5 bytes is the caller's mistake (UsageError), not a protocol error."""
    for n in range(5):
        with pytest.raises(UsageError):
            r.parse_record_header(header(23, 1)[:n], tls13=True)


def test_parse_record_header_ignores_trailing_and_takes_buffers() -> None:
    """Only the first 5 bytes count; bytes, bytearray and memoryview are all accepted."""
    data = record(22, b"abc") + b"trailing"
    expected = r.RecordHeader(22, 0x0303, 3)
    assert r.parse_record_header(data, tls13=True) == expected
    assert r.parse_record_header(bytearray(data), tls13=True) == expected
    assert r.parse_record_header(memoryview(data), tls13=True) == expected


def test_parse_record_header_rejects_http() -> None:
    """A plaintext HTTP request (a peer not speaking TLS) never parses as a record."""
    with pytest.raises(DecodeError):
        r.parse_record_header(b"GET / HTTP/1.1\r\n", tls13=False)


@given(data=st.binary(min_size=5, max_size=12), tls13=st.booleans())
def test_parse_record_header_random_bytes(data: bytes, tls13: bool) -> None:
    """On any 5+ bytes the parser returns the header's fields or raises DecodeError /
    RecordOverflow, nothing else, and what it accepts satisfies every check."""
    try:
        h = r.parse_record_header(data, tls13=tls13)
    except (DecodeError, RecordOverflow):
        return
    assert h == r.RecordHeader(
        data[0], int.from_bytes(data[1:3], "big"), int.from_bytes(data[3:5], "big")
    )
    assert h.content_type in r.CONTENT_TYPES
    assert h.version >> 8 == 3
    assert h.length <= (r.MAX_CIPHERTEXT_TLS13 if tls13 else r.MAX_CIPHERTEXT_TLS12)


# --- RecordSplitter -----------------------------------------------------------------------

STREAM_RECORDS: list[tuple[int, bytes]] = [
    (22, b"\x04\x00\x00\x02ab"),
    (23, b""),
    (23, b"x" * 300),
    (21, b"\x01\x00"),
    (20, b"\x01"),
    (23, b"y" * r.MAX_CIPHERTEXT_TLS13),
]


def stream_of(records: list[tuple[int, bytes]]) -> bytes:
    """The wire bytes of a list of (type, body) records."""
    return b"".join(record(t, body) for t, body in records)


def drain(splitter: r.RecordSplitter) -> list[tuple[int, bytes]]:
    """Every whole record the splitter holds, as (type, body)."""
    out: list[tuple[int, bytes]] = []
    while (item := splitter.next_record()) is not None:
        hdr, body = item
        assert hdr.length == len(body)
        out.append((hdr.content_type, body))
    return out


def test_splitter_whole_stream() -> None:
    """The whole stream in one feed yields every record, in order, and an empty buffer."""
    sp = r.RecordSplitter(tls13=True)
    sp.feed(stream_of(STREAM_RECORDS))
    assert drain(sp) == STREAM_RECORDS
    assert sp.buffered() == 0
    assert sp.need() == r.RECORD_HEADER_LEN


def test_splitter_byte_by_byte() -> None:
    """Fed one byte at a time, a record appears exactly when its last byte arrives."""
    sp = r.RecordSplitter(tls13=True)
    out: list[tuple[int, bytes]] = []
    wire = stream_of(STREAM_RECORDS)
    ends = set()
    pos = 0
    for _t, body in STREAM_RECORDS:
        pos += r.RECORD_HEADER_LEN + len(body)
        ends.add(pos)
    for i in range(len(wire)):
        sp.feed(wire[i : i + 1])
        got = drain(sp)
        if i + 1 in ends:
            assert len(got) == 1
        else:
            assert got == []
        out += got
    assert out == STREAM_RECORDS


def test_splitter_trailing_partial_data() -> None:
    """Whole records come out; a trailing partial header or body stays buffered, and
    need() says exactly how much completes it."""
    wire = stream_of(STREAM_RECORDS[:3])
    partial = record(23, b"0123456789")
    for cut in range(1, len(partial)):
        sp = r.RecordSplitter(tls13=False)
        sp.feed(wire + partial[:cut])
        assert drain(sp) == STREAM_RECORDS[:3]
        assert sp.buffered() == cut
        if cut < 5:
            assert sp.need() == 5 - cut
        else:
            assert sp.need() == len(partial) - cut
        sp.feed(partial[cut:])
        assert sp.need() == 0
        assert drain(sp) == [(23, b"0123456789")]


def read_exactly_records(wire: bytes, chunk_cap: int) -> tuple[list[tuple[int, bytes]], list[int]]:
    """Simulate a socket reader that reads min(need(), chunk_cap) bytes at a time.

    Returns the records and the stream offsets at which each record completed.
    """
    sp = r.RecordSplitter(tls13=True)
    pos = 0
    records: list[tuple[int, bytes]] = []
    offsets: list[int] = []
    while pos < len(wire):
        n = sp.need()
        assert n > 0
        take = min(n, chunk_cap, len(wire) - pos)
        sp.feed(wire[pos : pos + take])
        pos += take
        got = drain(sp)
        if got:
            assert len(got) == 1
            records += got
            offsets.append(pos)
            assert sp.buffered() == 0  # reading need() bytes never overshoots a record
    return records, offsets


@pytest.mark.parametrize("chunk_cap", [1, 2, 5, 7, 4096, 1 << 20])
def test_splitter_need_stops_at_record_boundaries(chunk_cap: int) -> None:
    """Reading at most need() bytes at a time never reads past a record: every record
    completes with an empty buffer, at exactly its end offset in the stream (the property
    the kernel handover depends on)."""
    wire = stream_of(STREAM_RECORDS)
    records, offsets = read_exactly_records(wire, chunk_cap)
    assert records == STREAM_RECORDS
    expected, pos = [], 0
    for _, body in STREAM_RECORDS:
        pos += 5 + len(body)
        expected.append(pos)
    assert offsets == expected


def test_splitter_bad_header_raises_and_keeps_raising() -> None:
    """After good records, a bad header raises from need() and next_record(), every time:
    a TLS stream cannot be resynchronised."""
    sp = r.RecordSplitter(tls13=True)
    sp.feed(record(23, b"ok") + header(99, 1) + b"z")
    assert sp.next_record() == (r.RecordHeader(23, 0x0303, 2), b"ok")
    for _ in range(2):
        with pytest.raises(DecodeError):
            sp.need()
        with pytest.raises(DecodeError):
            sp.next_record()


def test_splitter_overflow_raises_on_header() -> None:
    """An oversized length raises RecordOverflow as soon as the header is complete, before
    any of the body is buffered."""
    sp = r.RecordSplitter(tls13=True)
    sp.feed(header(23, r.MAX_CIPHERTEXT_TLS13 + 1))
    with pytest.raises(RecordOverflow):
        sp.need()
    assert r.RecordSplitter(tls13=False).tls13 is False


def test_splitter_take_buffered() -> None:
    """take_buffered() hands back every buffered byte and empties the splitter."""
    sp = r.RecordSplitter(tls13=True)
    sp.feed(b"\x17\x03")
    sp.feed(bytearray(b"\x03\x00"))
    assert sp.take_buffered() == b"\x17\x03\x03\x00"
    assert sp.buffered() == 0


records_strategy = st.lists(
    st.tuples(st.sampled_from([20, 21, 22, 23]), st.binary(max_size=600)), max_size=12
)


@given(records=records_strategy, data=st.data())
def test_splitter_random_chunking(records: list[tuple[int, bytes]], data: st.DataObject) -> None:
    """Any chunking of a stream of records yields the same records as feeding it whole."""
    wire = stream_of(records)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    sp = r.RecordSplitter(tls13=True)
    out: list[tuple[int, bytes]] = []
    prev = 0
    for cut in [*cuts, len(wire)]:
        sp.feed(wire[prev:cut])
        prev = cut
        out += drain(sp)
    assert out == records
    assert sp.buffered() == 0


@given(records=records_strategy, cap=st.integers(1, 2000))
def test_splitter_need_property(records: list[tuple[int, bytes]], cap: int) -> None:
    """For any records and read size cap, need()-bounded reads stop exactly at each
    record's end."""
    got, offsets = read_exactly_records(stream_of(records), cap)
    assert got == records
    ends, pos = [], 0
    for _, body in records:
        pos += 5 + len(body)
        ends.append(pos)
    assert offsets == ends


@given(data=st.binary(max_size=64))
def test_splitter_random_bytes_only_raises_protocol_errors(data: bytes) -> None:
    """Random input either splits or raises DecodeError / RecordOverflow: nothing else."""
    sp = r.RecordSplitter(tls13=False)
    sp.feed(data)
    try:
        drain(sp)
        assert sp.need() >= 0
    except (DecodeError, RecordOverflow):
        pass


# --- HandshakeBuffer ----------------------------------------------------------------------

# RFC 8448 section 3, "{server} construct a NewSessionTicket handshake message".
RFC8448_NST = bytes.fromhex(
    "04 00 00 c9 00 00 00 1e fa d6 aa c5 02 00 00 00 b2 2c 03 5d 82 93 59"
    " ee 5f f7 af 4e c9 00 00 00 00 26 2a 64 94 dc 48 6d 2c 8a 34 cb 33 fa"
    " 90 bf 1b 00 70 ad 3c 49 88 83 c9 36 7c 09 a2 be 78 5a bc 55 cd 22 60"
    " 97 a3 a9 82 11 72 83 f8 2a 03 a1 43 ef d3 ff 5d d3 6d 64 e8 61 be 7f"
    " d6 1d 28 27 db 27 9c ce 14 50 77 d4 54 a3 66 4d 4e 6d a4 d2 9e e0 37"
    " 25 a6 a4 da fc d0 fc 67 d2 ae a7 05 29 51 3e 3d a2 67 7f a5 90 6c 5b"
    " 3f 7d 8f 92 f2 28 bd a4 0d da 72 14 70 f9 fb f2 97 b5 ae a6 17 64 6f"
    " ac 5c 03 27 2e 97 07 27 c6 21 a7 91 41 ef 5f 7d e6 50 5e 5b fb c3 88"
    " e9 33 43 69 40 93 93 4a e4 d3 57 00 08 00 2a 00 04 00 00 04 00".replace(" ", "")
)


def test_rfc8448_nst_vector_is_well_formed() -> None:
    """The transcribed vector is 205 octets with a 201-byte body, as RFC 8448 prints."""
    assert len(RFC8448_NST) == 205
    assert RFC8448_NST[:4] == b"\x04\x00\x00\xc9"


def test_handshake_buffer_single_message() -> None:
    """One record holding one message yields it, with body and raw bytes, and no leftover."""
    hb = r.HandshakeBuffer()
    msgs = hb.feed(RFC8448_NST)
    assert msgs == [r.HandshakeMessage(4, RFC8448_NST[4:], RFC8448_NST)]
    assert not hb.pending()
    assert hb.buffered() == 0


def test_handshake_buffer_several_messages_in_one_record() -> None:
    """One record may hold several messages (RFC 8446 5.1): all come out, in order."""
    stream = RFC8448_NST + hs(4, b"") + RFC8448_NST
    msgs = r.HandshakeBuffer().feed(stream)
    assert [m.raw for m in msgs] == [RFC8448_NST, hs(4, b""), RFC8448_NST]


def test_handshake_buffer_message_spanning_records() -> None:
    """A message split over records comes out when its last byte arrives; pending() is
    true in between."""
    hb = r.HandshakeBuffer()
    assert hb.feed(RFC8448_NST[:2]) == []
    assert hb.pending()
    assert hb.feed(RFC8448_NST[2:100]) == []
    assert hb.buffered() == 100
    assert [m.raw for m in hb.feed(RFC8448_NST[100:])] == [RFC8448_NST]
    assert not hb.pending()


def test_handshake_buffer_byte_by_byte() -> None:
    """Fed one byte per record, each message appears exactly when complete."""
    stream = RFC8448_NST + hs(0, b"") + RFC8448_NST
    hb = r.HandshakeBuffer()
    out = []
    for i in range(len(stream)):
        got = hb.feed(stream[i : i + 1])
        if got:
            assert i + 1 in (len(RFC8448_NST), len(RFC8448_NST) + 4, len(stream))
        out += got
    assert [m.raw for m in out] == [RFC8448_NST, hs(0, b""), RFC8448_NST]


def test_handshake_buffer_trailing_partial() -> None:
    """Whole messages come out; a trailing partial message stays pending."""
    hb = r.HandshakeBuffer()
    msgs = hb.feed(RFC8448_NST + RFC8448_NST[:7])
    assert [m.raw for m in msgs] == [RFC8448_NST]
    assert hb.pending()
    assert hb.buffered() == 7


def test_handshake_buffer_bound_checked_on_header() -> None:
    """A header claiming more than max_message raises DecodeError on its 4 header bytes,
    before the body is buffered; exactly max_message is accepted."""
    with pytest.raises(DecodeError):
        r.HandshakeBuffer().feed(b"\x04" + (r.MAX_HANDSHAKE_MESSAGE + 1).to_bytes(3, "big"))
    hb = r.HandshakeBuffer(max_message=10)
    assert hb.feed(hs(4, b"x" * 10)) != []
    with pytest.raises(DecodeError):
        hb.feed(b"\x04\x00\x00\x0b")
    with pytest.raises(UsageError):
        r.HandshakeBuffer(max_message=-1)


def test_handshake_buffer_default_bound_covers_largest_ticket() -> None:
    """The default bound admits the largest NewSessionTicket RFC 8446 4.6.1 allows."""
    largest = 4 + 4 + (1 + 255) + (2 + 2**16 - 1) + (2 + 2**16 - 2)
    assert largest <= r.MAX_HANDSHAKE_MESSAGE
    body = (
        b"\x00" * 8
        + b"\xff"
        + b"n" * 255
        + b"\xff\xff"
        + b"t" * (2**16 - 1)
        + b"\xff\xfe"
        + b"\x00\x01\xff\xfa"
        + b"e" * (2**16 - 6)
    )
    assert len(body) == largest
    (msg,) = r.HandshakeBuffer().feed(hs(4, body))
    nst = r.parse_new_session_ticket_13(msg.body)
    assert len(nst.ticket) == 2**16 - 1
    assert nst.extensions == ((1, b"e" * (2**16 - 6)),)


def test_handshake_buffer_key_update_must_end_record() -> None:
    """A KeyUpdate is accepted at the end of a record (alone or after other messages) but
    data after it in the same record is UnexpectedMessage (RFC 8446 5.1)."""
    ku = r.encode_key_update(False)
    assert [m.msg_type for m in r.HandshakeBuffer().feed(ku)] == [24]
    assert [m.msg_type for m in r.HandshakeBuffer().feed(RFC8448_NST + ku)] == [4, 24]
    for trailing in (ku, RFC8448_NST, b"\x04"):
        with pytest.raises(UnexpectedMessage) as info:
            r.HandshakeBuffer().feed(ku + trailing)
        assert info.value.alert == 10
    hb = r.HandshakeBuffer()
    assert hb.feed(ku[:2]) == []
    assert [m.msg_type for m in hb.feed(ku[2:])] == [24]


message_strategy = st.tuples(
    st.integers(0, 255).filter(lambda t: t != r.KEY_UPDATE), st.binary(max_size=300)
)


@given(messages=st.lists(message_strategy, max_size=10), data=st.data())
def test_handshake_buffer_random_splitting(
    messages: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    """Any split of a message stream into records yields the same messages, in order,
    with nothing left pending at the end."""
    stream = b"".join(hs(t, b) for t, b in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=15)))
    hb = r.HandshakeBuffer()
    out: list[r.HandshakeMessage] = []
    prev = 0
    for cut in [*cuts, len(stream)]:
        out += hb.feed(stream[prev:cut])
        prev = cut
    assert [(m.msg_type, m.body) for m in out] == messages
    assert all(m.raw == hs(m.msg_type, m.body) for m in out)
    assert not hb.pending()


@given(data=st.binary(max_size=64), limit=st.integers(0, 40))
def test_handshake_buffer_random_bytes(data: bytes, limit: int) -> None:
    """Random input yields messages or raises DecodeError / UnexpectedMessage only, and
    never buffers a message whose header exceeds the bound."""
    hb = r.HandshakeBuffer(max_message=limit)
    try:
        hb.feed(data)
    except (DecodeError, UnexpectedMessage):
        return
    if hb.buffered() >= 4:
        assert int.from_bytes(data[-hb.buffered() :][1:4], "big") <= limit


# --- KeyUpdate ----------------------------------------------------------------------------


def test_key_update_parse_and_encode() -> None:
    """KeyUpdate bodies 0 and 1 parse (RFC 8446 4.6.3); the encoder emits whole messages."""
    assert r.parse_key_update(b"\x00") is False
    assert r.parse_key_update(b"\x01") is True
    assert r.encode_key_update(False) == b"\x18\x00\x00\x01\x00"
    assert r.encode_key_update(True) == b"\x18\x00\x00\x01\x01"
    for flag in (False, True):
        (msg,) = r.HandshakeBuffer().feed(r.encode_key_update(flag))
        assert r.parse_key_update(msg.body) is flag


@pytest.mark.parametrize(
    ("body", "alert"),
    [
        (b"\x02", 47),
        (b"\xff", 47),
        (b"", 50),
        (b"\x00\x00", 50),
        (b"\x01\x00", 50),
    ],
)
def test_key_update_invalid(body: bytes, alert: int) -> None:
    """A request_update other than 0/1 is illegal_parameter (47, as RFC 8446 4.6.3
    demands); a body that is not one byte is decode_error (50)."""
    with pytest.raises(DecodeError) as info:
        r.parse_key_update(body)
    assert info.value.alert == alert


# --- NewSessionTicket ---------------------------------------------------------------------


def test_new_session_ticket_rfc8448() -> None:
    """RFC 8448 section 3's ticket parses into its printed fields: lifetime 30 s, age_add
    0xfad6aac5, nonce 00 00, a 178-byte ticket, and early_data (42) with
    max_early_data_size 1024."""
    nst = r.parse_new_session_ticket_13(RFC8448_NST[4:])
    assert nst.lifetime == 30
    assert nst.age_add == 0xFAD6AAC5
    assert nst.nonce == b"\x00\x00"
    assert len(nst.ticket) == 0xB2
    assert nst.ticket[:4] == bytes.fromhex("2c035d82")
    assert nst.extensions == ((42, b"\x00\x00\x04\x00"),)


def encode_nst(
    lifetime: int,
    age_add: int,
    nonce: bytes,
    ticket: bytes,
    extensions: list[tuple[int, bytes]],
) -> bytes:
    """A NewSessionTicket body built by hand (RFC 8446 section 4.6.1)."""
    ext = b"".join(t.to_bytes(2, "big") + len(d).to_bytes(2, "big") + d for t, d in extensions)
    return (
        lifetime.to_bytes(4, "big")
        + age_add.to_bytes(4, "big")
        + bytes([len(nonce)])
        + nonce
        + len(ticket).to_bytes(2, "big")
        + ticket
        + len(ext).to_bytes(2, "big")
        + ext
    )


def test_new_session_ticket_every_truncation_fails() -> None:
    """Every proper prefix of a valid body is a DecodeError, as is any trailing byte."""
    body = RFC8448_NST[4:]
    for n in range(len(body)):
        with pytest.raises(DecodeError):
            r.parse_new_session_ticket_13(body[:n])
    with pytest.raises(DecodeError):
        r.parse_new_session_ticket_13(body + b"\x00")


@pytest.mark.parametrize(
    ("body", "alert"),
    [
        pytest.param(encode_nst(1, 2, b"", b"", []), 50, id="empty-ticket"),
        pytest.param(encode_nst(1, 2, b"", b"t", [])[:-2] + b"\xff\xff", 50, id="ext-len-max"),
        pytest.param(encode_nst(1, 2, b"", b"t", [(42, b"ab")])[:-1], 50, id="ext-truncated"),
        pytest.param(encode_nst(1, 2, b"", b"t", [])[:-2] + b"\x00\x01\x00", 50, id="ext-short"),
        pytest.param(encode_nst(1, 2, b"", b"t", [(42, b""), (42, b"")]), 47, id="ext-duplicate"),
    ],
)
def test_new_session_ticket_malformed(body: bytes, alert: int) -> None:
    """An empty ticket (ticket<1..2^16-1>), an extension block of 2^16-1 bytes (max is
    2^16-2), a malformed extension list or a repeated extension (RFC 8446 4.2) raise."""
    with pytest.raises(DecodeError) as info:
        r.parse_new_session_ticket_13(body)
    assert info.value.alert == alert


@given(
    lifetime=st.integers(0, 2**32 - 1),
    age_add=st.integers(0, 2**32 - 1),
    nonce=st.binary(max_size=255),
    ticket=st.binary(min_size=1, max_size=500),
    ext_types=st.lists(st.integers(0, 2**16 - 1), unique=True, max_size=5),
    ext_data=st.lists(st.binary(max_size=40), min_size=5, max_size=5),
)
def test_new_session_ticket_round_trip(
    lifetime: int,
    age_add: int,
    nonce: bytes,
    ticket: bytes,
    ext_types: list[int],
    ext_data: list[bytes],
) -> None:
    """Any well-formed body parses back into the fields it was built from."""
    exts = list(zip(ext_types, ext_data, strict=False))
    nst = r.parse_new_session_ticket_13(encode_nst(lifetime, age_add, nonce, ticket, exts))
    assert nst == r.NewSessionTicket13(lifetime, age_add, nonce, ticket, tuple(exts))


# --- alerts -------------------------------------------------------------------------------


def test_alert_round_trip() -> None:
    """encode_alert/parse_alert round-trip; close_notify is b"\\x01\\x00"."""
    assert r.encode_alert(1, 0) == b"\x01\x00"
    assert r.parse_alert(b"\x02\x28") == (2, 40)
    for level in (0, 1, 2, 255):
        for desc in (0, 10, 20, 50, 255):
            assert r.parse_alert(r.encode_alert(level, desc)) == (level, desc)
    assert r.parse_alert(bytearray(b"\x01\x00")) == (1, 0)


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01\x00\x00", b"\x02\x28" * 2])
def test_parse_alert_wrong_length(data: bytes) -> None:
    """An alert payload that is not exactly 2 bytes is a DecodeError (alert 50)."""
    with pytest.raises(DecodeError) as info:
        r.parse_alert(data)
    assert info.value.alert == 50


@pytest.mark.parametrize(("level", "desc"), [(-1, 0), (256, 0), (1, -1), (1, 256)])
def test_encode_alert_rejects_non_bytes(level: int, desc: int) -> None:
    """Levels or descriptions outside 0..255 are a UsageError."""
    with pytest.raises(UsageError):
        r.encode_alert(level, desc)


def test_encode_handshake_bounds() -> None:
    """encode_handshake frames bodies and rejects a type that is not a byte."""
    assert r.encode_handshake(4, b"ab") == b"\x04\x00\x00\x02ab"
    with pytest.raises(UsageError):
        r.encode_handshake(256, b"")


# --- AEAD limits --------------------------------------------------------------------------


def test_aead_record_limits() -> None:
    """AES-GCM: 2^24.5 records (RFC 8446 5.5); ChaCha20-Poly1305: unlimited before the
    64-bit sequence wraps (same section); AES-128-CCM: 2^23 (RFC 9147 appendix B.1).
    Every suite in the table has a limit; anything else is a UsageError."""
    assert r.aead_record_limit("aes-128-gcm") == r.aead_record_limit("aes-256-gcm") == 23726566
    assert r.aead_record_limit("chacha20-poly1305") == 2**64 - 1
    assert r.aead_record_limit("aes-128-ccm") == 2**23
    for name in SUITES:
        assert r.aead_record_limit(name) > 0
    with pytest.raises(UsageError):
        r.aead_record_limit("aes-128-ccm-8")


# --- fuzz: the parsers raise only library errors ------------------------------------------


@given(data=st.binary(max_size=80))
def test_parsers_raise_only_library_errors(data: bytes) -> None:
    """Every parser, on arbitrary bytes, returns or raises an ossl_ktls Error subclass:
    never IndexError, ValueError from int.from_bytes, struct.error, etc."""
    parsers: list[Callable[[], object]] = [
        lambda: r.parse_record_header(data, tls13=True),
        lambda: r.parse_record_header(data, tls13=False),
        lambda: r.parse_key_update(data),
        lambda: r.parse_new_session_ticket_13(data),
        lambda: r.parse_alert(data),
        lambda: r.HandshakeBuffer().feed(data),
    ]
    for parse in parsers:
        with contextlib.suppress(Error):
            parse()


def test_nst_mutations_raise_only_library_errors() -> None:
    """Random single-byte mutations of the RFC 8448 ticket parse or raise DecodeError."""
    rng = random.Random(8448)
    body = bytearray(RFC8448_NST[4:])
    for _ in range(2000):
        mutated = bytearray(body)
        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        with contextlib.suppress(DecodeError):
            r.parse_new_session_ticket_13(bytes(mutated))
