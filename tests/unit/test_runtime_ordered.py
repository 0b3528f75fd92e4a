"""services.runtime.ordered: what a delivery's reply subject and a heartbeat say, and that
a gap in the consumer sequence stops the reading at the message before it."""

from __future__ import annotations

import pytest

from services.runtime.ordered import OrderedReader, delivery_seqs, header_fields


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
