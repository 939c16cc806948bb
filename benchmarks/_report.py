"""Figures, targets and the tables the harness prints.

A :class:`Row` is one figure measured through stepline and (where there is
one) straight against the scripted model. Its comparison is either the
difference (``stepline - direct``, for latencies: the overhead) or the ratio
(``stepline / direct``, for rates). A :class:`Target` bounds either the
difference or stepline's own figure, and the row says PASS or MISS.

Percentiles are nearest-rank over the raw samples; a p99 overhead is the
difference of the two p99s, not the p99 of paired differences.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["CpuRow", "Row", "Target", "cpu_table", "percentile", "results_table"]


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in 0..100."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, kw_only=True)
class Target:
    """``applies_to`` (the difference or stepline's figure) ``op`` ``value``."""

    label: str
    op: Literal["<=", ">="]
    value: float
    applies_to: Literal["difference", "stepline"]

    def met(self, row: Row) -> bool | None:
        figure = row.difference if self.applies_to == "difference" else row.stepline
        if figure is None or math.isnan(figure):
            return None
        return figure <= self.value if self.op == "<=" else figure >= self.value

    def margin(self, row: Row) -> float | None:
        """How far the figure is on the good side of the bound (negative: missed by)."""
        figure = row.difference if self.applies_to == "difference" else row.stepline
        if figure is None or math.isnan(figure):
            return None
        return self.value - figure if self.op == "<=" else figure - self.value


@dataclass(frozen=True, kw_only=True)
class Row:
    scenario: str
    figure: str
    unit: str
    stepline: float
    direct: float | None = None
    compare: Literal["difference", "ratio"] = "difference"
    target: Target | None = None
    decimals: int = 2

    @property
    def difference(self) -> float | None:
        return None if self.direct is None else self.stepline - self.direct

    @property
    def ratio(self) -> float | None:
        if self.direct is None or not self.direct:
            return None
        return self.stepline / self.direct

    def verdict(self) -> str:
        if self.target is None:
            return ""
        met = self.target.met(self)
        if met is None:
            return "n/a"
        margin = self.target.margin(self)
        assert margin is not None
        word = "PASS" if met else "MISS"
        return f"{word} ({'+' if margin >= 0 else '-'}{self._number(abs(margin))} {self.unit})"

    def _number(self, value: float | None) -> str:
        if value is None or math.isnan(value):
            return "-"
        return f"{value:,.{self.decimals}f}"

    def cells(self) -> list[str]:
        if self.compare == "ratio":
            ratio = self.ratio
            versus = "-" if ratio is None else f"× {ratio:.2f}"
        else:
            difference = self.difference
            versus = "-" if difference is None else f"{difference:+,.{self.decimals}f} {self.unit}"
        target = ""
        if self.target is not None:
            subject = "stepline" if self.target.applies_to == "stepline" else "difference"
            target = f"{subject} {self.target.op} {self.target.value:g} {self.unit}"
        return [
            self.scenario,
            f"{self.figure} ({self.unit})",
            self._number(self.stepline),
            self._number(self.direct),
            versus,
            target,
            self.verdict(),
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "figure": self.figure,
            "unit": self.unit,
            "stepline": self.stepline,
            "direct": self.direct,
            "difference": self.difference,
            "ratio": self.ratio,
            "target": None if self.target is None else self.target.label,
            "verdict": self.verdict() or None,
        }


@dataclass(frozen=True, kw_only=True)
class CpuRow:
    """CPU use of every process during one measured window, in % of one core."""

    run: str
    seconds: float
    percent: dict[str, float]


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def results_table(rows: list[Row]) -> str:
    header = ["scenario", "figure", "stepline", "direct", "stepline vs direct", "target", "result"]
    return _markdown(header, [row.cells() for row in rows])


def cpu_table(rows: list[CpuRow]) -> str:
    names = ["stepline", "upstream", "tools", "load generator"]
    header = ["measured window", "seconds", *(f"{name} CPU %" for name in names)]
    body = [
        [
            row.run,
            f"{row.seconds:.1f}",
            *(f"{row.percent[name]:.0f}" if name in row.percent else "-" for name in names),
        ]
        for row in rows
    ]
    return _markdown(header, body)
