"""Who may run what, and who ran it, through a real nats-server with two accounts
(tests/integration/authz_accounts.conf): domed's services in DOMED, clients in CLIENTS
behind service imports with `share: true`.

- a user submits the tools whose `domed.jobs.submit.<tool_id>` it may publish on; the
  server refuses the others and the generic subject, and nothing is stored;
- the `queued` event, `domed.jobs.get`, the KV and `domed.jobs.list` name the real
  submitter, whatever `Nats-Request-Info` the client wrote itself;
- the CLI says "not permitted to submit TOOL" and exits 77 at once;
- a user without `domed.jobs.cancel` cannot cancel; one with it can, any job;
- with one account (the embedded `domed up`) no job has a submitter.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client

from contracts import headers, subjects
from services.runtime.natsserver import NatsServer
from tests.support import Domed, run_cli

ACCOUNTS = Path(__file__).with_name("authz_accounts.conf")
FORGED = json.dumps({"acc": "DOMED", "user": "domed", "name": "forged", "host": "10.9.9.9"})


@pytest.fixture(scope="module")
def two_accounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer(
        store_dir=tmp_path_factory.mktemp("authz-nats"), extra_config=ACCOUNTS.read_text()
    ).start()
    yield server
    server.stop()


def url_of(server: NatsServer, user: str) -> str:
    return f"nats://{user}:{user}-pw@{server.host}:{server.port}"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def authz(
    two_accounts: NatsServer, ssot: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Domed]:
    """The three services, and the harness's connection, as `domed` in DOMED."""
    async with Domed.running(
        url_of(two_accounts, "domed"), ssot, tmp_path_factory.mktemp("authz-data")
    ) as d:
        yield d


