"""Results and artifacts: what a job writes to ``$DOMED_RESULT`` becomes its terminal's
``result`` (also in ``jobs.get`` and the KV), checked against the manifest; the files its
``artifacts`` globs match are stored in ``domed-artifacts`` before the terminal, which
lists them with their SHA-256.

``test.leaves`` (tests/ssot/tools/test): result_schema ``{ok: boolean}`` required,
max_result_bytes 1024, max_artifact_bytes 400000, artifacts ``out/**`` and ``*.txt``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgspec
import nats
import nats.js.errors
from nats.js.api import ObjectStoreConfig

from contracts import subjects
from services.runtime.natsserver import NatsServer
from tests.support import Domed, terminal_of


def content(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


async def leaves(domed: Domed, **params: object) -> tuple[str, object]:
    args = {k: json.dumps(v) if k == "files" else v for k, v in params.items()}
    job_id, events = await domed.run("test.leaves", args)
    return job_id, terminal_of(events)


async def test_a_result_reaches_the_terminal_jobs_get_and_the_kv(domed: Domed) -> None:
    job_id, term = await leaves(domed, result='{"ok": true, "passed": 3}')
    assert term.state == "succeeded", term  # type: ignore[attr-defined]
    assert term.result == {"ok": True, "passed": 3}  # type: ignore[attr-defined]
    assert (await domed.projected(job_id))["result"] == {"ok": True, "passed": 3}
    assert (await domed.kv_value(job_id))["result"] == {"ok": True, "passed": 3}


async def test_a_job_that_writes_no_result_has_none(domed: Domed) -> None:
    job_id, term = await leaves(domed)
    assert term.state == "succeeded" and term.result is None, term  # type: ignore[attr-defined]
    assert "result" not in await domed.projected(job_id)


async def test_a_result_that_is_not_json_fails_the_job(domed: Domed) -> None:
    _, term = await leaves(domed, result="{ok: yes")
    assert term.state == "failed" and term.error.code == "invalid_result", term  # type: ignore[attr-defined]
    assert "not JSON" in term.error.message and term.result is None  # type: ignore[attr-defined]


async def test_a_result_past_its_cap_fails_the_job(domed: Domed) -> None:
    _, term = await leaves(domed, result=json.dumps({"ok": True, "pad": "x" * 2000}))
    assert term.error.code == "invalid_result", term  # type: ignore[attr-defined]
    assert "larger than 1024 bytes" in term.error.message  # type: ignore[attr-defined]


async def test_a_result_failing_its_schema_fails_the_job_saying_where(domed: Domed) -> None:
    _, term = await leaves(domed, result='{"ok": "yes"}')
    assert term.state == "failed" and term.error.code == "invalid_result", term  # type: ignore[attr-defined]
    assert "fails result_schema at ['ok']" in term.error.message  # type: ignore[attr-defined]


async def test_a_result_symlinked_to_another_file_is_not_read(domed: Domed) -> None:
    job_id, term = await leaves(domed, link="/etc/passwd")
    assert term.state == "failed" and term.error.code == "invalid_result", term  # type: ignore[attr-defined]
    assert "symlink" in term.error.message  # type: ignore[attr-defined]
    stored = await domed.events(job_id)
    assert not any(b"root:" in msgspec.json.encode(e.event) for e in stored)
    assert "root:" not in json.dumps(await domed.projected(job_id))


async def test_artifacts_are_stored_before_the_terminal_with_their_digests(
    domed: Domed,
) -> None:
    files = {"out/a.bin": 1000, "out/deep/b.bin": 70000, "c.txt": 5, "skipped.log": 10}
    job_id, term = await leaves(domed, result='{"ok": true}', files=files)
    assert term.state == "succeeded", term  # type: ignore[attr-defined]
    listed = {a.name: a for a in term.artifacts}  # type: ignore[attr-defined]
    assert sorted(listed) == ["c.txt", "out/a.bin", "out/deep/b.bin"]
    bucket = await domed.nc.jetstream().object_store(subjects.OBJ_ARTIFACTS)
    for name, artifact in listed.items():
        assert artifact.size == files[name]
        assert artifact.sha256 == hashlib.sha256(content(files[name])).hexdigest()
        assert (artifact.bucket, artifact.object) == (subjects.OBJ_ARTIFACTS, f"{job_id}/{name}")
        got = await bucket.get(artifact.object)  # as any NATS client would fetch it
        assert got.data == content(files[name])
    assert len((await domed.projected(job_id))["artifacts"]) == 3


async def objects_of(nc: nats.aio.client.Client, job_id: str) -> list[str]:
    """The names of the objects stored for ``job_id`` in ``domed-artifacts``."""
    bucket = await nc.jetstream().object_store(subjects.OBJ_ARTIFACTS)
    try:
        names = [info.name for info in await bucket.list()]
    except nats.js.errors.NotFoundError:  # the bucket holds no object at all
        names = []
    return [n for n in names if n.startswith(f"{job_id}/")]


async def test_artifacts_past_their_cap_fail_the_job_and_store_nothing(domed: Domed) -> None:
    job_id, term = await leaves(domed, files={"out/a.bin": 250000, "out/b.bin": 250000})
    assert term.state == "failed" and term.error.code == "artifact_failed", term  # type: ignore[attr-defined]
    assert "max_artifact_bytes" in term.error.message and term.artifacts is None  # type: ignore[attr-defined]
    assert await objects_of(domed.nc, job_id) == []


async def test_an_artifact_symlinked_out_of_the_working_dir_is_refused(domed: Domed) -> None:
    _, term = await leaves(domed, files={"out/passwd": "/etc/passwd"})
    assert term.state == "failed" and term.error.code == "artifact_failed", term  # type: ignore[attr-defined]
    assert "out/passwd" in term.error.message and "symlink" in term.error.message  # type: ignore[attr-defined]


async def test_an_upload_that_fails_midway_fails_the_job_and_lists_nothing(
    fresh_server: NatsServer, ssot: Path, tmp_path: Path
) -> None:
    """The bucket refuses the second file (past its max_bytes): the job ends
    artifact_failed, its terminal lists no artifact, and the first file's object, stored
    before the refusal, is removed."""
    nc = await nats.connect(fresh_server.url)
    try:
        await nc.jetstream().create_object_store(
            subjects.OBJ_ARTIFACTS,
            ObjectStoreConfig(bucket=subjects.OBJ_ARTIFACTS, max_bytes=96 * 1024),
        )
    finally:
        await nc.close()
    async with Domed.running(fresh_server.url, ssot, tmp_path / "data") as d:
        job_id, term = await leaves(d, files={"out/a.bin": 20_000, "out/b.bin": 200_000})
        assert term.state == "failed" and term.error.code == "artifact_failed", term  # type: ignore[attr-defined]
        assert "out/b.bin" in term.error.message and term.artifacts is None  # type: ignore[attr-defined]
        assert await objects_of(d.nc, job_id) == []
