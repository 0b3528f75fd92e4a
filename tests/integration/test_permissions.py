"""The least-privilege deployment in deploy/ works, and holds.

A real nats-server runs with deploy/nats/single.conf and accounts.conf (and, in one test, the
three deploy/nats/cluster nodes), rewritten only for free ports, a temporary store and the
passwords. The admin user provisions the stream and buckets the way deploy/README.md says
(each service started once as admin). Then:

- a client (`submitter`) cannot write an event, read a secret or create a consumer: the server
  refuses it, says so in its log, and DOMED_JOBS stores nothing;
- each service, connected as its own user and nothing more, runs the whole pipeline (submit,
  run, log, progress, slots, secrets, idempotency, both kinds of cancel, projection, KV, events,
  service discovery) with no permissions violation in the server log; so does the cluster
  with three replicas;
- a client never sees a secret parameter, whatever it subscribes to;
- each service is refused what belongs to another one;
- each service subscribes only to its own inbox (`_INBOX_domed-<service>`), and an executor
  never creates or changes the shared consumer;
- the `domed` CLI follows jobs as `submitter`; a service started before provisioning says so;
  no password is printed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import re
import secrets
import subprocess
import time
import urllib.request
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from ulid import ULID

from contracts import subjects
from services.runtime import connection
from services.runtime.natsserver import NatsServer, free_port, nats_server_binary
from services.runtime.settings import StreamSettings
from tests.support import ROOT, Domed, fresh_dir, run_cli

DEPLOY = ROOT / "deploy" / "nats"
USERS = ("admin", "router", "executor", "projector", "submitter", "ci", "ops")
SERVICES = ("router", "executor", "projector")
TERMINAL = ("succeeded", "failed", "canceled", "timed_out", "lost")
WAIT_S = 30.0
KV_BUCKETS = (
    subjects.KV_JOBS,
    subjects.KV_SECRETS,
    subjects.KV_IDEMPOTENCY,
    subjects.KV_SLOTS,
    subjects.KV_HOLDS,
)


def deploy_config(text: str, ports: dict[int, int], store_dir: Path) -> str:
    """A deploy config with only its loopback ports (listen, http, cluster listen and routes)
    mapped through ``ports`` (a port not in it gets a free one) and its store moved."""

    def port(m: re.Match[str]) -> str:
        return f"127.0.0.1:{ports.setdefault(int(m.group(1)), free_port())}"

    text, n = re.subn(r"(?m)^(\s*)store_dir:.*$", rf'\g<1>store_dir: "{store_dir}"', text)
    assert n == 1, "the deploy config must have exactly one store_dir"
    return re.sub(r"127\.0\.0\.1:(\d+)", port, text)


def listen_port(text: str) -> int:
    m = re.search(r"(?m)^listen: 127\.0\.0\.1:(\d+)$", text)
    assert m, "the deploy config must listen on 127.0.0.1"
    return int(m.group(1))


@dataclass
class SecuredServer(NatsServer):
    """nats-server run from a deploy/nats config: its users, accounts and permissions."""

    template: Path = DEPLOY / "single.conf"
    passwords: dict[str, str] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)

    def config_text(self) -> str:
        return deploy_config(self.template.read_text(), self.ports, self.store_dir / "jetstream")

    def start(self, ready_timeout_s: float = 10.0) -> SecuredServer:
        text = self.template.read_text()
        self.port = self.ports.setdefault(listen_port(text), free_port())
        self.store_dir.mkdir(parents=True, exist_ok=True)
        # The included accounts.conf reads the passwords from $DOMED_<USER>_PASSWORD. A variable
        # set in the file itself wins over the environment, so the copy gets them at its top and
        # nothing leaks into this process's environment (which the executor passes on).
        include = re.search(r'(?m)^include "(.+)"$', text)
        assert include, "the deploy config must include the accounts file"
        variables = "".join(
            f'DOMED_{user.upper()}_PASSWORD: "{password}"\n'
            for user, password in self.passwords.items()
        )
        accounts = (self.template.parent / include.group(1)).read_text()
        (self.store_dir / include.group(1)).resolve().write_text(variables + accounts)
        super().start(ready_timeout_s)
        return self

    @property
    def http_port(self) -> int:
        m = re.search(r"(?m)^http: 127\.0\.0\.1:(\d+)$", self.template.read_text())
        assert m, "monitoring must listen on 127.0.0.1 only"
        return self.ports[int(m.group(1))]

    def user_url(self, user: str) -> str:
        return f"nats://{user}:{self.passwords[user]}@{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.store_dir / "nats-server.log"

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def violations(self, since: int = 0) -> list[str]:
        with open(self.log_path, "rb") as fh:
            fh.seek(since)
            text = fh.read().decode(errors="replace")
        return [line for line in text.splitlines() if "Violation" in line]

    def connz(self) -> list[dict[str, Any]]:
        url = f"http://{self.host}:{self.http_port}/connz?auth=1&limit=1024"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return list(json.load(resp).get("connections") or [])


class UserConn:
    """A connection as one user that records every error the server reports to it."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.changed = asyncio.Condition()
        self.nc: Client | None = None

    @classmethod
    async def connect(cls, url: str, name: str, inbox_prefix: str = "_INBOX") -> UserConn:
        self = cls()

        async def on_error(exc: Exception) -> None:
            async with self.changed:
                self.errors.append(str(exc))
                self.changed.notify_all()

        self.nc = await nats.connect(
            url, name=name, error_cb=on_error, connect_timeout=2, inbox_prefix=inbox_prefix
        )
        return self

    async def refused(self, subject: str, kind: str = "publish", timeout: float = 5.0) -> None:
        """Wait until the server reports a permissions violation for ``subject``."""
        needle = f'permissions violation for {kind} to "{subject}"'.lower()
        async with self.changed:
            await asyncio.wait_for(
                self.changed.wait_for(lambda: any(needle in e.lower() for e in self.errors)),
                timeout,
            )

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


