"""Fuzz ``POST /v1/responses``: whatever the body, the answer is never a 5xx or a crash.

The app runs in-process (Starlette's TestClient, which runs its lifespan) on
SQLite, with the scripted model in-process behind ``httpx.ASGITransport`` as
its upstream. Bodies range from arbitrary JSON and bytes to near-valid
requests whose every field is drawn from what clients send, right or wrong.
Hypothesis is derandomized so CI runs the same examples every time, and the
example count keeps the run to a few seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from stepline._config import Settings
from stepline._server.app import create_app
from stepline._upstream.client import ChatClient
from stepline.scripted import ScriptedModel, create_scripted_app

pytestmark = pytest.mark.timeout(120)

_text = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=24)
_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text
)
_json = st.recursive(
    _leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=12,
)

_FIELDS = [
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_tool_calls",
    "previous_response_id",
    "store",
    "stream",
    "background",
    "metadata",
    "temperature",
    "top_p",
    "presence_penalty",
    "top_logprobs",
    "max_output_tokens",
    "text",
    "reasoning",
    "truncation",
    "include",
    "user",
    "service_tier",
]

_part = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "input_image", "output_text", "refusal", "file"])},
    optional={
        "text": _text | _json,
        "image_url": _text | st.just("data:image/png;base64,AAAA"),
        "refusal": _text,
        "detail": st.sampled_from(["low", "high", "auto", "x"]),
    },
)
_item = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(
            ["message", "function_call", "function_call_output", "mcp_call", "reasoning", "x"]
        ),
        "role": st.sampled_from(["user", "assistant", "system", "developer", "tool", "x"]),
        "content": _text | st.lists(_part, max_size=3) | _json,
        "call_id": st.sampled_from(["call_1", "call_2", ""]) | _text,
        "name": st.sampled_from(["f", "g"]) | _text,
        "arguments": st.sampled_from(["{}", '{"a": 1}', "{not json"]) | _json,
        "output": _text | _json,
        "id": _text,
        "status": _text,
    },
)
_tool = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "mcp", "web_search", "file_search"]) | _json},
    optional={
        "name": st.sampled_from(["f", "g", "bad name!", "x" * 200]) | _json,
        "parameters": st.just({"type": "object", "properties": {}}) | _json,
        "description": _json,
        "strict": _json,
        "server_url": _text,
    },
)
_tool_choice = st.sampled_from(["auto", "none", "required", "bogus"]) | st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "allowed_tools", "x"])},
    optional={
        "name": st.sampled_from(["f", "g", "missing"]),
        "mode": st.sampled_from(["auto", "required", "x"]),
        "tools": st.lists(_tool | _json, max_size=3),
    },
)


def _structured(previous_ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "model": st.sampled_from(["demo", "weather-bot", ""]) | _json,
            "input": _text | st.lists(_item, max_size=4) | _json,
        },
        optional={
            **dict.fromkeys(_FIELDS[2:], _json),
            "tools": st.lists(_tool, max_size=3) | _json,
            "tool_choice": _tool_choice | _json,
            "stream": st.booleans(),
            "background": st.booleans(),
            "store": st.booleans(),
            "previous_response_id": st.sampled_from(previous_ids) | _text,
            "max_tool_calls": st.integers(min_value=-2, max_value=3),
            "metadata": st.dictionaries(_text, _text, max_size=20) | _json,
            "text": st.fixed_dictionaries(
                {"format": st.fixed_dictionaries({"type": st.sampled_from(["json_schema", "x"])})}
            )
            | _json,
            "truncation": st.sampled_from(["auto", "disabled", "x"]),
        },
    )


_message = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "assistant", "system", "developer"]),
        "content": _text
        | st.lists(
            st.fixed_dictionaries({"type": st.just("input_text"), "text": _text}), max_size=2
        ),
    }
)
_call = st.fixed_dictionaries(
    {
        "type": st.just("function_call"),
        "call_id": st.sampled_from(["call_1", "call_2"]),
        "name": st.sampled_from(["f", "g"]),
        "arguments": st.sampled_from(["{}", '{"a": 1}']),
    }
)
_call_output = st.fixed_dictionaries(
    {
        "type": st.just("function_call_output"),
        "call_id": st.sampled_from(["call_1", "call_2", "call_9"]),
        "output": _text,
    }
)
_function: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {"type": st.just("function"), "name": st.sampled_from(["f", "g", "researcher"])},
    optional={
        "parameters": st.just({"type": "object", "properties": {"a": {"type": "integer"}}}),
        "description": _text,
    },
)


def _plausible(previous_ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Requests a client could well send: mostly valid, now and then not quite."""
    return st.fixed_dictionaries(
        {
            "model": st.sampled_from(["demo", "weather-bot"]),
            "input": _text | st.lists(_message | _call | _call_output, min_size=1, max_size=4),
        },
        optional={
            "instructions": _text,
            "tools": st.lists(_function, max_size=2, unique_by=lambda tool: tool["name"]),
            "tool_choice": st.sampled_from(["auto", "none", "required"])
            | st.fixed_dictionaries(
                {
                    "type": st.just("allowed_tools"),
                    "tools": st.lists(
                        st.fixed_dictionaries(
                            {
                                "type": st.just("function"),
                                "name": st.sampled_from(["f", "researcher"]),
                            }
                        ),
                        max_size=2,
                    ),
                }
            ),
            "stream": st.booleans(),
            "background": st.booleans(),
            "store": st.booleans(),
            "previous_response_id": st.sampled_from(previous_ids),
            "max_tool_calls": st.integers(min_value=1, max_value=3),
            "temperature": st.floats(min_value=0, max_value=2),
            "metadata": st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
            "parallel_tool_calls": st.booleans(),
            "max_output_tokens": st.integers(min_value=1, max_value=100),
            "truncation": st.sampled_from(["auto", "disabled"]),
        },
    )


