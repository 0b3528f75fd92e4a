"""A job's artifacts: the files of its working dir that its manifest's ``artifacts`` globs
name, stored in the Object Store bucket ``domed-artifacts`` as ``<job_id>/<path>`` before
its terminal, which lists them."""

from __future__ import annotations

import base64
import logging

from nats.js import JetStreamContext
from nats.js.object_store import (
    OBJ_CHUNKS_PRE_TEMPLATE,
    OBJ_META_PRE_TEMPLATE,
    OBJ_STREAM_TEMPLATE,
    ObjectStore,
)

from contracts import subjects
from contracts.events import Artifact
from services.executor.results import RESULT_PREFIX
from services.executor.workfiles import JobFile, WorkFileError, close, matching, open_file

log = logging.getLogger("domed.executor.artifacts")

# Each one is a line of the terminal, which must fit in one message.
MAX_FILES = 500


class ArtifactFailed(Exception):
    """The artifacts could not all be stored (a sentence for the terminal)."""


def collect(work_dir: str, patterns: list[str], max_bytes: int, owner: int | None) -> list[JobFile]:
    """Open every file the globs match (the result file aside), checking the caps before
    anything is stored."""
    opened: list[JobFile] = []
    try:
        for name in matching(work_dir, patterns):
            if name.startswith(RESULT_PREFIX):
                continue
            if len(opened) == MAX_FILES:
                raise ArtifactFailed(f"more than {MAX_FILES} files match the artifact globs")
            found = open_file(work_dir, name, owner)
            if found is not None:
                opened.append(found)
        total = sum(f.size for f in opened)
        if total > max_bytes:
            raise ArtifactFailed(
                f"the artifacts hold {total} bytes, more than limits.max_artifact_bytes "
                f"({max_bytes})"
            )
    except WorkFileError as exc:
        close(opened)
        raise ArtifactFailed(f"artifact {exc}") from None
    except BaseException:
        close(opened)
        raise
    return opened


async def store(
    js: JetStreamContext, bucket: ObjectStore, job_id: str, files: list[JobFile]
) -> list[Artifact]:
    """Upload ``files`` (closing them); on any failure remove what was stored of them and
    raise ArtifactFailed, so a terminal never lists an object that is not there."""
    stored: list[tuple[Artifact, str]] = []  # and the nuid its chunks are stored under
    for i, job_file in enumerate(files):
        name = f"{job_id}/{job_file.name}"
        try:
            # an fd already open (no path to resolve): wrapping it does not block
            with open(job_file.fd, "rb", closefd=True) as fh:  # noqa: ASYNC230
                info = await bucket.put(name, fh)
            digest = base64.urlsafe_b64decode(str(info.digest).removeprefix("SHA-256="))
        except Exception as exc:
            close(files[i + 1 :])
            for artifact, nuid in stored:
                await _purge(js, artifact.object, nuid)
            why = str(exc) or type(exc).__name__
            raise ArtifactFailed(f"storing artifact {job_file.name} failed: {why}") from exc
        artifact = Artifact(
            job_file.name, int(info.size or 0), digest.hex(), subjects.OBJ_ARTIFACTS, name
        )
        stored.append((artifact, str(info.nuid)))
    return [artifact for artifact, _ in stored]


async def _purge(js: JetStreamContext, name: str, nuid: str) -> None:
    """Remove a stored object, chunks and entry, by purging its subjects: a delete would
    write a marker, which a bucket that refused the upload for lack of room refuses too."""
    stream = OBJ_STREAM_TEMPLATE.format(bucket=subjects.OBJ_ARTIFACTS)
    entry = base64.urlsafe_b64encode(name.encode()).decode()
    for subject in (
        OBJ_CHUNKS_PRE_TEMPLATE.format(bucket=subjects.OBJ_ARTIFACTS, obj=nuid),
        OBJ_META_PRE_TEMPLATE.format(bucket=subjects.OBJ_ARTIFACTS, obj=entry),
    ):
        try:
            await js.purge_stream(stream, subject=subject)
        except Exception as exc:  # the TTL removes it in the end; say so now
            log.warning("could not remove %s of a failed upload: %s", name, exc)
