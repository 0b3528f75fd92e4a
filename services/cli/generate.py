"""Write every generated file of the contract (``just schemas``): the JSON Schemas in
``contracts/schemas/``, the AsyncAPI document ``contracts/asyncapi.json`` and the
reference pages in ``docs/reference/``. Tests fail when a committed file drifts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contracts.asyncapi import asyncapi_document
from services.cli import schemas
from services.cli.reference import PAGES

ROOT = Path(__file__).resolve().parents[2]
ASYNCAPI = ROOT / "contracts" / "asyncapi.json"
REFERENCE = ROOT / "docs" / "reference"


def render_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def write_all(root: Path = ROOT) -> list[Path]:
    written = schemas.write(root / "contracts" / "schemas")
    asyncapi = root / "contracts" / "asyncapi.json"
    asyncapi.write_text(render_json(asyncapi_document()))
    written.append(asyncapi)
    reference = root / "docs" / "reference"
    reference.mkdir(parents=True, exist_ok=True)
    for name, page in PAGES.items():
        path = reference / name
        path.write_text(page())
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all():
        print(path.relative_to(ROOT))
