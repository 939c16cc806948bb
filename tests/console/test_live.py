"""The live view follows a running response with a sub-agent to its end, in Chromium.

The sub-agent's tool blocks until the test releases it, so the page is seen
while the response runs (and photographed then), and again once it ended;
what the page received is compared, event by event, with the stream the API
replays for the same response.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest

from tests.console._png import Image, read_png
from tests.console.conftest import KeyedServer, signed_in

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

pytestmark = pytest.mark.timeout(120)

#: the status badge's text colours (console.css): completed, and running
COMPLETED_INK = (0x1A, 0x7F, 0x37)
RUNNING_INK = (0x9A, 0x67, 0x00)
COMPLETED_FILL = (0xDA, 0xFB, 0xE1)
RUNNING_FILL = (0xFF, 0xF8, 0xC5)


async def _replayed(server: KeyedServer, response_id: str) -> list[dict[str, Any]]:
    """The whole event stream of alice's response, as ``GET /v1/responses/{id}?stream=true``
    replays it."""
    events = []
    async with (
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
        http.stream(
            "GET", f"/v1/responses/{response_id}?stream=true", headers=server.auth("alice")
        ) as reply,
    ):
        body = (await reply.aread()).decode()
    for block in body.split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data and data[0] != "[DONE]":
            events.append(orjson.loads(data[0]))
    assert body.endswith("data: [DONE]\n\n")
    return events


async def _page_events(page: Page) -> list[tuple[int, str]]:
    pairs = await page.eval_on_selector_all(
        "#live-events li", "items => items.map(i => [Number(i.dataset.seq), i.dataset.type])"
    )
    return [(seq, kind) for seq, kind in pairs]


def _share(image: Image, colour: tuple[int, int, int]) -> int:
    return image.colours().get(colour, 0)


async def test_the_live_view_follows_a_running_response_to_its_end(
    browser: Browser, keyed_server: KeyedServer, tmp_path: Path
) -> None:
    keyed_server.script(
        "live",
        [
            {"tool_calls": [{"name": "researcher", "arguments": {"input": "find the answer"}}]},
            {"content": "All done: the researcher found it."},
        ],
    )
    keyed_server.script(
        "researcher",
        [{"tool_calls": [{"name": "block", "arguments": {"x": "1"}}]}, {"content": "found it"}],
    )
    async with httpx.AsyncClient(base_url=keyed_server.url, timeout=30) as http:
        accepted = await http.post(
            "/v1/responses",
            json={"model": "live", "input": "ask the researcher", "background": True},
            headers=keyed_server.auth("alice"),
        )
    response_id = accepted.json()["id"]
    await keyed_server.tools.wait_calls("block", 1)

    context = await signed_in(browser, keyed_server)
    page = await context.new_page()
    await page.goto(f"{keyed_server.url}/console/responses/{response_id}/live")
    # the sub-agent's tool is running: the page has everything up to the call's start
    await page.wait_for_selector('#live-events li[data-type="response.mcp_call.in_progress"]')
    live = page.locator("#live")
    assert await live.get_attribute("data-state") == "streaming"
    assert await live.get_attribute("data-status") == "in_progress"
    assert await live.get_attribute("data-terminal") is None
    item = page.locator('#live-output li[data-type="mcp_call"]')
    assert await item.locator(".item-name").inner_text() == "researcher"
    assert await item.get_attribute("data-status") == "in_progress"
    running_shot = tmp_path / "live-running.png"
    await page.locator(".bar").screenshot(path=str(running_shot))
    running = read_png(running_shot)

    keyed_server.tools.release.set()
    await page.wait_for_selector('#live[data-state="done"]')
    assert await live.get_attribute("data-status") == "completed"
    assert await live.get_attribute("data-terminal") == "response.completed"
    done_shot = tmp_path / "live-done.png"
    await page.locator(".bar").screenshot(path=str(done_shot))
    done = read_png(done_shot)
    await page.screenshot(path=str(tmp_path / "live-page.png"), full_page=True)

    # the page saw the whole stream, in order, each event once
    replayed = await _replayed(keyed_server, response_id)
    assert await _page_events(page) == [(e["sequence_number"], e["type"]) for e in replayed]
    assert await page.inner_text("#live-count") == str(len(replayed))
    final = replayed[-1]["response"]
    message = page.locator('#live-output li[data-type="message"] .item-text')
    assert await message.inner_text() == final["output"][-1]["content"][0]["text"]
    assert await item.get_attribute("data-status") == "completed"
    assert await item.locator(".item-text").inner_text() == final["output"][0]["output"]
    usage = final["usage"]
    assert await page.inner_text("#live-usage") == (
        f"{usage['input_tokens']} in / {usage['output_tokens']} out"
    )

    # the pictures: the status badge is the running one, then the completed one
    assert (running.width, running.height) == (done.width, done.height)
    assert _share(running, RUNNING_FILL) > 50 and _share(running, COMPLETED_FILL) == 0
    assert _share(done, COMPLETED_FILL) > 50 and _share(done, RUNNING_FILL) == 0
    assert _share(running, RUNNING_INK) > 0 and _share(done, COMPLETED_INK) > 0
    await context.close()
