"""Reading a job's artifacts, checked against what its terminal lists. The projector
reads them from the Object Store for the client (``domed.jobs.artifact``), so a client
needs the API's permissions only; ``nats obj get domed-artifacts <job_id>/<name>`` reads
the same bytes where JetStream is in reach."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from nats.aio.client import Client as Nats

from contracts import subjects
from contracts.api import JobsArtifactReply
from domed import api
from domed.errors import ArtifactMissing, DigestMismatch, InvalidRequest, UnknownArtifact

BUCKET = "domed-artifacts"
"""The Object Store bucket the executor stores artifacts in, as object ``<job_id>/<name>``."""


class ArtifactRef(Protocol):
    """One entry of a terminal's ``artifacts``: where the file is and what it must be."""

    @property
    def name(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def sha256(self) -> str: ...
    @property
    def bucket(self) -> str: ...
    @property
    def object(self) -> str: ...


def listed(ended: Any) -> list[ArtifactRef]:
    """The artifacts a terminal (or a job's state) lists; none when it lists none."""
    return list(getattr(ended, "artifacts", None) or [])


def find(job_id: str, entries: list[ArtifactRef], name: str) -> ArtifactRef:
    """The entry called ``name``; ``UnknownArtifact`` if there is none."""
    for entry in entries:
        if entry.name == name:
            return entry
    raise UnknownArtifact(
        "unknown_artifact",
        f"job {job_id} lists no artifact {name!r}",
        {"job_id": job_id, "name": name, "listed": [e.name for e in entries]},
    )


async def chunks(nc: Nats, entry: ArtifactRef, timeout: float = 10.0) -> AsyncIterator[bytes]:
    """The artifact's bytes chunk by chunk, as the projector reads them from the Object
    Store (``domed.jobs.artifact``): a client needs no JetStream rights of its own."""
    job_id = entry.object.split("/", 1)[0]
    body: dict[str, Any] = {"job_id": job_id, "name": entry.name, "chunk": 0, "after_seq": 0}
    while True:
        try:
            reply = await api.request(nc, subjects.JOBS_ARTIFACT, body, JobsArtifactReply, timeout)
        except InvalidRequest as exc:
            if isinstance(exc.details, dict) and exc.details.get("missing"):
                raise _missing(entry) from None
            raise
        yield base64.b64decode(reply.data)
        if reply.chunk + 1 >= reply.chunks:
            return
        body.update(chunk=reply.chunk + 1, after_seq=reply.seq)


async def read(nc: Nats, entry: ArtifactRef) -> bytes:
    """The artifact's bytes, after checking their size and SHA-256 against ``entry``."""
    data = b"".join([chunk async for chunk in chunks(nc, entry)])
    _check(entry, len(data), hashlib.sha256(data).hexdigest())
    return data


async def save(nc: Nats, entry: ArtifactRef, path: Path) -> Path:
    """Write the artifact to ``path`` without holding it in memory. It is written to a
    temporary file beside ``path`` and renamed only once its size and SHA-256 check out,
    so ``path`` never holds a partial or wrong file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as f:
            async for chunk in chunks(nc, entry):
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        _check(entry, size, digest.hexdigest())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _missing(entry: ArtifactRef) -> ArtifactMissing:
    return ArtifactMissing(
        "artifact_missing",
        f"artifact {entry.name!r} is not in bucket {entry.bucket} (object {entry.object}); "
        "it may have expired",
        {"bucket": entry.bucket, "object": entry.object},
    )


def _check(entry: ArtifactRef, size: int, sha256: str) -> None:
    if size != entry.size or sha256 != entry.sha256.lower():
        raise DigestMismatch(
            "digest_mismatch",
            f"artifact {entry.name!r} read from {entry.bucket}/{entry.object} is not the one "
            f"the job listed ({size} bytes, sha256 {sha256}; listed {entry.size} bytes, "
            f"sha256 {entry.sha256})",
            {
                "expected": {"size": entry.size, "sha256": entry.sha256},
                "got": {"size": size, "sha256": sha256},
            },
        )
