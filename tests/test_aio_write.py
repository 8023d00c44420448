"""The asyncio transport's write side without a socket: WriteBuffer and Sender.

A fake connection (:class:`FakeSink`) takes plaintext in pieces of a scripted size,
refuses with ``BlockingIOError`` when told to, and keeps a ciphertext backlog of a
scripted size. Writes are fed whole and byte by byte; what reaches the fake is compared
with what was written (sizes and SHA-256).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ossl_ktls._aio_write import COALESCE, SEND_CHUNK, Sender, WriteBuffer
from tests._pairs import digest

from ._hypothesis_profiles import load

load()

BIG = 1 << 40  # a budget that never runs out


class FakeSink:
    """A connection that takes what *accept* allows per send (None: everything)."""

    def __init__(self, accept: Iterator[int | None] | None = None) -> None:
        self._accept = accept
        self.received = bytearray()
        self.sends: list[int] = []  # the size of each chunk offered to send()
        self.backlog = 0  # ciphertext "queued": flush() clears it unless stuck
        self.stuck = False  # flush() leaves the backlog, send()/shutdown() would block
        self.shutdowns = 0

    @property
    def tx_backlog(self) -> int:
        return self.backlog

    def flush(self) -> int:
        if not self.stuck:
            self.backlog = 0
        return self.backlog

    def send(self, data: memoryview) -> int:
        if self.stuck:
            raise BlockingIOError
        self.sends.append(len(data))
        n = len(data) if self._accept is None else next(self._accept)
        n = len(data) if n is None else min(n, len(data))
        self.received += data[:n]
        return n

    def shutdown(self) -> None:
        if self.stuck:
            raise BlockingIOError
        assert self.backlog == 0
        self.shutdowns += 1


def _pair(sink: FakeSink) -> tuple[WriteBuffer, Sender]:
    buf = WriteBuffer(lambda: sink.tx_backlog)
    return buf, Sender(sink, buf)


@pytest.mark.parametrize("whole", [True, False], ids=["whole", "byte-by-byte"])
def test_everything_arrives_in_order_then_close_notify(whole: bool) -> None:
    """Written data reaches the connection intact and in order, then close_notify once.

    300 KiB written whole, or 70 KiB one byte at a time: the connection gets exactly those
    bytes, no send is offered more than SEND_CHUNK, the buffer's size ends at 0, and
    close_notify is sent once, after the last byte (a second push sends no second one).
    """
    data = bytes(range(256)) * (1200 if whole else 280)
    sink = FakeSink()
    buf, sender = _pair(sink)
    for piece in [data] if whole else [data[i : i + 1] for i in range(len(data))]:
        buf.append(piece)
    assert buf.size == len(data)
    assert sender.push(budget=BIG, close_notify=True)
    assert digest(bytes(sink.received)) == digest(data)
    assert max(sink.sends) <= SEND_CHUNK
    assert sink.shutdowns == 1
    assert buf.size == 0 and not buf
    assert sender.push(budget=BIG, close_notify=True)
    assert sink.shutdowns == 1


def test_small_writes_are_joined_up_to_coalesce() -> None:
    """Small writes go out joined, up to COALESCE bytes; a big write is not split to fit.

    100 writes of 1000 bytes are offered as as many as fit in COALESCE (65 of them), then
    the rest joined; a small write before a big one goes alone, the big one capped at
    SEND_CHUNK.
    """
    sink = FakeSink()
    buf, sender = _pair(sink)
    for _ in range(100):
        buf.append(b"x" * 1000)
    assert sender.push(budget=BIG, close_notify=False)
    fit = COALESCE // 1000
    assert sink.sends == [fit * 1000, (100 - fit) * 1000]

    sink = FakeSink()
    buf, sender = _pair(sink)
    buf.append(b"a" * 100)
    buf.append(b"b" * (SEND_CHUNK + 5))
    assert sender.push(budget=BIG, close_notify=False)
    assert sink.sends == [100, SEND_CHUNK, 5]
    assert sink.received == b"a" * 100 + b"b" * (SEND_CHUNK + 5)


@given(
    writes=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=40),
    accept=st.lists(st.one_of(st.none(), st.integers(0, 5000)), min_size=1, max_size=20),
    budget=st.integers(1, 20000),
)
def test_partial_sends_and_budgets_lose_nothing(
    writes: list[bytes], accept: list[int | None], budget: int
) -> None:
    """Whatever the connection takes per send and whatever the budget, nothing is lost.

    Each push stops once it used up its budget; the size always equals what was
    written minus what the connection took; pushing until done delivers every byte in
    order. (A send that takes nothing is offered again.)
    """

    def script() -> Iterator[int | None]:
        while True:
            yield from accept
            yield None  # the connection always makes progress eventually

    sink = FakeSink(script())
    buf, sender = _pair(sink)
    for w in writes:
        buf.append(w)
    total = sum(map(len, writes))
    while True:
        before = len(sink.received)
        done = sender.push(budget=budget, close_notify=False)
        assert buf.size == total - len(sink.received)
        if done:
            break
        assert len(sink.received) - before >= budget
    assert digest(bytes(sink.received)) == digest(b"".join(writes))


def test_backlog_counts_and_comes_first() -> None:
    """The connection's ciphertext backlog is part of the size and goes out first.

    While the backlog cannot be flushed, push sends no plaintext and no close_notify and
    says it is not done; a blocked send() or shutdown() is retried on the next push.
    """
    sink = FakeSink()
    buf, sender = _pair(sink)
    buf.append(b"hello")
    sink.backlog, sink.stuck = 700, True
    assert buf.size == 705
    assert not sender.push(budget=BIG, close_notify=True)
    assert sink.received == b"" and sink.shutdowns == 0
    sink.backlog, sink.stuck = 0, True  # flushed, but the socket is full
    assert not sender.push(budget=BIG, close_notify=True)
    assert sink.received == b"" and sink.shutdowns == 0
    sink.stuck = False
    assert sender.push(budget=BIG, close_notify=True)
    assert sink.received == b"hello" and sink.shutdowns == 1


def test_close_notify_waits_for_the_last_byte() -> None:
    """close_notify is not sent while plaintext is queued; the budget only limits sends.

    Two writes too big to join, budget 1: the first push sends one and stops; the
    second sends the other, then close_notify.
    """
    sink = FakeSink()
    buf, sender = _pair(sink)
    buf.append(b"y" * (COALESCE + 1))
    buf.append(b"z" * (COALESCE + 2))
    assert not sender.push(budget=1, close_notify=True)
    assert sink.shutdowns == 0 and sink.received == b"y" * (COALESCE + 1)
    assert sender.push(budget=1, close_notify=True)
    assert sink.shutdowns == 1 and len(sink.received) == 2 * COALESCE + 3


def test_clear_drops_the_queue() -> None:
    """clear() (abort) drops the queued plaintext; the backlog is the connection's."""
    sink = FakeSink()
    buf, sender = _pair(sink)
    buf.append(b"q" * 1000)
    sink.backlog, sink.stuck = 50, True
    buf.clear()
    assert buf.size == 50 and not buf
    sink.stuck = False
    assert sender.push(budget=BIG, close_notify=False)
    assert sink.received == b""


