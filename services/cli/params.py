"""Turn ``-p key=value`` pairs into typed params using the tool's JSON Schema."""

from __future__ import annotations

import json
from typing import Any


class ParamError(ValueError):
    pass


def _convert(name: str, raw: str, schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    if len(kinds) > 1:  # a union: the first member the value parses as, else a string if allowed
        for member in kinds:
            try:
                return _convert(name, raw, {**schema, "type": member})
            except ParamError:
                continue
        raise ParamError(f"-p {name}={raw}: expected one of {kinds}")
    try:
        if "integer" in kinds:
            return int(raw)
        if "number" in kinds:
            return float(raw) if any(c in raw for c in ".eE") else int(raw)
        if "boolean" in kinds:
            low = raw.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ValueError(raw)
        if "array" in kinds:
            if raw.startswith("["):
                return json.loads(raw)
            item = schema.get("items", {}) if isinstance(schema.get("items"), dict) else {}
            return [_convert(name, part, item) for part in raw.split(",")] if raw else []
        if "object" in kinds:
            return json.loads(raw)
    except (ValueError, json.JSONDecodeError):
        raise ParamError(f"-p {name}={raw}: expected {kind}") from None
    return raw


def parse_params(
    pairs: list[str], params_json: str | None, parameters_schema: dict[str, Any]
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if params_json:
        try:
            loaded = json.loads(params_json)
        except json.JSONDecodeError as exc:
            raise ParamError(f"--params-json is not JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ParamError("--params-json must be a JSON object")
        params.update(loaded)
    props = parameters_schema.get("properties", {}) if isinstance(parameters_schema, dict) else {}
    for pair in pairs:
        if "=" not in pair:
            raise ParamError(f"-p {pair}: expected key=value")
        key, raw = pair.split("=", 1)
        prop = props.get(key, {})
        value = _convert(key, raw, prop if isinstance(prop, dict) else {})
        if key in params and isinstance(params[key], list) and isinstance(value, list):
            params[key] = params[key] + value
        else:
            params[key] = value
    return params
