"""Scenario 6: a loop of 20 client-side tool calls over one WebSocket, against HTTP.

The scripted model calls the client's ``lookup`` function 20 turns in a row,
then answers; the client (:mod:`benchmarks._websocket_client`, its own
process) runs the tool and continues each turn from the previous one with
``previous_response_id``: over one WebSocket per loop (stored, and with
``store: false``, where the connection's memory is the only history), and
over HTTP on one keep-alive connection per loop (streamed, as the WebSocket
is, and plain). Nothing here is compared with the upstream alone: every
figure is stepline's, so the rows carry stepline's column only and a ratio
row says how the WebSocket compares.

CPU is read from ``/proc`` around every measured loop, while the client
waits, and summed per transport: the CPU rows give each process's share of
one core over that transport's loops, and stepline's CPU milliseconds per
loop.
"""

from __future__ import annotations

import subprocess
from statistics import median
from typing import Any

import orjson

from benchmarks._report import CpuRow, Row, percentile
from benchmarks._services import PYTHON, cpu_seconds, http_json
from benchmarks._stack import ROOT, Options, Results, Stack, log

__all__ = ["CALLS", "websocket"]

#: client tool calls per loop (the loop has one response more: the answer)
CALLS = 20
MODEL = "bench-ws-loop"
_SCRIPT = {
    "turns": [
        *[{"tool_calls": [{"name": "lookup", "arguments": {"key": "k"}}]}] * CALLS,
        {"content": "Twenty lookups answered."},
    ]
}
_TOOLS = [
    {
        "type": "function",
        "name": "lookup",
        "description": "Look a key up.",
        "parameters": {"type": "object", "properties": {"key": {"type": "string"}}},
    }
]
TRANSPORTS = ("websocket", "websocket-store-false", "http-stream", "http")
_NAMES = {
    "websocket": "WebSocket",
    "websocket-store-false": "WebSocket, store: false",
    "http-stream": "HTTP, stream: true",
    "http": "HTTP, plain",
}
_SCENARIO = f"7. {CALLS} client tool calls, previous_response_id"


def _ms(seconds: float) -> float:
    return seconds * 1000


def _drive(stack: Stack, job: dict[str, Any], results: Results) -> dict[str, Any]:
    """Run the client; sum every process's CPU over each transport's measured loops."""
    popen = subprocess.Popen(
        [PYTHON, "-m", "benchmarks._websocket_client"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )
    assert popen.stdin is not None and popen.stdout is not None
    popen.stdin.write(orjson.dumps(job).decode() + "\n")
    popen.stdin.flush()
    watched = {name: process.pid for name, process in stack.watched().items()}
    watched["load generator"] = popen.pid
    cpu = {transport: dict.fromkeys(watched, 0.0) for transport in job["transports"]}
    at_start: dict[str, float] = {}
    result: dict[str, Any] | None = None
    try:
        for line in popen.stdout:
            message = orjson.loads(line)
            if "result" in message:
                result = message["result"]
                continue
            now = {name: cpu_seconds(pid) for name, pid in watched.items()}
            if message["mark"] == "start":
                at_start = now
            else:
                for name in watched:
                    cpu[message["transport"]][name] += now[name] - at_start[name]
            popen.stdin.write("go\n")
            popen.stdin.flush()
    finally:
        if popen.poll() is None:
            popen.wait(60)
    if popen.returncode != 0 or result is None:
        raise RuntimeError(f"websocket: the client failed (exit {popen.returncode})")
    for transport in job["transports"]:
        seconds = sum(result[transport]["loops"])
        results.cpu.append(
            CpuRow(
                run=f"{CALLS}-call loops, {_NAMES[transport]}",
                seconds=seconds,
                percent={name: 100 * used / seconds for name, used in cpu[transport].items()},
            )
        )
        result[transport]["cpu_seconds"] = cpu[transport]
    return result


def websocket(options: Options, results: Results) -> None:
    loops, warmup = (8, 2) if options.quick else (60, 3)
    with Stack("websocket", options, database="sqlite") as stack:
        assert stack.upstream.url is not None and stack.stepline is not None
        http_json("POST", stack.upstream.url + "/v1/scripts", {"name": MODEL, "script": _SCRIPT})
        port = int(str(stack.stepline.url).rsplit(":", 1)[1])
        log(f"websocket: {loops} loops of {CALLS} tool calls on each of {', '.join(TRANSPORTS)}")
        measured = _drive(
            stack,
            {
                "host": "127.0.0.1",
                "port": port,
                "model": MODEL,
                "tools": _TOOLS,
                "calls": CALLS,
                "transports": list(TRANSPORTS),
                "loops": loops,
                "warmup": warmup,
            },
            results,
        )
    results.raw["websocket"] = measured
    for transport in TRANSPORTS:
        figures = measured[transport]
        scenario = f"{_SCENARIO}, {_NAMES[transport]}"
        results.rows += [
            Row(
                scenario=scenario,
                figure=f"whole loop ({CALLS + 1} responses), median",
                unit="ms",
                stepline=_ms(median(figures["loops"])),
                decimals=1,
            ),
            Row(
                scenario=scenario,
                figure="per turn p50",
                unit="ms",
                stepline=_ms(percentile(figures["turns"], 50)),
            ),
            Row(
                scenario=scenario,
                figure="per turn p99",
                unit="ms",
                stepline=_ms(percentile(figures["turns"], 99)),
            ),
            Row(
                scenario=scenario,
                figure="stepline CPU per loop",
                unit="ms",
                stepline=_ms(figures["cpu_seconds"]["stepline"] / len(figures["loops"])),
                decimals=1,
            ),
        ]
    websocket_loop = median(measured["websocket"]["loops"])
    for transport in ("http-stream", "http"):
        results.rows.append(
            Row(
                scenario=f"{_SCENARIO}, WebSocket ÷ {_NAMES[transport]}",
                figure="whole loop, median",
                unit="×",
                stepline=websocket_loop / median(measured[transport]["loops"]),
            )
        )
