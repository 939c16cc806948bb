"""The console's usage page: requests and tokens per UTC day, as SVG bar charts and a table.

The figures are :func:`stepline.store._usage.read_usage`'s, grouped by day (the
numbers ``GET /v1/usage?group_by=day`` answers), read in one query. Charts are
inline SVG drawn here, so they need no script and pass the console's
Content-Security-Policy.

Invariants:

* Every day of the window has a bar, a day without responses a bar of zero,
  so the horizontal axis is time.
* A bar's stacked parts add up to its total (completed + errors = requests;
  input + output = tokens), each part's value in its ``data-value``.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from stepline._server.console.html import Html, join, render
from stepline.store._usage_values import UsageRow

__all__ = ["DAY_CHOICES", "usage_page"]

#: the windows the page offers, in days
DAY_CHOICES = (7, 14, 30, 90)
_BAR = 24
_GAP = 8
_HEIGHT = 120


def _days(first: datetime.date, last: datetime.date) -> list[datetime.date]:
    count = (last - first).days + 1
    return [first + datetime.timedelta(days=offset) for offset in range(max(count, 0))]


def _chart(
    chart_id: str,
    title: str,
    days: Sequence[datetime.date],
    parts: Sequence[tuple[str, str, Sequence[int]]],
) -> Html:
    """Stacked bars, one per day; ``parts`` are (css class, label, value per day)."""
    totals = [sum(values[index] for _, _, values in parts) for index in range(len(days))]
    top = max([*totals, 1])
    bars: list[Html] = []
    for index, day in enumerate(days):
        x = index * (_BAR + _GAP)
        y = float(_HEIGHT)
        for css, label, values in parts:
            value = values[index]
            height = value / top * _HEIGHT
            y -= height
            bars.append(
                render(
                    '<rect class="{css}" x="{x}" y="{y:.2f}" width="{w}" height="{h:.2f}" '
                    'data-day="{day}" data-value="{value}"><title>{day}: {value:,} {label}</title>'
                    "</rect>",
                    css=css,
                    x=x,
                    y=y,
                    w=_BAR,
                    h=height,
                    day=day.isoformat(),
                    value=value,
                    label=label,
                )
            )
        bars.append(
            render(
                '<text x="{x}" y="{y}" class="axis">{label}</text>',
                x=x + _BAR / 2,
                y=_HEIGHT + 14,
                label=day.strftime("%m-%d"),
            )
        )
    legend = join(
        render('<span class="legend {css}">{label}</span>', css=css, label=label)
        for css, label, _ in parts
    )
    width = max(len(days) * (_BAR + _GAP), _BAR)
    return render(
        '<figure class="chart" id="{id}"><figcaption>{title} <span class="muted">(max '
        "{top:,})</span> {legend}</figcaption>"
        '<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        'aria-label="{title}">{bars}</svg></figure>',
        id=chart_id,
        title=title,
        top=top,
        legend=legend,
        width=width,
        height=_HEIGHT + 20,
        bars=join(bars),
    )


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:,.0f} ms"


def usage_page(
    rows: Sequence[UsageRow], *, first: datetime.date, last: datetime.date, days: int
) -> Html:
    by_day = {row.day: row for row in rows if row.day is not None}
    axis = _days(first, last)
    empty = UsageRow()
    shown = [by_day.get(day, empty) for day in axis]
    requests = _chart(
        "requests-chart",
        "Requests per day",
        axis,
        [
            ("completed", "completed", [row.completed for row in shown]),
            ("errors", "failed, incomplete or cancelled", [row.errors for row in shown]),
            (
                "running",
                "running",
                [row.requests - row.completed - row.errors for row in shown],
            ),
        ],
    )
    tokens = _chart(
        "tokens-chart",
        "Tokens per day",
        axis,
        [
            ("input", "input tokens", [row.input_tokens for row in shown]),
            ("output", "output tokens", [row.output_tokens for row in shown]),
        ],
    )
    table_rows = join(
        render(
            '<tr data-day="{day}"><td>{day}</td><td class="num">{requests:,}</td>'
            '<td class="num">{completed:,}</td><td class="num">{errors:,}</td>'
            '<td class="num">{input:,}</td><td class="num">{output:,}</td>'
            '<td class="num">{p50}</td><td class="num">{p95}</td></tr>',
            day=row.day.isoformat() if row.day else "",
            requests=row.requests,
            completed=row.completed,
            errors=row.errors,
            input=row.input_tokens,
            output=row.output_tokens,
            p50=_ms(row.latency_p50),
            p95=_ms(row.latency_p95),
        )
        for row in reversed([row for row in rows if row.day is not None])
    )
    choices = join(
        render(
            '<a href="/console/usage?days={days}"{current}>{days} days</a>',
            days=choice,
            current=Html(' aria-current="page"' if choice == days else ""),
        )
        for choice in DAY_CHOICES
    )
    return render(
        '<section class="bar"><h1>Usage</h1><nav class="choices">{choices}</nav>'
        '<span class="muted">UTC days, {first} to {last}; every key and model '
        "(GET /v1/usage has the figures per key and model)</span></section>"
        '<div class="charts">{requests}{tokens}</div>'
        '<table class="grid" id="usage"><thead><tr><th>day</th><th class="num">requests</th>'
        '<th class="num">completed</th><th class="num">errors</th>'
        '<th class="num">tokens in</th><th class="num">out</th>'
        '<th class="num">latency p50</th><th class="num">p95</th></tr></thead>'
        "<tbody>{rows}</tbody></table>",
        choices=choices,
        first=first.isoformat(),
        last=last.isoformat(),
        requests=requests,
        tokens=tokens,
        rows=table_rows,
    )
