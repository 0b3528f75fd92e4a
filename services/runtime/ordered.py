"""A lean ordered consumer: a stream's messages in stream order, raw, to a plain function.

Why not nats-py's ordered consumer: for each message it parses the headers into a
dict, builds a ``Msg``, queues it and hops to a task that awaits the callback. On the
bench's stream of 200,065 events that reads 152k messages/s; the same deliveries
handed over raw from the protocol parser read 365k/s. A projector rebuild must read
*and* fold 200k events/s (docs/benchmarks.md, case 4), so the reading must cost less
than half of what nats-py's path does.

It keeps what an ordered consumer promises, which nats-py's keeps in the same way:

- each message once, in stream order: a delivery whose consumer sequence is not the
  next one, a heartbeat that reports another consumer sequence than the last one
  delivered, or two heartbeats missed, each mean the server dropped something or lost
  the consumer; the owner then calls :meth:`OrderedReader.start` again, which replaces
  the consumer from the stream sequence after the last one delivered;
- flow control is answered at once: the handler has run for every message before it.

Only the one subscription is diverted (``RawClient``); every other subscription of the
connection goes through nats-py as usual. Only the projector connects with ``RawClient``
(``connection.connect(..., client=RawClient())``); every other service uses nats-py's client.

``RawClient`` and ``_RawParser`` override nats-py internals (``Client._ps``,
``Client._process_msg``, the ``Parser``'s buffer and state, ``Subscription._id``):
pyproject.toml pins nats-py to the minor versions they were checked against, and
tests/unit/test_runtime_ordered_nats_internals.py says what changed when they move.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.protocol.parser import AWAITING_CONTROL_LINE, Parser

log = logging.getLogger("domed.ordered")

# (subject, stream sequence, payload) of one stored message.
Handler = Callable[[bytes, int, bytes], None]

_STATUS_AT = len(b"NATS/1.0")  # a status line ("NATS/1.0 100 ...") has a space here
_SPACE = ord(" ")
_CR = ord("\r")
_H = ord("H")
MISSED_HEARTBEATS = 2


class RawClient(Client):
    """nats-py's client, where a subscription can take its messages raw (``OrderedReader``)."""

    def __init__(self) -> None:
        super().__init__()
        # by subscription id, as the wire spells it (the parser then needs no int())
        self._raw_readers: dict[bytes, OrderedReader] = {}
        self._ps = _RawParser(self)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        reader = self._raw_readers.get(_sid_key(sid)) if self._raw_readers else None
        if reader is None:
            await super()._process_msg(sid, subject, reply, data, headers)
        elif headers and len(headers) > _STATUS_AT and headers[_STATUS_AT] == _SPACE:
            await reader.control(reply, headers)
        else:
            reader.deliver(subject, reply, data)


def _sid_key(sid: int) -> bytes:
    """A subscription id as the wire spells it: how raw readers are keyed."""
    return b"%d" % sid


class _RawParser(Parser):
    """nats-py's protocol parser, with a shortcut for a raw reader's deliveries: whole
    ``HMSG`` frames at the front of the buffer go straight to the reader, without the
    regular expressions and copies nats-py spends on each. A frame not yet whole waits
    for more data here; anything else goes through nats-py's parser as it is."""

    nc: RawClient

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        readers = self.nc._raw_readers
        if not readers or self.state != AWAITING_CONTROL_LINE:
            buf.extend(data)
            if buf:
                await super().parse()
            return
        # What the last read left, then this read: one copy at most (none when the last
        # read ended on a frame's end), and every slice below is the bytes handed on.
        view = bytes(buf) + data if buf else bytes(data)
        if not view.startswith(b"HMSG "):
            buf.extend(data)
            await super().parse()
            return
        if not _front_frame_whole(view):
            buf.extend(data)  # a big message arrives in many reads: walk it once it is here
            return
        size = len(view)
        pos = 0
        frames = 0
        whole = True  # False: the frame in front is a raw reader's, not all here yet
        # Of the protocol's operations only HMSG begins with H; a byte is read for less
        # than bytes.startswith, which parses its arguments on every call.
        while pos < size and view[pos] == _H:
            eol = view.find(b"\n", pos) - 1  # one byte to look for is found faster than two
            if eol < 0:
                whole = False
                break
            if view[eol] != _CR:
                break  # not the protocol: nats-py's parser says so
            args = view[pos + 5 : eol].split()
            if len(args) != 5:  # no reply subject: not a delivery
                break
            reader = readers.get(args[1])
            if reader is None:
                break
            start = eol + 2
            end = start + int(args[4])
            if size < end + 2:
                whole = False
                break
            frames += 1
            pos = end + 2
            header_end = start + int(args[3])
            if view[start + _STATUS_AT] == _SPACE:
                await reader.control(args[2], view[start:header_end])
            else:
                reader.deliver(args[0], args[2], view[header_end:end])
        buf[:] = memoryview(view)[pos:]  # one cut at the end, not one per frame
        self.nc.stats["in_msgs"] += frames
        if whole and buf:
            await super().parse()


def _front_frame_whole(buf: bytes) -> bool:
    """Whether the ``HMSG`` frame at the front of ``buf`` is all there; True as well when
    its control line is not a delivery's (no reply subject), which nats-py's parser reads."""
    eol = buf.find(b"\r\n")
    if eol < 0:
        return False
    args = buf[5:eol].split()
    return len(args) != 5 or len(buf) >= eol + 4 + int(args[4])


