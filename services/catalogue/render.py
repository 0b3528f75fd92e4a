"""Pure rules that turn a manifest plus request params into something runnable.

Nothing here touches a process or NATS. ``render_argv`` is the only way argv is
built: a placeholder fills part of one element and is never split or given to a
shell; a list parameter standing alone as a whole element expands to one element
per item.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from contracts.errors import DomedError, ErrorCode
from contracts.manifest import PLACEHOLDER, Manifest

MASK = "***"


def param_errors(validator: Any, params: Mapping[str, Any]) -> list[dict[str, str]]:
    """Every JSON Schema failure of ``params``, each with its JSON path, in path order."""

    def order(e: Any) -> tuple[list[tuple[int, int | str]], str]:
        return [(0, p) if isinstance(p, int) else (1, str(p)) for p in e.absolute_path], e.message

    errors = sorted(validator.iter_errors(params), key=order)
    return [{"path": e.json_path, "message": e.message} for e in errors]


def with_defaults(manifest: Manifest, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` plus the schema's top-level ``default`` for each absent property."""
    out = dict(params)
    for name, prop in manifest.parameters.get("properties", {}).items():
        if name not in out and isinstance(prop, dict) and "default" in prop:
            out[name] = prop["default"]
    return out


def _scalar(name: str, value: Any) -> str:
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float, str)):
        text = str(value)
    elif value is None:
        raise _render_error(name, "has no value (null)")
    else:
        text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    if "\x00" in text:
        raise _render_error(name, "contains a NUL byte")
    return text


def _render_error(name: str, reason: str) -> DomedError:
    return DomedError(
        ErrorCode.INVALID_PARAMS,
        f"parameter {name!r} {reason}",
        [{"path": f"$.{name}", "message": reason}],
    )


def render_argv(
    manifest: Manifest,
    params: Mapping[str, Any],
    *,
    tool_dir: str | Path,
    job_id: str,
    work_dir: str | Path,
    masked: Iterable[str] = (),
) -> list[str]:
    """The argv to exec; names in ``masked`` render as ``***`` (for explain).

    Raises DomedError(invalid_params) when a placeholder has no value, a list is
    used inside a larger element, or a value would be read as an option (a
    leading ``-`` in an element of its own, unless the template has ``--`` before
    it or the value is a number).
    """
    values: dict[str, Any] = {
        **with_defaults(manifest, params),
        "tool_dir": str(tool_dir),
        "job_id": job_id,
        "work_dir": str(work_dir),
    }
    hidden = set(masked)
    argv: list[str] = []
    after_double_dash = False

    def option_like(name: str, text: str, value: Any) -> bool:
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return text.startswith("-") and not after_double_dash and not is_number

    for index, element in enumerate(manifest.entrypoint):
        whole = PLACEHOLDER.fullmatch(element)
        if whole:
            name = whole.group(1)
            if name not in values:
                raise _render_error(name, "is required by the entrypoint but has no value")
            value = values[name]
            items = value if isinstance(value, list) else [value]
            for item in items:
                text = _scalar(
                    name, item
                )  # checked even when masked: explain refuses what submit would
                if index > 0 and option_like(name, text, item):
                    raise _render_error(name, "starts with '-' and would be read as an option")
                argv.append(MASK if name in hidden else text)
            continue

        def fill(match: Any, index: int = index) -> str:
            name = match.group(1)
            if name not in values:
                raise _render_error(name, "is required by the entrypoint but has no value")
            value = values[name]
            if isinstance(value, list):
                raise _render_error(name, "is a list and may only stand alone as a whole argument")
            text = _scalar(name, value)
            # A value at the very start of an element must not turn it into an option.
            if index > 0 and match.start() == 0 and option_like(name, text, value):
                raise _render_error(name, "starts with '-' and would be read as an option")
            return MASK if name in hidden else text

        rendered = PLACEHOLDER.sub(fill, element)
        argv.append(rendered)
        if element == "--":
            after_double_dash = True
    return argv


def mask_params(manifest: Manifest, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with every secret parameter's value replaced by ``***``."""
    return {k: (MASK if k in manifest.secrets else v) for k, v in params.items()}


def secret_values(manifest: Manifest, params: Mapping[str, Any]) -> list[str]:
    """The literal strings a tool might print that must never be published."""
    out: list[str] = []
    for name in manifest.secrets:
        value = params.get(name)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        out.extend(s for s in (_scalar(name, v) for v in items) if s)
    return sorted(set(out), key=len, reverse=True)


def mask_line(line: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret in line:
            line = line.replace(secret, MASK)
    return line


def child_env(manifest: Manifest, environ: Mapping[str, str], job_id: str) -> dict[str, str]:
    """The child's whole environment: the allowlist, then fixed values, then DOMED_JOB_ID.

    Built from scratch, never a copy of the executor's environment minus something.
    """
    env = {name: environ[name] for name in manifest.env_allowlist if name in environ}
    env.update(manifest.env)
    env["DOMED_JOB_ID"] = job_id
    return env


def env_names(manifest: Manifest) -> list[str]:
    return sorted({*manifest.env_allowlist, *manifest.env, "DOMED_JOB_ID"})


def fixed_work_dir(manifest: Manifest) -> str | None:
    policy = manifest.working_dir_policy
    if policy.startswith("fixed:"):
        return os.path.realpath(policy.removeprefix("fixed:"))
    return None
