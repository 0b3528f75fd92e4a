"""Reading a job's artifacts from the Object Store, checked against what its terminal lists."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import nats.js.errors
from nats.aio.client import Client as Nats

from domed.errors import ArtifactMissing, DigestMismatch, UnknownArtifact

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


async def read(nc: Nats, entry: ArtifactRef) -> bytes:
    """The artifact's bytes, after checking their size and SHA-256 against ``entry``."""
    obs = await _store(nc, entry)
    try:
        result = await obs.get(entry.object)
    except nats.js.errors.ObjectNotFoundError:
        raise _missing(entry) from None
    data = result.data or b""
    _check(entry, len(data), hashlib.sha256(data).hexdigest())
    return data


async def save(nc: Nats, entry: ArtifactRef, path: Path) -> Path:
    """Write the artifact to ``path`` without holding it in memory. It is written to a
    temporary file beside ``path`` and renamed only once its size and SHA-256 check out,
    so ``path`` never holds a partial or wrong file."""
    obs = await _store(nc, entry)
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w+b") as f:
            try:
                await obs.get(entry.object, writeinto=f)
            except nats.js.errors.ObjectNotFoundError:
                raise _missing(entry) from None
            f.seek(0)
            digest = hashlib.sha256()
            size = 0
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        _check(entry, size, digest.hexdigest())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


async def _store(nc: Nats, entry: ArtifactRef) -> Any:
    try:
        return await nc.jetstream().object_store(entry.bucket)
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
        raise _missing(entry) from None


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
