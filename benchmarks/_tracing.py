"""Scenario 8: what tracing costs, scenarios 1 and 2 with tracing off and on in one run.

One stack: the scripted upstream, the tool server, stepline as shipped with
tracing off (its default: no ``[tracing]``, no ``OTEL_*`` variables), and a
second stepline, on a SQLite file of its own, whose config is the same plus
``[tracing] endpoint``: the OTLP/HTTP sink (:mod:`benchmarks._otlp_sink`, its
own process), which accepts every export and keeps only counts. The load
generator runs scenario 1's single call and scenario 2's three-step loop,
with their counts, against the untraced process and then the traced one.

Invariants:

* In this scenario's rows the "stepline" column is tracing on and "direct"
  is tracing off, both through stepline: the difference is what tracing
  costs. The CPU table's "stepline" column is the process the window ran on.
* The traced process's exporter runs with the SDK's defaults (a batch
  every 5 s or 512 spans), as an operator's would.
* Before the rows are made, the sink must have received every span the
  traced runs made (2 per single call, 5 per loop), else a note says how
  many are missing; none at all fails the scenario (tracing was not on).
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks._report import Row, percentile
from benchmarks._services import PYTHON, Process, free_port, http_json
from benchmarks._stack import HOST, Options, Results, Stack, log, run_load

__all__ = ["tracing"]

_SCENARIO = "8. tracing on vs off"
#: spans of one response: invoke_agent + chat; invoke_agent + chat + 2 execute_tool + chat
_SPANS = {"single": 2, "loop": 5}
#: how long the exporter may take to send what the runs left queued (5 s batches)
_FLUSH_SECONDS = 30.0


def _ms(seconds: float) -> float:
    return seconds * 1000


class _TracingStack(Stack):
    """The scenario's :class:`Stack` plus the sink and a traced stepline; ``use`` picks
    which stepline the load generator (and the CPU table) sees."""

    untraced: Process | None = None
    traced: Process | None = None
    sink: Process | None = None

    def start_traced(self) -> None:
        assert self.stepline is not None
        port = free_port()
        self.sink = self._start(
            "otlp sink", [PYTHON, "-m", "benchmarks._otlp_sink", "--port", str(port)], port
        )
        self.sink.wait_ready("/stats")
        config = self.dir / "stepline-traced.toml"
        config.write_text(
            (self.dir / "stepline.toml").read_text()
            + f'\n[tracing]\nendpoint = "{self.sink.url}"\n'
        )
        port = free_port()
        where = ["--host", HOST, "--port", str(port), "--config", str(config)]
        if self.options.store == "memory":
            argv = [PYTHON, "-m", "benchmarks._memory_stepline", *where]
        else:
            database = f"sqlite:///{self.dir / 'stepline-traced.db'}"
            argv = [PYTHON, "-m", "stepline", "serve", *where, "--database", database]
        self.traced = self._start("stepline traced", argv, port)
        self.traced.wait_ready()
        self.untraced = self.stepline

    def use(self, traced: bool) -> Process:
        process = self.traced if traced else self.untraced
        assert process is not None
        self.stepline = process
        return process

    def spans(self) -> int:
        assert self.sink is not None
        counts: dict[str, int] = http_json("GET", f"{self.sink.url}/stats")
        return counts["spans"]

    def wait_spans(self, expected: int) -> int:
        """Until the sink holds ``expected`` spans, or the flush time is up; how many it has."""
        deadline = time.monotonic() + _FLUSH_SECONDS
        while (received := self.spans()) < expected and time.monotonic() < deadline:
            time.sleep(0.2)  # polling another process: its exporter sends on its own clock
        return received


def _check(name: str, reply: dict[str, Any]) -> None:
    calls = [item for item in reply.get("output", []) if item.get("type") == "mcp_call"]
    wanted = 2 if name == "loop" else 0
    if reply.get("status") != "completed" or len(calls) != wanted:
        raise RuntimeError(f"tracing: stepline answered {reply}")
    if any(call.get("error") for call in calls):
        raise RuntimeError(f"tracing: a tool failed: {calls}")


def _cpu_ms_per_response(results: Results, run: str, count: int) -> float:
    (row,) = [row for row in results.cpu if row.run == run]
    return row.percent["stepline"] / 100 * row.seconds * 1000 / count


def tracing(options: Options, results: Results) -> None:
    counts = {
        "single": (200, 20) if options.quick else (1000, 50),
        "loop": (100, 10) if options.quick else (300, 20),
    }
    bodies = {
        "single": {"model": "bench-single", "input": "What is the answer?"},
        "loop": {"model": "bench-loop", "input": "Look both keys up."},
    }
    inherited = sorted(name for name in os.environ if name.startswith("OTEL_"))
    if inherited:
        results.notes.append(
            f"tracing: the harness's environment sets {', '.join(inherited)}; both stepline "
            "processes inherit it, so 'off' may not be stepline's default"
        )
    measured: dict[tuple[str, bool], dict[str, Any]] = {}
    expected = 0
    stack = _TracingStack("tracing", options, database="sqlite")
    with stack:  # Stack.__enter__ is typed as returning a plain Stack
        stack.start_traced()
        for name in ("single", "loop"):
            count, warmup = counts[name]
            for traced in (False, True):
                process = stack.use(traced)
                _check(name, http_json("POST", f"{process.url}/v1/responses", bodies[name]))
                mode = "on" if traced else "off"
                log(f"tracing: {count} × {name} through stepline, tracing {mode}")
                measured[(name, traced)] = run_load(
                    {
                        "kind": "sequence",
                        "stages": [[stack.stepline_part(bodies[name], '"status":"completed"')]],
                        "count": count,
                        "warmup": warmup,
                    },
                    stack,
                    f"{name}, tracing {mode}",
                    results,
                )
                if traced:
                    expected += _SPANS[name] * (1 + warmup + count)
        received = stack.wait_spans(expected)
    results.raw["tracing spans"] = {"expected": expected, "received": received}
    if received == 0:
        raise RuntimeError("tracing: the sink received no span: tracing was not on")
    if received < expected:
        results.notes.append(f"tracing: the sink received {received} of {expected} spans")
    _rows(measured, counts, results)


def _rows(
    measured: dict[tuple[str, bool], dict[str, Any]],
    counts: dict[str, tuple[int, int]],
    results: Results,
) -> None:
    for name, label, steps in (("single", "one model call", 1), ("loop", "three-step loop", 3)):
        on, off = measured[(name, True)], measured[(name, False)]
        scenario = f"{_SCENARIO}: {label}, c=1"
        for q in (50, 99):
            per = "" if steps == 1 else f" ÷ {steps} steps"
            results.rows.append(
                Row(
                    scenario=scenario,
                    figure=f"latency p{q}{per}",
                    unit="ms",
                    stepline=_ms(percentile(on["latencies"], q)) / steps,
                    direct=_ms(percentile(off["latencies"], q)) / steps,
                )
            )
        count = counts[name][0]
        results.rows.append(
            Row(
                scenario=scenario,
                figure="stepline CPU per response",
                unit="ms",
                stepline=_cpu_ms_per_response(results, f"{name}, tracing on", count),
                direct=_cpu_ms_per_response(results, f"{name}, tracing off", count),
            )
        )
