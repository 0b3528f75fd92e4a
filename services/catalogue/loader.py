"""Load every manifest under an ssot directory, reporting every problem at once.

A catalogue with any problem is never served: ``load_catalogue`` raises
``CatalogueError`` listing each problem with its file, field, line and reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from pydantic import ValidationError

from contracts.manifest import Manifest, cross_field_problems
from services.catalogue.problems import CatalogueError, Problem

__all__ = ["CatalogueError", "Problem", "Tool", "load_catalogue", "load_file"]


@dataclass(frozen=True)
class Tool:
    """A loaded manifest with where it came from and its content hash."""

    manifest: Manifest
    path: Path
    sha256: str
    validator: Any = field(compare=False, repr=False)

    @property
    def id(self) -> str:
        return self.manifest.id

    @property
    def tool_dir(self) -> Path:
        return self.path.parent


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of each top-level mapping key."""


def _mapping_with_lines(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping: dict[str, Any] = loader.construct_mapping(node, deep=True)  # type: ignore[assignment]
    lines = {}
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode):
            lines[key_node.value] = key_node.start_mark.line + 1
    mapping["__lines__"] = lines
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_with_lines)


def _strip_lines(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_lines(v) for k, v in value.items() if k != "__lines__"}
    if isinstance(value, list):
        return [_strip_lines(v) for v in value]
    return value


def _line_of(doc: dict[str, Any], loc: tuple[Any, ...]) -> int | None:
    node: Any = doc
    line = None
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str):
            line = node.get("__lines__", {}).get(part, line)
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            break
    return line


def load_file(path: Path, root: Path) -> tuple[Tool | None, list[Problem]]:
    """Parse and validate one manifest file; never raises for bad content."""
    rel = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
    raw = path.read_bytes()
    try:
        doc = yaml.load(raw, Loader=_LineLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        return None, [Problem(rel, "", f"YAML syntax: {getattr(exc, 'problem', exc)}", line)]
    if not isinstance(doc, dict):
        return None, [Problem(rel, "", "a manifest must be a YAML mapping")]
    plain = _strip_lines(doc)
    try:
        manifest = Manifest.model_validate(plain)
    except ValidationError as exc:
        found: dict[tuple[Any, ...], str] = {tuple(e["loc"]): e["msg"] for e in exc.errors()}
        for loc, reason in cross_field_problems(plain):  # not run by pydantic when a field failed
            found.setdefault(loc, f"Value error, {reason}")
        problems = [
            Problem(
                rel,
                ".".join(str(p) for p in loc),
                msg,
                _line_of(doc, loc) or _line_of(doc, loc[:1]),
            )
            for loc, msg in found.items()
        ]
        return None, problems
    schemas = {"parameters": manifest.parameters, "result_schema": manifest.result_schema}
    for name, schema in schemas.items():
        if schema is None:
            continue
        try:
            jsonschema.validators.validator_for(
                schema, default=jsonschema.Draft202012Validator
            ).check_schema(schema)
        except jsonschema.SchemaError as exc:
            path_str = ".".join(str(p) for p in exc.absolute_path)
            return None, [
                Problem(
                    rel,
                    name + (f".{path_str}" if path_str else ""),
                    f"not a valid JSON Schema: {exc.message}",
                    _line_of(doc, (name,)),
                )
            ]
    validator_cls = jsonschema.validators.validator_for(
        manifest.parameters, default=jsonschema.Draft202012Validator
    )
    validator = validator_cls(manifest.parameters, format_checker=validator_cls.FORMAT_CHECKER)
    tool = Tool(manifest, path.resolve(), hashlib.sha256(raw).hexdigest(), validator)
    return tool, []


def load_catalogue(root: Path) -> dict[str, Tool]:
    """Every tool under ``root`` by id; raises CatalogueError listing every problem."""
    root = root.resolve()
    if not root.is_dir():
        raise CatalogueError([Problem(str(root), "", "ssot directory not found")])
    tools: dict[str, Tool] = {}
    problems: list[Problem] = []
    files = sorted({*root.glob("tools/**/*.yaml"), *root.glob("tools/**/*.yml")})
    if not files:
        files = sorted({*root.glob("**/*.yaml"), *root.glob("**/*.yml")})
    for path in files:
        tool, found = load_file(path, root)
        problems.extend(found)
        if tool is None:
            continue
        if tool.id in tools:
            first = tools[tool.id].path
            problems.append(
                Problem(
                    str(path.relative_to(root)),
                    "id",
                    f"duplicate id {tool.id!r} (also in {first.relative_to(root)})",
                )
            )
            continue
        tools[tool.id] = tool
    if problems:
        raise CatalogueError(problems)
    return tools
