"""The tracing observer on the SDK's in-memory exporter, and how tracing is configured.

The hooks are driven as the loop drives them, with stored-shaped steps; the
spans that come out are read back from ``InMemorySpanExporter``.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from stepline._config import TracingConfig, UpstreamConfig
from stepline._server.tracing import (
    TRACE_CONTEXT_FIELD,
    Tracing,
    TracingOptions,
    client_trace_context,
    tracing_options,
)
from stepline._steps import Step, StepKind, StepState
from stepline._upstream.routing import UpstreamTarget
from stepline.errors import ConfigError
from stepline.store._base import ResponseRecord

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
CLIENT = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
TARGET = UpstreamTarget(
    name="local",
    base_url="http://127.0.0.1:9/v1",
    api_key=None,
    upstream_model="llama-3",
    config=UpstreamConfig(base_url="http://127.0.0.1:9/v1"),
)
PAYLOAD = {"model": "llama-3", "messages": [{"role": "user", "content": "hi"}], "top_p": 0.9}


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    provider.shutdown()


def tracing(exporter: InMemorySpanExporter, *, capture_content: bool = False) -> Tracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(
        provider.get_tracer("test"), agents={"helper": "small"}, capture_content=capture_content
    )


def record(*, context: dict[str, str] | None = CLIENT) -> ResponseRecord:
    body: dict[str, Any] = {"model": "boss", "input": "hi"}
    if context is not None:
        body[TRACE_CONTEXT_FIELD] = context
    return ResponseRecord(
        id="resp_1", created_at=100.0, status="in_progress", model="boss", body=body
    )


def step(
    step_id: str,
    kind: StepKind,
    *,
    scope: str | None = None,
    state: StepState = StepState.PROCESSING,
    started: float = 101.0,
    finished: float | None = None,
    **fields: Any,
) -> Step:
    return Step(
        id=step_id,
        response_id="resp_1",
        scope=scope,
        previous_step_id=None,
        sequence=0,
        kind=kind,
        state=state,
        request=fields.pop("request", {}),
        attempt=1,
        started_at=started,
        finished_at=finished,
        **fields,
    )


def ended(started: Step, state: StepState, finished: float, **fields: Any) -> Step:
    return Step(
        **{
            **{name: getattr(started, name) for name in Step.__dataclass_fields__},
            "state": state,
            "finished_at": finished,
            **fields,
        }
    )


def _hex(number: int, width: int) -> str:
    return f"{number:0{width}x}"


def tree(spans: tuple[ReadableSpan, ...]) -> list[tuple[str, str]]:
    """(span name, parent's name) of each span; the client's span is ``client``."""
    names = {span.context.span_id: span.name for span in spans}
    names[int(CLIENT_SPAN, 16)] = "client"
    return sorted(
        (span.name, names.get(span.parent.span_id, "?") if span.parent else "-") for span in spans
    )


def by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def test_a_run_with_a_sub_agent_is_a_tree_of_step_spans_with_stored_times(
    exporter: InMemorySpanExporter,
) -> None:
    traced = tracing(exporter)
    traced.response_started(record(), resumed=False)
    first = step("step_m1", StepKind.MODEL_CALL)
    traced.model_call_started(first, target=TARGET, payload=PAYLOAD)
    usage = {"input_tokens": 12, "output_tokens": 5}
    traced.model_call_finished(
        ended(
            first,
            StepState.COMPLETED,
            102.5,
            response={"usage": usage, "finish_reason": "tool_calls", "model": "llama-3-8b"},
        ),
        target="local",
    )
    agent = step("step_t1", StepKind.TOOL_CALL, call_id="call_a", request={"name": "helper"})
    traced.tool_call_started(agent)
    inner = step("step_m2", StepKind.MODEL_CALL, scope="step_t1", started=103.0)
    traced.model_call_started(inner, target=TARGET, payload=PAYLOAD)
    traced.model_call_finished(
        ended(inner, StepState.COMPLETED, 104.0, response={"finish_reason": "stop"}),
        target="local",
    )
    traced.tool_call_finished(
        ended(agent, StepState.COMPLETED, 104.5, response={"output": "secret result"})
    )
    traced.response_finished(
        {"id": "resp_1", "status": "completed", "usage": {"input_tokens": 20, "output_tokens": 9}}
    )

    spans = exporter.get_finished_spans()
    assert tree(spans) == [
        ("chat llama-3", "invoke_agent boss"),
        ("chat llama-3", "invoke_agent helper"),
        ("execute_tool helper", "invoke_agent boss"),
        ("invoke_agent boss", "client"),
        ("invoke_agent helper", "execute_tool helper"),
    ]
    assert {_hex(span.context.trace_id, 32) for span in spans} == {CLIENT_TRACE}
    spans_of = {
        (span.name, (span.attributes or {})["stepline.step.id"]): span for span in spans[:-1]
    }
    chat = spans_of["chat llama-3", "step_m1"]
    assert (chat.start_time, chat.end_time) == (101 * 10**9, int(102.5 * 10**9))
    assert chat.kind is SpanKind.CLIENT
    assert dict(chat.attributes or {}) == {
        "stepline.response.id": "resp_1",
        "stepline.step.id": "step_m1",
        "stepline.step.attempt": 1,
        "stepline.step.state": "completed",
        "stepline.upstream": "local",
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "llama-3",
        "gen_ai.request.top_p": 0.9,
        "gen_ai.response.model": "llama-3-8b",
        "gen_ai.response.finish_reasons": ("tool_calls",),
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 5,
    }
    tool = spans_of["execute_tool helper", "step_t1"]
    assert (tool.start_time, tool.end_time) == (101 * 10**9, int(104.5 * 10**9))
    assert tool.attributes is not None
    assert tool.attributes["gen_ai.tool.call.id"] == "call_a"
    assert "gen_ai.tool.call.result" not in tool.attributes
    root = spans[-1]
    assert root.name == "invoke_agent boss"
    assert root.start_time == 100 * 10**9
    assert root.attributes is not None
    assert root.attributes["gen_ai.usage.input_tokens"] == 20
    assert root.status.status_code is StatusCode.UNSET


def test_content_is_recorded_only_when_captured(exporter: InMemorySpanExporter) -> None:
    traced = tracing(exporter, capture_content=True)
    traced.response_started(record(), resumed=False)
    call = step("step_m1", StepKind.MODEL_CALL)
    traced.model_call_started(call, target=TARGET, payload=PAYLOAD)
    message = {
        "role": "assistant",
        "content": "Sure.",
        "reasoning_content": "Easy.",
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    }
    traced.model_call_finished(
        ended(call, StepState.COMPLETED, 102.0, response={"message": message}), target="local"
    )
    tool = step("step_t1", StepKind.TOOL_CALL, request={"name": "f", "arguments": '{"q":1}'})
    traced.tool_call_started(tool)
    traced.tool_call_finished(ended(tool, StepState.COMPLETED, 103.0, response={"output": "42"}))
    traced.response_finished({"id": "resp_1", "status": "completed"})

    spans = by_name(exporter.get_finished_spans())
    chat = spans["chat llama-3"].attributes
    assert chat is not None
    assert orjson.loads(str(chat["gen_ai.input.messages"])) == [
        {"role": "user", "parts": [{"type": "text", "content": "hi"}]}
    ]
    assert orjson.loads(str(chat["gen_ai.output.messages"])) == [
        {
            "role": "assistant",
            "parts": [
                {"type": "reasoning", "content": "Easy."},
                {"type": "text", "content": "Sure."},
                {"type": "tool_call", "id": "call_a", "name": "f", "arguments": "{}"},
            ],
            "finish_reason": None,
        }
    ]
    executed = spans["execute_tool f"].attributes
    assert executed is not None
    assert (executed["gen_ai.tool.call.arguments"], executed["gen_ai.tool.call.result"]) == (
        '{"q":1}',
        "42",
    )


def test_failures_are_error_statuses_with_their_type(exporter: InMemorySpanExporter) -> None:
    traced = tracing(exporter)
    traced.response_started(record(), resumed=False)
    call = step("step_m1", StepKind.MODEL_CALL)
    traced.model_call_started(call, target=TARGET, payload=PAYLOAD)
    error = {"message": "upstream answered 503", "code": "upstream_error", "status": 503}
    traced.model_call_finished(ended(call, StepState.FAILED, 102.0, error=error), target="local")
    tool = step("step_t1", StepKind.TOOL_CALL, request={"name": "f"})
    traced.tool_call_started(tool)
    cancelled = {"message": "a sibling failed", "code": "cancelled", "status": None}
    traced.tool_call_finished(ended(tool, StepState.CANCELLED, 103.0, error=cancelled))
    failure = {"code": "server_error", "type": "model_error", "message": "it broke"}
    traced.response_finished({"id": "resp_1", "status": "failed", "error": failure})

    spans = by_name(exporter.get_finished_spans())
    observed = {
        name: (
            span.status.status_code,
            span.status.description,
            (span.attributes or {})["error.type"],
        )
        for name, span in spans.items()
    }
    assert observed == {
        "chat llama-3": (StatusCode.ERROR, "upstream answered 503", "upstream_error"),
        "execute_tool f": (StatusCode.ERROR, "a sibling failed", "cancelled"),
        "invoke_agent boss": (StatusCode.ERROR, "it broke", "server_error"),
    }
    assert (spans["chat llama-3"].attributes or {})["http.response.status_code"] == 503


def test_a_model_call_refused_before_it_was_sent_still_has_a_span(
    exporter: InMemorySpanExporter,
) -> None:
    traced = tracing(exporter)
    traced.response_started(record(), resumed=False)
    refused = step("step_m1", StepKind.MODEL_CALL)
    error = {"message": "invalid conversation", "code": "invalid_conversation", "status": None}
    traced.model_call_finished(ended(refused, StepState.FAILED, 101.5, error=error), target="local")
    traced.response_finished({"id": "resp_1", "status": "failed"})
    assert tree(exporter.get_finished_spans()) == [
        ("chat", "invoke_agent boss"),
        ("invoke_agent boss", "client"),
    ]


def test_step_headers_name_the_running_steps_span_until_it_ends(
    exporter: InMemorySpanExporter,
) -> None:
    traced = tracing(exporter)
    assert traced.step_headers("step_m1") == {}
    traced.response_started(record(context={**CLIENT, "tracestate": "vendor=1"}), resumed=False)
    call = step("step_m1", StepKind.MODEL_CALL)
    traced.model_call_started(call, target=TARGET, payload=PAYLOAD)
    headers = dict(traced.step_headers("step_m1"))
    traced.model_call_finished(ended(call, StepState.COMPLETED, 102.0), target="local")
    assert traced.step_headers("step_m1") == {}
    traced.response_finished({"id": "resp_1", "status": "completed"})

    chat = by_name(exporter.get_finished_spans())["chat llama-3"]
    assert headers == {
        "traceparent": f"00-{CLIENT_TRACE}-{_hex(chat.context.span_id, 16)}-01",
        "tracestate": "vendor=1",
    }


def test_a_resumed_run_is_a_new_trace_linked_to_the_stored_context(
    exporter: InMemorySpanExporter,
) -> None:
    traced = tracing(exporter)
    traced.response_started(record(), resumed=True)
    traced.response_finished({"id": "resp_1", "status": "completed"})
    (root,) = exporter.get_finished_spans()
    assert root.parent is None
    assert _hex(root.context.trace_id, 32) != CLIENT_TRACE
    assert [
        (_hex(link.context.trace_id, 32), _hex(link.context.span_id, 16)) for link in root.links
    ] == [(CLIENT_TRACE, CLIENT_SPAN)]
    assert (root.attributes or {})["stepline.response.resumed"] is True


def test_a_resumed_run_without_a_stored_context_has_no_link(
    exporter: InMemorySpanExporter,
) -> None:
    traced = tracing(exporter)
    traced.response_started(record(context=None), resumed=True)
    traced.response_finished({"id": "resp_1", "status": "completed"})
    (root,) = exporter.get_finished_spans()
    assert (root.parent, list(root.links)) == (None, [])


async def test_a_run_whose_task_ends_first_ends_every_open_span(
    exporter: InMemorySpanExporter,
) -> None:
    traced = tracing(exporter)
    started = asyncio.Event()

    async def run() -> None:
        traced.response_started(record(), resumed=False)
        traced.tool_call_started(step("step_t1", StepKind.TOOL_CALL, request={"name": "helper"}))
        started.set()
        await asyncio.Event().wait()  # a loop stopped from outside (drain, lost lease)

    task = asyncio.create_task(run())
    await started.wait()
    assert exporter.get_finished_spans() == ()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    spans = by_name(exporter.get_finished_spans())
    assert sorted(spans) == ["execute_tool helper", "invoke_agent boss", "invoke_agent helper"]
    assert (spans["invoke_agent boss"].attributes or {})["stepline.response.stopped"] is True
    assert (spans["execute_tool helper"].attributes or {})["stepline.step.unfinished"] is True
    assert traced.step_headers("step_t1") == {}


def test_a_hook_that_fails_never_raises(exporter: InMemorySpanExporter) -> None:
    traced = tracing(exporter)
    traced.response_started(record(), resumed=False)
    broken = step("step_m1", StepKind.MODEL_CALL)
    traced.model_call_started(broken, target=TARGET, payload=None)  # type: ignore[arg-type]
    traced.response_finished({"id": "resp_1", "status": "completed"})
    assert [span.name for span in exporter.get_finished_spans()] == ["invoke_agent boss"]


# -- the client's trace context ---------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"traceparent": "not a traceparent"}, None),
        ({"traceparent": "00-" + "A" * 32 + "-" + "b" * 16 + "-01"}, None),
        (CLIENT, CLIENT),
        ({**CLIENT, "tracestate": "a=1"}, {**CLIENT, "tracestate": "a=1"}),
        ({**CLIENT, "tracestate": "a=" + "x" * 600}, CLIENT),
    ],
)
def test_only_a_well_formed_traceparent_is_kept(
    headers: dict[str, str], expected: dict[str, str] | None
) -> None:
    assert client_trace_context(headers) == expected


# -- configuration ----------------------------------------------------------------


def options(**fields: Any) -> TracingOptions:
    values: dict[str, Any] = {
        "exporter": "otlp",
        "endpoint": None,
        "service_name": None,
        "capture_content": False,
        **fields,
    }
    return TracingOptions(**values)


@pytest.mark.parametrize(
    ("config", "environ", "expected"),
    [
        ({}, {}, None),
        ({}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, options()),
        ({}, {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, options()),
        ({}, {"OTEL_TRACES_EXPORTER": "otlp"}, options()),
        ({}, {"OTEL_TRACES_EXPORTER": "console"}, options(exporter="console")),
        ({}, {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, None),
        ({}, {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, None),
        ({"enabled": False}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, None),
        ({"enabled": True}, {"OTEL_SDK_DISABLED": "true"}, options()),
        (
            {"endpoint": "http://c:4318/", "service_name": "gw"},
            {},
            options(endpoint="http://c:4318/v1/traces", service_name="gw"),
        ),
        (
            {"enabled": True},
            {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "TRUE"},
            options(capture_content=True),
        ),
        (
            {"enabled": True, "capture_content": False},
            {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"},
            options(),
        ),
    ],
)
def test_tracing_is_on_only_when_configured(
    config: dict[str, Any], environ: dict[str, str], expected: TracingOptions | None
) -> None:
    assert tracing_options(TracingConfig(**config), environ) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER names 'zipkin'"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "OTEL_EXPORTER_OTLP_PROTOCOL is 'grpc'",
        ),
    ],
)
def test_a_tracing_setup_stepline_cannot_serve_is_a_config_error(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        tracing_options(TracingConfig(), environ)


def test_a_server_without_tracing_never_imports_the_sdk(tmp_path: Path) -> None:
    probe = (
        "import asyncio, sys\n"
        "from stepline._config import Settings\n"
        "from stepline._server.app import create_app\n"
        f"app = create_app(Settings(database_url='sqlite:///{tmp_path}/s.db'))\n"
        "async def main():\n"
        "    async with app.router.lifespan_context(app):\n"
        "        pass\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk',"
        " 'opentelemetry.exporter'))))\n"
    )
    environ = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=environ,
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
