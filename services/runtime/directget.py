"""Reading a stream without a consumer: JetStream's batch direct get (nats-server >= 2.11).

Why: the services' users may not create consumers on a KV bucket's stream (deploy/nats:
only the admin provisions). A direct get needs only the right to ask and reads nothing
else; read a batch at a time, the memory it takes stays flat however big the stream is
(nats-py's KV watcher queues every value the server sends it).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import Header
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE

BATCH = 500


class DirectGetError(Exception):
    """The server answered a batch direct get with an error status."""


@dataclass(frozen=True, slots=True)
class Stored:
    subject: str
    seq: int
    data: bytes
    removed: bool  # a KV delete or purge marker


async def read_batches(
    nc: Client,
    stream: str,
    subject_filter: str,
    *,
    batch: int = BATCH,
    timeout_s: float = 5.0,
    api_prefix: str = "$JS.API",
) -> AsyncIterator[list[Stored]]:
    """Every message of ``stream`` on ``subject_filter``, in stream order, ``batch`` at a time.

    Raises nats' TimeoutError when the server stops answering, and DirectGetError for an
    error status (a stream without ``allow_direct``, say)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        seq = 1
        while True:
            request = {"seq": seq, "batch": batch, "next_by_subj": subject_filter}
            await nc.publish(
                f"{api_prefix}.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox
            )
            page: list[Stored] = []
            while True:
                msg = await sub.next_msg(timeout=timeout_s)
                headers = msg.headers or {}
                status = headers.get(Header.STATUS)
                if status is None:
                    page.append(_stored(msg))
                elif status == "404":  # nothing (more) from seq on
                    if page:
                        yield page
                    return
                elif status == "204":  # end of this batch
                    left = headers.get("Nats-Num-Pending")
                    break
                elif status == "503":
                    raise DirectGetError(f"{stream} does not answer direct gets (503)")
                else:
                    raise DirectGetError(f"direct get of {stream}: {status} {headers}")
            if page:
                yield page
            if not page or (left is not None and int(left) == 0):
                return
            seq = page[-1].seq + 1
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


def _stored(msg: Msg) -> Stored:
    headers = msg.headers or {}
    return Stored(
        subject=headers["Nats-Subject"],
        seq=int(headers["Nats-Sequence"]),
        data=msg.data,
        removed=headers.get(KV_OP) in (KV_DEL, KV_PURGE),
    )
