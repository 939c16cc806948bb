"""The LiteLLM scenario: LiteLLM's ``/v1/responses`` bridge, stepline and direct, in one run.

LiteLLM's proxy answers ``/v1/responses`` by translating to Chat Completions
and back, storing nothing (no database, no callbacks). The scenario runs it
next to stepline as shipped (durable SQLite), both routed to the same
scripted upstream, and measures with the same load generator and request
count as scenario 1: one model call, not streamed, concurrency 1; then one
streamed response of 200 tokens. Each server's overhead is its latency minus
the direct replay of the exact Chat Completions body *it* sent upstream
(stepline streams its upstream call, LiteLLM's non-streamed bridge does not),
and the figure the issue's target bounds is LiteLLM's overhead ÷ stepline's.

Invariants:

* LiteLLM lives in its own virtualenv, ``benchmarks/.litellm/`` (not in git),
  installed on first use at the pinned :data:`LITELLM_VERSION`; never into
  stepline's environment. If it cannot be installed (no registry), the
  scenario adds a note saying so and no rows; it never fails the run.
* The LiteLLM process is started, watched and stopped with the stack's other
  processes, with no ``DATABASE_URL`` in its environment and the local model
  cost map (it fetches nothing at start).
* In this scenario's rows the "stepline" column holds the figure of the server
  named in the row's figure (stepline or LiteLLM); "direct" is that server's
  own direct replay.
"""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path
from statistics import median
from typing import Any

from benchmarks._report import Row, Target, percentile
from benchmarks._services import PYTHON, Process, free_port, http_json
from benchmarks._stack import HOST, ROOT, Options, Results, Stack, log, run_load

__all__ = ["LITELLM_VERSION", "LiteLLMUnavailable", "install_litellm", "litellm"]

#: the newest release whose ``[proxy]`` extra installs from PyPI alone (later
#: ones need a ``litellm-proxy`` package that the registry here does not have)
LITELLM_VERSION = "1.106.12"
VENV = ROOT / "benchmarks" / ".litellm"

RATIO = Target(
    label="LiteLLM overhead ÷ stepline overhead >= 5", op=">=", value=5, applies_to="stepline"
)

#: both servers put the event type in each SSE event's data
_DELTA = '"type":"response.output_text.delta"'
_DONE = '"type":"response.completed"'
_DIRECT_DELTA = '"delta":{"content":"'
_DIRECT_DONE = '"finish_reason":"stop"'
_STREAM_TOKENS = 200


class LiteLLMUnavailable(Exception):
    """LiteLLM could not be installed or started here."""


def _ms(seconds: float) -> float:
    return seconds * 1000


