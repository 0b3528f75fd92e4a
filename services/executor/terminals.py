"""Storing a run's terminal, however long NATS stays away: only the executor that ran
the job knows how it ended. If it must stop first, it keeps the terminal beside its job
records (``records.keep_terminal``), and the next executor started on this host stores
it (``store_kept_terminals``) unless the job has ended or been run again since."""

from __future__ import annotations

import logging

import msgspec
import nats.js.errors

from contracts.events import Started, Terminal
from services.executor import records
from services.executor.context import ExecutorContext
from services.runtime import failures, jobstream

log = logging.getLogger("domed.executor")

STREAM_FULL_RETRY_S = 10.0  # how long a job waits when DOMED_JOBS is at its limits
TERMINAL_TRY_S = 30.0  # a terminal's publish is retried in windows this long (a warning each)


async def store_terminal(ctx: ExecutorContext, terminal: Terminal) -> bool:
    """Store a run's terminal however long NATS stays away or the stream stays full.
    Another executor's terminal may get there first (it presumed us dead); the server
    then refuses ours, and theirs stands. If the executor must stop first, the terminal
    is kept on this host for the next executor started here; False then."""
    try:
        await failures.retry_until(
            TERMINAL_TRY_S,
            lambda: jobstream.publish_event(ctx.js, terminal, headers=jobstream.FIRST_TERMINAL),
            until=ctx.stopping,
            what=f"job {terminal.job_id}: its terminal",
            full_pause_s=STREAM_FULL_RETRY_S,
        )
    except failures.UNAVAILABLE_ERRORS as exc:  # only once the executor is stopping
        path = records.keep_terminal(ctx.records, terminal.job_id, msgspec.json.encode(terminal))
        log.warning(
            "job %s: its terminal cannot be stored before the executor stops (%r); "
            "kept in %s for the next executor started on this host",
            terminal.job_id,
            exc,
            path,
        )
        return False
    except nats.js.errors.APIError as exc:
        if not failures.is_wrong_last_sequence(exc):
            raise
        log.warning("job %s already had a terminal; this attempt was superseded", terminal.job_id)
    return True


async def store_kept_terminals(ctx: ExecutorContext) -> None:
    """Store the terminals that an executor before this one kept on this host. One whose
    job has ended since, or has been run again by a newer attempt, is dropped; one that
    cannot be stored now waits for the next start."""
    for path, data in records.kept_terminals(ctx.records):
        try:
            terminal = msgspec.json.decode(data, type=Terminal)
            outcome = await _store_kept(ctx, terminal)
        except (msgspec.DecodeError, msgspec.ValidationError):
            outcome = "unreadable, dropped"
        except failures.UNAVAILABLE_ERRORS as exc:
            log.warning("cannot store the kept terminal %s yet (%r)", path, exc)
            continue
        log.warning("the terminal kept in %s: %s", path, outcome)
        path.unlink(missing_ok=True)


async def _store_kept(ctx: ExecutorContext, terminal: Terminal) -> str:
    for _ in range(5):
        last = await jobstream.last_event(ctx.js, terminal.job_id)
        if last is None or isinstance(last[1], Terminal):
            return "the job has ended since; dropped"
        started = await jobstream.last_event(ctx.js, terminal.job_id, "started")
        ours = (
            started is not None
            and isinstance(started[1], Started)
            and started[1].attempt == terminal.attempt
        )
        if not ours:
            return "a newer attempt has run the job since; dropped"
        if await jobstream.publish_if_newest(
            ctx.js, terminal, 0, last[0], ctx.settings.request_timeout_s
        ):
            return "stored"
    return "the job's events kept changing; dropped"
