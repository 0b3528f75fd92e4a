"""A job's secret parameters on the executor: opened from ``domed-secrets`` (sealed by
the router, opened with the executors' key, services/runtime/sealing.py) and handed to the
job the way its manifest says, as environment variables or as files, never in argv.

A file secret lives in a directory of its own (mode 0700, the file 0400), outside the job's
working dir so no artifact glob or shared ``tool_dir`` ever holds it; the attempt removes
the directory when it ends.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.public

from contracts.manifest import Manifest
from services.catalogue.render import secret_env
from services.runtime import sealing
from services.runtime.settings import Settings


def open_params(settings: Settings, sealed: bytes) -> dict[str, Any]:
    """The secret parameters the router sealed in ``domed-secrets`` for this job; raises
    sealing.SealingError when they are not sealed for our key."""
    key = _key(settings.secrets_key, settings.data_dir.resolve())
    values = json.loads(sealing.unseal(key, sealed))
    return values if isinstance(values, dict) else {}


def load_key(settings: Settings) -> None:
    """Load the executors' key now (raises sealing.SealingError if it is unusable), so a
    bad key stops the executor at its start instead of failing its first secret job."""
    _key(settings.secrets_key, settings.data_dir.resolve())


@functools.cache
def _key(explicit: Path | None, data_dir: Path) -> nacl.public.PrivateKey:
    return sealing.executor_key(explicit, data_dir)


@dataclass
class Delivery:
    """What a job gets of its secrets: environment variables, and the paths of its secret
    files by parameter name (for ``{secret_file:NAME}``), in ``dir``."""

    env: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    dir: str | None = None

    def remove(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def deliver(manifest: Manifest, params: Mapping[str, Any], job_id: str) -> Delivery:
    """Write the job's file secrets and list its environment secrets."""
    delivery = Delivery(env=secret_env(manifest, params))
    wanted = [n for n, d in manifest.secrets.items() if d.file and params.get(n) is not None]
    if not wanted:
        return delivery
    delivery.dir = tempfile.mkdtemp(prefix=f"domed-secrets-{job_id}-")
    try:
        for name in wanted:
            value = params[name]
            text = value if isinstance(value, str) else json.dumps(value)
            path = os.path.join(delivery.dir, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
            with os.fdopen(fd, "w") as out:
                out.write(text)
            delivery.files[name] = path
    except BaseException:
        delivery.remove()
        raise
    return delivery
