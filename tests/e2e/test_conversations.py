"""The Conversations API end to end: the OpenAI SDK, the Agents SDK and a WebSocket
against a real stepline server, and a response's ``conversation`` over several turns.

The scripted upstream records every request it gets, so the tests read the
exact chat messages the model saw on each turn.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from agents import (
    Agent,
    OpenAIConversationsSession,
    OpenAIResponsesModel,
    Runner,
    set_tracing_disabled,
)
from openai.types.responses import EasyInputMessageParam
from websockets.asyncio.client import connect

from stepline._server.auth import hash_token, new_token
from tests._backends import SQL_KINDS, backend_params
from tests.durability.conftest import (
    DONE,
    Harness,
    chain_problems,
    client_for,
    deltas_seen,
    output_text,
    read_until,
    sse_events,
    wait_terminal,
)
from tests.durability.conftest import harness as harness  # the fixture: a process to kill
from tests.e2e.conftest import Stack, read_sse, serve_stack

SQLITE = "sqlite"


def user(text: str) -> EasyInputMessageParam:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def said(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(role, content) of each chat message the model saw."""
    return [(message["role"], message.get("content")) for message in messages]


def shown(items: list[Any]) -> list[tuple[str, str, str]]:
    """(type, role, text) of conversation items as the SDK returns them."""
    rows = []
    for item in items:
        data = item if isinstance(item, dict) else item.model_dump()
        text = "".join(part.get("text", "") for part in data.get("content") or ())
        rows.append((data["type"], data.get("role", ""), text))
    return rows


async def all_items(client: openai.AsyncOpenAI, conversation_id: str) -> list[Any]:
    return [item async for item in client.conversations.items.list(conversation_id, order="asc")]


# -- the conversation object and its items ------------------------------------------


async def test_the_sdk_manages_a_conversation_and_its_items(stack: Stack) -> None:
    client = stack.client

    created = await client.conversations.create(
        items=[user("first"), {"role": "assistant", "content": "second"}],
        metadata={"topic": "demo"},
    )
    fetched = await client.conversations.retrieve(created.id)
    updated = await client.conversations.update(created.id, metadata={"topic": "other"})
    added = await client.conversations.items.create(
        created.id, items=[user("third"), user("fourth"), user("fifth")]
    )
    assert added.data[0].id is not None
    newest_two = await client.conversations.items.list(created.id, limit=2)
    every_item = [item async for item in client.conversations.items.list(created.id, limit=2)]
    oldest_first = await all_items(client, created.id)
    one = await client.conversations.items.retrieve(added.data[0].id, conversation_id=created.id)
    after_delete = await client.conversations.items.delete(
        added.data[0].id, conversation_id=created.id
    )

    assert created.id.startswith("conv_") and created.object == "conversation"
    assert created.metadata == {"topic": "demo"}
    assert fetched == created
    assert updated.model_dump() == {**created.model_dump(), "metadata": {"topic": "other"}}
    assert shown(added.data) == [
        ("message", "user", "third"),
        ("message", "user", "fourth"),
        ("message", "user", "fifth"),
    ]
    assert (added.first_id, added.last_id, added.has_more) == (
        added.data[0].id,
        added.data[-1].id,
        False,
    )
    assert shown(newest_two.data) == [("message", "user", "fifth"), ("message", "user", "fourth")]
    assert newest_two.has_more is True
    assert shown(every_item) == [
        ("message", "user", "fifth"),
        ("message", "user", "fourth"),
        ("message", "user", "third"),
        ("message", "assistant", "second"),
        ("message", "user", "first"),
    ]
    assert [item.model_dump() for item in oldest_first] == [
        item.model_dump() for item in reversed(every_item)
    ]
    assert oldest_first[1].model_dump(exclude_none=True) == {
        "id": oldest_first[1].id,
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "second"}],
    }
    assert one.model_dump() == added.data[0].model_dump()
    assert after_delete == updated
    assert shown(await all_items(client, created.id)) == [
        ("message", "user", "first"),
        ("message", "assistant", "second"),
        ("message", "user", "fourth"),
        ("message", "user", "fifth"),
    ]

    deleted = await client.conversations.delete(created.id)
    assert deleted.model_dump() == {
        "id": created.id,
        "object": "conversation.deleted",
        "deleted": True,
    }
    with pytest.raises(openai.NotFoundError):
        await client.conversations.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        await client.conversations.items.list(created.id)


