"""Result rows, the printed table and the JSON file."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One measured figure next to its baseline and target.

    ``ok`` is True (pass), False (short of the target) or None (no target: information).
    ``ratio`` is figure ÷ baseline when both exist.
    """

    case: str
    metric: str
    value: float
    unit: str
    baseline: float | None = None
    target: str = ""
    ok: bool | None = None
    note: str = ""
    ratio: float | None = field(default=None)

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline not in (None, 0) and _finite(self.value):
            assert self.baseline is not None
            self.ratio = self.value / self.baseline


def _finite(x: float | None) -> bool:
    return x is not None and not math.isnan(x) and not math.isinf(x)


def at_least(value: float, target: float) -> bool | None:
    return None if not _finite(value) else value >= target


def at_most(value: float, target: float) -> bool | None:
    return None if not _finite(value) else value <= target


def fmt_number(x: float | None, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if unit == "ms":
        text = f"{x:.2f}" if abs(x) < 100 else f"{x:,.0f}"
    elif unit == "MB":
        text = f"{x:.1f}"
    elif abs(x) >= 100:
        text = f"{x:,.0f}"
    else:
        text = f"{x:.2f}"
    return f"{text} {unit}".strip()


def status(ok: bool | None) -> str:
    return "pass" if ok is True else "SHORT" if ok is False else "info"


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table (it reads fine in a terminal too)."""
    head = ("case", "figure", "value", "baseline", "ratio", "target", "result")
    body = [
        (
            r.case,
            r.metric,
            fmt_number(r.value, r.unit),
            fmt_number(r.baseline, r.unit),
            "—" if r.ratio is None else f"{r.ratio:.2f}",
            r.target or "—",
            status(r.ok),
        )
        for r in rows
    ]
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)
    ]
    right = {2, 3, 4}

    def line(cells: tuple[str, ...]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(parts) + " |"

    sep = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if i in right else ("-" * (w + 2)) for i, w in enumerate(widths)
        )
        + "|"
    )
    return "\n".join([line(head), sep, *(line(b) for b in body)])


def write_json(path: Path, meta: dict[str, Any], rows: list[Row], details: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    doc = {"meta": meta, "rows": [asdict(r) for r in rows], "details": details}
    path.write_text(json.dumps(clean(doc), indent=2) + "\n")
