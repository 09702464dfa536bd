"""Plain-text tables and number formatting."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

Cell = str | int | float


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def num(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


@dataclass
class Table:
    title: str
    headers: Sequence[str]
    rows: list[Sequence[Cell]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: Cell) -> None:
        self.rows.append(cells)

    def render(self) -> str:
        text = [[_cell(c) for c in row] for row in self.rows]
        widths = [max([len(h), *(len(row[i]) for row in text)]) for i, h in enumerate(self.headers)]
        numeric = [all(_is_number(row[i]) for row in text) and bool(text) for i in range(len(self.headers))]
        lines = [self.title, "=" * len(self.title), _line(self.headers, widths, numeric)]
        lines.append("  ".join("-" * w for w in widths))
        lines += [_line(row, widths, numeric) for row in text]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


def _cell(value: Cell) -> str:
    if isinstance(value, float):
        return num(value)
    return str(value)


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("x%"))
    except ValueError:
        return text == "-"
    return True


def _line(cells: Sequence[str], widths: list[int], numeric: list[bool]) -> str:
    parts = [c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric, strict=True)]
    return "  ".join(parts).rstrip()
