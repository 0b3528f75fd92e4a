"""A tool's concurrency slots (manifest ``limits.concurrency``), shared by every executor.

A slot is a key ``<tool>.<i>`` in the KV bucket ``domed-slots``, whose value is the job
that holds it. It is taken with a KV create (atomic: one job wins), kept by the running
job's heartbeat (the bucket has a TTL, so the slots of an executor that died come back
by themselves), and given back when the job ends.

Keeping and giving back are compare-and-set on the revision we last wrote. An executor
cut off from NATS for longer than the TTL may find its slot given to another job
meanwhile; it must neither overwrite that job's claim nor delete it, or a third job
could run beside the two.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import nats.js.errors
from nats.js.kv import KeyValue

log = logging.getLogger("domed.executor.slots")


@dataclass
class Slot:
    key: str
    job_id: str
    revision: int
    lost: bool = False  # another job holds it now


async def acquire(kv: KeyValue, tool_id: str, limit: int, job_id: str) -> Slot | None:
    """A free slot of ``tool_id`` for ``job_id``, or None if all ``limit`` are held."""
    for i in range(limit):
        key = f"{tool_id}.{i}"
        try:
            return Slot(key, job_id, await kv.create(key, job_id.encode()))
        except nats.js.errors.KeyWrongLastSequenceError:
            continue
    return None


async def keep(kv: KeyValue, slot: Slot) -> None:
    """Renew the slot's TTL; take it again if it expired and nobody took it meanwhile."""
    if slot.lost:
        return
    try:
        slot.revision = await kv.update(slot.key, slot.job_id.encode(), last=slot.revision)
        return
    except nats.js.errors.KeyWrongLastSequenceError:
        pass
    try:
        slot.revision = await kv.create(slot.key, slot.job_id.encode())
    except nats.js.errors.KeyWrongLastSequenceError:
        slot.lost = True
        log.warning(
            "job %s: its concurrency slot %s expired and another job holds it now",
            slot.job_id,
            slot.key,
        )


async def release(kv: KeyValue, slot: Slot) -> None:
    """Give the slot back, unless another job holds it now."""
    if slot.lost:
        return
    with contextlib.suppress(Exception):  # expired, taken, or NATS away: the TTL frees it
        await kv.delete(slot.key, last=slot.revision)
