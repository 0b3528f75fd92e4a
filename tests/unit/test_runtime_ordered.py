"""services.runtime.ordered: what a delivery's reply subject and a heartbeat say, and that
a gap in the consumer sequence stops the reading at the message before it."""

from __future__ import annotations

import pytest

from services.runtime.ordered import OrderedReader, RawClient, delivery_seqs, header_fields


def test_the_sequences_come_from_either_form_of_reply_subject() -> None:
    assert delivery_seqs(b"$JS.ACK.DOMED_JOBS.c1.1.1042.17.1732550000000000000.3") == (1042, 17)
    assert delivery_seqs(b"$JS.ACK.hub.ACCHASH.DOMED_JOBS.c1.1.1042.17.1732550000.3.tok") == (
        1042,
        17,
    )
    with pytest.raises(ValueError):
        delivery_seqs(b"_INBOX.abc")


def test_heartbeat_fields_are_read_after_the_status_line() -> None:
    headers = (
        b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 12\r\n"
        b"Nats-Last-Stream: 40\r\nNats-Consumer-Stalled: $JS.FC.x.y\r\n\r\n"
    )
    assert header_fields(headers) == {
        b"Nats-Last-Consumer": b"12",
        b"Nats-Last-Stream": b"40",
        b"Nats-Consumer-Stalled": b"$JS.FC.x.y",
    }


def _reply(sseq: int, dseq: int) -> bytes:
    return f"$JS.ACK.S.c.1.{sseq}.{dseq}.1732550000000000000.0".encode()


def test_a_gap_in_the_consumer_sequence_stops_the_reading_before_it() -> None:
    seen: list[int] = []
    reader = OrderedReader(
        nc=None,  # type: ignore[arg-type]  # deliver() needs no connection
        js=None,  # type: ignore[arg-type]
        stream="S",
        filter_subject="s.>",
        handler=lambda subject, seq, data: seen.append(seq),
    )
    reader.deliver(b"s.a", _reply(10, 1), b"{}")
    reader.deliver(b"s.b", _reply(11, 2), b"{}")
    reader.deliver(b"s.d", _reply(13, 4), b"{}")  # delivery 3 never came
    reader.deliver(b"s.e", _reply(14, 5), b"{}")
    assert seen == [10, 11]
    assert reader.needs_restart() and reader.next_seq == 12


class _Recorder:
    """Stands in for an OrderedReader: what the parser hands over, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes, bytes]] = []

    def deliver(self, subject: bytes, reply: bytes, data: bytes) -> None:
        self.seen.append(("data", subject, data))

    async def control(self, reply: bytes, headers: bytes) -> None:
        self.seen.append(("control", reply, headers))


def _frame(sid: int, subject: bytes, reply: bytes, headers: bytes, payload: bytes) -> bytes:
    args = b" ".join(x for x in (subject, str(sid).encode(), reply) if x)
    size = len(headers) + len(payload)
    return b"HMSG %s %d %d\r\n%s%s\r\n" % (args, len(headers), size, headers, payload)


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 1000, 100_000])
async def test_the_parser_shortcut_hands_over_every_frame_whole_and_in_order(chunk: int) -> None:
    """Deliveries, a flow control request and an idle heartbeat (which has no reply
    subject, so nats-py's own parser reads it), cut into reads of any size."""
    nc = RawClient()
    recorder = _Recorder()
    nc._raw_readers[b"7"] = recorder  # type: ignore[assignment]
    msg_id = b"NATS/1.0\r\nNats-Msg-Id: j.log.1-%d\r\n\r\n"
    wire = b""
    expected: list[tuple[str, bytes, bytes]] = []
    for n in range(30):
        payload = b'{"n": %d, "text": "%s"}' % (n, b"x" * (n * 37 % 300))
        wire += _frame(7, b"job.J.log", _reply(100 + n, n + 1), msg_id % n, payload)
        expected.append(("data", b"job.J.log", payload))
        if n == 10:
            fc = b"NATS/1.0 100 FlowControl Request\r\n\r\n"
            wire += _frame(7, b"_INBOX.x", b"$JS.FC.S.c.1", fc, b"")
            expected.append(("control", b"$JS.FC.S.c.1", fc))
        if n == 15:
            wire += b"+OK\r\n"  # not a delivery: nats-py's parser reads it, then ours goes on
        if n == 20:
            hb = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 21\r\n\r\n"
            wire += _frame(7, b"_INBOX.x", b"", hb, b"")
            expected.append(("control", b"", hb))
    for at in range(0, len(wire), chunk):
        await nc._ps.parse(wire[at : at + chunk])
    assert recorder.seen == expected
    assert nc._ps.buf == bytearray()
