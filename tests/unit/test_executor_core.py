"""services.executor.core: lines, output budget, progress and the terminal outcome."""

from __future__ import annotations

import random

import pytest

from contracts.manifest import ProgressRule
from services.executor.core import (
    LineSplitter,
    Outcome,
    OutputBudget,
    ProgressParser,
    ProgressReading,
    SecretMasker,
    StopReason,
    outcome,
    signal_name,
)

LIMIT = 64


def split_all(data: bytes, limit: int = LIMIT) -> list[str]:
    splitter = LineSplitter(limit)
    return splitter.feed(data) + splitter.finish()


def split_in_chunks(data: bytes, cuts: list[int], limit: int = LIMIT) -> list[str]:
    splitter = LineSplitter(limit)
    lines: list[str] = []
    bounds = [0, *sorted(cuts), len(data)]
    for start, end in zip(bounds, bounds[1:], strict=False):
        lines += splitter.feed(data[start:end])
    return lines + splitter.finish()


# --- LineSplitter -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        pytest.param(b"a\nb\n", ["a", "b"], id="lf"),
        pytest.param(b"a\r\nb\r\n", ["a", "b"], id="crlf-stripped"),
        pytest.param(b"a\rb\n", ["a\rb"], id="lone-cr-kept"),
        pytest.param(b"\n\n", ["", ""], id="empty-lines"),
        pytest.param(b"", [], id="nothing"),
        pytest.param(b"tail", ["tail"], id="final-line-without-newline"),
        pytest.param(b"a\ntail", ["a", "tail"], id="final-after-lines"),
        pytest.param(b"tail\r", ["tail"], id="final-cr-stripped"),
        pytest.param(b"\xff\xfeok\n", ["\ufffd\ufffdok"], id="invalid-utf8-replaced"),
        pytest.param(b"\xe2\x82\n", ["\ufffd"], id="truncated-multibyte-replaced"),
        pytest.param("é漢🚀\n".encode(), ["é漢🚀"], id="multibyte"),
        pytest.param(b"a\x00b\n", ["a\x00b"], id="nul-kept"),
    ],
)
def test_bytes_become_lines(data: bytes, lines: list[str]) -> None:
    assert split_all(data) == lines


def test_feed_returns_only_complete_lines_and_finish_the_rest() -> None:
    splitter = LineSplitter(LIMIT)
    assert splitter.feed(b"one\ntw") == ["one"]
    assert splitter.feed(b"o") == []
    assert splitter.feed(b"\nthree") == ["two"]
    assert splitter.finish() == ["three"]
    assert splitter.finish() == []


@pytest.mark.parametrize(
    ("length", "sizes"),
    [
        (LIMIT - 1, [LIMIT - 1]),
        (LIMIT, [LIMIT]),
        (LIMIT + 1, [LIMIT, 1]),
        (3 * LIMIT, [LIMIT, LIMIT, LIMIT]),
        (3 * LIMIT + 5, [LIMIT, LIMIT, LIMIT, 5]),
    ],
)
def test_long_line_is_split_never_dropped(length: int, sizes: list[int]) -> None:
    data = bytes(ord("a") + i % 26 for i in range(length))
    lines = split_all(data + b"\n")
    assert [len(line) for line in lines] == sizes
    assert "".join(lines).encode() == data


def test_long_line_without_newline_is_split_as_it_streams() -> None:
    splitter = LineSplitter(LIMIT)
    assert splitter.feed(b"x" * (2 * LIMIT + 8)) == ["x" * LIMIT, "x" * LIMIT]
    assert splitter.finish() == ["x" * 8]


@pytest.mark.parametrize("char", ["é", "漢", "🚀"], ids=["2-byte", "3-byte", "4-byte"])
@pytest.mark.parametrize("prefix", range(4))
def test_split_never_breaks_a_utf8_character(char: str, prefix: int) -> None:
    text = "a" * prefix + char * 100
    lines = split_all(text.encode() + b"\n")
    assert len(lines) > 1
    assert all(len(line.encode()) <= LIMIT for line in lines)
    assert all("\ufffd" not in line for line in lines)
    assert "".join(lines) == text