# -- responses in a conversation --------------------------------------------------


async def test_responses_continue_a_conversation_turn_after_turn(stack: Stack) -> None:
    stack.script(
        "chatty",
        [{"content": "Hello Ada."}, {"content": "You are Ada."}, {"content": "Bye Ada."}],
    )
    conversation = await stack.client.conversations.create(
        items=[{"role": "developer", "content": "Be brief."}]
    )

    first = await stack.client.responses.create(
        model="chatty", input="I am Ada.", conversation=conversation.id
    )
    second = await stack.client.responses.create(
        model="chatty", input="Who am I?", conversation={"id": conversation.id}
    )
    async with stack.http.stream(
        "POST",
        "/v1/responses",
        json={
            "model": "chatty",
            "input": "Bye.",
            "conversation": conversation.id,
            "stream": True,
        },
    ) as reply:
        events = await read_sse(reply)

    assert [r.output_text for r in (first, second)] == ["Hello Ada.", "You are Ada."]
    assert first.conversation is not None and first.conversation.id == conversation.id
    assert second.conversation is not None and second.conversation.id == conversation.id
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["conversation"] == {"id": conversation.id}
    assert events[0]["response"]["conversation"] == {"id": conversation.id}
    turns = [said(request["messages"]) for request in stack.model.requests("chatty")]
    assert turns == [
        [("system", "Be brief."), ("user", "I am Ada.")],
        [
            ("system", "Be brief."),
            ("user", "I am Ada."),
            ("assistant", "Hello Ada."),
            ("user", "Who am I?"),
        ],
        [
            ("system", "Be brief."),
            ("user", "I am Ada."),
            ("assistant", "Hello Ada."),
            ("user", "Who am I?"),
            ("assistant", "You are Ada."),
            ("user", "Bye."),
        ],
    ]
    items = await all_items(stack.client, conversation.id)
    assert shown(items) == [
        ("message", "developer", "Be brief."),
        ("message", "user", "I am Ada."),
        ("message", "assistant", "Hello Ada."),
        ("message", "user", "Who am I?"),
        ("message", "assistant", "You are Ada."),
        ("message", "user", "Bye."),
        ("message", "assistant", "Bye Ada."),
    ]
    # the output items join as the response returned them, ids included
    assert items[2].model_dump(exclude_none=True) == first.output[0].model_dump(exclude_none=True)
    # a response that is not in a conversation says nothing about one
    plain = await stack.http.post("/v1/responses", json={"model": "chatty", "input": "Hi."})
    assert "conversation" not in plain.json()


