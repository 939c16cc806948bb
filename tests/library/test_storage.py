"""Optional storage: a run with a SQL store keeps its steps, and an interrupted run resumes."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stepline._protocol.request import parse_request
from stepline.agent import Agent, FunctionTool, RunEvent, ToolCallStarted, collect, tool
from stepline.errors import ConfigError
from stepline.scripted import ScriptedModel
from stepline.store import StepStore
from tests._backends import SQL_KINDS, backend_params, store_backend
from tests.library._support import call, model_of, scripted, turn


@pytest.fixture(params=backend_params(SQL_KINDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StepStore]:
    async with store_backend(request.param, tmp_path) as opened:
        yield opened


class Tools:
    """``fetch`` answers at once; ``block`` waits until :attr:`release` is set."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.release = asyncio.Event()
        self.blocked = asyncio.Event()

        @tool
        async def fetch(page: int) -> str:
            """Fetch a page."""
            self.calls["fetch"] += 1
            return f"page {page}"

        @tool
        async def block(page: int) -> str:
            """Process a page, slowly."""
            self.calls["block"] += 1
            self.blocked.set()
            await self.release.wait()
            return f"processed {page}"

        self.all: list[FunctionTool] = [fetch, block]


def two_step_model() -> ScriptedModel:
    return scripted(
        pages=[
            turn(None, call("fetch", page=1)),
            turn(None, call("block", page=1)),
            turn("Page 1 is processed."),
        ]
    )


async def test_a_run_keeps_its_steps_in_the_store(store: StepStore) -> None:
    tools = Tools()
    tools.release.set()
    agent = Agent(model=model_of(two_step_model(), "pages"), tools=tools.all, store=store)

    result = await agent.run("Process page 1.")

    assert result.status == "completed"
    steps = await store.load_steps(result.response_id)
    assert [(s.kind.value, s.state.value, s.tool_name or None, s.scope) for s in steps] == [
        ("model_call", "completed", None, None),
        ("tool_call", "completed", "fetch", None),
        ("model_call", "completed", None, None),
        ("tool_call", "completed", "block", None),
        ("model_call", "completed", None, None),
    ]
    assert [(s.response or {}).get("output") for s in steps if s.tool_name] == [
        "page 1",
        "processed 1",
    ]
    record = await store.get_response(result.response_id)
    assert record is not None
    assert (record.status, record.result) == ("completed", result.response)


async def interrupt_while_blocked(agent: Agent, tools: Tools) -> list[RunEvent]:
    """Consume a run's stream until ``block`` is running, then cancel the consumer."""
    seen: list[RunEvent] = []

    async def consume() -> None:
        async for event in agent.stream("Process page 1."):
            seen.append(event)

    consumer = asyncio.create_task(consume())
    await tools.blocked.wait()
    consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer
    return seen


async def test_resume_continues_an_interrupted_run_without_redoing_its_steps(
    store: StepStore,
) -> None:
    tools = Tools()
    model = two_step_model()
    first = Agent(model=model_of(model, "pages"), tools=tools.all, store=store)

    seen = await interrupt_while_blocked(first, tools)

    assert isinstance(seen[-1], ToolCallStarted)
    assert seen[-1].name == "block"
    (interrupted,) = await store.list_responses()
    assert interrupted.status == "in_progress"
    tools.release.set()
    again = Agent(model=model_of(model, "pages"), tools=tools.all, store=store)

    result = await collect(again.resume(interrupted.id))

    assert (result.status, result.text) == ("completed", "Page 1 is processed.")
    assert result.response_id == interrupted.id
    # fetch completed before the interruption and is not run again; block never
    # finished, so it runs once more
    assert tools.calls == Counter({"fetch": 1, "block": 2})
    # the two model calls that completed are not made again
    assert len(model.requests("pages")) == 3
    tool_messages = [m for m in result.messages if m["role"] == "tool"]
    assert tool_messages == [
        {"role": "tool", "tool_call_id": "call_0_0", "content": "page 1"},
        {"role": "tool", "tool_call_id": "call_1_0", "content": "processed 1"},
    ]
    steps = await store.load_steps(interrupted.id)
    assert [(s.kind.value, s.state.value) for s in steps] == [
        ("model_call", "completed"),
        ("tool_call", "completed"),
        ("model_call", "completed"),
        ("tool_call", "completed"),
        ("model_call", "completed"),
    ]