def test_crlf_line_of_exactly_the_limit_is_one_line() -> None:
    assert split_all(b"a" * LIMIT + b"\r\n") == ["a" * LIMIT]


def test_cr_at_a_split_point_is_not_dropped() -> None:
    lines = split_all(b"a" * (LIMIT - 1) + b"\rb\n")
    assert "".join(lines) == "a" * (LIMIT - 1) + "\rb"


def _mixed_output(rng: random.Random) -> bytes:
    pieces = [
        b"short\n",
        b"crlf line\r\n",
        b"\n",
        "multi é漢🚀 byte\n".encode(),
        ("🚀" * 40 + "\n").encode(),
        b"x" * (LIMIT * 3 + 7) + b"\n",
        b"bad \xff\xfe bytes\n",
        b"\xe2\x82 cut multibyte\n",
        b"cr\rinside\n",
        b"y" * (LIMIT - 1) + b"\r\n",
        "é".encode() * (LIMIT + 3) + b"\n",
    ]
    out = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 30)))
    if rng.random() < 0.5:
        out += b"final line without newline " + bytes(rng.randrange(256) for _ in range(10))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_any_chunk_split_gives_the_same_lines_as_one_chunk(seed: int) -> None:
    rng = random.Random(seed)
    data = _mixed_output(rng)
    whole = split_all(data)
    for _ in range(10):
        cuts = rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(1, 40)))
        assert split_in_chunks(data, cuts) == whole, (seed, cuts)


def test_byte_at_a_time_gives_the_same_lines_as_one_chunk() -> None:
    data = _mixed_output(random.Random(1234))
    assert split_in_chunks(data, list(range(1, len(data)))) == split_all(data)


@pytest.mark.parametrize("seed", range(20))
def test_valid_utf8_without_cr_is_reproduced_exactly_by_the_lines(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = ["a", "é", "漢", "🚀", "\n", " "]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 600)))
    lines = split_in_chunks(text.encode(), rng.sample(range(1, max(2, len(text))), k=1))
    assert all(len(line.encode()) <= LIMIT for line in lines)
    # Every split or newline boundary is one line break; joining by them restores the text.
    assert "".join(lines) == text.replace("\n", "")


# --- OutputBudget -------------------------------------------------------------------------


def test_budget_admits_lines_until_full_then_drops_and_says_truncated() -> None:
    budget = OutputBudget(max_bytes=10)
    assert budget.admit("abcd")  # 5 with its newline
    assert budget.admit("abcd")  # 10: exactly full
    assert not budget.truncated
    assert not budget.admit("")
    assert budget.truncated
    assert not budget.admit("x")


def test_budget_drops_everything_after_the_first_line_that_does_not_fit() -> None:
    budget = OutputBudget(max_bytes=10)
    assert budget.admit("abc")
    assert not budget.admit("a" * 20)
    assert not budget.admit("a")  # would fit, but the output is already truncated
    assert budget.truncated


def test_zero_budget_admits_nothing() -> None:
    budget = OutputBudget(max_bytes=0)
    assert not budget.admit("")
    assert budget.truncated


def test_budget_counts_utf8_bytes_not_characters() -> None:
    budget = OutputBudget(max_bytes=10)
    assert not budget.admit("ééééé")  # 10 bytes + newline = 11 > 10


# --- ProgressParser -----------------------------------------------------------------------

FRACTION = ProgressRule(regex=r"^progress (?P<current>\d+)/(?P<total>\d+)$")