async def test_a_client_tool_call_is_answered_in_the_next_turn(stack: Stack) -> None:
    stack.script(
        "tooling",
        [
            {"tool_calls": [{"name": "lookup", "arguments": {"q": "tea"}, "id": "call_tea"}]},
            {"content": "Tea is ready."},
        ],
    )
    conversation = await stack.client.conversations.create()
    tools: Any = [
        {
            "type": "function",
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        }
    ]

    asked = await stack.client.responses.create(
        model="tooling", input="Tea?", tools=tools, conversation=conversation.id
    )
    answered = await stack.client.responses.create(
        model="tooling",
        input=[{"type": "function_call_output", "call_id": "call_tea", "output": "ready"}],
        tools=tools,
        conversation=conversation.id,
    )

    assert [item.type for item in asked.output] == ["function_call"]
    assert answered.output_text == "Tea is ready."
    last = stack.model.requests("tooling")[-1]["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "tool"]
    assert last[1]["tool_calls"][0]["id"] == "call_tea"
    assert last[2] == {"role": "tool", "tool_call_id": "call_tea", "content": "ready"}
    types = [item.type for item in await all_items(stack.client, conversation.id)]
    assert types == ["message", "function_call", "function_call_output", "message"]


async def test_a_failed_response_leaves_its_conversation_as_it_was(stack: Stack) -> None:
    stack.script("broken", [{"fault": {"status": 400, "message": "no"}}])
    conversation = await stack.client.conversations.create(items=[user("before")])

    failed = await stack.client.responses.create(
        model="broken", input="Hi.", conversation=conversation.id
    )

    assert failed.status == "failed"
    assert shown(await all_items(stack.client, conversation.id)) == [("message", "user", "before")]


# -- bad input ------------------------------------------------------------------------


def envelope(message: str, param: str | None, kind: str = "invalid_request_error") -> Any:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


@pytest.mark.parametrize("stack_factory", [SQLITE], indirect=True)
async def test_bad_input_is_refused_with_a_4xx_envelope(stack: Stack) -> None:
    stack.script("unused", [{"content": "never"}])
    conversation = (await stack.http.post("/v1/conversations", json={})).json()
    path = f"/v1/conversations/{conversation['id']}"
    http = stack.http
    too_many = [user(str(n)) for n in range(21)]

    replies = {
        "create, items not a list": await http.post("/v1/conversations", json={"items": {}}),
        "create, 21 items": await http.post("/v1/conversations", json={"items": too_many}),
        "create, a bad item": await http.post(
            "/v1/conversations", json={"items": [{"type": "message", "role": "robot"}]}
        ),
        "create, bad metadata": await http.post("/v1/conversations", json={"metadata": {"k": 1}}),
        "create, not JSON": await http.post("/v1/conversations", content=b"{"),
        "update, no metadata": await http.post(path, json={}),
        "add, no items": await http.post(f"{path}/items", json={}),
        "add, a reference": await http.post(
            f"{path}/items", json={"items": [{"type": "item_reference", "id": "msg_x"}]}
        ),
        "list, limit 0": await http.get(f"{path}/items", params={"limit": 0}),
        "list, unknown after": await http.get(f"{path}/items", params={"after": "msg_x"}),
        "list, bad include": await http.get(f"{path}/items", params={"include[]": "nope"}),
        "unknown conversation": await http.get("/v1/conversations/conv_nope"),
        "unknown item": await http.get(f"{path}/items/msg_nope"),
        "delete unknown item": await http.delete(f"{path}/items/msg_nope"),
        "response, with previous_response_id": await http.post(
            "/v1/responses",
            json={
                "model": "unused",
                "input": "x",
                "conversation": conversation["id"],
                "previous_response_id": "resp_x",
            },
        ),
        "response, unknown conversation": await http.post(
            "/v1/responses", json={"model": "unused", "input": "x", "conversation": "conv_nope"}
        ),
        "response, conversation not an id": await http.post(
            "/v1/responses", json={"model": "unused", "input": "x", "conversation": 7}
        ),
    }

    seen = {case: (reply.status_code, reply.json()) for case, reply in replies.items()}
    assert {case: (status, body["error"]["param"]) for case, (status, body) in seen.items()} == {
        "create, items not a list": (400, "items"),
        "create, 21 items": (400, "items"),
        "create, a bad item": (400, "items[0].role"),
        "create, bad metadata": (400, "metadata"),
        "create, not JSON": (400, "body"),
        "update, no metadata": (400, "metadata"),
        "add, no items": (400, "items"),
        "add, a reference": (400, "items[0].id"),
        "list, limit 0": (400, "limit"),
        "list, unknown after": (400, "after"),
        "list, bad include": (400, "include[0]"),
        "unknown conversation": (404, "conversation_id"),
        "unknown item": (404, "item_id"),
        "delete unknown item": (404, "item_id"),
        "response, with previous_response_id": (400, "conversation"),
        "response, unknown conversation": (404, "conversation"),
        "response, conversation not an id": (400, "conversation"),
    }
    assert seen["unknown conversation"][1] == envelope(
        "Conversation with id 'conv_nope' not found.", "conversation_id", "not_found"
    )
    assert seen["create, 21 items"][1] == envelope(
        "items has 21 entries; add at most 20 at a time", "items"
    )
    assert seen["response, with previous_response_id"][1] == envelope(
        "Mutually exclusive parameters: send either 'previous_response_id' or "
        "'conversation', not both.",
        "conversation",
    )
    assert stack.model.requests("unused") == []
    # nothing was added by the refused requests
    listed = (await http.get(f"{path}/items")).json()
    assert listed == {
        "object": "list",
        "data": [],
        "first_id": None,
        "last_id": None,
        "has_more": False,
    }


# -- ownership ------------------------------------------------------------------------


@pytest.fixture
async def keyed(tmp_path: Path) -> AsyncIterator[tuple[Stack, openai.AsyncOpenAI]]:
    """A stack on SQLite whose keys are ``alice`` (the stack's client) and ``bob``."""
    tokens = {name: new_token() for name in ("alice", "bob")}

    def configure(data: dict[str, Any], tools_url: str) -> None:
        data["keys"] = {name: {"hash": hash_token(token)} for name, token in tokens.items()}

    async with AsyncExitStack() as exits:
        stack = await serve_stack(
            exits, SQLITE, tmp_path, configure=configure, api_key=tokens["alice"]
        )
        bob = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=tokens["bob"], max_retries=0)
        exits.push_async_callback(bob.close)
        yield stack, bob