async def test_an_interrupted_stream_says_which_run_to_resume(store: StepStore) -> None:
    tools = Tools()
    agent = Agent(model=model_of(two_step_model(), "pages"), tools=tools.all, store=store)

    seen = await interrupt_while_blocked(agent, tools)
    tools.release.set()

    (interrupted,) = await store.list_responses()
    # the caller of resume() needs the run's id, and only has the events it saw
    assert any(getattr(event, "response_id", None) == interrupted.id for event in seen)


async def test_resume_needs_a_store_and_a_stored_run(store: StepStore) -> None:
    model = two_step_model()
    without_store = Agent(model=model_of(model, "pages"))
    with_store = Agent(model=model_of(model, "pages"), store=store)

    with pytest.raises(ConfigError, match="resume needs the agent's store"):
        without_store.resume("resp_missing")
    with pytest.raises(ConfigError, match="no stored run 'resp_missing'"):
        await collect(with_store.resume("resp_missing"))


async def test_resuming_a_finished_run_runs_nothing_again(store: StepStore) -> None:
    tools = Tools()
    tools.release.set()
    model = two_step_model()
    agent = Agent(model=model_of(model, "pages"), tools=tools.all, store=store)
    finished = await agent.run("Process page 1.")

    events = [event async for event in agent.resume(finished.response_id)]

    assert [event.type for event in events] == ["run_started", "run_completed"]
    again = await collect(agent.resume(finished.response_id))
    assert (again.text, again.messages, again.steps) == (
        finished.text,
        finished.messages,
        finished.steps,
    )
    assert tools.calls == Counter({"fetch": 1, "block": 1})
    assert len(model.requests("pages")) == 3


async def test_sub_agent_steps_are_stored_in_the_calling_steps_scope(store: StepStore) -> None:
    model = scripted(lead=[turn(None, call("researcher", input="Page 1?")), turn("Done.")])
    pages = two_step_model()
    tools = Tools()
    tools.release.set()
    researcher = Agent(model=model_of(pages, "pages"), name="researcher", tools=tools.all)
    lead = Agent(model=model_of(model, "lead"), tools=[researcher], store=store)

    result = await lead.run("Ask the researcher.")

    steps = await store.load_steps(result.response_id)
    (delegation,) = [s for s in steps if s.tool_name == "researcher"]
    assert [(s.kind.value, s.tool_name or None, s.scope) for s in steps] == [
        ("model_call", None, None),
        ("tool_call", "researcher", None),
        ("model_call", None, delegation.id),
        ("tool_call", "fetch", delegation.id),
        ("model_call", None, delegation.id),
        ("tool_call", "block", delegation.id),
        ("model_call", None, delegation.id),
        ("model_call", None, None),
    ]
    assert (delegation.response or {}).get("output") == "Page 1 is processed."


async def test_a_run_whose_previous_response_went_away_fails_as_the_requests_fault(
    store: StepStore,
) -> None:
    """A run that continues a response deleted after it was accepted (a retention
    sweep, a DELETE) fails with ``invalid_prompt`` naming it, not an internal error."""
    model = scripted(plain=[turn("Done.")])
    agent = Agent(model=model_of(model, "plain"), store=store)
    first = await agent.run("Do it.")
    [stored] = await store.list_responses()
    body = parse_request(
        {**stored.body, "previous_response_id": "resp_gone", "input": "And then?"}
    ).model_dump(mode="json", by_alias=True, exclude_unset=True)
    await store.create_response(
        dataclasses.replace(
            stored,
            id="resp_after",
            body=body,
            previous_response_id="resp_gone",
            status="in_progress",
            result=None,
            completed_at=None,
        )
    )

    result = await collect(agent.resume("resp_after"))

    assert first.status == "completed"
    assert result.status == "failed"
    assert result.response["error"] == {
        "code": "invalid_prompt",
        "type": "invalid_request",
        "message": "Previous response with id 'resp_gone' not found.",
    }
    assert len(model.requests("plain")) == 1  # the failed run asked the model nothing