@pytest.mark.parametrize(
    ("regex", "line", "reading"),
    [
        (FRACTION.regex, "progress 5/10", ProgressReading(5.0, 10.0, 50.0)),
        (FRACTION.regex, "progress 1/3", ProgressReading(1.0, 3.0, 33.33)),
        (FRACTION.regex, "progress 0/0", ProgressReading(0.0, 0.0, None)),
        (FRACTION.regex, "progress 10/10", ProgressReading(10.0, 10.0, 100.0)),
        (FRACTION.regex, "other line", None),
        (FRACTION.regex, "xx progress 5/10", None),
        (r"(?P<percent>\d+(\.\d+)?)%", "done 42.5% so far", ProgressReading(percent=42.5)),
        (
            r"(?P<current>\d+)/(?P<total>\d+) (?P<percent>\d+)%",
            "1/4 90%",
            ProgressReading(1.0, 4.0, 90.0),
        ),
        (
            r"^PROGRESS (?P<current>\d+)/(?P<total>\d+) (?P<message>.*)$",
            "PROGRESS 2/8 test_x.py::test_y",
            ProgressReading(2.0, 8.0, 25.0, "test_x.py::test_y"),
        ),
        (r"step (?P<current>\w+)", "step two", ProgressReading()),
        (r"^(?P<message>.+)$", "hello", ProgressReading(message="hello")),
    ],
)
def test_progress_reading_from_a_line(
    regex: str, line: str, reading: ProgressReading | None
) -> None:
    assert ProgressParser(ProgressRule(regex=regex)).parse(line) == reading


def test_without_a_progress_rule_no_line_is_progress() -> None:
    assert ProgressParser(None).parse("progress 5/10") is None


# --- outcome ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("returncode", "stopped", "expected"),
    [
        (0, None, Outcome("succeeded", 0, None)),
        (1, None, Outcome("failed", 1, None)),
        (255, None, Outcome("failed", 255, None)),
        (-9, None, Outcome("failed", None, "KILL")),
        (-15, None, Outcome("failed", None, "TERM")),
        (-6, None, Outcome("failed", None, "ABRT")),
        (-15, StopReason("canceled"), Outcome("canceled", None, "TERM")),
        (-9, StopReason("timed_out"), Outcome("timed_out", None, "KILL")),
        (0, StopReason("canceled"), Outcome("canceled", 0, None)),
        (3, StopReason("timed_out"), Outcome("timed_out", 3, None)),
    ],
)
def test_outcome_of_a_run(returncode: int, stopped: StopReason | None, expected: Outcome) -> None:
    assert outcome(returncode, stopped) == expected


@pytest.mark.parametrize(("signum", "name"), [(9, "KILL"), (15, "TERM"), (2, "INT"), (250, "250")])
def test_signal_name_drops_the_sig_prefix(signum: int, name: str) -> None:
    assert signal_name(signum) == name


@pytest.mark.parametrize("limit", [64, 65, 100])
def test_a_secret_is_masked_before_splitting_whatever_the_chunks(limit: int) -> None:
    """A secret longer than the split point, cut anywhere by the pipe's chunks, never
    shows in part: masking runs on the bytes, before lines are split."""
    secret = "S" + "".join(random.Random(1).choices("abcdefgh0123456789", k=61))
    data = ("x" * 40 + secret + " and " + secret[:30] + "\nend " + secret).encode()
    rng = random.Random(limit)
    for _ in range(50):
        masker, splitter = SecretMasker([secret, "short"]), LineSplitter(limit)
        lines: list[str] = []
        at = 0
        while at < len(data):
            step = rng.randint(1, 70)
            lines += splitter.feed(masker.feed(data[at : at + step]))
            at += step
        lines += splitter.feed(masker.finish()) + splitter.finish()
        text = "".join(lines)
        # a mere prefix is not the secret, and stays; nothing else of it shows
        assert text.count(secret[:30]) == 1 and text.count("***") == 2
        assert all(secret[i : i + 8] not in text.replace(secret[:30], "") for i in range(55))
