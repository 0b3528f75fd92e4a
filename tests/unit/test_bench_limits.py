"""The bench's limits follow the speed the same run measured, and its statistics give
NaN or None instead of raising (a slow spell once ended case 4 with ``ValueError:
cannot convert float NaN to integer`` from ``round`` of a missing rate)."""

from __future__ import annotations

import math

import pytest

from bench.harness import percentile
from bench.limits import (
    CEILING_S,
    MAX_SLOWDOWN,
    REFERENCE_READ_RATE,
    finite_median,
    limit_s,
    ratio,
    rebuild_limits,
    rounded,
    slowdown,
)
from bench.peers import rotated

NAN = math.nan


@pytest.mark.parametrize(
    ("measured", "reference", "expected"),
    [
        (2400.0, 2400.0, 1.0),
        (4800.0, 2400.0, 1.0),  # a quicker machine keeps the nominal limits
        (1000.0, 2400.0, 2.4),
        (1.0, 2400.0, MAX_SLOWDOWN),
        (NAN, 2400.0, MAX_SLOWDOWN),  # nothing measured: assume slow, never shorten
        (0.0, 2400.0, MAX_SLOWDOWN),
        (None, 2400.0, MAX_SLOWDOWN),
    ],
)
def test_slowdown_is_reference_over_measured_within_bounds(
    measured: float | None, reference: float, expected: float
) -> None:
    assert slowdown(measured, reference) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("work", "rate", "expected"),
    [
        (1000, 100.0, 40.0),  # margin 4 x 10 s
        (10, 100.0, 10.0),  # the floor
        (1e9, 1.0, CEILING_S),  # the ceiling
        (1000, NAN, CEILING_S),  # an unusable rate gives the ceiling, never NaN
        (1000, 0.0, CEILING_S),
        (NAN, 100.0, CEILING_S),
    ],
)
def test_limit_is_work_over_rate_with_margin_floor_and_ceiling(
    work: float, rate: float, expected: float
) -> None:
    assert limit_s(work, rate) == pytest.approx(expected)


def test_rebuild_limits_grow_as_the_baseline_read_slows() -> None:
    quick = rebuild_limits(200_000, REFERENCE_READ_RATE)
    slow = rebuild_limits(200_000, 37_000.0)
    assert slow[0] > quick[0] and slow[1] > quick[1]
    # The slow spell that cut the KV repair at 11.2 s: its limit is now far beyond that.
    assert slow[1] > 60
    assert all(math.isfinite(x) for x in rebuild_limits(200_000, NAN))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([3.0, 1.0, 2.0], 2.0),
        ([4.0, 1.0, 2.0, 3.0], 2.5),
        ([NAN, 5.0, 1.0], 3.0),  # NaN left out, not sorted anywhere
        ([None, 7.0], 7.0),
        ([NAN, math.inf], NAN),
        ([], NAN),
    ],
)
def test_finite_median_ignores_what_is_not_a_number(
    values: list[float | None], expected: float
) -> None:
    got = finite_median(values)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


def test_rounded_never_raises() -> None:
    assert rounded(182_354.4) == 182_354
    assert rounded(1.23456, 2) == 1.23
    assert rounded(NAN) is None and rounded(math.inf) is None and rounded(None) is None


def test_ratio_is_nan_without_both_figures() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert all(math.isnan(ratio(a, b)) for a, b in [(1.0, 0.0), (NAN, 1.0), (1.0, None)])


def test_percentile_of_nothing_is_nan_and_otherwise_nearest_rank() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0


def test_turns_rotate_so_no_system_always_runs_first() -> None:
    systems = ["bare", "domed", "celery"]
    firsts = [rotated(systems, turn)[0] for turn in range(3)]
    assert sorted(firsts) == sorted(systems)
    assert rotated([], 2) == []