@contextlib.asynccontextmanager
async def connected(url: str, name: str, inbox_prefix: str = "_INBOX") -> AsyncIterator[UserConn]:
    """A service user may receive replies only on its own inbox prefix (``_INBOX_domed-<service>``)."""
    c = await UserConn.connect(url, name, inbox_prefix)
    try:
        yield c
    finally:
        await c.close()


class Watch:
    """What a client sees on `job.>` and `$KV.domed-jobs.>`, with bounded waits on it."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[int, str, dict[str, Any]]]] = defaultdict(list)
        self.kv: dict[str, dict[str, Any]] = {}
        self.raw: list[bytes] = []
        self.changed = asyncio.Condition()
        self.subs: list[Any] = []

    async def start(self, nc: Client) -> Watch:
        self.subs = [
            await nc.subscribe("job.>", cb=self._on_event),
            await nc.subscribe(f"$KV.{subjects.KV_JOBS}.>", cb=self._on_kv),
        ]
        await connection.subscriptions_sent(nc)
        return self

    async def stop(self) -> None:
        for sub in self.subs:
            await sub.unsubscribe()

    async def _on_event(self, msg: Msg) -> None:
        job_id, kind = subjects.parse_event_subject(msg.subject)
        seq = int((msg.headers or {}).get("Nats-Sequence", "0"))
        async with self.changed:
            self.raw.append(msg.data)
            self.events[job_id].append((seq, kind, json.loads(msg.data)))
            self.changed.notify_all()

    async def _on_kv(self, msg: Msg) -> None:
        async with self.changed:
            self.raw.append(msg.data)
            if msg.data:
                self.kv[msg.subject.rsplit(".", 1)[1]] = json.loads(msg.data)
            self.changed.notify_all()

    async def until(
        self, predicate: Callable[[], bool], what: str, timeout: float = WAIT_S
    ) -> None:
        async with self.changed:
            try:
                await asyncio.wait_for(self.changed.wait_for(predicate), timeout)
            except TimeoutError:
                raise TimeoutError(f"{what} not seen within {timeout}s") from None

    def kinds(self, job_id: str) -> list[str]:
        return [kind for _, kind, _ in self.events[job_id]]

    async def terminal(self, job_id: str) -> dict[str, Any]:
        await self.until(lambda: "terminal" in self.kinds(job_id), f"terminal of {job_id}")
        return self.events[job_id][-1][2]

    async def projected(self, job_id: str) -> dict[str, Any]:
        await self.until(
            lambda: self.kv.get(job_id, {}).get("state") in TERMINAL,
            f"terminal state of {job_id} in KV {subjects.KV_JOBS}",
        )
        return self.kv[job_id]

    async def line(self, job_id: str, text: str) -> None:
        await self.until(
            lambda: any(
                kind == "log" and text in data["lines"] for _, kind, data in self.events[job_id]
            ),
            f"log line {text!r} of {job_id}",
        )


async def wait_healthy(nodes: list[SecuredServer], timeout: float = 30.0) -> None:
    """Until every node's /healthz says ok (JetStream has a meta leader and is current)."""

    def healthy(node: SecuredServer) -> bool:
        url = f"http://{node.host}:{node.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(json.load(resp).get("status") == "ok")
        except OSError:
            return False

    deadline = time.monotonic() + timeout
    while not all([await asyncio.to_thread(healthy, node) for node in nodes]):
        if time.monotonic() > deadline:
            logs = {n.port: n.log_path.read_text()[-2000:] for n in nodes}
            raise TimeoutError(f"the cluster was not healthy within {timeout}s: {logs}")
        await asyncio.sleep(0.1)


async def projected_state(nc: Client, job_id: str, timeout: float = WAIT_S) -> dict[str, Any]:
    """``domed.jobs.get`` once the projector has the job in a terminal state."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await nc.request(subjects.JOBS_GET, json.dumps({"job_id": job_id}).encode(), 10)
        state = json.loads(msg.data)
        if state.get("state") in TERMINAL:
            return dict(state)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{job_id} not projected as ended within {timeout}s: {state}")
        await asyncio.sleep(0.05)


async def request(nc: Client, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    msg = await nc.request(subject, json.dumps(body).encode(), timeout=10)
    data = json.loads(msg.data)
    assert "error" not in data, data
    return dict(data)


async def stored_count(admin: Client, job_id: str | None = None) -> int:
    """Messages in DOMED_JOBS, or of one job, read with the admin's rights."""
    js = admin.jetstream()
    if job_id is None:
        return (await js.stream_info(subjects.STREAM)).state.messages
    info = await js.stream_info(subjects.STREAM, subjects_filter=subjects.job_events_filter(job_id))
    return sum((info.state.subjects or {}).values())


