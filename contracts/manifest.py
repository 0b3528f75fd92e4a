"""The tool manifest model (docs/reference/manifest.md).

A manifest in ``ssot/tools/**.yaml`` is the only place a runnable command comes
from. This module holds the model and its field rules; loading files, checking
placeholders against parameters and rendering argv live in ``services.catalogue``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

TOOL_ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
"""What a tool id may look like: lower case, digits, ``_``, ``.`` and ``-``."""
PLACEHOLDER = re.compile(r"\{(secret_file:)?([A-Za-z_][A-Za-z0-9_]*)\}")
"""A ``{name}`` or ``{secret_file:name}`` placeholder in an entrypoint argument; group 1 is
``secret_file:`` or None, group 2 the name."""
BUILTIN_PLACEHOLDERS = frozenset({"tool_dir", "job_id", "work_dir"})
"""Placeholders domed fills itself; every other one names a parameter."""
PROGRESS_GROUPS = frozenset({"current", "total", "percent", "message"})
"""The named groups a progress regex may use."""


RESERVED_ENV_PREFIXES: tuple[str, ...] = ("DOMED_", "NATS_")
"""Names an ``env_allowlist`` may not pass: domed's own settings and NATS credentials
(the executor sets ``DOMED_JOB_ID`` and ``DOMED_RESULT`` itself)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProgressRule(_Strict):
    """How progress is read from a tool's output lines."""

    regex: str = Field(description="A Python regex; named groups current, total, percent, message.")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        unknown = set(compiled.groupindex) - PROGRESS_GROUPS
        if unknown:
            raise ValueError(
                f"unknown named groups {sorted(unknown)}; use {sorted(PROGRESS_GROUPS)}"
            )
        if not compiled.groupindex:
            raise ValueError("needs at least one named group: current, total, percent or message")
        return value


class SecretDelivery(_Strict):
    """How one secret parameter reaches the job: never in argv, but as an environment
    variable (``env``) or as a file (``file: true``) whose path ``{secret_file:NAME}``
    renders in the entrypoint."""

    env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="The name of the job's environment variable that holds the value.",
    )
    file: bool = Field(
        False,
        description="True: the value is written to a file of mode 0400 in a directory of "
        "the job's own, removed when the attempt ends; `{secret_file:NAME}` is its path.",
    )

    @model_validator(mode="after")
    def _one_way(self) -> SecretDelivery:
        if (self.env is None) == (not self.file):
            raise ValueError("give exactly one of `env: NAME` or `file: true`")
        return self


class PathRule(_Strict):
    """Where a parameter that names a file may point. The value must be an absolute path
    that, with ``..`` and every symlink resolved, lies inside one of ``roots`` (resolved
    too); the router checks it, and the executor again just before the spawn, giving the
    job the resolved path."""

    roots: list[str] = Field(
        min_length=1,
        description="Absolute directories, or `{tool_dir}` and paths under it; the value "
        "may be a root itself or anything inside one.",
    )
    must_exist: bool = Field(
        True,
        description="True: the path must exist. False (a file the job writes): its "
        "directory must exist inside a root, and the path must not be a root itself.",
    )

    @field_validator("roots")
    @classmethod
    def _roots(cls, value: list[str]) -> list[str]:
        for root in value:
            if "\x00" in root:
                raise ValueError("a root contains NUL")
            if not (root.startswith("/") or re.fullmatch(r"\{tool_dir\}(/.*)?", root)):
                raise ValueError(f"{root!r} is neither absolute nor under {{tool_dir}}")
        return value


