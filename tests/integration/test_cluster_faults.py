"""A 3-node JetStream cluster from deploy/nats/cluster, replicas 3, two executors:
kill the stream's leader node mid-run and restart it. Nothing accepted is lost."""

from __future__ import annotations

import asyncio
import random
import secrets
import signal
import time
from collections import defaultdict
from pathlib import Path

import msgspec
import nats
import nats.errors

from contracts import subjects
from contracts.events import Terminal, decode_event
from services.projector.app import store_path
from services.projector.store import Store
from services.runtime.settings import Settings, StreamSettings
from tests.integration.test_permissions import DEPLOY, SERVICES, USERS, SecuredServer, wait_healthy
from tests.integration.test_soak import assert_gap_free
from tests.support import Domed, ServiceProcess

R3 = StreamSettings(replicas=3, ack_wait_s=3)


async def test_killing_the_stream_leader_loses_nothing(ssot: Path, tmp_path: Path) -> None:
    rng = random.Random(7)
    passwords = {user: secrets.token_urlsafe(18) for user in USERS}
    ports: dict[int, int] = {}
    nodes = [
        SecuredServer(
            store_dir=tmp_path / f"n{i}",
            template=DEPLOY / "cluster" / f"node{i}.conf",
            passwords=passwords,
            ports=ports,
        )
        for i in (1, 2, 3)
    ]
    executors: list[ServiceProcess] = []
    try:
        for node in nodes:
            node.start()
        await wait_healthy(nodes)

        def everywhere(user: str) -> str:
            return ",".join(node.user_url(user) for node in nodes)

        async with Domed.running(everywhere("admin"), ssot, tmp_path / "prov", services=()) as prov:
            for name in SERVICES:
                await prov.start_service(name, nats_url=everywhere("admin"), stream=R3)
        async with Domed.running(everywhere("admin"), ssot, tmp_path / "d", services=()) as d:
            await d.start_service("router", nats_url=everywhere("router"), stream=R3)
            await d.start_service("projector", nats_url=everywhere("projector"), stream=R3)
            for name in ("ex-1", "ex-2"):
                executors.append(
                    ServiceProcess(
                        "executor",
                        everywhere("executor"),
                        ssot,
                        tmp_path / name,
                        "--replicas",
                        "3",
                        "--ack-wait",
                        "3",
                        "--name",
                        name,
                    ).start()
                )
            for ex in executors:
                await ex.wait_ready()

            info = await d.nc.jetstream().stream_info(subjects.STREAM)
            leader = info.cluster.leader if info.cluster else None
            victim = next(n for n in nodes if f"domed-n{nodes.index(n) + 1}" == leader)

            accepted: list[str] = []
            refused = unknown = 0
            start = time.monotonic()
            killed = restarted = False
            while time.monotonic() - start < 14:
                elapsed = time.monotonic() - start
                if not killed and elapsed > 4:
                    victim.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
                    victim.process.wait()  # type: ignore[union-attr]
                    killed = True
                if killed and not restarted and elapsed > 9:
                    victim.start()
                    restarted = True
                tool, params = rng.choice(
                    [
                        ("test.true", {}),
                        ("test.spew", {"lines": 2000, "stderr_every": 5}),
                        ("test.sleep", {"seconds": 0.3}),
                    ]
                )
                try:
                    r = await d.request(
                        subjects.SUBMIT, {"tool": tool, "params": params}, timeout=3
                    )
                    if r.error is None:
                        accepted.append(r.data["job_id"])
                    else:
                        assert r.error["code"] == "unavailable", r.data
                        refused += 1
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    unknown += 1
                await asyncio.sleep(0.08)
            assert killed and restarted and len(accepted) > 50

            js = d.nc.jetstream()
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                terminals = await js.stream_info(subjects.STREAM, subjects_filter="job.*.terminal")
                if len(terminals.state.subjects or {}) >= len(accepted):
                    break
                await asyncio.sleep(0.25)

            by_job: dict[str, list] = defaultdict(list)
            stored: dict[str, list[str]] = defaultdict(list)  # seq:Nats-Msg-Id@time, for a failure
            total = (await js.stream_info(subjects.STREAM)).state.messages
            sub = await js.subscribe("job.*.*", stream=subjects.STREAM, ordered_consumer=True)
            for _ in range(total):
                msg = await sub.next_msg(timeout=10)
                job_id, kind = subjects.parse_event_subject(msg.subject)
                by_job[job_id].append((kind, decode_event(msg.data)))
                stored[job_id].append(
                    f"{msg.metadata.sequence.stream}:{(msg.headers or {}).get('Nats-Msg-Id')}"
                    f"@{msg.metadata.timestamp}"
                )
            await sub.unsubscribe()
            for job_id in accepted:
                kinds = [k for k, _ in by_job[job_id]]
                assert (
                    kinds[0] == "queued"
                    and kinds.count("terminal") == 1
                    and kinds[-1] == "terminal"
                ), "\n".join([str(kinds), *stored[job_id], *executor_lines(executors, job_id)])
                assert_gap_free(job_id, [ev for _, ev in by_job[job_id]])
                assert isinstance(by_job[job_id][-1][1], Terminal)

            last_seq = (await js.stream_info(subjects.STREAM)).state.last_seq
            live_path = store_path(Settings(data_dir=tmp_path / "d"))
            deadline = time.monotonic() + 30
            while Store(live_path).position()[0] < last_seq and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await d.stop_service("projector")
            await d.start_service(
                "projector",
                nats_url=everywhere("projector"),
                stream=R3,
                data_dir=tmp_path / "replay",
                rebuild=True,
            )
            replay_path = store_path(Settings(data_dir=tmp_path / "replay"))
            deadline = time.monotonic() + 30
            while Store(replay_path).position()[0] < last_seq and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            live = [msgspec.to_builtins(s) for s in Store(live_path).all_jobs()]
            replay = [msgspec.to_builtins(s) for s in Store(replay_path).all_jobs()]
            assert live == replay
            print(
                f"cluster: {len(accepted)} accepted, {refused} refused (unavailable), {unknown} unanswered; "
                f"leader {leader} killed at 4s, back at 9s; all accepted ended once"
            )
    finally:
        for ex in executors:
            ex.kill()
        for node in nodes:
            node.stop()
    _ = nats


def executor_lines(executors: list[ServiceProcess], job_id: str) -> list[str]:
    """What the executors logged about one job (re-publishes, fencing), for a failure."""
    return [
        line
        for ex in executors
        for line in ex.log.read_text(errors="replace").splitlines()
        if job_id in line
    ]
