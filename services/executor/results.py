"""A job's result: the JSON it wrote to ``$DOMED_RESULT``, read safely (``workfiles``),
capped and checked against the manifest's ``result_schema``."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import jsonschema

from services.executor.workfiles import WorkFileError, open_file, read_capped

RESULT_PREFIX = ".domed-result-"


class InvalidResult(Exception):
    """What the job wrote is not a result it may give (a sentence for the terminal)."""


def result_name(job_id: str) -> str:
    """The result file's name in the working dir: the job's own, since a ``tool_dir`` or
    ``fixed`` working dir is shared by the tool's jobs."""
    return f"{RESULT_PREFIX}{job_id}.json"


def read_result(
    work_dir: str,
    job_id: str,
    max_bytes: int,
    schema: dict[str, Any] | None,
    owner: int | None,
) -> tuple[bool, Any]:
    """``(written, value)``: whether the job wrote a result, and its JSON value; removes
    the file. InvalidResult when it is not readable, too large, not JSON or fails
    ``schema``."""
    name = result_name(job_id)
    try:
        found = open_file(work_dir, name, owner)
        if found is None:
            return False, None
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(work_dir, name))
        data = read_capped(found, max_bytes)
    except WorkFileError as exc:
        raise InvalidResult(f"the result {exc}") from None
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidResult(f"the result is not JSON: {exc}") from None
    if schema is not None:
        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(schema).iter_errors(value)
        )
        if error is not None:
            where = "".join(f"[{p!r}]" for p in error.absolute_path) or "the result"
            raise InvalidResult(f"the result fails result_schema at {where}: {error.message}")
    return True, value
