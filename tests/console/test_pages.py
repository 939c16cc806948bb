"""The console's list and step tree, in Chromium, against real ``stepline serve`` processes.

The list is checked against the responses the test created (through the API,
with two keys, three models and a failure); the tree against the steps the
store holds for a demo response with a sub-agent. The tree's screenshot is
checked too: one completed bar per step, drawn in the tree's region.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from stepline._steps import Step
from stepline.store._sql import open_store
from tests.console._png import read_png
from tests.console.conftest import DemoServer, KeyedServer, signed_in

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

pytestmark = pytest.mark.timeout(120)

#: the colour of a completed step's bar (--ok-bar in console.css)
COMPLETED_BAR = (0x2D, 0xA4, 0x4E)


async def _create(server: KeyedServer, key: str, model: str, text: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        reply = await http.post(
            "/v1/responses", json={"model": model, "input": text}, headers=server.auth(key)
        )
    body: dict[str, Any] = reply.json()
    return body


async def _row_ids(page: Page) -> list[str]:
    return [
        await row.get_attribute("data-response-id") or ""
        for row in await page.locator("#responses tbody tr").all()
    ]


async def _column(page: Page, index: int) -> list[str]:
    cells = page.locator(f"#responses tbody tr td:nth-child({index})")
    return [text.strip() for text in await cells.all_inner_texts()]


async def test_the_list_filters_and_pages_every_keys_responses(
    browser: Browser, keyed_server: KeyedServer
) -> None:
    keyed_server.script("broken", [{"fault": {"status": 400, "message": "bad request upstream"}}])
    created = []
    for key, model, text in [
        ("alice", "alpha", "hello one"),
        ("bob", "beta", "hello two"),
        ("alice", "alpha", "hello three"),
        ("bob", "broken", "hello four"),
        ("alice", "alpha", "hello five"),
        ("bob", "beta", "hello six"),
        ("admin", "alpha", "hello seven"),
    ]:
        created.append((key, model, await _create(keyed_server, key, model, text)))
    newest_first = [body["id"] for _, _, body in reversed(created)]
    statuses = {body["id"]: body["status"] for _, _, body in created}
    assert [statuses[i] for i in newest_first].count("failed") == 1

    context = await signed_in(browser, keyed_server)
    page = await context.new_page()
    url = keyed_server.url

    # three at a time, older and older, to the end
    await page.goto(f"{url}/console?limit=3")
    seen = [await _row_ids(page)]
    assert await page.locator("#newest").count() == 0
    while await page.locator("#older").count():
        await page.click("#older")
        await page.wait_for_load_state()
        assert await page.locator("#newest").count() == 1
        seen.append(await _row_ids(page))
    assert seen == [newest_first[0:3], newest_first[3:6], newest_first[6:7]]
    # the pages of a filtered list keep its filter
    await page.goto(f"{url}/console?key=alice&limit=2")
    alices = await _row_ids(page)
    while await page.locator("#older").count():
        await page.click("#older")
        await page.wait_for_load_state()
        alices += await _row_ids(page)
    assert alices == [i for i in newest_first if i in _ids(created, key="alice")]

    # every row says what the API said
    await page.goto(f"{url}/console")
    assert await _row_ids(page) == newest_first
    assert await _column(page, 3) == [statuses[i] for i in newest_first]
    assert await _column(page, 4) == [model for _, model, _ in reversed(created)]
    assert await _column(page, 5) == [key for key, _, _ in reversed(created)]
    tokens_in = await _column(page, 7)
    tokens_out = await _column(page, 8)
    for index, (_, _, body) in enumerate(reversed(created)):
        if body["status"] == "completed":
            assert tokens_in[index] == f"{body['usage']['input_tokens']:,}"
            assert tokens_out[index] == f"{body['usage']['output_tokens']:,}"
    (failed_id,) = [i for i in newest_first if statuses[i] == "failed"]
    (failed,) = [body for _, _, body in created if body["id"] == failed_id]
    error_code = page.locator(f'tr[data-response-id="{failed_id}"] .error-code')
    assert await error_code.inner_text() == failed["error"]["code"]
    assert await error_code.get_attribute("title") == failed["error"]["message"]

    # the filter form: status, then model, then key (each alone)
    await page.select_option("select[name=status]", "failed")
    await page.click("#filters button[type=submit]")
    await page.wait_for_load_state()
    assert await _row_ids(page) == [failed_id]
    await page.click("text=Reset")
    await page.wait_for_load_state()
    await page.fill("input[name=model]", "alpha")
    await page.click("#filters button[type=submit]")
    await page.wait_for_load_state()
    assert await _row_ids(page) == [i for i in newest_first if i in _ids(created, model="alpha")]
    await page.fill("input[name=model]", "")
    await page.fill("input[name=key]", "bob")
    await page.click("#filters button[type=submit]")
    await page.wait_for_load_state()
    assert await _row_ids(page) == [i for i in newest_first if i in _ids(created, key="bob")]
    # a key or model in a row is a link to that filter
    await page.click(f'tr[data-response-id="{failed_id}"] td:nth-child(4) a')
    await page.wait_for_load_state()
    assert await _row_ids(page) == [failed_id]  # key bob and model broken
    await page.goto(f"{url}/console?status=cancelled")
    assert await _row_ids(page) == []
    assert await page.locator("#empty").count() == 1
    await context.close()


def _ids(created: list[tuple[str, str, dict[str, Any]]], **match: str) -> set[str]:
    return {
        body["id"]
        for key, model, body in created
        if match.get("key", key) == key and match.get("model", model) == model
    }


def _depth_first(steps: list[Step]) -> list[tuple[str, str | None]]:
    """(id, scope) of each step in the order a tree shows them: each step, then its scope's."""
    order: list[tuple[str, str | None]] = []

    def visit(scope: str | None) -> None:
        for step in sorted((s for s in steps if s.scope == scope), key=lambda s: s.sequence):
            order.append((step.id, step.scope))
            visit(step.id)

    visit(None)
    return order