class Limits(_Strict):
    """Bounds on a job's output and resources, and on how many jobs of the tool run at once."""

    max_line_bytes: int = Field(
        65536, ge=64, le=1_048_576, description="Longer output lines are split, never dropped."
    )
    max_output_bytes: int = Field(
        64 * 1024 * 1024,
        ge=0,
        description="Past this much output, lines are dropped and the terminal says `truncated`.",
    )
    concurrency: int | None = Field(
        None, ge=1, description="At most this many jobs of this tool at once, across all executors."
    )
    memory_mb: int | None = Field(
        2048,
        ge=1,
        description="Memory of the job's whole process tree, MiB; `null`: no limit. Past it "
        "the job is stopped with `limit_exceeded` (`memory`). Without a cgroup it bounds "
        "each process's address space instead (docs/executor.md).",
    )
    cpu_s: float | None = Field(
        None,
        gt=0,
        description="CPU seconds the job's process tree may use in all; `null`: bounded only "
        "by `timeout_s`. Past it: `limit_exceeded` (`cpu`).",
    )
    pids: int | None = Field(
        1024,
        ge=1,
        description="Processes and threads of the job at once; `null`: no limit. Reaching it "
        "stops the job with `limit_exceeded` (`pids`).",
    )
    open_files: int | None = Field(
        4096, ge=16, description="Open file descriptors per process; `null`: the executor's own."
    )
    file_size_mb: int | None = Field(
        None,
        ge=1,
        description="Largest file a process of the job may write, MiB; `null`: no limit.",
    )
    max_result_bytes: int = Field(
        1024 * 1024,
        ge=2,
        le=8 * 1024 * 1024,
        description="Largest result (`$DOMED_RESULT`) a job may write; past it: `invalid_result`.",
    )
    max_artifact_bytes: int = Field(
        1024**3,
        ge=0,
        description="All artifacts of one job together; past it: `artifact_failed`.",
    )


RETRY_STATES = ("failed", "timed_out", "lost")
"""The attempt outcomes ``retry.when`` may name."""
STOP_SIGNALS = ("TERM", "INT", "HUP", "QUIT", "USR1", "USR2")
"""The signals ``stop_signal`` may name."""


class Retry(_Strict):
    """How often, and after how long, a job whose attempt ended in one of ``when`` is run
    again."""

    max_attempts: int = Field(3, ge=1, le=100, description="Attempts in all, the first included.")
    backoff_s: float = Field(
        2.0, ge=0, description="Seconds before the first retry; doubled for each one after."
    )
    backoff_max_s: float = Field(60.0, ge=0, description="The longest wait between attempts.")
    when: list[Literal["failed", "timed_out", "lost"]] | None = Field(
        None,
        description="The outcomes that are retried: any of `failed`, `timed_out`, `lost` "
        "(`lost` only with `idempotent: true`); default `[lost]`. A wait is the doubled "
        "`backoff_s`, at most `backoff_max_s`, less up to half of it at random (jitter).",
    )

    def retried(self) -> tuple[str, ...]:
        """The outcomes retried, ``when`` or its default."""
        return tuple(self.when) if self.when is not None else ("lost",)