def test_no_body_makes_the_server_fail(tmp_path: Path) -> None:
    upstream = httpx.ASGITransport(app=create_scripted_app(ScriptedModel(demo_token_delay=0)))
    chat = ChatClient(transport=upstream)
    settings_ = Settings.model_validate(
        {
            "database_url": f"sqlite:///{tmp_path}/fuzz.db",
            "upstreams": {"scripted": {"base_url": "http://scripted.test/v1", "max_retries": 0}},
            "default_model": {"upstream": "scripted", "tools": ["researcher"]},
            "tools": {
                "researcher": {
                    "type": "agent",
                    "description": "A research sub-agent.",
                    "model": "demo",
                }
            },
            "limits": {"max_input_items": 8, "max_request_bytes": 65536},
        }
    )
    app = create_app(settings_, chat=chat, shutdown_grace=5)
    with TestClient(app) as client:
        seed = client.post("/v1/responses", json={"model": "demo", "input": "hello"})
        assert seed.status_code == 200, seed.text
        previous_ids = [seed.json()["id"]]
        bodies = st.one_of(
            st.binary(max_size=40),
            _json,
            st.dictionaries(st.sampled_from(_FIELDS), _json, max_size=6),
            _structured(previous_ids),
            _plausible(previous_ids),
            _plausible(previous_ids),
        )

        @settings(
            max_examples=250,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(body=bodies)
        def post_anything(body: Any) -> None:
            content = body if isinstance(body, bytes) else orjson.dumps(body)
            reply = client.post(
                "/v1/responses", content=content, headers={"Content-Type": "application/json"}
            )
            assert reply.status_code < 500, (body, reply.status_code, reply.text)
            assert reply.headers["x-request-id"]
            if reply.status_code >= 400:
                error = reply.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}

        post_anything()
        # and the server still works
        after = client.post("/v1/responses", json={"model": "demo", "input": "still there?"})
        assert after.status_code == 200
        assert after.json()["status"] == "completed"