async def _stored_steps(server: DemoServer, response_id: str) -> list[Step]:
    store = await open_store(server.database_url, migrate=False)
    try:
        return await store.load_steps(response_id)
    finally:
        await store.close()


async def test_the_step_tree_of_a_demo_response_with_a_sub_agent(
    browser: Browser, demo_server: DemoServer, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=demo_server.url, timeout=60) as http:
        reply = await http.post(
            "/v1/responses",
            json={"model": "demo", "input": "Ask the researcher about the weather in Rome"},
        )
    response = reply.json()
    assert response["status"] == "completed"
    steps = await _stored_steps(demo_server, response["id"])
    sub_agent = [step for step in steps if any(other.scope == step.id for other in steps)]
    assert [step.tool_name for step in sub_agent] == ["researcher"]

    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    await page.goto(f"{demo_server.url}/console/responses/{response['id']}")
    drawn = await page.eval_on_selector_all(
        "li.step",
        """items => items.map(item => [
            item.dataset.stepId,
            item.parentElement.closest('li.step')?.dataset.stepId ?? null,
        ])""",
    )
    assert [tuple(pair) for pair in drawn] == _depth_first(steps)
    states = await page.eval_on_selector_all("li.step", "items => items.map(i => i.dataset.state)")
    assert states == [step.state.value for step in sorted(steps, key=_tree_order(steps))]
    labels = await page.locator("li.step > details > summary .kind").all_inner_texts()
    assert labels.count("sub-agent") == 1
    assert labels.count("model call") == sum(step.kind.value == "model_call" for step in steps)

    # the tree's picture: one completed bar per step, in the tree's region
    tree = page.locator("#tree")
    box = await tree.bounding_box()
    assert box is not None
    shot = tmp_path / "tree.png"
    await tree.screenshot(path=str(shot))
    image = read_png(shot)
    # the element's own size (a fractional edge rounds either way)
    assert abs(image.width - box["width"]) <= 1 and abs(image.height - box["height"]) <= 1
    assert image.height >= 7 * 20  # seven rows of at least 20 px
    colours = image.colours(step=2)
    background = max(colours, key=lambda colour: colours[colour])
    inked = sum(count for colour, count in colours.items() if colour != background)
    assert inked / sum(colours.values()) > 0.05, "the tree region is (nearly) blank"
    assert _bands(image, COMPLETED_BAR) == len(steps)
    full = tmp_path / "tree-page.png"
    await page.screenshot(path=str(full), full_page=True)
    assert read_png(full).width == 1400

    # a step opens to its stored request, result and timing
    researcher = sub_agent[0]
    step = page.locator(f'li.step[data-step-id="{researcher.id}"]')
    await step.locator("> details > summary").click()
    request, result = await step.locator("> details .payloads pre").all_inner_texts()
    assert json.loads(request) == researcher.request
    assert json.loads(result) == researcher.response
    facts = await step.locator("> details dl.facts dd").all_inner_texts()
    assert researcher.id in facts
    assert researcher.call_id in facts
    assert str(researcher.attempt) in facts
    await page.close()


def _tree_order(steps: list[Step]) -> Any:
    position = {step_id: index for index, (step_id, _) in enumerate(_depth_first(steps))}
    return lambda step: position[step.id]


def _bands(image: Any, colour: tuple[int, int, int]) -> int:
    """How many separate horizontal bands of rows hold pixels of exactly ``colour``."""
    bands, inside = 0, False
    for y in range(image.height):
        row = image.rows[y]
        has = any(
            (row[x], row[x + 1], row[x + 2]) == colour
            for x in range(0, len(row) - 2, image.channels)
        )
        if has and not inside:
            bands += 1
        inside = has
    return bands