def test_limits_follow_asyncio_rules() -> None:
    """Marks as asyncio sets them: defaults (16 KiB, 64 KiB), one mark derives the other.

    high alone gives low = high // 4, low alone high = 4 * low; high < low, or a negative
    low, is a ValueError that leaves the marks as they were.
    """
    buf = WriteBuffer(lambda: 0)
    assert (buf.low, buf.high) == (16 * 1024, 64 * 1024)
    buf.set_limits(high=1001)
    assert (buf.low, buf.high) == (250, 1001)
    buf.set_limits(low=7)
    assert (buf.low, buf.high) == (7, 28)
    buf.set_limits(high=0)
    assert (buf.low, buf.high) == (0, 0)
    for high, low in [(10, 20), (5, -1)]:
        with pytest.raises(ValueError, match="must be >="):
            buf.set_limits(high=high, low=low)
        assert (buf.low, buf.high) == (0, 0)
    buf.set_limits()
    assert (buf.low, buf.high) == (16 * 1024, 64 * 1024)


def test_pause_above_high_resume_at_low() -> None:
    """The protocol is paused once above the high mark and resumed once at the low mark.

    Exactly at the high mark nothing pauses; one byte more pauses (once, however often
    asked); the backlog counts; above the low mark nothing resumes, at it the protocol
    resumes (once).
    """
    backlog = [0]
    buf = WriteBuffer(lambda: backlog[0])
    buf.set_limits(high=100, low=10)
    buf.append(b"a" * 100)
    assert not buf.pause_due() and not buf.paused
    backlog[0] = 1
    assert buf.pause_due() and buf.paused
    assert not buf.pause_due()
    sink = FakeSink(iter([89]))
    assert not Sender(sink, buf).push(budget=1, close_notify=False)
    assert buf.size == 12  # 11 queued + 1 of backlog
    assert not buf.resume_due() and buf.paused
    backlog[0] = 0
    buf.consumed(1)
    assert buf.size == 10
    assert buf.resume_due() and not buf.paused
    assert not buf.resume_due()
