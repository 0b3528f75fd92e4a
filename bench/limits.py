"""Time limits that follow the machine's speed, and statistics that never raise.

This machine's speed moves by up to 4x within a day (the bare runner did ~2,400
jobs/s in a quick spell and ~1,000 in a slow one; an ordered consumer read ~160k and
~37k events/s). A fixed limit generous in a quick spell cuts a case short in a slow
one, so every limit here is work ÷ a rate that the same run measured, times a margin.
A limit is never what a case is judged by: it only ends a wait that would hang.

Pure: no I/O, no asyncio; tested in tests/unit/test_bench_limits.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

# The bare runner (`true`, 8 in flight, asyncio) in a quick spell of this machine, jobs/s.
REFERENCE_SPAWN_RATE = 2400.0
# nats-py's ordered consumer with a discarding callback, in a quick spell, events/s.
REFERENCE_READ_RATE = 160_000.0
# Beyond this the machine is not slow but stuck; limits stop growing.
MAX_SLOWDOWN = 20.0
# No limit is longer than this: a wait past it has failed whatever the machine's speed.
CEILING_S = 900.0


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def slowdown(measured: float | None, reference: float) -> float:
    """How many times slower than ``reference`` the ``measured`` rate is: at least 1 (a
    quick machine keeps the nominal limits), at most MAX_SLOWDOWN; MAX_SLOWDOWN when
    nothing usable was measured (NaN, zero), so a failed baseline lengthens the limits
    rather than shortening them."""
    if not finite(measured) or measured is None or measured <= 0:
        return MAX_SLOWDOWN
    return min(MAX_SLOWDOWN, max(1.0, reference / measured))


def limit_s(
    work: float, rate: float | None, *, margin: float = 4.0, floor_s: float = 10.0
) -> float:
    """Seconds to allow for ``work`` units at ``rate`` units/s: ``margin`` times the
    expected time, at least ``floor_s`` (process start-up, connecting), at most
    CEILING_S. An unusable rate (NaN, zero) gives the ceiling."""
    if not finite(rate) or rate is None or rate <= 0 or not finite(work):
        return CEILING_S
    return min(CEILING_S, max(floor_s, margin * max(0.0, work) / rate))


def finite_median(values: Iterable[float | None]) -> float:
    """The median of the finite values; NaN when there are none (``statistics.median``
    sorts NaN anywhere and returns nonsense)."""
    ordered = sorted(v for v in values if v is not None and math.isfinite(v))
    if not ordered:
        return math.nan
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def ratio(numerator: float | None, denominator: float | None) -> float:
    """``numerator / denominator``, NaN when either is missing, not finite or zero."""
    if not finite(numerator) or not finite(denominator) or not denominator:
        return math.nan
    assert numerator is not None and denominator is not None
    return numerator / denominator


def rounded(x: float | None, ndigits: int = 0) -> float | None:
    """``round(x, ndigits)`` for the JSON file; None for NaN or infinity, where a bare
    ``round(x)`` raises ``ValueError: cannot convert float NaN to integer``."""
    if not finite(x) or x is None:
        return None
    return round(x, ndigits)


# The KV repair after a rebuild puts each job once, fsynced: 4-6k puts/s in a quick spell.
KV_PUT_RATE = 4000.0
# Every job has at least three events (queued, then terminal, or a cancel between them):
# a stream of n events holds at most n / 3 jobs.
MIN_EVENTS_PER_JOB = 3


def rebuild_limits(events: int, baseline_rate: float | None) -> tuple[float, float]:
    """(store, KV) limits in s for a ``projector --rebuild`` of ``events`` events, from
    the discarding read of the same stream just before (``baseline_rate``, events/s).
    The rebuild reads 1.3-1.5x faster than that baseline, so 4x slower than it is not a
    slow machine but a stuck rebuild. The KV repair is bound by nats-server's fsyncs,
    not by reading: its limit follows the slowdown the baseline shows."""
    store = limit_s(events, baseline_rate, margin=4.0, floor_s=15.0)
    put_rate = KV_PUT_RATE / slowdown(baseline_rate, REFERENCE_READ_RATE)
    kv = limit_s(events / MIN_EVENTS_PER_JOB, put_rate, margin=4.0, floor_s=15.0)
    return store, kv