async def test_another_key_is_told_a_conversation_does_not_exist(
    keyed: tuple[Stack, openai.AsyncOpenAI],
) -> None:
    stack, bob = keyed
    alice = stack.client
    stack.script("owned", [{"content": "Yours."}], repeat_last=True)
    conversation = await alice.conversations.create(items=[user("alice's secret")])
    [item] = (await alice.conversations.items.list(conversation.id)).data
    assert item.id is not None
    cid = conversation.id

    attempts: dict[str, Awaitable[object]] = {
        "retrieve": bob.conversations.retrieve(cid),
        "update": bob.conversations.update(cid, metadata={"x": "y"}),
        "delete": bob.conversations.delete(cid),
        "add items": bob.conversations.items.create(cid, items=[user("bob's")]),
        "list items": bob.conversations.items.list(cid),
        "retrieve item": bob.conversations.items.retrieve(item.id, conversation_id=cid),
        "delete item": bob.conversations.items.delete(item.id, conversation_id=cid),
        "respond in it": bob.responses.create(model="owned", input="x", conversation=cid),
    }
    refused = {}
    for name, attempt in attempts.items():
        with pytest.raises(openai.NotFoundError) as error:
            await attempt
        refused[name] = error.value.status_code

    assert refused == dict.fromkeys(attempts, 404)
    assert stack.model.requests("owned") == []
    assert await alice.conversations.retrieve(cid) == conversation
    assert shown(await all_items(alice, cid)) == [("message", "user", "alice's secret")]
    mine = await alice.responses.create(model="owned", input="mine", conversation=cid)
    assert mine.output_text == "Yours."


# -- two responses at once ----------------------------------------------------------


