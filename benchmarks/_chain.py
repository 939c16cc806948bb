"""Scenario 9, ``chain``: what a continuation costs as its conversation grows.

A chain of 50 responses is built with ``previous_response_id`` (one user turn
and one answer each). Then requests continue it, one at a time, from its
first response and from its fiftieth, and the Chat Completions bodies stepline
sent for each are replayed straight to the scripted model. The overhead of a
continuation (stepline − direct) should not grow with the chain: only the
bytes sent upstream may, and the direct replay pays for those too.
"""

from __future__ import annotations

from typing import Any

from benchmarks._report import Row, Target, percentile
from benchmarks._services import http_json
from benchmarks._stack import Options, Results, Stack, log, run_sequence

__all__ = ["chain"]

TURNS = 50
#: the issue's bound: 50 turns cost at most 0.5 ms more than one
GROWTH = Target(
    label="50-turn overhead <= 1-turn + 0.5 ms", op="<=", value=0.5, applies_to="difference"
)


def chain(options: Options, results: Results) -> None:
    count, warmup = (200, 20) if options.quick else (500, 50)
    with Stack("chain", options, database="sqlite") as stack:
        assert stack.stepline is not None
        url = f"{stack.stepline.url}/v1/responses"
        ids: list[str] = []
        for turn in range(TURNS):
            body: dict[str, Any] = {"model": "bench-single", "input": f"Turn {turn}: the answer?"}
            if ids:
                body["previous_response_id"] = ids[-1]
            reply = http_json("POST", url, body)
            if reply.get("status") != "completed":
                raise RuntimeError(f"chain: turn {turn} answered {reply}")
            ids.append(reply["id"])
        overheads: dict[int, dict[int, float]] = {}
        for turns, previous in ((1, ids[0]), (TURNS, ids[-1])):
            body = {"model": "bench-single", "input": "And now?", "previous_response_id": previous}
            http_json("POST", url, body)
            upstream_body = stack.upstream_requests("bench-single")[-1]
            log(f"chain: {count} continuations of turn {turns}, through stepline, then direct")
            through = run_sequence(
                [[stack.stepline_part(body, '"status":"completed"')]],
                count=count,
                warmup=warmup,
                stack=stack,
                run=f"continuing turn {turns}, stepline",
                results=results,
            )
            direct = run_sequence(
                [[stack.upstream_part(upstream_body, "[DONE]")]],
                count=count,
                warmup=warmup,
                stack=stack,
                run=f"continuing turn {turns}, direct",
                results=results,
            )
            overheads[turns] = {}
            for q in (50, 99):
                results.rows.append(
                    Row(
                        scenario="9. previous_response_id chain, c=1",
                        figure=f"latency p{q}, continuing turn {turns}",
                        unit="ms",
                        stepline=percentile(through, q) * 1000,
                        direct=percentile(direct, q) * 1000,
                    )
                )
                overheads[turns][q] = (percentile(through, q) - percentile(direct, q)) * 1000
    results.rows.append(
        Row(
            scenario="9. previous_response_id chain, c=1",
            figure=f"overhead p50: turn {TURNS} (stepline col.) vs turn 1 (direct col.)",
            unit="ms",
            stepline=overheads[TURNS][50],
            direct=overheads[1][50],
            target=GROWTH,
        )
    )