def mentions(payload: bytes, secret: str) -> bool:
    """True if ``secret`` is in ``payload``, also inside a base64 field of a JSON body
    (a JetStream message-get reply carries the stored message that way)."""
    if secret.encode() in payload:
        return True
    try:
        body = json.loads(payload)
    except ValueError:
        return False

    def walk(value: Any) -> bool:
        if isinstance(value, dict):
            return any(walk(v) for v in value.values())
        if isinstance(value, list):
            return any(walk(v) for v in value)
        if isinstance(value, str) and len(value) >= 8:
            with contextlib.suppress(binascii.Error, ValueError):
                return secret.encode() in base64.b64decode(value, validate=True)
        return False

    return walk(body)


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredServer]:
    passwords = {user: secrets.token_urlsafe(18) for user in USERS}
    server = SecuredServer(
        store_dir=tmp_path_factory.mktemp("secured-nats"), passwords=passwords
    ).start()
    yield server
    server.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def admin(
    secured: SecuredServer, ssot: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Client]:
    """Provisioned as deploy/README.md says: each service once as admin. Yields an admin client."""
    async with Domed.running(
        secured.user_url("admin"), ssot, tmp_path_factory.mktemp("provision")
    ) as d:
        assert set(d.stops) == set(SERVICES)
    nc = await nats.connect(secured.user_url("admin"), name="test-admin")
    yield nc
    await nc.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def pipeline(
    secured: SecuredServer, admin: Client, ssot: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Domed]:
    """Router, executor and projector in this process, each connected as its own user;
    the harness's own connection is the submitter's."""
    async with Domed.running(
        secured.user_url("submitter"), ssot, tmp_path_factory.mktemp("secured-data"), services=()
    ) as d:
        for name in SERVICES:
            await d.start_service(name, nats_url=secured.user_url(name))
        yield d


# ---- a client cannot write events ------------------------------------------------------------


async def test_submitter_cannot_write_events(secured: SecuredServer, admin: Client) -> None:
    job_id = str(ULID())
    before = await stored_count(admin)
    forged = json.dumps(
        {"kind": "terminal", "job_id": job_id, "state": "succeeded", "finished_at": "now"}
    ).encode()
    async with connected(secured.user_url("submitter"), "test-submitter") as c:
        assert c.nc is not None
        attempts = [
            subjects.ingest_subject(job_id, "terminal"),
            subjects.ingest_subject(job_id, "log"),
            subjects.ingest_subject(job_id, "queued"),
            subjects.event_subject(job_id, "terminal"),
        ]
        for subject in attempts:
            await c.nc.publish(subject, forged, headers={"Nats-Msg-Id": f"{job_id}.forged"})
        for subject in attempts:
            await c.refused(subject)

        # As a JetStream publish it gets no ack: nothing stored it.
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
            await c.nc.jetstream().publish(
                subjects.ingest_subject(job_id, "terminal"), forged, timeout=0.5
            )

        # Nor can it reach the stream, the secrets or a consumer through any other door.
        for subject in (
            "$JS.API.CONSUMER.CREATE.DOMED_JOBS",
            "$JS.API.STREAM.PURGE.DOMED_JOBS",
            "domed.js.CONSUMER.CREATE.DOMED_JOBS",
            "domed.js.STREAM.MSG.GET.KV_domed-secrets",
            f"$KV.{subjects.KV_JOBS}.{job_id}",
        ):
            await c.nc.publish(subject, b"{}")
            await c.refused(subject)
        for subject in ("ingest.>", f"$KV.{subjects.KV_SECRETS}.>", "$JS.>"):
            await c.nc.subscribe(subject)
            await c.refused(subject, "subscription")

    # The admin, who may read everything, finds nothing of that job and no new message.
    assert await stored_count(admin, job_id) == 0
    with pytest.raises(nats.js.errors.NotFoundError):
        await admin.jetstream().get_last_msg(subjects.STREAM, subjects.job_events_filter(job_id))
    assert await stored_count(admin) == before
    assert any('"CLIENTS/user:submitter" - Publish Violation' in v for v in secured.violations())


# ---- each service works with only its own user -----------------------------------------------