class Manifest(_Strict):
    """A tool: the command it runs, the parameters it takes, and how domed runs it."""

    id: str = Field(pattern=TOOL_ID_PATTERN, max_length=128, description="Unique in the catalogue.")
    version: int = Field(ge=0, description="The tool's version, recorded on every job.")
    description: str = Field("", description="One line for `domed tools ls`.")
    entrypoint: list[str] = Field(
        min_length=1,
        description="The command and its arguments, with placeholders: `{param}`, "
        "`{tool_dir}`, `{job_id}`, `{work_dir}`, `{secret_file:NAME}`. Never given to a shell. "
        "A rendered element that starts with `-` is refused unless this text puts the `-` "
        "there (`--text={text}`) or the element comes after a literal `--`.",
    )
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "additionalProperties": False},
        description="JSON Schema (2020-12) that params must satisfy; default: no parameters.",
    )
    working_dir_policy: str = Field(
        "temp",
        description="`temp` (a fresh directory per job, removed after), `tool_dir` (the "
        "manifest's folder) or `fixed:/absolute/path`.",
    )
    env_allowlist: list[str] = Field(
        [], description="Names passed through from the executor's environment."
    )
    env: dict[str, str] = Field({}, description="Fixed values, set after the allowlist.")
    timeout_s: float = Field(
        3600, gt=0, description="Then SIGTERM to the process group, SIGKILL after `cancel_grace_s`."
    )
    cancel_grace_s: float = Field(
        5,
        ge=0,
        description="Seconds between `stop_signal` and SIGKILL on cancel, timeout and "
        "executor shutdown.",
    )
    stop_signal: Literal["TERM", "INT", "HUP", "QUIT", "USR1", "USR2"] = Field(
        "TERM",
        description="Sent first to the job's process group on cancel, timeout and executor "
        "shutdown; SIGKILL follows `cancel_grace_s` later.",
    )
    queue_timeout_s: float | None = Field(
        None,
        gt=0,
        description="Seconds a job may wait to start (a submit may ask for less); then it "
        "ends `timed_out` with `queue_timeout` and never starts. Default: no limit.",
    )
    progress: ProgressRule | None = Field(None, description="Output lines that report progress.")
    limits: Limits = Field(Limits(), description="Output, resource and concurrency limits.")
    secrets: dict[str, SecretDelivery] = Field(
        {},
        description="Parameters whose values are secret, each with how it reaches the job: "
        "`{env: NAME}` or `{file: true}`; never in argv (a `{name}` placeholder of a secret is "
        "refused). Masked as `***` in events, explain replies and output lines; the values "
        "travel sealed for the executors in the `domed-secrets` bucket, deleted when the job ends.",
    )
    result_schema: dict[str, Any] | None = Field(
        None,
        description="JSON Schema (2020-12) of the result the job writes to `$DOMED_RESULT`; "
        "a result that fails it ends the job `failed` with `invalid_result`.",
    )
    artifacts: list[str] = Field(
        [],
        description="Globs, relative to the working dir, of the files stored in the Object "
        "Store bucket `domed-artifacts` as `<job_id>/<path>` before the terminal (`**` "
        "matches any depth). A glob that could leave the working dir is refused.",
    )
    paths: dict[str, PathRule] = Field(
        {},
        description="Parameters that name files, each with the roots it must lie inside "
        "(after resolving `..` and symlinks) and whether it must exist. A path parameter "
        "is a string parameter, not a secret; a value outside its roots is `invalid_params`.",
    )
    idempotent: bool = Field(
        False,
        description="True: a job whose executor vanished is run again instead of ending `lost`.",
    )
    retry: Retry | None = Field(
        None,
        description="How often, and after how long, to run a job again after an attempt "
        "that failed, timed out, or whose executor vanished (`when`).",
    )

    @field_validator("entrypoint")
    @classmethod
    def _entrypoint_elements(cls, value: list[str]) -> list[str]:
        for element in value:
            if "\x00" in element:
                raise ValueError("an entrypoint element contains NUL")
        if not value[0]:
            raise ValueError("the command (first element) is empty")
        return value

    @field_validator("artifacts")
    @classmethod
    def _artifact_globs(cls, value: list[str]) -> list[str]:
        for glob in value:
            parts = glob.split("/")
            if not glob or glob.startswith("/") or "\x00" in glob or ".." in parts:
                raise ValueError(
                    f"artifact glob {glob!r} could leave the working dir: use a relative "
                    "pattern without '..'"
                )
        return value

    @field_validator("working_dir_policy")
    @classmethod
    def _policy(cls, value: str) -> str:
        if value in ("temp", "tool_dir"):
            return value
        if value.startswith("fixed:"):
            path = value.removeprefix("fixed:")
            if not path.startswith("/"):
                raise ValueError(f"fixed working dir must be an absolute path, got {path!r}")
            if "\x00" in path or "/../" in f"{path}/":
                raise ValueError("fixed working dir must not contain NUL or '..'")
            return value
        raise ValueError("must be 'temp', 'tool_dir' or 'fixed:/absolute/path'")

    @field_validator("env_allowlist")
    @classmethod
    def _env_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"not an environment variable name: {name!r}")
            if name.upper().startswith(RESERVED_ENV_PREFIXES):
                raise ValueError(
                    f"{name!r} may not be passed to a job: DOMED_* and NATS_* variables "
                    "carry domed's own settings and NATS credentials"
                )
        return value

    @model_validator(mode="after")
    def _cross_field(self) -> Manifest:
        problems = cross_field_problems(self.model_dump())
        if problems:
            raise ValidationError.from_exception_data(
                "Manifest",
                [
                    InitErrorDetails(
                        type="value_error", loc=loc, input=None, ctx={"error": ValueError(msg)}
                    )
                    for loc, msg in problems
                ],
            )
        return self

    def summary_fields(self) -> tuple[str, int, str]:
        """``(id, version, description)``: what a listing of tools shows."""
        return self.id, self.version, self.description


