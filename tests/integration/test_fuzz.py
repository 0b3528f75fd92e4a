"""Hostile bodies, generated (hypothesis), to every endpoint of the router and the projector:
every reply is a success or a typed 4xx, the services keep answering, and the stream stores
nothing but the events of the jobs that were accepted.

``DOMED_FUZZ_EXAMPLES`` sets how many bodies (default 600, what ``just test`` runs); a
longer run is a soak: ``DOMED_FUZZ_EXAMPLES=20000 just test tests/integration/test_fuzz.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.js.api import ConsumerConfig, DeliverPolicy

from contracts import subjects
from tests.support import Domed

EXAMPLES = int(os.environ.get("DOMED_FUZZ_EXAMPLES", "600"))

ENDPOINTS = {
    subjects.SUBMIT: ["tool", "params", "timeout_s", "labels", "idempotency_key"],
    subjects.CANCEL: ["job_id", "reason"],
    subjects.TOOLS_LIST: [],
    subjects.TOOLS_GET: ["id"],
    subjects.TOOLS_EXPLAIN: ["tool", "params"],
    subjects.JOBS_GET: ["job_id"],
    subjects.JOBS_LIST: ["state", "tool", "label", "limit", "cursor"],
    subjects.JOBS_EVENTS: ["job_id", "after_seq", "limit"],
}

hostile_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["-rf", "--evil-option", "$(id)", "\x00", "a.b", "*", "../../etc", ""]),
    st.sampled_from(["demo.echo", "test.argv", "test.prefixed", "test.secret"]),
    st.integers(1, 300_000).map(lambda n: "x" * n),
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([-5, -1, 0, 1, 2**63, 1e308]),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | hostile_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=20,
)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    subject = draw(st.sampled_from(sorted(ENDPOINTS)))
    kind = draw(st.sampled_from(["fields", "fields", "fields", "value", "bytes", "deep"]))
    if kind == "bytes":
        return subject, draw(st.binary(max_size=200))
    if kind == "value":
        return subject, json.dumps(draw(json_values)).encode()
    if kind == "deep":
        depth = draw(st.sampled_from([40, 500, 5000, 100_000]))
        field = draw(st.sampled_from(ENDPOINTS[subject] or ["x"]))
        return subject, b'{"' + field.encode() + b'":' + nested(depth) + b"}"
    names = ENDPOINTS[subject]
    chosen = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
    body: dict[str, Any] = {name: draw(json_values) for name in chosen}
    if "params" in body and draw(st.booleans()):
        body["params"] = draw(st.dictionaries(st.sampled_from(["text", "value", "n"]), json_values))
    return subject, json.dumps(body).encode()


async def test_hostile_bodies_get_typed_answers_and_store_nothing_unjustified(
    fresh_domed: Domed,
) -> None:
    domed = fresh_domed
    loop = asyncio.get_running_loop()
    js = domed.nc.jetstream()
    start = (await js.stream_info(subjects.STREAM)).state.last_seq
    accepted: set[str] = set()
    statuses: dict[str, int] = {}

    def ask(subject: str, raw: bytes) -> Any:
        future = asyncio.run_coroutine_threadsafe(
            domed.request(subject, None, raw=raw, timeout=15), loop
        )
        return future.result(30)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(bodies())
    def one(case: tuple[str, bytes]) -> None:
        subject, raw = case
        if len(raw) >= domed.nc.max_payload:  # the server refuses it before any service sees it
            raw = raw[: domed.nc.max_payload // 2]
        reply = ask(subject, raw)
        status = reply.headers.get("Nats-Service-Error-Code", "200")
        statuses[status] = statuses.get(status, 0) + 1
        assert status in {"200", "400", "404", "409", "413"}, (subject, raw[:200], reply.data)
        if subject == subjects.SUBMIT and status == "200":
            accepted.add(reply.data["job_id"])

    await asyncio.to_thread(one)
    assert sum(statuses.values()) >= EXAMPLES
    # Still answering.
    for subject in (subjects.TOOLS_LIST, subjects.JOBS_LIST):
        assert (await domed.request(subject, {})).error is None
    # Whatever was stored since belongs to a job that was accepted.
    for job_id in accepted:
        await domed.events(job_id)
    end = (await js.stream_info(subjects.STREAM)).state.last_seq
    if end > start:
        sub = await js.subscribe(
            "job.>",
            stream=subjects.STREAM,
            ordered_consumer=True,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start + 1
            ),
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=10)
                assert msg.subject.split(".")[1] in accepted, msg.subject
                if msg.metadata.sequence.stream >= end:
                    break
        finally:
            await sub.unsubscribe()
