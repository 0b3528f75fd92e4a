"""A tool's concurrency slots (manifest ``limits.concurrency``), shared by every executor.

A slot is a key ``<tool>.<i>`` in the KV bucket ``domed-slots``, whose value is the job
that holds it. It is taken with a KV create (atomic: one job wins), kept by the running
job's heartbeat (the bucket has a TTL, so the slots of an executor that died come back
by themselves), and given back when the job ends.

Keeping and giving back are compare-and-set on the revision we last wrote. An executor
cut off from NATS for longer than the TTL may find its slot given to another job
meanwhile; it must neither overwrite that job's claim nor delete it, or a third job
could run beside the two. A keep whose answer was lost (the job ended while it was on its
way) leaves a newer revision than the one we know: the value, a token of this claim
alone, says the slot is still ours, and the newer revision is used.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from dataclasses import dataclass

import nats.js.errors
from nats.js.kv import KeyValue

from services.runtime import failures

log = logging.getLogger("domed.executor.slots")


@dataclass
class Slot:
    key: str
    job_id: str
    revision: int
    token: bytes = b""  # the value: this claim's own, so ``_ours`` can tell it again
    lost: bool = False  # another job holds it now


async def acquire(kv: KeyValue, tool_id: str, limit: int, job_id: str) -> Slot | None:
    """A free slot of ``tool_id`` for ``job_id``, or None if all ``limit`` are held."""
    token = f"{job_id} {secrets.token_hex(6)}".encode()
    for i in range(limit):
        key = f"{tool_id}.{i}"
        try:
            return Slot(key, job_id, await kv.create(key, token), token)
        except nats.js.errors.KeyWrongLastSequenceError:
            continue
    return None


async def _ours(kv: KeyValue, slot: Slot) -> int | None:
    """The slot's current revision if it still holds our claim, else None."""
    try:
        entry = await kv.get(slot.key)
    except nats.js.errors.KeyNotFoundError:
        return None
    return entry.revision if entry.value == slot.token else None


async def keep(kv: KeyValue, slot: Slot) -> None:
    """Renew the slot's TTL; take it again if it expired and nobody took it meanwhile."""
    if slot.lost:
        return
    try:
        slot.revision = await kv.update(slot.key, slot.token, last=slot.revision)
        return
    except nats.js.errors.KeyWrongLastSequenceError:
        pass
    if (revision := await _ours(kv, slot)) is not None:
        slot.revision = await kv.update(slot.key, slot.token, last=revision)
        return
    try:
        slot.revision = await kv.create(slot.key, slot.token)
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
        try:
            await kv.delete(slot.key, last=slot.revision)
        except nats.js.errors.APIError as exc:  # a delete's refusal is not translated
            if failures.is_wrong_last_sequence(exc):
                if (revision := await _ours(kv, slot)) is not None:
                    await kv.delete(slot.key, last=revision)