async def test_each_service_works_with_only_its_own_user(
    secured: SecuredServer, admin: Client, pipeline: Domed
) -> None:
    mark = secured.log_size()
    nc = pipeline.nc  # the submitter
    watch = await Watch().start(nc)

    # Service discovery reaches all three services across the account boundary.
    inbox = nc.new_inbox()
    found: set[str] = set()
    got = asyncio.Event()

    async def on_ping(msg: Msg) -> None:
        found.add(json.loads(msg.data)["name"])
        if found >= {
            subjects.SERVICE_ROUTER,
            subjects.SERVICE_EXECUTOR,
            subjects.SERVICE_PROJECTOR,
        }:
            got.set()

    ping = await nc.subscribe(inbox, cb=on_ping)
    await nc.publish("$SRV.PING", b"", reply=inbox)
    await asyncio.wait_for(got.wait(), 10)
    await ping.unsubscribe()
    tools = await request(nc, subjects.TOOLS_LIST, {})
    assert "demo.echo" in {t["id"] for t in tools["tools"]}

    # A job end to end: the router queues, the executor runs, the projector projects.
    echo = await pipeline.submit("demo.echo", {"text": "hello"})
    term = await watch.terminal(echo)
    assert term["state"] == "succeeded", term
    assert watch.kinds(echo) == ["queued", "started", "log", "terminal"]
    assert (await watch.projected(echo))["state"] == "succeeded"
    got_state = await request(nc, subjects.JOBS_GET, {"job_id": echo})
    assert got_state["state"] == "succeeded" and got_state["lines"]["stdout"] == 1
    events = await request(nc, subjects.JOBS_EVENTS, {"job_id": echo})
    assert events["complete"] and [e["subject"] for e in events["events"]] == [
        subjects.event_subject(echo, k) for k in watch.kinds(echo)
    ]
    listed = await request(nc, subjects.JOBS_LIST, {"tool": "demo.echo"})
    assert echo in {j["job_id"] for j in listed["jobs"]}
    # The client reads the bucket through the `domed.js` import prefix.
    kv = await nc.jetstream(prefix="domed.js").key_value(subjects.KV_JOBS)
    entry = await kv.get(echo)
    assert entry.value is not None and json.loads(entry.value)["state"] == "succeeded"

    # A result and an artifact (domed-artifacts), read back by the admin.
    leaves = await pipeline.submit(
        "test.leaves", {"result": '{"ok": true}', "files": '{"out/a.bin": 3000}'}
    )
    term = await watch.terminal(leaves)
    assert term["state"] == "succeeded" and term["result"] == {"ok": True}, term
    [artifact] = term["artifacts"]
    bucket = await admin.jetstream().object_store(subjects.OBJ_ARTIFACTS)
    assert len((await bucket.get(artifact["object"])).data or b"") == 3000
    # the submitter, with no JetStream in its account, reads it through the projector
    await watch.projected(leaves)
    chunk = await request(nc, subjects.JOBS_ARTIFACT, {"job_id": leaves, "name": artifact["name"]})
    data = base64.b64decode(chunk["data"])
    assert chunk["chunks"] == 1 and hashlib.sha256(data).hexdigest() == artifact["sha256"]

    # Progress events; an idempotency key (domed-idempotency); a per-tool slot (domed-slots)
    # and a cancel heard by the executor on job.*.cancel.
    for _ in range(2):  # a second run usually re-takes the slot key the first freed
        countdown = await pipeline.submit("demo.countdown", {"n": 3, "interval": 0})
        assert (await watch.terminal(countdown))["state"] == "succeeded"
        assert "progress" in watch.kinds(countdown)
    key = f"perm-{secrets.token_hex(4)}"
    first = await request(
        nc, subjects.SUBMIT, {"tool": "demo.echo", "params": {"text": "k"}, "idempotency_key": key}
    )
    again = await request(
        nc, subjects.SUBMIT, {"tool": "demo.echo", "params": {"text": "k"}, "idempotency_key": key}
    )
    assert again["job_id"] == first["job_id"] and again["duplicate"] and not first["duplicate"]
    assert (await watch.terminal(first["job_id"]))["state"] == "succeeded"
    sleeper = await pipeline.submit("test.limited", {"seconds": 60})
    await watch.line(sleeper, "sleeping")
    reply = await request(nc, subjects.CANCEL, {"job_id": sleeper, "reason": "perm test"})
    assert reply["state"] == "running"
    term = await watch.terminal(sleeper)
    assert term["state"] == "canceled" and term["signals_sent"][:1] == ["TERM"], term
    assert (await watch.projected(sleeper))["state"] == "canceled"

    # A job canceled before it started gets its terminal from the router.
    await pipeline.stop_service("executor")
    waiting = await pipeline.submit("demo.echo", {"text": "never"})
    reply = await request(nc, subjects.CANCEL, {"job_id": waiting})
    assert reply["state"] == "canceled"
    term = await watch.terminal(waiting)
    assert term["state"] == "canceled" and term.get("attempt", 0) == 0
    assert watch.kinds(waiting) == ["queued", "cancel", "terminal"]
    await pipeline.start_service("executor", nats_url=secured.user_url("executor"))
    after = await pipeline.submit("demo.echo", {"text": "after"})
    assert (await watch.terminal(after))["state"] == "succeeded"
    assert watch.kinds(waiting) == ["queued", "cancel", "terminal"]
    assert (await watch.projected(after))["state"] == "succeeded"

    # Each service was connected as its own user, and none of them hit a permission.
    users = {
        c.get("name"): c.get("authorized_user") for c in await asyncio.to_thread(secured.connz)
    }
    assert {users.get(f"domed-{name}") for name in SERVICES} == set(SERVICES), users
    assert secured.violations(since=mark) == []
    await watch.stop()


