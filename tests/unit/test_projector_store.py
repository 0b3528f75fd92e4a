"""services.projector.store: rows and checkpoint commit together; listing and cursors."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from msgspec.structs import replace

from contracts.api import JobState
from contracts.events import LineCounts, SubmittedBy
from services.projector.store import INDEXES, SCHEMA, Store, decode_cursor, encode_cursor


def job(
    n: int,
    *,
    state: str = "queued",
    tool: str = "demo.echo",
    labels: dict[str, str] | None = None,
    last_seq: int | None = None,
) -> JobState:
    return JobState(
        job_id=f"01JOB{n:021d}",
        tool=tool,
        params={"n": n},
        labels=labels or {},
        state=state,  # type: ignore[arg-type]
        submitted_at=f"2025-01-01T00:00:{n:02d}Z",
        last_seq=last_seq if last_seq is not None else n,
        lines=LineCounts(),
    )


@pytest.fixture
def store() -> Iterator[Store]:
    s = Store(":memory:")
    yield s
    s.close()


def ids(jobs: list[JobState]) -> list[str]:
    return [j.job_id for j in jobs]


def test_new_store_is_empty_at_position_zero(store: Store) -> None:
    assert store.position() == (0, 0, 0)
    assert store.get("nope") is None
    assert store.all_jobs() == []


def test_commit_writes_rows_and_position_together(store: Store) -> None:
    a, b = job(1), job(2, labels={"team": "x"})
    store.commit([a, b], seq=2)
    assert store.position() == (2, 0, 0)
    assert store.get(a.job_id) == a
    assert store.get(b.job_id) == b


def test_commit_replaces_a_jobs_row_with_its_new_state(store: Store) -> None:
    first = job(1)
    store.commit([first], seq=1)
    done = replace(first, state="succeeded", last_seq=5, lines=LineCounts(3, 1), exit_code=0)
    store.commit([done], seq=5)
    assert store.get(first.job_id) == done
    assert store.list_jobs(state="queued", tool=None, label=None, limit=10, before=None) == []
    assert store.list_jobs(state="succeeded", tool=None, label=None, limit=10, before=None) == [
        done
    ]


def test_commit_with_no_rows_still_moves_the_position(store: Store) -> None:
    store.commit([], seq=9, skipped=2)
    store.commit([], seq=11, skipped=1)
    assert store.position() == (11, 0, 3)


def test_failed_commit_leaves_neither_rows_nor_position(store: Store) -> None:
    store.commit([job(1)], seq=1)
    broken = replace(job(3), submitted_at=None)  # violates NOT NULL inside the transaction
    with pytest.raises(sqlite3.IntegrityError):
        store.commit([job(2), broken], seq=3, skipped=4)
    assert store.position() == (1, 0, 0)
    assert ids(store.all_jobs()) == [job(1).job_id]
    store.commit([job(2)], seq=2)  # the store is still usable afterwards
    assert store.position() == (2, 0, 0)


def test_committed_state_survives_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "projection.db"
    first = Store(path)
    first.commit([job(1, labels={"k": "v"})], seq=7, skipped=1)
    first.set_kv_seq(6)
    first.close()
    reopened = Store(path)
    try:
        assert reopened.position() == (7, 6, 1)
        assert reopened.get(job(1).job_id) == job(1, labels={"k": "v"})
        assert ids(
            reopened.list_jobs(state=None, tool=None, label="k=v", limit=5, before=None)
        ) == [job(1).job_id]
    finally:
        reopened.close()


def test_set_kv_seq_moves_only_the_kv_position(store: Store) -> None:
    store.commit([job(1)], seq=4)
    store.set_kv_seq(3)
    assert store.position() == (4, 3, 0)


@pytest.fixture
def populated(store: Store) -> Store:
    store.commit(
        [
            job(1, state="succeeded", tool="a", labels={"team": "x"}),
            job(2, state="failed", tool="b", labels={"team": "y"}),
            job(3, state="running", tool="a", labels={"team": "x", "env": "prod"}),
            job(4, state="succeeded", tool="b", labels={"env": "prod"}),
            job(5, state="queued", tool="a"),
            job(6, state="succeeded", tool="a", labels={"team": "x", "url": "a=b"}),
        ],
        seq=6,
    )
    return store


@pytest.mark.parametrize(
    ("state", "tool", "label", "expected"),
    [
        (None, None, None, [6, 5, 4, 3, 2, 1]),
        ("succeeded", None, None, [6, 4, 1]),
        (None, "a", None, [6, 5, 3, 1]),
        ("succeeded", "a", None, [6, 1]),
        (None, None, "team=x", [6, 3, 1]),
        (None, None, "env=prod", [4, 3]),
        ("succeeded", None, "env=prod", [4]),
        (None, "a", "env=prod", [3]),
        (None, None, "url=a=b", [6]),
        (None, None, "team=z", []),
        ("lost", None, None, []),
        (None, "c", None, []),
    ],
)
def test_list_jobs_is_newest_first_with_filters(
    populated: Store, state: str | None, tool: str | None, label: str | None, expected: list[int]
) -> None:
    jobs = populated.list_jobs(state=state, tool=tool, label=label, limit=100, before=None)
    assert ids(jobs) == [job(n).job_id for n in expected]


@pytest.mark.parametrize(
    ("state", "label", "limit"),
    [
        (None, None, 1),
        (None, None, 2),
        (None, None, 4),
        ("succeeded", None, 2),
        (None, "team=x", 1),
    ],
)
def test_cursor_pages_cover_every_job_once(
    populated: Store, state: str | None, label: str | None, limit: int
) -> None:
    everything = populated.list_jobs(state=state, tool=None, label=label, limit=100, before=None)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        before = decode_cursor(cursor) if cursor else None
        page = populated.list_jobs(state=state, tool=None, label=label, limit=limit, before=before)
        assert len(page) <= limit
        seen += ids(page)
        if len(page) < limit:
            break
        cursor = encode_cursor(page[-1].job_id)
    assert seen == ids(everything)


def test_limit_caps_the_page(populated: Store) -> None:
    page = populated.list_jobs(state=None, tool=None, label=None, limit=2, before=None)
    assert ids(page) == [job(6).job_id, job(5).job_id]


@pytest.mark.parametrize(
    "job_id", ["01JOB000", "a", "ab", "abc", "01ARZ3NDEKTSV4RRFFQ69G5FAV", "x-_y"]
)
def test_cursor_round_trips_and_is_url_safe(job_id: str) -> None:
    cursor = encode_cursor(job_id)
    assert decode_cursor(cursor) == job_id
    assert all(c.isalnum() or c in "-_" for c in cursor)


def test_changed_since_pages_jobs_updated_after_a_seq_with_their_kv_value(
    populated: Store,
) -> None:
    def changed(seq: int, **page: Any) -> list[str]:
        return [job_id for job_id, _ in populated.changed_since(seq, **page)]

    assert changed(4) == [job(5).job_id, job(6).job_id]
    assert changed(6) == []
    assert changed(0) == [job(n).job_id for n in range(1, 7)]
    first = changed(0, limit=4)
    assert first == [job(n).job_id for n in range(1, 5)]
    assert changed(0, after_id=first[-1], limit=4) == [job(5).job_id, job(6).job_id]
    populated.commit([job(1, state="lost", last_seq=9)], seq=9)
    [(job_id, doc)] = populated.changed_since(6)
    assert job_id == job(1).job_id and json.loads(doc)["state"] == "lost"


def test_kv_values_equal_to_the_store_are_left_out_of_a_repair(populated: Store) -> None:
    docs = dict(populated.changed_since(0))
    assert populated.count_changed_since(4) == 2
    populated.start_kv_match()
    kv = [
        (job(1).job_id, docs[job(1).job_id]),  # right
        (job(2).job_id, b'{"state": "stale"}'),  # wrong
        (job(3).job_id, docs[job(3).job_id]),  # right
        ("01NOSUCHJOB", b"{}"),  # a key the store does not know
    ]
    assert populated.match_kv_values(kv) == 2
    assert populated.match_kv_values([]) == 0
    left = [job_id for job_id, _ in populated.changed_since(0, unmatched=True)]
    assert left == [job(n).job_id for n in (2, 4, 5, 6)]
    populated.end_kv_match()
    assert len(populated.changed_since(0)) == 6
    populated.start_kv_match()  # a new check starts with nothing matched
    assert len(populated.changed_since(0, unmatched=True)) == 6
    populated.end_kv_match()


def test_all_jobs_is_in_job_id_order(populated: Store) -> None:
    assert ids(populated.all_jobs()) == [job(n).job_id for n in range(1, 7)]


def test_a_store_made_with_4_kb_pages_keeps_working_and_its_pages(tmp_path: Path) -> None:
    """A store made with 4 KB pages keeps them; a new one gets 16 KB."""
    old_path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(old_path)
    db.execute("PRAGMA page_size=4096")
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(SCHEMA)
    db.close()
    old = Store(old_path)
    a = job(1)
    old.commit([a], seq=1)
    old.close()
    reopened = Store(old_path)
    assert reopened.get(a.job_id) == a and reopened.position() == (1, 0, 0)
    assert reopened.db.execute("PRAGMA page_size").fetchone()[0] == 4096
    reopened.close()
    new = Store(tmp_path / "new.sqlite3")
    assert new.db.execute("PRAGMA page_size").fetchone()[0] == 16384
    new.close()


def _index_names(store: Store) -> set[str]:
    return {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def test_deferred_indexes_are_built_back_and_serve_the_same_lists(tmp_path: Path) -> None:
    """A rebuild fills a fresh store without its secondary indexes and builds them at
    the end; a store left without them (a projector killed mid-rebuild) gets them back
    when it is opened."""
    path = tmp_path / "jobs.sqlite3"
    store = Store(path)
    store.defer_indexes()
    assert not set(INDEXES) & _index_names(store)
    jobs = [job(n, state="failed" if n % 2 else "succeeded") for n in range(1, 7)]
    store.commit(jobs, seq=6)
    unindexed = store.list_jobs(state="failed", tool=None, label=None, limit=10, before=None)
    store.close()
    reopened = Store(path)
    assert set(INDEXES) <= _index_names(reopened)
    assert (
        reopened.list_jobs(state="failed", tool=None, label=None, limit=10, before=None)
        == unindexed
    )
    assert ids(unindexed) == [job(n).job_id for n in (5, 3, 1)]
    reopened.defer_indexes()
    reopened.build_indexes()
    assert set(INDEXES) <= _index_names(reopened)
    reopened.close()


def by(user: str | None) -> SubmittedBy:
    return SubmittedBy(account="CLIENTS", user=user)


def test_jobs_are_listed_by_their_submitters_user(store: Store) -> None:
    store.commit(
        [
            replace(job(1), submitted_by=by("ci")),
            replace(job(2), submitted_by=by("ops")),
            replace(job(3), submitted_by=by("ci")),
            job(4),
            replace(job(5), submitted_by=by(None)),
        ],
        5,
    )
    listed = store.list_jobs(
        state=None, tool=None, label=None, limit=10, before=None, submitted_by="ci"
    )
    assert ids(listed) == [job(3).job_id, job(1).job_id]
    assert listed[0].submitted_by == by("ci")
    everyone = store.list_jobs(state=None, tool=None, label=None, limit=10, before=None)
    assert len(everyone) == 5


def test_a_store_made_before_submitters_gets_the_column_filled_from_its_documents(
    tmp_path: Path,
) -> None:
    """A store of the schema without ``submitted_by`` answers the filter as a rebuild would."""
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA.replace(",\n    submitted_by TEXT", ""))
    assert "submitted_by" not in {r[1] for r in db.execute("PRAGMA table_info(jobs)")}
    for state in (replace(job(1), submitted_by=by("ci")), job(2)):
        db.execute(
            "INSERT INTO jobs (job_id, tool, state, submitted_at, last_seq, doc) VALUES (?,?,?,?,?,?)",
            (
                state.job_id,
                state.tool,
                state.state,
                state.submitted_at,
                state.last_seq,
                msgspec.json.encode(state),
            ),
        )
    db.commit()
    db.close()
    old = Store(path)
    try:
        listed = old.list_jobs(
            state=None, tool=None, label=None, limit=10, before=None, submitted_by="ci"
        )
        assert ids(listed) == [job(1).job_id]
        old.commit([replace(job(3), submitted_by=by("ci"))], 3)
    finally:
        old.close()
    again = Store(path)  # opened again: nothing to add
    try:
        listed = again.list_jobs(
            state=None, tool=None, label=None, limit=10, before=None, submitted_by="ci"
        )
        assert ids(listed) == [job(3).job_id, job(1).job_id]
    finally:
        again.close()
