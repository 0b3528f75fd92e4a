"""Write the contract's JSON Schemas to ``contracts/schemas/`` (``just schemas``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from contracts.schemas import all_schemas


def render(schema: dict[str, object]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write(target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    written = []
    wanted = all_schemas()
    for stale in target.glob("*.json"):
        if stale.stem not in wanted:
            stale.unlink()
    for name, schema in wanted.items():
        path = target / f"{name}.json"
        path.write_text(render(schema))
        written.append(path)
    return written


if __name__ == "__main__":
    out = (
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).parents[2] / "contracts" / "schemas"
    )
    for p in write(out):
        print(p)