def install_litellm() -> tuple[Path, str]:
    """The ``litellm`` executable of :data:`VENV` and its version, installing it if needed."""
    executable = VENV / "bin" / "litellm"
    marker = VENV / f".installed-{LITELLM_VERSION}"
    if not (marker.exists() and executable.exists()):
        log(f"litellm: installing litellm[proxy]=={LITELLM_VERSION} into {VENV}")
        install_log = VENV.parent / ".litellm-install.log"
        requirement = f"litellm[proxy]=={LITELLM_VERSION}"
        pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
        steps = {
            f"python -m venv {VENV}": [PYTHON, "-m", "venv", str(VENV)],
            f"pip install {requirement}": [*pip, requirement],
        }
        with install_log.open("wb") as output:
            for step, argv in steps.items():
                try:
                    done = subprocess.run(
                        argv, stdout=output, stderr=subprocess.STDOUT, timeout=1200, check=False
                    )
                except (OSError, subprocess.TimeoutExpired) as exc:
                    raise LiteLLMUnavailable(f"{step}: {exc}") from None
                if done.returncode != 0:
                    lines = install_log.read_text(errors="replace").splitlines()
                    last = next((line for line in reversed(lines) if line.strip()), "")
                    raise LiteLLMUnavailable(
                        f"{step} exited {done.returncode}: {last.strip()[:200]} "
                        f"(log: {install_log})"
                    )
        marker.write_text(LITELLM_VERSION + "\n")
    version = subprocess.run(
        [
            str(VENV / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if not version:
        raise LiteLLMUnavailable(f"{VENV}: litellm is not importable")
    return executable, version


def _config(upstream: str, models: tuple[str, ...]) -> str:
    entries = "".join(
        f"""
  - model_name: {model}
    litellm_params:
      model: openai/{model}
      api_base: {upstream}/v1
      api_key: unused
      use_chat_completions_api: true
"""
        for model in models
    )
    # no master key, like stepline's benchmark config (no API keys): nothing to
    # authenticate, and no database to look keys up in
    return f"""model_list:{entries}
general_settings:
  dangerously_permit_weak_or_unset_master_key: true
"""


class _LiteLLMStack(Stack):
    """The scenario's :class:`Stack` (upstream, tools, stepline) plus the LiteLLM proxy."""

    litellm: Process | None = None

    def start_litellm(self, executable: Path) -> Process:
        assert self.upstream.url is not None
        config = self.dir / "litellm.yaml"
        config.write_text(_config(self.upstream.url, ("bench-single", "bench-200")))
        port = free_port()
        env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        log_path = self.dir / "litellm.log"
        output = log_path.open("wb")
        popen = subprocess.Popen(
            [str(executable), "--config", str(config), "--host", HOST, "--port", str(port)],
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.dir,
            env=env,
        )
        process = Process(
            name="litellm", popen=popen, log_path=log_path, url=f"http://{HOST}:{port}", _log=output
        )
        self.processes.append(process)  # stopped with the others on exit
        process.wait_ready(timeout=180.0)
        self.litellm = process
        return process

    def watched(self) -> dict[str, Process]:
        named = super().watched()
        if self.litellm is not None:
            named["litellm"] = self.litellm
        return named

    def litellm_part(self, body: dict[str, Any], expect: str | None = None) -> dict[str, Any]:
        assert self.litellm is not None
        port = int(str(self.litellm.url).rsplit(":", 1)[1])
        return {**self.stepline_part(body, expect), "port": port, "ports": [port]}


def _check_reply(server: str, reply: dict[str, Any]) -> None:
    texts = [
        part.get("text")
        for item in reply.get("output", [])
        if item.get("type") == "message"
        for part in item.get("content", [])
    ]
    if reply.get("status") != "completed" or not any(texts):
        raise RuntimeError(f"litellm scenario: {server} answered {reply}")


def _sequence(part: dict[str, Any], count: int, warmup: int) -> dict[str, Any]:
    return {"kind": "sequence", "stages": [[part]], "count": count, "warmup": warmup}


def _stream_job(part: dict[str, Any], direct: bool, count: int, warmup: int) -> dict[str, Any]:
    return {
        "kind": "stream",
        **part,
        "marker": _DIRECT_DELTA if direct else _DELTA,
        "ok_marker": _DIRECT_DONE if direct else _DONE,
        "count": count,
        "warmup": warmup,
    }


def _ratio(litellm_overhead: float, stepline_overhead: float) -> float:
    if stepline_overhead <= 0:
        return math.inf
    return litellm_overhead / stepline_overhead


def _rows(
    scenario: str,
    figure: str,
    stepline: tuple[float, float],
    litellm: tuple[float, float],
) -> list[Row]:
    """Stepline's and LiteLLM's row for one figure in ms, each (figure, its direct), and
    the ratio of their overheads."""
    unit = "ms"
    overheads = (stepline[0] - stepline[1], litellm[0] - litellm[1])
    return [
        Row(
            scenario=scenario,
            figure=f"{figure}, stepline",
            unit=unit,
            stepline=stepline[0],
            direct=stepline[1],
        ),
        Row(
            scenario=scenario,
            figure=f"{figure}, LiteLLM",
            unit=unit,
            stepline=litellm[0],
            direct=litellm[1],
        ),
        Row(
            scenario=scenario,
            figure=f"{figure}, LiteLLM overhead ÷ stepline overhead",
            unit="×",
            stepline=_ratio(overheads[1], overheads[0]),
            target=RATIO,
            decimals=1,
        ),
    ]


def litellm(options: Options, results: Results) -> None:
    # the same request counts as scenario 1 (single)
    count, warmup = (200, 20) if options.quick else (1000, 50)
    streams, stream_warmup = (30, 5) if options.quick else (100, 10)
    try:
        executable, version = install_litellm()
    except LiteLLMUnavailable as exc:
        results.notes.append(f"scenario litellm skipped: LiteLLM not installed ({exc})")
        log(f"litellm: skipped ({exc})")
        return
    results.raw["litellm version"] = version
    stack = _LiteLLMStack("litellm", options, database="sqlite")
    with stack:  # Stack.__enter__ is typed as returning a plain Stack
        assert stack.stepline is not None
        proxy = stack.start_litellm(executable)
        body: dict[str, Any] = {"model": "bench-single", "input": "What is the answer?"}
        _check_reply("stepline", http_json("POST", f"{stack.stepline.url}/v1/responses", body))
        stepline_upstream = stack.upstream_requests("bench-single")[-1]
        _check_reply("LiteLLM", http_json("POST", f"{proxy.url}/v1/responses", body))
        litellm_upstream = stack.upstream_requests("bench-single")[-1]
        litellm_expect = '"status":"completed"'
        direct_expect = {True: "[DONE]", False: '"finish_reason"'}
        log(f"litellm: {count} requests through stepline, LiteLLM {version}, then direct")
        measured = {
            "stepline": run_load(
                _sequence(stack.stepline_part(body, '"status":"completed"'), count, warmup),
                stack,
                "6. single call, stepline",
                results,
            ),
            "litellm": run_load(
                _sequence(stack.litellm_part(body, litellm_expect), count, warmup),
                stack,
                "6. single call, LiteLLM",
                results,
            ),
            "stepline direct": run_load(
                _sequence(
                    stack.upstream_part(
                        stepline_upstream, direct_expect[bool(stepline_upstream.get("stream"))]
                    ),
                    count,
                    warmup,
                ),
                stack,
                "6. single call, direct (stepline's body)",
                results,
            ),
            "litellm direct": run_load(
                _sequence(
                    stack.upstream_part(
                        litellm_upstream, direct_expect[bool(litellm_upstream.get("stream"))]
                    ),
                    count,
                    warmup,
                ),
                stack,
                "6. single call, direct (LiteLLM's body)",
                results,
            ),
        }
        streamed = {**body, "model": "bench-200", "input": "Write a little.", "stream": True}
        log(f"litellm: {streams} streams of {_STREAM_TOKENS} tokens through each, then direct")
        stream_runs: dict[str, dict[str, Any]] = {}
        stream_runs["stepline"] = run_load(
            _stream_job(stack.stepline_part(streamed), False, streams, stream_warmup),
            stack,
            "6. 200-token stream, stepline",
            results,
        )
        stepline_stream_upstream = stack.upstream_requests("bench-200")[-1]
        stream_runs["litellm"] = run_load(
            _stream_job(stack.litellm_part(streamed), False, streams, stream_warmup),
            stack,
            "6. 200-token stream, LiteLLM",
            results,
        )
        litellm_stream_upstream = stack.upstream_requests("bench-200")[-1]
        for name, upstream_body in (
            ("stepline direct", stepline_stream_upstream),
            ("litellm direct", litellm_stream_upstream),
        ):
            owner = "stepline's" if name.startswith("stepline") else "LiteLLM's"
            stream_runs[name] = run_load(
                _stream_job(stack.upstream_part(upstream_body), True, streams, stream_warmup),
                stack,
                f"6. 200-token stream, direct ({owner} body)",
                results,
            )
    results.raw["litellm upstream bodies"] = {
        "stepline": stepline_upstream,
        "litellm": litellm_upstream,
        "stepline stream": stepline_stream_upstream,
        "litellm stream": litellm_stream_upstream,
    }
    _note_cpu(results)
    _note_deltas(stream_runs, results)
    scenario = f"6. vs LiteLLM {version}: one model call, c=1"
    for q in (50, 99):

        def latency(name: str, q: float = q) -> float:
            return _ms(percentile(measured[name]["latencies"], q))

        results.rows += _rows(
            scenario,
            f"latency p{q}",
            (latency("stepline"), latency("stepline direct")),
            (latency("litellm"), latency("litellm direct")),
        )
    scenario = f"6. vs LiteLLM {version}: one {_STREAM_TOKENS}-token stream"
    for key, figure in (("first", "time to first text delta"), ("total", "whole stream")):

        def typical(name: str, key: str = key) -> float:
            return _ms(median(run[key] for run in stream_runs[name]["runs"]))

        results.rows += _rows(
            scenario,
            f"{figure}, median",
            (typical("stepline"), typical("stepline direct")),
            (typical("litellm"), typical("litellm direct")),
        )


def _note_cpu(results: Results) -> None:
    """The CPU table has no LiteLLM column: say what LiteLLM used in its own windows."""
    shares = [
        f"{row.run} {row.percent['litellm']:.0f} %"
        for row in results.cpu
        if row.run.endswith(", LiteLLM") and "litellm" in row.percent
    ]
    if shares:
        results.notes.append(f"LiteLLM's CPU (% of one core): {'; '.join(shares)}")


def _note_deltas(stream_runs: dict[str, dict[str, Any]], results: Results) -> None:
    """Every server should relay one text delta per upstream chunk; note any that did not."""
    for server, result in stream_runs.items():
        counts = sorted({run["deltas"] for run in result["runs"]})
        if counts != [_STREAM_TOKENS]:
            results.notes.append(
                f"litellm scenario, {server}: {counts} text deltas per stream, not {_STREAM_TOKENS}"
            )