class Client_:
    """A CLIENTS user's connection, recording what the server reported to it."""

    def __init__(self, nc: Client, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors

    async def ask(
        self, subject: str, body: dict[str, Any], extra: dict[str, str] | None = None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        msg = await self.nc.request(subject, json.dumps(body).encode(), timeout=10, headers=extra)
        return json.loads(msg.data), dict(msg.headers or {})

    async def refused(self, subject: str, timeout: float = 5.0) -> None:
        needle = f'permissions violation for publish to "{subject}"'
        deadline = time.monotonic() + timeout
        while not any(needle in e.lower() for e in self.errors):
            assert time.monotonic() < deadline, f"no violation for {subject}: {self.errors}"
            await asyncio.sleep(0.02)


async def connect_as(server: NatsServer, user: str) -> Client_:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(url_of(server, user), name=f"{user}-conn", error_cb=on_error)
    return Client_(nc, errors)


async def stored_messages(d: Domed) -> int:
    return (await d.nc.jetstream().stream_info(subjects.STREAM)).state.messages


async def queued_event(d: Domed, job_id: str) -> dict[str, Any]:
    msg = await d.nc.jetstream().get_last_msg(
        subjects.STREAM, subjects.event_subject(job_id, "queued")
    )
    return dict(json.loads(msg.data))


async def test_a_granted_tool_runs_and_records_its_real_submitter(
    two_accounts: NatsServer, authz: Domed
) -> None:
    alice = await connect_as(two_accounts, "alice")
    try:
        # Her own Nats-Request-Info claims the services' user; the server replaces it.
        reply, _ = await alice.ask(
            subjects.submit_subject("demo.echo"),
            {"params": {"text": "mine"}, "labels": {"t": "authz"}},
            {headers.REQUEST_INFO: FORGED},
        )
        job_id = reply["job_id"]
        expected = {
            "account": "CLIENTS",
            "user": "alice",
            "name": "alice-conn",
            "host": "127.0.0.1",
        }
        assert (await queued_event(authz, job_id))["submitted_by"] == expected
        state = await authz.projected(job_id)
        assert state["state"] == "succeeded" and state["submitted_by"] == expected
        assert (await authz.kv_value(job_id))["submitted_by"] == expected
        got, _ = await alice.ask(subjects.JOBS_GET, {"job_id": job_id})
        assert got["submitted_by"] == expected

        # A body naming the subject's tool is the same submit; another tool is refused.
        same, _ = await alice.ask(
            subjects.submit_subject("demo.echo"), {"tool": "demo.echo", "params": {"text": "x"}}
        )
        assert "job_id" in same
        await authz.projected(same["job_id"])  # its events are all stored
        before = await stored_messages(authz)
        other, hdrs = await alice.ask(
            subjects.submit_subject("demo.echo"), {"tool": "test.true", "params": {}}
        )
        assert (
            other["error"]["code"] == "invalid_request" and hdrs["Nats-Service-Error-Code"] == "400"
        )
        assert "test.true" in other["error"]["message"]
        assert await stored_messages(authz) == before

        # domed.jobs.list filters by the user.
        mine, _ = await alice.ask(subjects.JOBS_LIST, {"submitted_by": "alice"})
        ids = {j["job_id"] for j in mine["jobs"]}
        assert {job_id, same["job_id"]} <= ids
        assert all(j["submitted_by"]["user"] == "alice" for j in mine["jobs"])
        nobody, _ = await alice.ask(subjects.JOBS_LIST, {"submitted_by": "bob"})
        assert not ids & {j["job_id"] for j in nobody["jobs"]}
    finally:
        await alice.nc.close()


async def test_ungranted_tools_and_the_generic_subject_are_refused_and_store_nothing(
    two_accounts: NatsServer, authz: Domed
) -> None:
    alice = await connect_as(two_accounts, "alice")
    try:
        before = await stored_messages(authz)
        for subject in (subjects.submit_subject("test.true"), subjects.SUBMIT):
            body = {"tool": "demo.echo", "params": {"text": "no"}}
            with pytest.raises(nats.errors.TimeoutError):  # nats-py: the error callback says why
                await alice.nc.request(subject, json.dumps(body).encode(), timeout=1)
            await alice.refused(subject)
        assert await stored_messages(authz) == before
    finally:
        await alice.nc.close()


async def test_a_trusted_user_submits_on_the_generic_subject_and_is_recorded(
    two_accounts: NatsServer, authz: Domed
) -> None:
    carol = await connect_as(two_accounts, "carol")
    try:
        reply, _ = await carol.ask(
            subjects.SUBMIT,
            {"tool": "demo.echo", "params": {"text": "trusted"}},
            {headers.REQUEST_INFO: FORGED},
        )
        by = (await queued_event(authz, reply["job_id"]))["submitted_by"]
        assert by["account"] == "CLIENTS" and by["user"] == "carol", by
    finally:
        await carol.nc.close()


async def test_the_routers_own_account_records_no_submitter(authz: Domed) -> None:
    """Inside DOMED the server adds no header and passes on any: one naming DOMED is not
    believed, and none means no submitter."""
    for extra in ({headers.REQUEST_INFO: FORGED}, None):
        msg = await authz.nc.request(
            subjects.submit_subject("demo.echo"),
            json.dumps({"params": {"text": "inside"}}).encode(),
            timeout=10,
            headers=extra,
        )
        job_id = json.loads(msg.data)["job_id"]
        assert "submitted_by" not in await queued_event(authz, job_id)
        assert "submitted_by" not in await authz.projected(job_id)


async def test_one_account_records_no_submitter_whatever_the_client_says(domed: Domed) -> None:
    """The embedded set-up (one account, no users): a header the client wrote is ignored."""
    claim = json.dumps({"acc": "CLIENTS", "user": "alice", "name": "x", "host": "10.0.0.1"})
    msg = await domed.nc.request(
        subjects.submit_subject("demo.echo"),
        json.dumps({"params": {"text": "embedded"}}).encode(),
        timeout=10,
        headers={headers.REQUEST_INFO: claim},
    )
    job_id = json.loads(msg.data)["job_id"]
    events = await domed.events(job_id)
    assert events[-1].event.state == "succeeded"  # type: ignore[union-attr]
    assert events[0].event.submitted_by is None  # type: ignore[union-attr]
    assert "submitted_by" not in await domed.projected(job_id)


async def test_the_cli_says_not_permitted_and_exits_77_at_once(
    two_accounts: NatsServer, authz: Domed
) -> None:
    before = await stored_messages(authz)
    started = time.monotonic()
    r = await run_cli("submit", "test.true", "--nats-url", url_of(two_accounts, "alice"))
    assert r.returncode == 77, (r.returncode, r.stderr)
    assert "not permitted to submit test.true" in r.stderr, r.stderr
    assert time.monotonic() - started < 4.5, "it waited for a timeout"  # the request's is 5s
    j = await run_cli("submit", "test.true", "--json", "--nats-url", url_of(two_accounts, "alice"))
    assert j.returncode == 77 and json.loads(j.stdout)["error"]["code"] == "not_permitted"
    assert await stored_messages(authz) == before

    # The granted tool, followed to its end; jobs ls and show name the submitter.
    ok = await run_cli(
        "submit",
        "demo.echo",
        "-p",
        "text=cli",
        "--follow",
        "--nats-url",
        url_of(two_accounts, "alice"),
    )
    assert ok.returncode == 0 and ok.stdout == "cli\n", ok.stderr
    job_id = ok.stderr.split()[0]
    await authz.projected(job_id)
    ls = await run_cli(
        "jobs", "ls", "--submitted-by", "alice", "--nats-url", url_of(two_accounts, "alice")
    )
    assert ls.returncode == 0 and job_id in ls.stdout and " alice" in ls.stdout, ls.stdout
    assert "demo.echo" in ls.stdout, ls.stdout
    show = await run_cli("jobs", "show", job_id, "--nats-url", url_of(two_accounts, "alice"))
    assert show.returncode == 0, show.stderr
    assert "submitted_by: alice@CLIENTS (name domed-cli, host 127.0.0.1)" in show.stdout


async def test_cancel_needs_its_own_right_and_covers_any_job(
    two_accounts: NatsServer, authz: Domed
) -> None:
    bob = await connect_as(two_accounts, "bob")
    try:
        reply, _ = await bob.ask(subjects.submit_subject("test.sleep"), {"params": {"seconds": 60}})
        job_id = reply["job_id"]
        await authz.until_kind(job_id, "started")
        # bob may not cancel, not even his own job: nothing is stored
        r = await run_cli("cancel", job_id, "--nats-url", url_of(two_accounts, "bob"))
        assert r.returncode == 77 and "not permitted to cancel jobs" in r.stderr, r.stderr
        with pytest.raises(nats.js.errors.NotFoundError):
            await authz.nc.jetstream().get_last_msg(
                subjects.STREAM, subjects.event_subject(job_id, "cancel")
            )
        # alice, who holds domed.jobs.cancel, may cancel anyone's job
        c = await run_cli("cancel", job_id, "--nats-url", url_of(two_accounts, "alice"))
        assert c.returncode == 0, c.stderr
        events = await authz.events(job_id)
        assert events[-1].event.state == "canceled"  # type: ignore[union-attr]
    finally:
        await bob.nc.close()