def delivery_seqs(reply: bytes) -> tuple[int, int]:
    """(stream seq, consumer seq) from a JetStream delivery's reply subject:
    ``$JS.ACK.[<domain>.<hash>.]<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>[.<token>]``.
    """
    tokens = reply.split(b".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[6])
    if len(tokens) >= 11:
        return int(tokens[7]), int(tokens[8])
    raise ValueError(f"not a JetStream delivery: {reply!r}")


def header_fields(headers: bytes) -> dict[bytes, bytes]:
    """``Name: value`` lines after the status line of a control message."""
    fields: dict[bytes, bytes] = {}
    for line in headers.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            fields[name.strip()] = value.strip()
    return fields


class OrderedReader:
    """Reads ``stream`` (``filter_subject``) in order into ``handler``.

    No task of its own: the owner polls :meth:`needs_restart` (cheap) and awaits
    :meth:`start` when it is true, and :meth:`close` at the end. ``next_seq`` is where
    a restart reads from.
    """

    def __init__(
        self,
        nc: RawClient,
        js: JetStreamContext,
        stream: str,
        filter_subject: str,
        handler: Handler,
        *,
        heartbeat_s: float = 5.0,
    ) -> None:
        self.nc = nc
        self.js = js
        self.stream = stream
        self.filter_subject = filter_subject
        self.handler = handler
        self.heartbeat_s = heartbeat_s
        self.next_seq = 1
        self.broken = False
        self.restarts = 0
        self._sub: Subscription | None = None
        self.consumer: str | None = None  # the server's name for the current consumer
        self.flow_controls = 0
        self._dseq = 0  # consumer sequence of the last delivery
        self._controls = 0  # heartbeats and flow control requests received
        self._seen = (0, 0)
        self._quiet_since = time.monotonic()

    async def start(self, from_seq: int | None = None) -> None:
        """(Re)create the consumer, delivering from stream seq ``from_seq`` (default: on
        from the last message delivered)."""
        if from_seq is not None:
            self.next_seq = from_seq
        if self._sub is not None:
            self.restarts += 1
        await self.close()
        self.broken = False
        self._dseq = 0
        self._quiet_since = time.monotonic()
        inbox = self.nc.new_inbox()
        sub = await self.nc.subscribe(inbox)
        self._sub = sub
        self.nc._raw_readers[_sid_key(sub._id)] = self
        config = ConsumerConfig(
            deliver_subject=inbox,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.next_seq,
            filter_subject=self.filter_subject,
            ack_policy=AckPolicy.NONE,
            max_deliver=1,
            flow_control=True,
            idle_heartbeat=self.heartbeat_s,
            num_replicas=1,
            mem_storage=True,
        )
        info = await self.js.add_consumer(self.stream, config)
        self.consumer = info.name

    async def close(self) -> None:
        """Stop the deliveries. The server removes the ephemeral consumer once it has no
        interest (the services' users may not delete consumers: deploy/nats)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            self.nc._raw_readers.pop(_sid_key(sub._id), None)
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def needs_restart(self) -> bool:
        """True once the deliveries broke order or went quiet for ``MISSED_HEARTBEATS``
        heartbeats (the server lost the consumer, or the connection dropped it)."""
        if self.broken:
            return True
        now = time.monotonic()
        if (self._dseq, self._controls) != self._seen:
            self._seen = (self._dseq, self._controls)
            self._quiet_since = now
            return False
        return now - self._quiet_since > MISSED_HEARTBEATS * self.heartbeat_s

    def deliver(self, subject: bytes, reply: bytes, data: bytes) -> None:
        if self.broken:
            return  # what follows a gap is read again after the restart
        try:
            tokens = reply.split(b".")
            if len(tokens) == 9:  # the common form, without a call: see delivery_seqs
                seq, dseq = int(tokens[5]), int(tokens[6])
            else:
                seq, dseq = delivery_seqs(reply)
        except ValueError:
            log.warning("a delivery without JetStream metadata on %r; restarting", subject)
            self.broken = True
            return
        if dseq != self._dseq + 1:
            log.info(
                "delivery %d after %d: a gap; restarting from seq %d",
                dseq,
                self._dseq,
                self.next_seq,
            )
            self.broken = True
            return
        self._dseq = dseq
        try:
            self.handler(subject, seq, data)
        except Exception:
            log.exception("handling seq %d failed; restarting from it", seq)
            self.broken = True
            return
        self.next_seq = seq + 1

    async def control(self, reply: bytes, headers: bytes) -> None:
        """A status message: flow control (it has a reply subject) or an idle heartbeat."""
        self._controls += 1
        status = headers[_STATUS_AT + 1 : _STATUS_AT + 4]
        if status != b"100":
            log.info("status %r from the consumer; restarting", status)
            self.broken = True
            return
        if reply:
            self.flow_controls += 1
            await self.nc.publish(reply.decode())
            return
        fields = header_fields(headers)
        stalled = fields.get(b"Nats-Consumer-Stalled")
        if stalled:
            await self.nc.publish(stalled.decode())
        last = fields.get(b"Nats-Last-Consumer")
        if last is not None and int(last) != self._dseq and not self.broken:
            log.info("heartbeat says delivery %s, last seen %d; restarting", last, self._dseq)
            self.broken = True
