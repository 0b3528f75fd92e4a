"""Pure rules that turn a manifest plus request params into something runnable.

Nothing here touches a process or NATS. ``render_argv`` is the only way argv is
built: a placeholder fills part of one element and is never split or given to a
shell; a list parameter standing alone as a whole element expands to one element
per item.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from contracts.errors import DomedError, ErrorCode
from contracts.manifest import PLACEHOLDER, Manifest

MASK = "***"


def param_errors(
    validator: Any, params: Mapping[str, Any], secrets: Collection[str] = ()
) -> list[dict[str, str]]:
    """Every JSON Schema failure of ``params``, each with its JSON path, in path order.

    A failure of a parameter named in ``secrets`` names the rule it broke, never the
    value (jsonschema's messages repeat it); any other message that would quote a secret
    value has it masked.
    """

    def order(e: Any) -> tuple[list[tuple[int, int | str]], str]:
        return [(0, p) if isinstance(p, int) else (1, str(p)) for p in e.absolute_path], e.message

    hidden = _secret_texts(secrets, params)

    def message(e: Any) -> str:
        path = list(e.absolute_path)
        if path and path[0] in secrets:
            return f"fails {e.validator}: {e.validator_value!r} (a secret's value is not shown)"
        return mask_text(e.message, hidden) if hidden else str(e.message)

    errors = sorted(validator.iter_errors(params), key=order)
    return [{"path": e.json_path, "message": message(e)} for e in errors]


def _secret_texts(secrets: Collection[str], params: Mapping[str, Any]) -> list[str]:
    """How the values of secret parameters may appear in a message: as text and as repr."""
    out: set[str] = set()
    for name in secrets:
        value = params.get(name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, (str, int, float)) and not isinstance(item, bool):
                out.update(t for t in (str(item), repr(item)) if t)
    return sorted(out, key=len, reverse=True)


def mask_text(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each of ``secrets`` (longest first) as ``***``."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


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


_OPTION = "starts with '-' where the manifest puts no '-' and would be read as an option"


def render_argv(
    manifest: Manifest,
    params: Mapping[str, Any],
    *,
    tool_dir: str | Path,
    job_id: str,
    work_dir: str | Path,
    masked: Iterable[str] = (),
    secret_files: Mapping[str, str] | None = None,
) -> list[str]:
    """The argv to exec; names in ``masked`` render as ``***`` (for explain), and
    ``{secret_file:NAME}`` as ``secret_files[NAME]`` (``<secret_file:NAME>`` without it).

    Raises DomedError(invalid_params) when a placeholder has no value, a list is
    used inside a larger element, or a rendered element would be read as an option:
    it starts with ``-`` although the manifest's own text does not put a ``-`` there,
    and no literal ``--`` element comes before it. Negative numbers included.
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

    def value_of(prefix: str | None, name: str) -> Any:
        if prefix:
            if secret_files is None:
                return f"<secret_file:{name}>"
            if name in secret_files:
                return secret_files[name]
        elif name in values:
            return values[name]
        raise _render_error(name, "is required by the entrypoint but has no value")

    for element in manifest.entrypoint:
        whole = PLACEHOLDER.fullmatch(element)
        if whole and isinstance(value_of(*whole.groups()), list):
            name = whole.group(2)
            for item in value_of(*whole.groups()):
                # Checked even when masked: explain refuses what submit would.
                text = _scalar(name, item)
                if text.startswith("-") and not after_double_dash:
                    raise _render_error(name, _OPTION)
                argv.append(MASK if name in hidden else text)
            continue
        pieces: list[tuple[str, str | None]] = []  # (text, parameter it came from)
        at = 0
        for match in PLACEHOLDER.finditer(element):
            pieces.append((element[at : match.start()], None))
            prefix, name = match.groups()
            value = value_of(prefix, name)
            if isinstance(value, list):
                raise _render_error(name, "is a list and may only stand alone as a whole argument")
            pieces.append((_scalar(name, value), None if prefix else name))
            at = match.end()
        pieces.append((element[at:], None))
        # The element's first character decides how a program reads it: if a value put a
        # leading '-' there, the value would become an option the manifest never wrote.
        first = next(((text, name) for text, name in pieces if text), ("", None))
        if first[1] is not None and first[0].startswith("-") and not after_double_dash:
            raise _render_error(first[1], _OPTION)
        argv.append("".join(MASK if name in hidden else text for text, name in pieces))
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


def child_env(manifest: Manifest, environ: Mapping[str, str], job_id: str) -> dict[str, str]:
    """The child's whole environment: the allowlist, then fixed values, then DOMED_JOB_ID.

    Built from scratch, never a copy of the executor's environment minus something.
    """
    env = {name: environ[name] for name in manifest.env_allowlist if name in environ}
    env.update(manifest.env)
    env["DOMED_JOB_ID"] = job_id
    return env


def secret_env(manifest: Manifest, params: Mapping[str, Any]) -> dict[str, str]:
    """The environment variables that carry the secret parameters delivered by ``env``."""
    return {
        delivery.env: _scalar(name, params[name])
        for name, delivery in manifest.secrets.items()
        if delivery.env is not None and params.get(name) is not None
    }


def env_names(manifest: Manifest) -> list[str]:
    secret_vars = (d.env for d in manifest.secrets.values() if d.env is not None)
    return sorted(
        {*manifest.env_allowlist, *manifest.env, *secret_vars, "DOMED_JOB_ID", "DOMED_RESULT"}
    )


def fixed_work_dir(manifest: Manifest) -> str | None:
    policy = manifest.working_dir_policy
    if policy.startswith("fixed:"):
        return os.path.realpath(policy.removeprefix("fixed:"))
    return None