def cross_field_problems(doc: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """Problems that involve two fields, as ``(location, reason)``; tolerant of any input shape.

    Run on the validated model, and also by the loader on a raw document that failed
    field validation, so one report lists every problem at once.
    """
    problems: list[tuple[tuple[str | int, ...], str]] = []
    params = doc.get("parameters")
    props = params.get("properties", {}) if isinstance(params, Mapping) else {}
    if not isinstance(props, Mapping):
        problems.append(
            (("parameters", "properties"), "must be a mapping of parameter names to schemas")
        )
        props = {}
    secrets = doc.get("secrets")
    secrets = secrets if isinstance(secrets, Mapping) else {}
    for name in secrets:
        if name not in props:
            problems.append((("secrets", name), f"{name!r} is not a parameter"))
    env_vars = [s.get("env") for s in secrets.values() if isinstance(s, Mapping)]
    for var in sorted({v for v in env_vars if isinstance(v, str) and env_vars.count(v) > 1}):
        problems.append((("secrets",), f"two secrets use the environment variable {var}"))
    paths = doc.get("paths")
    for name in paths if isinstance(paths, Mapping) else ():
        problem = _path_parameter_problem(name, props, secrets)
        if problem:
            problems.append((("paths", name), problem))
    entrypoint = doc.get("entrypoint")
    if isinstance(entrypoint, list):
        for i, element in enumerate(entrypoint):
            for prefix, name in PLACEHOLDER.findall(element) if isinstance(element, str) else ():
                problem = _placeholder_problem(prefix, name, props, secrets)
                if problem:
                    problems.append((("entrypoint", i), problem))
    if doc.get("artifacts") and doc.get("working_dir_policy", "temp") != "temp":
        problems.append(
            (
                ("artifacts",),
                "needs working_dir_policy: temp (a shared working dir holds other jobs' files)",
            )
        )
    retry = doc.get("retry")
    if isinstance(retry, Mapping) and doc.get("idempotent") is not True:
        when = retry.get("when")
        if when is None:
            problems.append(
                (("retry",), "without `when` it retries lost jobs: only with idempotent: true")
            )
        elif isinstance(when, list) and "lost" in when:
            problems.append(
                (
                    ("retry", "when"),
                    "`lost` only with idempotent: true (the vanished attempt may have done "
                    "part of its work)",
                )
            )
    return problems


def _path_parameter_problem(
    name: str, props: Mapping[str, Any], secrets: Mapping[str, Any]
) -> str | None:
    """Why ``name`` may not be confined by ``paths``, or None."""
    if name not in props:
        return f"{name!r} is not a parameter"
    if name in secrets:
        return f"{name!r} is a secret; a secret parameter cannot name a file"
    schema = props[name]
    if not (isinstance(schema, Mapping) and schema.get("type") == "string"):
        return f"{name!r} must be a parameter of `type: string` to name a file"
    return None


def _placeholder_problem(
    prefix: str, name: str, props: Mapping[str, Any], secrets: Mapping[str, Any]
) -> str | None:
    """Why ``{prefix name}`` may not stand in an entrypoint, or None."""
    if prefix:
        delivery = secrets.get(name)
        if not (isinstance(delivery, Mapping) and delivery.get("file") is True):
            return f"placeholder {{secret_file:{name}}} names no secret with `file: true`"
        return None
    if name in secrets:
        # argv is readable by every local user (/proc/<pid>/cmdline, ps).
        return (
            f"placeholder {{{name}}} would put a secret in argv; deliver it with "
            f"`secrets: {{{name}: {{env: VAR}}}}` or `{{file: true}}` and `{{secret_file:{name}}}`"
        )
    if name not in BUILTIN_PLACEHOLDERS and name not in props:
        return f"placeholder {{{name}}} names no parameter"
    return None


def manifest_json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema, for editors and other languages."""
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://domed.dev/schemas/manifest.json"
    return schema
