"""The console's usage page draws what ``GET /v1/usage?group_by=day`` answers, every day."""

from __future__ import annotations

import datetime
import re

import httpx
import pytest

from tests.console.conftest import KeyedServer

pytestmark = pytest.mark.timeout(90)


def _values(html: str, chart: str, css: str) -> dict[str, int]:
    figure = html[html.index(f'id="{chart}"') :]
    figure = figure[: figure.index("</figure>")]
    return {
        day: int(value)
        for day, value in re.findall(
            rf'<rect class="{css}"[^>]*data-day="([0-9-]+)" data-value="([0-9]+)"', figure
        )
    }


async def test_the_usage_page_charts_the_usage_figures(keyed_server: KeyedServer) -> None:
    keyed_server.script("broken", [{"fault": {"status": 400, "message": "no"}}])
    async with httpx.AsyncClient(base_url=keyed_server.url, timeout=30) as http:
        for key, model in [("alice", "alpha"), ("alice", "beta"), ("bob", "broken")]:
            await http.post(
                "/v1/responses",
                json={"model": model, "input": "hello"},
                headers=keyed_server.auth(key),
            )
        figures = (
            await http.get("/v1/usage?group_by=day", headers=keyed_server.auth("admin"))
        ).json()
        page = await http.get(
            "/console/usage?days=7",
            headers={"Cookie": f"stepline_console={keyed_server.tokens['admin']}"},
        )
    assert page.status_code == 200
    html = page.text
    (today,) = figures["data"]
    assert (today["requests"], today["completed"], today["errors"]) == (3, 2, 1)
    day = today["day"]
    last = datetime.date.fromisoformat(day)
    window = [(last - datetime.timedelta(days=n)).isoformat() for n in range(6, -1, -1)]
    completed = _values(html, "requests-chart", "completed")
    errors = _values(html, "requests-chart", "errors")
    assert list(completed) == window  # a bar for every day, oldest first
    assert {d: v for d, v in completed.items() if v} == {day: today["completed"]}
    assert {d: v for d, v in errors.items() if v} == {day: today["errors"]}
    assert _values(html, "tokens-chart", "input")[day] == today["input_tokens"]
    assert _values(html, "tokens-chart", "output")[day] == today["output_tokens"]
    row = re.search(rf'<tr data-day="{day}">(.*?)</tr>', html)
    assert row is not None
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", row.group(1))
    assert cells[:6] == [
        day,
        f"{today['requests']:,}",
        f"{today['completed']:,}",
        f"{today['errors']:,}",
        f"{today['input_tokens']:,}",
        f"{today['output_tokens']:,}",
    ]
