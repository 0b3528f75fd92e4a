"""Where a parameter that names a file may point: the manifest's ``paths``.

The router decides with ``confined_params`` before a job is stored, and the executor
decides again just before the spawn, on its own filesystem: a symlink swapped in
between is caught by the second look. The executor then gives the job the *resolved*
path, so a symlink outside the roots that changes after that look cannot redirect the
job either. Both read nothing but the filesystem (no NATS, no clock): the same values,
roots and files give the same answer in either service.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from contracts.errors import DomedError, ErrorCode
from contracts.manifest import Manifest, PathRule

TOOL_DIR = "{tool_dir}"


def resolved_roots(rule: PathRule, tool_dir: str | Path) -> list[str]:
    """The rule's roots with ``{tool_dir}`` filled and ``..`` and symlinks resolved."""
    return [
        os.path.realpath(
            root.replace(TOOL_DIR, str(tool_dir), 1) if root.startswith(TOOL_DIR) else root
        )
        for root in rule.roots
    ]


def inside(path: str, root: str) -> bool:
    """Whether the resolved ``path`` is ``root`` or lies under it (both absolute)."""
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve(value: object, rule: PathRule, roots: Sequence[str]) -> str:
    """``value`` resolved, if the rule allows it; else ``ValueError`` saying why.

    Outside the roots is said before anything about existence, so a refusal never tells
    whether a file outside the roots exists.
    """
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError("must be an absolute path")
    if "\x00" in value:
        raise ValueError("contains a NUL byte")
    path = os.path.realpath(value)
    where = ", ".join(roots)
    if rule.must_exist:
        if not any(inside(path, root) for root in roots):
            raise ValueError(f"is outside its roots ({where})")
        if not os.path.exists(path):
            raise ValueError("does not exist")
        return path
    # A file the job will write: its directory must already exist inside a root.
    parent = os.path.dirname(path)
    if path in roots or not any(inside(parent, root) for root in roots):
        raise ValueError(f"is outside its roots ({where})")
    if not os.path.isdir(parent):
        raise ValueError("names a file in a directory that does not exist")
    return path


def confined_params(
    manifest: Manifest, params: Mapping[str, Any], tool_dir: str | Path
) -> dict[str, Any]:
    """``params`` with each path parameter resolved; ``invalid_params`` naming the first
    parameter (in manifest order) that points outside its roots or fails ``must_exist``.
    An absent optional path parameter is left absent."""
    out = dict(params)
    for name, rule in manifest.paths.items():
        if name not in params:
            continue
        try:
            out[name] = resolve(params[name], rule, resolved_roots(rule, tool_dir))
        except ValueError as exc:
            raise DomedError(
                ErrorCode.INVALID_PARAMS,
                f"parameter {name!r} {exc}",
                [{"path": f"$.{name}", "message": str(exc)}],
            ) from None
    return out