async def test_secrets_stay_out_of_the_clients_account(
    secured: SecuredServer, admin: Client, pipeline: Domed
) -> None:
    """A client subscribed to everything it may (`_INBOX.>`, `job.>`, `$KV.domed-jobs.>`) never
    sees a secret parameter, though the router stores it and the executor reads it back."""
    token = f"tok-{secrets.token_hex(12)}"
    nc = pipeline.nc
    watch = await Watch().start(nc)
    seen: list[bytes] = []

    async def collect(msg: Msg) -> None:
        seen.append(msg.data)

    snoop = await nc.subscribe("_INBOX.>", cb=collect)
    await connection.subscriptions_sent(nc)
    job_id = await pipeline.submit("test.secret", {"token": token})
    term = await watch.terminal(job_id)
    assert term["state"] == "succeeded", term
    await watch.projected(job_id)
    await snoop.unsubscribe()
    await watch.stop()
    lines = [
        line for _, kind, data in watch.events[job_id] if kind == "log" for line in data["lines"]
    ]
    assert lines and all("***" in line for line in lines), lines
    assert seen, "the client's _INBOX.> subscription saw nothing at all"
    assert not [p for p in seen + watch.raw if mentions(p, token)]


async def test_a_service_cannot_read_another_services_replies(
    secured: SecuredServer, admin: Client, pipeline: Domed
) -> None:
    """The projector has no business with secrets; its credentials must not reveal them.
    Each service has an inbox prefix of its own and may subscribe to that one only."""
    token = f"tok-{secrets.token_hex(12)}"
    watch = await Watch().start(pipeline.nc)
    seen: list[bytes] = []
    own: list[bytes] = []
    async with connected(secured.user_url("projector"), "test-projector-snoop") as c:
        assert c.nc is not None

        async def collect(msg: Msg) -> None:
            seen.append(msg.data)

        async def collect_own(msg: Msg) -> None:
            own.append(msg.data)

        for subject in ("_INBOX.>", "_INBOX_domed-executor.>", "_INBOX_domed-router.>", ">"):
            await c.nc.subscribe(subject, cb=collect)
            await c.refused(subject, "subscription")
        await c.nc.subscribe("_INBOX_domed-projector.>", cb=collect_own)
        await connection.subscriptions_sent(c.nc)
        job_id = await pipeline.submit("test.secret", {"token": token})
        assert (await watch.terminal(job_id))["state"] == "succeeded"
        await watch.projected(job_id)
    await watch.stop()
    assert not [p for p in seen + own if mentions(p, token)]
    assert not seen
    # the subscription to its own inbox was allowed (and saw the real projector's replies)
    assert not [e for e in c.errors if "_INBOX_domed-projector" in e]
    # the services really connect with their own prefixes
    prefixes = {c.get("name"): c.get("subscriptions_list") for c in await _connz_subs(secured)}
    for name in SERVICES:
        subs = prefixes.get(f"domed-{name}") or []
        assert any(sub.startswith(f"_INBOX_domed-{name}.") for sub in subs), (name, subs)
        assert not [sub for sub in subs if sub.startswith("_INBOX.")], (name, subs)


async def _connz_subs(server: SecuredServer) -> list[dict[str, Any]]:
    def fetch() -> list[dict[str, Any]]:
        url = f"http://{server.host}:{server.http_port}/connz?auth=1&subs=1&limit=1024"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return list(json.load(resp).get("connections") or [])

    return await asyncio.to_thread(fetch)


