"""What is wrong with a catalogue, apart from the loader that finds it.

Why apart: the command line catches ``CatalogueError`` for every service, and the loader
brings in jsonschema, pydantic and yaml (about 11 MB of RSS), which the projector never
needs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    file: str
    field: str
    reason: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field or '<file>'}: {self.reason}"


class CatalogueError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
