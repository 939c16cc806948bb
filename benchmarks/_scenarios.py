"""The scenarios: what runs, against what, and the rows each adds to the table.

Each scenario starts its own :class:`~benchmarks._stack.Stack` and runs the
load generator twice: through stepline, then "direct" — the exact Chat
Completions bodies stepline sent (read back from the scripted model's request
log) replayed straight to the scripted model, with the client calling the
tools itself where the loop has any. So the difference is what stepline adds:
parsing, routing, storing every step and event, relaying.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

import orjson

from benchmarks._chain import chain
from benchmarks._floor import floor
from benchmarks._litellm import litellm
from benchmarks._report import Row, Target, percentile
from benchmarks._services import http_json
from benchmarks._stack import Options, Results, Stack, log, run_load, run_sequence
from benchmarks._tracing import tracing
from benchmarks._websocket import websocket

__all__ = ["SCENARIOS", "run_scenario"]

SCENARIOS = (
    "floor",
    "single",
    "loop",
    "stream",
    "throughput",
    "memory",
    "litellm",
    "websocket",
    "tracing",
    "chain",
)

# the targets of the performance issue (#15), on SQLite, durable storage on
STEP_P50 = Target(
    label="overhead per model step p50 <= 1 ms", op="<=", value=1, applies_to="difference"
)
STEP_P99 = Target(
    label="overhead per model step p99 <= 3 ms", op="<=", value=3, applies_to="difference"
)
STEP_P50_POSTGRES = Target(
    label="overhead per model step p50 <= 2 ms", op="<=", value=2, applies_to="difference"
)
FIRST_TOKEN = Target(
    label="time to first token <= direct + 1 ms", op="<=", value=1, applies_to="difference"
)
#: one stream through one process
RELAY_ONE = Target(
    label="relay >= 50,000 text deltas/s", op=">=", value=50_000, applies_to="stepline"
)
#: many concurrent streams through one process
RELAY = Target(label="relay >= 20,000 text deltas/s", op=">=", value=20_000, applies_to="stepline")
MEMORY = Target(label="1,000 open streams <= 150 MB", op="<=", value=150, applies_to="stepline")

_STEPLINE_DELTA = "event: response.output_text.delta\n"
_STEPLINE_DONE = "event: response.completed\n"
_DIRECT_DELTA = '"delta":{"content":"'
_DIRECT_DONE = '"finish_reason":"stop"'


def _ms(seconds: float) -> float:
    return seconds * 1000


# --- 1. one model call, not streamed ---


def single(options: Options, results: Results) -> None:
    count, warmup = (200, 20) if options.quick else (1000, 50)
    with Stack("single", options, database="sqlite", profile=True) as stack:
        body = {"model": "bench-single", "input": "What is the answer?"}
        assert stack.stepline is not None
        reply = http_json("POST", f"{stack.stepline.url}/v1/responses", body)
        if reply.get("status") != "completed":
            raise RuntimeError(f"single: stepline answered {reply}")
        upstream_body = stack.upstream_requests("bench-single")[-1]
        log(f"single: {count} requests through stepline, then direct")
        through = run_sequence(
            [[stack.stepline_part(body, '"status":"completed"')]],
            count=count,
            warmup=warmup,
            stack=stack,
            run="single call, stepline",
            results=results,
        )
        _keep_profile(stack, results)
        direct = run_sequence(
            [[stack.upstream_part(upstream_body, "[DONE]")]],
            count=count,
            warmup=warmup,
            stack=stack,
            run="single call, direct",
            results=results,
        )
    for q, target in ((50, STEP_P50), (99, STEP_P99)):
        results.rows.append(
            Row(
                scenario="1. one model call, c=1",
                figure=f"latency p{q}",
                unit="ms",
                stepline=_ms(percentile(through, q)),
                direct=_ms(percentile(direct, q)),
                target=target,
            )
        )
    if options.postgres is None:
        return
    with Stack("single-postgresql", options, database="postgresql") as stack:
        assert stack.stepline is not None
        http_json("POST", f"{stack.stepline.url}/v1/responses", body)
        log(f"single: {count} requests through stepline on PostgreSQL")
        on_postgres = run_sequence(
            [[stack.stepline_part(body, '"status":"completed"')]],
            count=count,
            warmup=warmup,
            stack=stack,
            run="single call, stepline on PostgreSQL",
            results=results,
        )
    targets: tuple[tuple[int, Target | None], ...] = ((50, STEP_P50_POSTGRES), (99, None))
    for q, bound in targets:
        results.rows.append(
            Row(
                scenario="1. one model call, c=1, PostgreSQL",
                figure=f"latency p{q}",
                unit="ms",
                stepline=_ms(percentile(on_postgres, q)),
                direct=_ms(percentile(direct, q)),
                target=bound,
            )
        )


# --- 2. model call, two parallel HTTP tools, model call ---


def loop(options: Options, results: Results) -> None:
    count, warmup = (100, 10) if options.quick else (300, 20)
    steps = 3
    with Stack("loop", options, database="sqlite", profile=True) as stack:
        body = {"model": "bench-loop", "input": "Look both keys up."}
        assert stack.stepline is not None
        reply = http_json("POST", f"{stack.stepline.url}/v1/responses", body)
        kinds = [item["type"] for item in reply.get("output", [])]
        if reply.get("status") != "completed" or kinds.count("mcp_call") != 2:
            raise RuntimeError(f"loop: stepline answered {reply}")
        if any(item.get("error") for item in reply["output"] if item["type"] == "mcp_call"):
            raise RuntimeError(f"loop: a tool failed: {reply['output']}")
        by_turn: dict[int, dict[str, Any]] = {}
        for sent in stack.upstream_requests("bench-loop"):
            turn = sum(1 for message in sent["messages"] if message["role"] == "assistant")
            by_turn[turn] = sent
        calls = by_turn[1]["messages"]
        assistant = next(message for message in calls if message["role"] == "assistant")
        tool_parts = [
            stack.tool_part(call["function"]["name"], orjson.loads(call["function"]["arguments"]))
            for call in assistant["tool_calls"]
        ]
        log(f"loop: {count} three-step loops through stepline, then direct")
        through = run_sequence(
            [[stack.stepline_part(body, '"status":"completed"')]],
            count=count,
            warmup=warmup,
            stack=stack,
            run="three-step loop, stepline",
            results=results,
        )
        _keep_profile(stack, results)
        direct = run_sequence(
            [
                [stack.upstream_part(by_turn[0], "[DONE]")],
                tool_parts,
                [stack.upstream_part(by_turn[1], "[DONE]")],
            ],
            count=count,
            warmup=warmup,
            stack=stack,
            run="three-step loop, direct",
            results=results,
        )
    for q in (50, 99):
        results.rows.append(
            Row(
                scenario="2. three-step loop, c=1",
                figure=f"latency p{q}",
                unit="ms",
                stepline=_ms(percentile(through, q)),
                direct=_ms(percentile(direct, q)),
            )
        )
    for q, target in ((50, STEP_P50), (99, STEP_P99)):
        results.rows.append(
            Row(
                scenario="2. three-step loop, c=1",
                figure=f"latency p{q} ÷ {steps} steps",
                unit="ms",
                stepline=_ms(percentile(through, q)) / steps,
                direct=_ms(percentile(direct, q)) / steps,
                target=target,
            )
        )


# --- 3. one streamed response of 2,000 tokens ---


def stream(options: Options, results: Results) -> None:
    count, warmup = (4, 1) if options.quick else (10, 2)
    if options.profile_dir is not None:
        count *= 5  # enough samples for the profile
    with Stack("stream", options, database="sqlite", profile=True) as stack:
        body = {"model": "bench-2000", "input": "Write at length.", "stream": True}
        log(f"stream: {count} responses of 2,000 tokens through stepline, then direct")
        through = run_load(
            {
                "kind": "stream",
                **stack.stepline_part(body),
                "marker": _STEPLINE_DELTA,
                "ok_marker": _STEPLINE_DONE,
                "count": count,
                "warmup": warmup,
            },
            stack,
            "2,000-token stream, stepline",
            results,
        )
        upstream_body = stack.upstream_requests("bench-2000")[-1]
        direct = run_load(
            {
                "kind": "stream",
                **stack.upstream_part(upstream_body),
                "marker": _DIRECT_DELTA,
                "ok_marker": _DIRECT_DONE,
                "count": count,
                "warmup": warmup,
            },
            stack,
            "2,000-token stream, direct",
            results,
        )
        _keep_profile(stack, results)
    for name, runs in (("stepline", through["runs"]), ("direct", direct["runs"])):
        if any(run["deltas"] != 2000 for run in runs):
            raise RuntimeError(f"stream: {name} relayed {[run['deltas'] for run in runs]} deltas")
    scenario = "3. one 2,000-token stream"
    results.rows += [
        Row(
            scenario=scenario,
            figure="time to first text delta, median",
            unit="ms",
            stepline=_ms(median(run["first"] for run in through["runs"])),
            direct=_ms(median(run["first"] for run in direct["runs"])),
            target=FIRST_TOKEN,
        ),
        Row(
            scenario=scenario,
            figure="whole stream, median",
            unit="ms",
            stepline=_ms(median(run["total"] for run in through["runs"])),
            direct=_ms(median(run["total"] for run in direct["runs"])),
        ),
        Row(
            scenario=scenario,
            figure="text deltas relayed per second, median",
            unit="deltas/s",
            stepline=median(run["deltas"] / run["last"] for run in through["runs"]),
            direct=median(run["deltas"] / run["last"] for run in direct["runs"]),
            compare="ratio",
            target=RELAY_ONE,
            decimals=0,
        ),
    ]


# --- 4. throughput: 64 and 256 concurrent streams of 200 tokens ---


def throughput(options: Options, results: Results) -> None:
    duration, warmup = (5.0, 1.5) if options.quick else (20.0, 3.0)
    body = {"model": "bench-200", "input": "Write a little.", "stream": True}
    measured: dict[tuple[str, int], dict[str, Any]] = {}
    # SQLite first: its run captures the Chat Completions body that direct replays
    backends = ["sqlite", "direct"]
    if options.postgres is not None:
        backends += ["postgresql", "postgresql-3"]
    upstream_body: dict[str, Any] = {}
    for backend in backends:
        database = {"direct": None, "postgresql-3": "postgresql"}.get(backend, backend)
        steplines = 3 if backend == "postgresql-3" else 1
        with Stack(
            f"throughput-{backend}",
            options,
            database=database,
            profile=steplines == 1,
            steplines=steplines,
        ) as stack:
            for concurrency in (64, 256):
                log(f"throughput: {concurrency} streams for {duration:g}s, {backend}")
                if backend == "direct":
                    part = stack.upstream_part(upstream_body)
                    markers = {"marker": _DIRECT_DELTA, "ok_marker": _DIRECT_DONE}
                else:
                    part = stack.stepline_part(body)
                    markers = {"marker": _STEPLINE_DELTA, "ok_marker": _STEPLINE_DONE}
                measured[(backend, concurrency)] = run_load(
                    {
                        "kind": "throughput",
                        **part,
                        **markers,
                        "concurrency": concurrency,
                        "duration": duration,
                        "warmup": warmup,
                    },
                    stack,
                    f"{concurrency} streams, {backend}",
                    results,
                )
            if backend == "sqlite":
                upstream_body = stack.upstream_requests("bench-200")[-1]
            _keep_profile(stack, results)
    for (backend, concurrency), result in measured.items():
        if result["errors"]:
            results.notes.append(
                f"{concurrency} streams, {backend}: {result['errors']} failed requests, "
                f"e.g. {result['error_sample'][:1]}"
            )
    names = {
        "sqlite": "SQLite",
        "postgresql": "PostgreSQL",
        "postgresql-3": "PostgreSQL, 3 processes",
    }
    for concurrency in (64, 256):
        direct = measured[("direct", concurrency)]
        for backend in (name for name in backends if name != "direct"):
            through = measured[(backend, concurrency)]
            scenario = f"4. {concurrency} streams × 200 tokens, {names[backend]}"
            results.rows += [
                Row(
                    scenario=scenario,
                    figure="responses per second",
                    unit="1/s",
                    stepline=through["completed"] / through["duration"],
                    direct=direct["completed"] / direct["duration"],
                    compare="ratio",
                    decimals=1,
                ),
                Row(
                    scenario=scenario,
                    figure="latency p50",
                    unit="ms",
                    stepline=_ms(percentile(through["latencies"], 50)),
                    direct=_ms(percentile(direct["latencies"], 50)),
                    decimals=0,
                ),
                Row(
                    scenario=scenario,
                    figure="latency p99",
                    unit="ms",
                    stepline=_ms(percentile(through["latencies"], 99)),
                    direct=_ms(percentile(direct["latencies"], 99)),
                    decimals=0,
                ),
                Row(
                    scenario=scenario,
                    figure="text deltas relayed per second",
                    unit="deltas/s",
                    stepline=through["deltas"] / through["duration"],
                    direct=direct["deltas"] / direct["duration"],
                    compare="ratio",
                    target=RELAY,
                    decimals=0,
                ),
            ]


# --- 5. memory with 1,000 open streams ---


def memory(options: Options, results: Results) -> None:
    streams = 1000
    with Stack("memory", options, database="sqlite") as stack:
        stepline = stack.stepline
        assert stepline is not None and stepline.url is not None
        for _ in range(20):
            http_json(
                "POST", f"{stepline.url}/v1/responses", {"model": "bench-single", "input": "Hi"}
            )
        time.sleep(1.0)
        idle = stepline.rss_kib()
        log(f"memory: idle stepline {idle / 1000:.1f} MB; opening {streams} slow streams")

        def measure(message: dict[str, Any]) -> dict[str, Any]:
            time.sleep(2.0)
            samples = []
            for _ in range(5):
                samples.append(stepline.rss_kib())
                time.sleep(0.5)
            fds = len(list(Path(f"/proc/{stepline.pid}/fd").iterdir()))
            return {"rss_kib": max(samples), "open_fds": fds, "ready": message}

        body = {"model": "bench-slow", "input": "Take your time.", "stream": True}
        held = run_load(
            {
                "kind": "hold",
                **stack.stepline_part(body),
                "marker": _STEPLINE_DELTA,
                "ok_marker": _STEPLINE_DONE,
                "streams": streams,
                "open_timeout": 90,
            },
            stack,
            f"{streams} open streams, stepline",
            results,
            on_ready=measure,
        )
    if held["open"] != streams:
        results.notes.append(f"memory: only {held['open']} of {streams} streams opened")
    scenario = f"5. {held['open']:,} open streams, SQLite"
    total_mb = held["rss_kib"] * 1024 / 1e6
    results.raw["memory"] = {"idle_kib": idle, **held}
    results.rows += [
        Row(
            scenario=scenario,
            figure="resident memory, idle",
            unit="MB",
            stepline=idle * 1024 / 1e6,
            decimals=1,
        ),
        Row(
            scenario=scenario,
            figure="resident memory, streams open",
            unit="MB",
            stepline=total_mb,
            target=MEMORY,
            decimals=1,
        ),
        Row(
            scenario=scenario,
            figure="resident memory per stream",
            unit="KB",
            stepline=(held["rss_kib"] - idle) * 1024 / 1e3 / max(1, held["open"]),
            decimals=1,
        ),
    ]


def _keep_profile(stack: Stack, results: Results) -> None:
    summary = stack.profile_summary()
    if summary is not None:
        results.profiles.append(summary)


_RUNNERS: dict[str, Callable[[Options, Results], None]] = {
    "floor": floor,
    "single": single,
    "loop": loop,
    "stream": stream,
    "throughput": throughput,
    "memory": memory,
    "litellm": litellm,
    "websocket": websocket,
    "tracing": tracing,
    "chain": chain,
}


def run_scenario(name: str, options: Options, results: Results) -> None:
    _RUNNERS[name](options, results)