async def test_an_executor_cannot_reconfigure_the_shared_consumer(
    secured: SecuredServer,
    admin: Client,
    ssot: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One executor started with another --ack-wait must not change it for all of them; it
    says what differs, and keeps its deliveries alive at the consumer's real ack_wait."""
    caplog.set_level(logging.INFO, logger="domed")
    js = admin.jetstream()
    before = (await js.consumer_info(subjects.STREAM, subjects.EXECUTORS_CONSUMER)).config
    assert before.ack_wait is not None
    mark = secured.log_size()
    try:
        async with Domed.running(secured.user_url("submitter"), ssot, tmp_path, services=()) as d:
            # slots=0: it takes no job away from another test's executor
            await d.start_service(
                "executor",
                nats_url=secured.user_url("executor"),
                stream=StreamSettings(ack_wait_s=before.ack_wait / 6),
                slots=0,
            )
        after = (await js.consumer_info(subjects.STREAM, subjects.EXECUTORS_CONSUMER)).config
    finally:
        await js.add_consumer(subjects.STREAM, before)  # as admin: put it back
    assert after.ack_wait == before.ack_wait
    assert secured.violations(since=mark) == []  # it did not even try
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("ack_wait" in w and "does not change a shared consumer" in w for w in warnings), (
        warnings
    )
    assert any(f"ack_wait {before.ack_wait:g}s" in r.getMessage() for r in caplog.records)


# ---- the CLI as a client; services before provisioning; no passwords in output ---------------


async def test_the_submitter_follows_jobs_with_the_cli(
    secured: SecuredServer, admin: Client, pipeline: Domed
) -> None:
    """`domed submit --follow` and `domed logs -f` need no consumer: they read the history
    through domed.jobs.events and the live events from `job.<id>.*`."""
    mark = secured.log_size()
    url = secured.user_url("submitter")
    r = await run_cli("submit", "demo.echo", "-p", "text=hi", "--follow", "--nats-url", url)
    assert r.returncode == 0 and r.stdout == "hi\n" and "succeeded" in r.stderr, r.stderr
    assert secured.passwords["submitter"] not in r.stdout + r.stderr
    # a job with output and progress over time, followed from the middle
    job_id = await pipeline.submit("demo.countdown", {"n": 20, "interval": 0.1})
    await asyncio.sleep(0.25)
    f = await run_cli("logs", job_id, "-f", "--json", "--nats-url", url)
    assert f.returncode == 0, f.stderr
    doc = json.loads(f.stdout)
    assert doc["terminal"]["state"] == "succeeded"
    stored = await pipeline_events(admin, job_id)
    assert [e["kind"] for e in doc["events"]] == [kind for _, kind in stored]
    assert secured.violations(since=mark) == []


async def pipeline_events(admin: Client, job_id: str) -> list[tuple[int, str]]:
    """(seq, kind) of a job's stored events, read as admin with an ordered consumer."""
    sub = await admin.jetstream().subscribe(
        subjects.job_events_filter(job_id), stream=subjects.STREAM, ordered_consumer=True
    )
    out: list[tuple[int, str]] = []
    try:
        while not out or out[-1][1] != "terminal":
            msg = await sub.next_msg(timeout=10)
            out.append((msg.metadata.sequence.stream, msg.subject.rsplit(".", 1)[1]))
    finally:
        await sub.unsubscribe()
    return out


async def test_services_before_provisioning_say_so_without_passwords(
    ssot: Path, tmp_path: Path
) -> None:
    """A service whose user may not create the stream or the consumer exits 3 (systemd retries)
    with a message that says to provision as admin; the refusal is logged as an error; no
    password is ever printed."""
    passwords = {user: secrets.token_urlsafe(18) for user in USERS}
    server = SecuredServer(store_dir=tmp_path / "nats", passwords=passwords).start()
    try:
        common = ("--ssot", str(ssot), "--data-dir", str(tmp_path / "data"))
        r = await run_cli("router", *common, "--nats-url", server.user_url("router"))
        assert r.returncode == 3, r.stderr
        assert (
            "stream DOMED_JOBS is missing and this user may not create it; "
            "provision it as admin: deploy/provision.sh" in r.stderr
        ), r.stderr
        assert re.search(r"(?m) ERROR .*permissions violation for publish", r.stderr, re.I)
        assert "cannot reach NATS" not in r.stderr

        # the stream and the router's buckets provisioned, the executor's consumer not
        async with Domed.running(
            server.user_url("admin"), ssot, tmp_path / "prov", services=("router",)
        ):
            pass
        e = await run_cli("executor", *common, "--nats-url", server.user_url("executor"))
        assert e.returncode == 3, e.stderr
        assert (
            "consumer executors on stream DOMED_JOBS is missing and this user may not create it"
            in e.stderr
        ), e.stderr

        # a ready service logs its URL without the user info
        async with Domed.running(
            server.user_url("admin"), ssot, tmp_path / "prov", services=("executor",)
        ):
            pass
        ready = await run_cli(
            "executor",
            *common,
            "--slots",
            "0",
            "--nats-url",
            server.user_url("executor"),
            until=" ready",
        )
        assert f"NATS nats://127.0.0.1:{server.port}" in ready.stderr, ready.stderr
        down = await run_cli(
            "jobs",
            "ls",
            "--nats-url",
            f"nats://submitter:{passwords['submitter']}@127.0.0.1:{free_port()}",
        )
        assert down.returncode == 3 and "cannot reach NATS at nats://127.0.0.1:" in down.stderr
        for out in (r, e, ready, down):
            assert not [p for p in passwords.values() if p in out.stdout + out.stderr]
    finally:
        server.stop()


# ---- each service is refused what belongs to another -----------------------------------------


FORBIDDEN: dict[str, list[str]] = {
    # the router never writes what the executor writes, nor changes the stream
    "router": [
        "ingest.job.{id}.started",
        "ingest.job.{id}.log",
        "ingest.job.{id}.progress",
        "$KV.domed-jobs.{id}",
        "$KV.domed-slots.{id}",
        "$KV.domed-holds.{id}",
        "$JS.API.STREAM.UPDATE.DOMED_JOBS",
        "$JS.API.STREAM.DELETE.DOMED_JOBS",
        "$JS.API.CONSUMER.CREATE.DOMED_JOBS",
    ],
    # the executor never queues or cancels, nor writes the projection
    "executor": [
        "ingest.job.{id}.queued",
        "ingest.job.{id}.cancel",
        "$KV.domed-jobs.{id}",
        "$KV.domed-idempotency.{id}",
        "$JS.API.STREAM.PURGE.DOMED_JOBS",
        "$JS.API.CONSUMER.CREATE.DOMED_JOBS",
        "$JS.API.CONSUMER.DELETE.DOMED_JOBS.executors",
    ],
    # the projector only reads events; it writes nothing but its own bucket
    "projector": [
        "ingest.job.{id}.queued",
        "ingest.job.{id}.terminal",
        "$KV.domed-secrets.{id}",
        "$JS.API.STREAM.MSG.GET.KV_domed-secrets",
        "$JS.API.STREAM.UPDATE.DOMED_JOBS",
        "$JS.API.STREAM.MSG.DELETE.DOMED_JOBS",
        "$JS.API.CONSUMER.MSG.NEXT.DOMED_JOBS.executors",
    ],
}


async def test_each_service_is_refused_the_others_rights(
    secured: SecuredServer, admin: Client
) -> None:
    job_id = str(ULID())
    before = await stored_count(admin)
    for user, patterns in FORBIDDEN.items():
        async with connected(secured.user_url(user), f"test-{user}") as c:
            assert c.nc is not None
            for pattern in patterns:
                subject = pattern.format(id=job_id)
                await c.nc.publish(subject, b"{}")
                await c.refused(subject)
            await c.nc.subscribe("ingest.>")
            await c.refused("ingest.>", "subscription")
    assert await stored_count(admin, job_id) == 0
    assert await stored_count(admin) == before


async def test_a_rebuilt_projector_repairs_the_kv_with_its_own_rights(
    secured: SecuredServer,
    admin: Client,
    pipeline: Domed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a rebuild the projector reads the KV first and puts only what differs: with
    the projector's rights (no consumer on a KV stream), and no violation."""
    from services.projector import mirror

    monkeypatch.setattr(mirror, "REPAIR_READ_FIRST", 1)
    watch = await Watch().start(pipeline.nc)
    jobs = [await pipeline.submit("demo.echo", {"text": f"kv{i}"}) for i in range(4)]
    for job_id in jobs:
        await watch.projected(job_id)
    await pipeline.stop_service("projector")  # its last commit mirrors everything
    await watch.stop()
    kv = await admin.jetstream().key_value(subjects.KV_JOBS)
    before = {j: await kv.get(j) for j in jobs}
    await kv.delete(jobs[0])
    await kv.put(jobs[1], b'{"state": "garbage"}')
    mark = secured.log_size()
    await pipeline.start_service(
        "projector",
        nats_url=secured.user_url("projector"),
        data_dir=tmp_path / "rebuilt",
        rebuild=True,
    )
    deadline = time.monotonic() + WAIT_S
    while True:
        after = {}
        for j in jobs:
            with contextlib.suppress(nats.js.errors.KeyNotFoundError):
                after[j] = await kv.get(j)
        if all(j in after and after[j].value == before[j].value for j in jobs):
            break
        assert time.monotonic() < deadline, "the KV was not repaired"
        await asyncio.sleep(0.05)
    for j in jobs[2:]:
        assert after[j].revision == before[j].revision, "a value already right was put again"
    assert secured.violations(since=mark) == []


async def test_the_projectors_consumer_right_cannot_write_events(
    secured: SecuredServer, admin: Client
) -> None:
    """The projector's CONSUMER.CREATE (for ordered consumers) is the widest right a service
    holds; a push consumer delivering into the stream's own subjects is refused as a cycle."""
    job_id = str(ULID())
    before = await stored_count(admin)
    async with connected(
        secured.user_url("projector"), "test-projector-consumer", "_INBOX_domed-projector"
    ) as c:
        assert c.nc is not None
        js = c.nc.jetstream(timeout=5)
        with pytest.raises(nats.js.errors.BadRequestError, match="cycle"):
            await js.add_consumer(
                subjects.STREAM,
                ConsumerConfig(deliver_subject=subjects.ingest_subject(job_id, "terminal")),
            )
        # and it has no consumer rights on any other stream (a KV bucket)
        await c.nc.publish("$JS.API.CONSUMER.CREATE.KV_domed-secrets", b"{}")
        await c.refused("$JS.API.CONSUMER.CREATE.KV_domed-secrets")
    assert await stored_count(admin, job_id) == 0
    assert await stored_count(admin) == before


async def test_the_cluster_configs_run_domed_with_three_replicas(
    ssot: Path, tmp_path: Path
) -> None:
    """deploy/nats/cluster: three nodes form a JetStream cluster with the same users, and domed
    runs on it with `--replicas 3`, each service as its own user."""
    passwords = {user: secrets.token_urlsafe(18) for user in USERS}
    ports: dict[int, int] = {}  # shared, so that every node's routes find the others
    nodes = [
        SecuredServer(
            store_dir=tmp_path / "cluster" / f"n{i}",
            template=DEPLOY / "cluster" / f"node{i}.conf",
            passwords=passwords,
            ports=ports,
        )
        for i in (1, 2, 3)
    ]
    try:
        for node in nodes:
            node.start()
        await wait_healthy(nodes)
        marks = [node.log_size() for node in nodes]

        def everywhere(user: str) -> str:
            return ",".join(node.user_url(user) for node in nodes)

        r3 = StreamSettings(replicas=3)
        async with Domed.running(
            nodes[0].user_url("admin"), ssot, tmp_path / "provision", services=()
        ) as prov:
            for name in SERVICES:  # provisioning, as deploy/README.md says
                await prov.start_service(name, nats_url=everywhere("admin"), stream=r3)
        async with Domed.running(
            nodes[1].user_url("submitter"), ssot, tmp_path / "data", services=()
        ) as d:
            for name in SERVICES:
                await d.start_service(name, nats_url=everywhere(name), stream=r3)
            # Not a `job.>` watch: in a cluster a new subscription's interest reaches the other
            # nodes a little later, and an echo job can be over before that.
            job_id = await d.submit("demo.echo", {"text": "replicated"})
            state = await projected_state(d.nc, job_id)
            assert state["state"] == "succeeded" and state["lines"]["stdout"] == 1, state

        admin = await nats.connect(
            [node.user_url("admin") for node in nodes], name="test-cluster-admin"
        )
        try:
            js = admin.jetstream()
            for stream in (subjects.STREAM, *(f"KV_{b}" for b in KV_BUCKETS)):
                info = await js.stream_info(stream)
                assert info.config.num_replicas == 3, stream
                assert info.cluster is not None and len(info.cluster.replicas or []) == 2, stream
            executors = await js.consumer_info(subjects.STREAM, subjects.EXECUTORS_CONSUMER)
            assert executors.config.num_replicas in (0, 3)
        finally:
            await admin.close()
        for node, mark in zip(nodes, marks, strict=True):
            assert node.violations(since=mark) == []
    finally:
        for node in nodes:
            node.stop()


def test_deploy_configs_agree() -> None:
    """single.conf and the cluster nodes load the same accounts file and fsync always;
    the cluster nodes use the documented ports; nats-server accepts each file."""
    env = {f"DOMED_{u.upper()}_PASSWORD": "x" for u in USERS}
    files = [DEPLOY / "single.conf", *(DEPLOY / "cluster" / f"node{i}.conf" for i in (1, 2, 3))]
    for i, path in enumerate(files):
        text = path.read_text()
        assert "sync_interval: always" in text
        assert re.search(r'(?m)^include "(\.\./)?accounts\.conf"$', text)
        assert re.search(r"(?m)^http: 127\.0\.0\.1:\d+$", text)
        if i:
            assert f"listen: 127.0.0.1:1523{i}" in text and f"http: 127.0.0.1:1623{i}" in text
            assert f"listen: 127.0.0.1:1723{i}" in text
        check = subprocess.run(
            [nats_server_binary(), "-t", "-c", str(path)],
            capture_output=True,
            env=env,
            timeout=30,
            check=False,
        )
        assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()
    missing = subprocess.run(
        [nats_server_binary(), "-t", "-c", str(DEPLOY / "single.conf")],
        capture_output=True,
        env={},
        timeout=30,
        check=False,
    )
    assert missing.returncode != 0, "a password that is not set must stop the server"


# ---- who may run what: the scoped users of deploy/nats/accounts.conf -------------------------


async def test_scoped_users_run_only_their_tools_and_are_recorded(
    secured: SecuredServer, admin: Client, pipeline: Domed, srv: Path
) -> None:
    """`ci` runs the python family, `ops` files.checksum; each is refused the other's tools,
    the generic subject (and `ci` cancel), nothing of it is stored, and each job records
    its submitter as the server named it."""
    mark = secured.log_size()
    js = admin.jetstream()
    data = fresh_dir(srv / "files")  # inside files.checksum's root
    (data / "a.txt").write_text("a\n")
    granted = {
        "ci": ("python.script", {"script": "missing.py"}),
        "ops": ("files.checksum", {"root": str(data)}),
    }
    refused = {
        "ci": ["domed.jobs.submit.files.checksum", subjects.SUBMIT, subjects.CANCEL],
        "ops": ["domed.jobs.submit.python.script", "domed.jobs.submit.demo.echo", subjects.SUBMIT],
    }
    for user, (tool, params) in granted.items():
        async with connected(secured.user_url(user), f"test-{user}") as c:
            assert c.nc is not None
            job_id = (await request(c.nc, subjects.submit_subject(tool), {"params": params}))[
                "job_id"
            ]
            queued = await js.get_last_msg(
                subjects.STREAM, subjects.event_subject(job_id, "queued")
            )
            by = json.loads(queued.data)["submitted_by"]
            assert by["account"] == "CLIENTS" and by["user"] == user, by
            assert by["name"] == f"test-{user}"
            state = await projected_state(c.nc, job_id)  # it ran to its end
            assert state["submitted_by"] == by
            before = await stored_count(admin)
            for subject in refused[user]:
                await c.nc.publish(subject, json.dumps({"tool": tool, "job_id": job_id}).encode())
                await c.refused(subject)
            await c.nc.flush()
            assert await stored_count(admin) == before
    services = [v for v in secured.violations(since=mark) if "DOMED/" in v]
    assert services == []