@pytest.fixture(params=backend_params(SQL_KINDS))
async def hanging(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    """A stack whose ``hang`` tool waits (up to 30 s) until the test sets ``tools.release``."""

    def long_hang(data: dict[str, Any], tools_url: str) -> None:
        data["tools"]["hang"]["timeout"] = 30

    async with AsyncExitStack() as exits:
        yield await serve_stack(exits, request.param, tmp_path, configure=long_hang)


async def test_racing_responses_join_in_the_order_they_end(hanging: Stack) -> None:
    stack = hanging
    stack.script(
        "slow",
        [{"tool_calls": [{"name": "hang", "arguments": {}}]}, {"content": "Slow done."}],
    )
    stack.script("fast", [{"content": "Fast done."}])
    conversation = await stack.client.conversations.create(items=[user("start")])

    async with stack.http.stream(
        "POST",
        "/v1/responses",
        json={
            "model": "slow",
            "input": "slow one",
            "conversation": conversation.id,
            "stream": True,
        },
    ) as slow_reply:
        events = sse_events(slow_reply)
        async for event in events:
            assert isinstance(event, dict), "the slow response ended before its tool ran"
            if event["type"] == "response.mcp_call.in_progress":
                break  # the slow response now waits in its tool
        fast = await stack.client.responses.create(
            model="fast", input="fast one", conversation=conversation.id
        )
        stack.tools.release.set()
        rest = [event async for event in events]

    assert fast.output_text == "Fast done."
    assert rest[-1] == DONE and isinstance(rest[-2], dict)
    assert rest[-2]["type"] == "response.completed"
    slow = rest[-2]["response"]
    # each saw the conversation as it was when it began
    assert said(stack.model.requests("fast")[0]["messages"]) == [
        ("user", "start"),
        ("user", "fast one"),
    ]
    assert said(stack.model.requests("slow")[-1]["messages"])[:2] == [
        ("user", "start"),
        ("user", "slow one"),
    ]
    items = await all_items(stack.client, conversation.id)
    assert [(item.type, getattr(item, "id", None)) for item in items[1:]] == [
        ("message", items[1].id),
        ("message", fast.output[0].id),
        ("message", items[3].id),
        *[(entry["type"], entry["id"]) for entry in slow["output"]],
    ]
    assert shown(items) == [
        ("message", "user", "start"),
        ("message", "user", "fast one"),
        ("message", "assistant", "Fast done."),
        ("message", "user", "slow one"),
        ("mcp_call", "", ""),
        ("message", "assistant", "Slow done."),
    ]


async def test_many_responses_at_once_never_interleave(stack: Stack) -> None:
    stack.script("echo", [{"content": "one two three four", "token_delay": 0.001}])
    conversation = await stack.client.conversations.create()

    responses = await asyncio.gather(
        *(
            stack.client.responses.create(
                model="echo", input=[user(f"q{n}"), user(f"r{n}")], conversation=conversation.id
            )
            for n in range(6)
        )
    )

    items = await all_items(stack.client, conversation.id)
    assert len(items) == 18
    runs = [items[start : start + 3] for start in range(0, 18, 3)]
    owners = []
    for run in runs:
        question = shown(run)[0][2]
        number = question.removeprefix("q")
        assert shown(run) == [
            ("message", "user", f"q{number}"),
            ("message", "user", f"r{number}"),
            ("message", "assistant", "one two three four"),
        ]
        owners.append(int(number))
    assert sorted(owners) == list(range(6))
    # and each run holds the output of the response whose input it holds
    assert [run[2].id for run in runs] == [responses[n].output[0].id for n in owners]


# -- the Agents SDK and the WebSocket -------------------------------------------------


async def test_the_agents_sdk_session_keeps_two_turns(stack: Stack) -> None:
    set_tracing_disabled(True)
    stack.script("agent", [{"content": "Noted: blue."}, {"content": "Your colour is blue."}])
    session = OpenAIConversationsSession(openai_client=stack.client)
    agent = Agent(
        name="assistant",
        instructions="Remember things.",
        model=OpenAIResponsesModel(model="agent", openai_client=stack.client),
    )

    first = await Runner.run(agent, "My colour is blue.", session=session)
    conversation_id = session.session_id
    second = await Runner.run(agent, "What is my colour?", session=session)

    assert (first.final_output, second.final_output) == ("Noted: blue.", "Your colour is blue.")
    assert said(stack.model.requests("agent")[-1]["messages"]) == [
        ("system", "Remember things."),
        ("user", "My colour is blue."),
        ("assistant", "Noted: blue."),
        ("user", "What is my colour?"),
    ]
    stored = await session.get_items()
    assert shown(stored) == [
        ("message", "user", "My colour is blue."),
        ("message", "assistant", "Noted: blue."),
        ("message", "user", "What is my colour?"),
        ("message", "assistant", "Your colour is blue."),
    ]
    assert await session.pop_item() == stored[-1]
    assert shown(await session.get_items()) == shown(stored[:-1])
    await session.clear_session()
    with pytest.raises(openai.NotFoundError):
        await stack.client.conversations.retrieve(conversation_id)


async def test_the_agents_sdk_runs_in_a_server_side_conversation(stack: Stack) -> None:
    set_tracing_disabled(True)
    stack.script("served", [{"content": "Hi Bo."}, {"content": "You are Bo."}])
    conversation = await stack.client.conversations.create()
    agent = Agent(
        name="assistant",
        model=OpenAIResponsesModel(model="served", openai_client=stack.client),
    )

    await Runner.run(agent, "I am Bo.", conversation_id=conversation.id)
    second = await Runner.run(agent, "Who am I?", conversation_id=conversation.id)

    assert second.final_output == "You are Bo."
    assert said(stack.model.requests("served")[-1]["messages"]) == [
        ("user", "I am Bo."),
        ("assistant", "Hi Bo."),
        ("user", "Who am I?"),
    ]
    assert len(await all_items(stack.client, conversation.id)) == 4


async def test_a_websocket_turn_joins_its_conversation(stack: Stack) -> None:
    stack.script("socket", [{"content": "First."}, {"content": "Second."}])
    conversation = await stack.client.conversations.create()
    url = stack.url.replace("http://", "ws://", 1) + "/v1/responses"

    finals = []
    async with connect(url, additional_headers={"Authorization": "Bearer test"}) as socket:
        for text in ("one", "two"):
            await socket.send(
                orjson.dumps(
                    {
                        "type": "response.create",
                        "model": "socket",
                        "input": text,
                        "conversation": conversation.id,
                    }
                ).decode()
            )
            while True:
                async with asyncio.timeout(10):
                    event = orjson.loads(await socket.recv())
                if event["type"] in ("response.completed", "response.failed", "error"):
                    finals.append(event)
                    break

    assert [event["type"] for event in finals] == ["response.completed"] * 2
    assert [event["response"]["conversation"] for event in finals] == [{"id": conversation.id}] * 2
    assert said(stack.model.requests("socket")[-1]["messages"]) == [
        ("user", "one"),
        ("assistant", "First."),
        ("user", "two"),
    ]
    assert shown(await all_items(stack.client, conversation.id)) == [
        ("message", "user", "one"),
        ("message", "assistant", "First."),
        ("message", "user", "two"),
        ("message", "assistant", "Second."),
    ]


# -- a killed server ------------------------------------------------------------------

WORDS = [f"word{n}" for n in range(30)]


@pytest.mark.timeout(120)
async def test_a_response_killed_mid_stream_joins_its_conversation_once(harness: Harness) -> None:
    harness.script(
        "story", [{"content": "Earlier answer."}, {"content": " ".join(WORDS), "token_delay": 0.05}]
    )
    first = await harness.server()
    successor = await harness.server(start=False)
    async with client_for(first) as client:
        created = await client.post(
            "/v1/conversations",
            json={"items": [user("earlier"), {"role": "assistant", "content": "Earlier answer."}]},
        )
        conversation_id = created.json()["id"]
        with contextlib.suppress(httpx.HTTPError):  # the kill cuts the stream
            async with client.stream(
                "POST",
                "/v1/responses",
                json={
                    "model": "story",
                    "input": "tell on",
                    "conversation": conversation_id,
                    "stream": True,
                },
            ) as reply:
                seen = await read_until(reply, deltas_seen(3))
                first.kill9()
    response_id = seen[0]["response"]["id"]

    # another process takes over; an item added meanwhile comes after the response began
    await successor.start()
    async with client_for(successor) as client:
        added = await client.post(
            f"/v1/conversations/{conversation_id}/items", json={"items": [user("meanwhile")]}
        )
        assert added.status_code == 200, added.text
        final = await wait_terminal(client, response_id)
        listed = (
            await client.get(f"/v1/conversations/{conversation_id}/items", params={"order": "asc"})
        ).json()

    assert final["status"] == "completed"
    assert output_text(final) == " ".join(WORDS)
    assert chain_problems(harness.database, response_id) == []
    assert shown(listed["data"]) == [
        ("message", "user", "earlier"),
        ("message", "assistant", "Earlier answer."),
        ("message", "user", "meanwhile"),
        ("message", "user", "tell on"),
        ("message", "assistant", " ".join(WORDS)),
    ]
    assert listed["data"][-1] == final["output"][0]
    # the resumed model call saw the conversation as it was when the response began
    calls = [said(request["messages"]) for request in harness.model.requests("story")]
    assert len(calls) == 2
    assert (
        calls[0]
        == calls[1]
        == [
            ("user", "earlier"),
            ("assistant", "Earlier answer."),
            ("user", "tell on"),
        ]
    )
