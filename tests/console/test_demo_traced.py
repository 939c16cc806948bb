"""The demo, traced, end to end: the console, the store and the exported spans name the same steps.

A real ``stepline serve --demo`` process on loopback, as the README starts it
(no keys: the console opens without signing in), with tracing exported over
OTLP/HTTP (the ``OTEL_*`` variables) to a receiver in the test
(``tests/_otlp.py``). The demo model calls every offered tool the user's
message mentions: here its ``researcher`` sub-agent (which calls the demo's
weather tool), the weather tool itself, and ``checkpoint``, a ``--tools``
Python tool (``tests/console/_held_tool.py``) that waits on the test's
``block`` tool, so the response keeps running until the test releases it.

In Chromium a person opens the console, finds the running response in the
list, follows it live to its end (the page saw the whole stream the API
replays) and opens its step tree; then the step ids of the tree, of the
store and the ``stepline.step.id`` of the exported spans must be one set,
with the sub-agent's steps under its tool call in the tree and in the span
tree alike, and ``GET /v1/responses/{id}`` shows the stored tool calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from stepline._steps import StepKind
from stepline.scripted import serve_app
from tests._otlp import ReceivedSpan, Receiver
from tests.console._held_tool import HOLD_URL
from tests.console.conftest import DemoServer, start_demo
from tests.console.test_live import _page_events
from tests.console.test_pages import _stored_steps
from tests.durability.conftest import ToolServer, replay

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

pytestmark = pytest.mark.timeout(120)

HELD_TOOL = Path(__file__).with_name("_held_tool.py")
QUESTION = "Ask the researcher about the weather in Rome, then pass the checkpoint"

#: step id -> the id of the step it runs under (None: the response's own loop)
Nesting = dict[str, str | None]


@dataclass
class TracedDemo:
    server: DemoServer
    receiver: Receiver
    tools: ToolServer

    @property
    def url(self) -> str:
        return self.server.url

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=30)


@pytest.fixture
async def traced_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TracedDemo]:
    for name in (
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_TRACES_EXPORTER",
        "OTEL_SDK_DISABLED",
        "OTEL_SERVICE_NAME",
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",
    ):
        monkeypatch.delenv(name, raising=False)
    async with AsyncExitStack() as exits:
        receiver, tools = Receiver(), ToolServer()
        receiver_url = await exits.enter_async_context(serve_app(receiver.app()))
        tools_url = await exits.enter_async_context(serve_app(tools.app(), shutdown_timeout=1))
        exits.callback(tools.release.set)
        # the child process inherits these: traces go to the receiver, 50 ms after a span ends
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver_url)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        monkeypatch.setenv(HOLD_URL, f"{tools_url}/tools/block")
        server = await start_demo(tmp_path, exits, "--tools", str(HELD_TOOL))
        yield TracedDemo(server=server, receiver=receiver, tools=tools)


# -- what each side says the steps are ----------------------------------------------


async def _tree_nesting(page: Page) -> Nesting:
    pairs = await page.eval_on_selector_all(
        "li.step",
        """items => items.map(item => [
            item.dataset.stepId,
            item.parentElement.closest('li.step')?.dataset.stepId ?? null,
        ])""",
    )
    nesting: Nesting = dict(pairs)
    assert len(nesting) == len(pairs), "a step is drawn twice"
    return nesting


def _span_nesting(spans: list[ReceivedSpan]) -> Nesting:
    """Each step span's step id, and the step id of the nearest span above it that names
    another step (a sub-agent's ``invoke_agent`` span carries its tool call's id)."""
    by_id = {span.span_id: span for span in spans}
    nesting: Nesting = {}
    for span in spans:
        step_id = span.attributes.get("stepline.step.id")
        if step_id is None or span.attributes["gen_ai.operation.name"] == "invoke_agent":
            continue
        assert step_id not in nesting, f"two step spans name {step_id}"
        parent = by_id.get(span.parent_span_id)
        while parent is not None and parent.attributes.get("stepline.step.id") in (None, step_id):
            parent = by_id.get(parent.parent_span_id)
        nesting[step_id] = None if parent is None else parent.attributes["stepline.step.id"]
    return nesting


# -- the test ---------------------------------------------------------------------


async def test_the_demo_seen_live_in_the_console_is_the_stored_chain_and_the_exported_trace(
    browser: Browser, traced_demo: TracedDemo
) -> None:
    demo = traced_demo
    async with demo.client() as http:
        accepted = await http.post(
            "/v1/responses", json={"model": "demo", "input": QUESTION, "background": True}
        )
    assert accepted.status_code == 200, accepted.text
    response_id = accepted.json()["id"]
    await demo.tools.wait_calls("block", 1)

    # the running response, in the list, followed live
    context = await browser.new_context(viewport={"width": 1400, "height": 900})
    page = await context.new_page()
    await page.goto(f"{demo.url}/console")
    assert await page.inner_text("header .who") == "no API keys: open on loopback"
    row = page.locator(f'#responses tr[data-response-id="{response_id}"]')
    assert await row.get_attribute("data-status") == "in_progress"
    await row.locator("a.live-link").click()
    await page.wait_for_url(f"{demo.url}/console/responses/{response_id}/live")
    live = page.locator("#live")
    calls = page.locator('#live-output li[data-type="mcp_call"]')
    checkpoint = calls.filter(has=page.get_by_text("checkpoint", exact=True))
    await checkpoint.wait_for()
    assert await live.get_attribute("data-state") == "streaming"
    assert await live.get_attribute("data-status") == "in_progress"
    assert await checkpoint.get_attribute("data-status") == "in_progress"
    names = await calls.locator(".item-name").all_inner_texts()
    assert sorted(names) == ["checkpoint", "researcher", "weather"]

    demo.tools.release.set()
    await page.wait_for_selector('#live[data-state="done"]')
    assert await live.get_attribute("data-terminal") == "response.completed"
    async with demo.client() as http:
        replayed = await replay(http, response_id)
        final = (await http.get(f"/v1/responses/{response_id}")).json()
    assert final["status"] == "completed", final
    assert replayed.events[-1]["response"] == final
    assert await _page_events(page) == [
        (event["sequence_number"], event["type"]) for event in replayed.events
    ]

    # its step tree
    await page.click("#tree-link")
    await page.wait_for_url(f"{demo.url}/console/responses/{response_id}")
    tree = await _tree_nesting(page)
    await context.close()

    steps = await _stored_steps(demo.server, response_id)
    stored: Nesting = {step.id: step.scope for step in steps}
    root = await demo.receiver.response_span(response_id)
    spans = demo.receiver.trace(root.trace_id)
    exported = _span_nesting(spans)

    # one set of step ids, one nesting, on all three sides
    assert tree == stored
    assert exported == stored
    assert {span.attributes["stepline.response.id"] for span in spans} == {response_id}
    # what GET /v1/responses shows ran is the store's top-level tool calls
    top_calls = [s for s in steps if s.kind is StepKind.TOOL_CALL and s.scope is None]
    assert [item["name"] for item in final["output"] if item["type"] == "mcp_call"] == [
        step.tool_name for step in top_calls
    ]
    # the sub-agent ran a model call, the weather tool and a model call, under its tool
    # call: in the span tree, under its invoke_agent span, which is under the tool call's
    (researcher,) = [step for step in top_calls if step.tool_name == "researcher"]
    inner = sorted((s for s in steps if s.scope == researcher.id), key=lambda s: s.sequence)
    assert [(step.kind, step.request.get("name")) for step in inner] == [
        (StepKind.MODEL_CALL, None),
        (StepKind.TOOL_CALL, "weather"),
        (StepKind.MODEL_CALL, None),
    ]
    named = {(span.name, span.attributes.get("stepline.step.id")): span for span in spans}
    agent = named["invoke_agent researcher", researcher.id]
    assert agent.parent_span_id == named["execute_tool researcher", researcher.id].span_id
    assert sorted(span.name for span in spans if span.parent_span_id == agent.span_id) == [
        "chat demo",
        "chat demo",
        "execute_tool weather",
    ]
