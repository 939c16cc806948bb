"""The load generator: its own process, raw asyncio, one job per run.

``python -m benchmarks._load`` reads one JSON job from the first line of
stdin and writes JSON lines to stdout:

* ``{"mark": "start"}`` / ``{"mark": "end"}`` around the measured window (after
  the warm-up), so the harness can read every process's CPU time at both ends;
* ``{"mark": "ready", ...}`` when a ``hold`` job has all its streams open; the
  harness answers with a line on stdin once it has measured;
* ``{"result": {...}}`` last.

Jobs (``kind``):

* ``sequence``: one request after another, concurrency 1. A request is a
  list of stages run in order; the parts of a stage run in parallel (the
  client-side loop: model call, both tools at once, model call). Each
  part's reply is read to its end, streamed or not.
* ``stream``: streamed requests one after another; per request the time to
  the first text delta, the time to the last, and the number of deltas.
* ``throughput``: ``concurrency`` workers, each sending streamed requests
  back to back on its own keep-alive connection for ``warmup + duration``
  seconds; responses that end inside the window count.
* ``hold``: open ``streams`` streams at once, wait until each has relayed a
  text delta, report, and keep them open until told to stop.

Text deltas are counted by a marker (stepline: the SSE ``event:`` line of
``response.output_text.delta``; the scripted model: a ``content`` delta)
with ``bytes.count`` over the raw body, so a delta costs the generator
almost nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from benchmarks._http import Connection, HttpError

__all__ = ["main"]

_now = time.perf_counter


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(message).decode() + "\n")
    sys.stdout.flush()


class _Counter:
    """Counts ``marker`` in a body fed chunk by chunk; notes the first and last arrival."""

    __slots__ = ("count", "first", "last", "marker", "ok", "ok_marker", "on_first", "tail")

    def __init__(
        self, marker: bytes, ok_marker: bytes, on_first: Callable[[], None] | None = None
    ) -> None:
        self.marker = marker
        self.ok_marker = ok_marker
        self.tail = b""
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.ok = False
        self.on_first = on_first

    def feed(self, data: bytes) -> None:
        buffer = self.tail + data
        found = buffer.count(self.marker)
        if found:
            now = _now()
            if not self.count:
                self.first = now
                if self.on_first is not None:
                    self.on_first()
            self.last = now
            self.count += found
        if not self.ok and self.ok_marker in buffer:
            self.ok = True
        keep = max(len(self.marker), len(self.ok_marker)) - 1
        self.tail = buffer[-keep:]


def _parts(job: dict[str, Any]) -> tuple[str, int, str, bytes]:
    return job["host"], job["port"], job["path"], job["body"].encode()


async def _sequence(job: dict[str, Any]) -> dict[str, Any]:
    """``job["stages"]``: a list of stages, each a list of {host, port, path, body, expect}."""
    stages = job["stages"]
    connections = [[Connection(part["host"], part["port"]) for part in stage] for stage in stages]
    bodies = [[part["body"].encode() for part in stage] for stage in stages]

    async def call(connection: Connection, part: dict[str, Any], body: bytes) -> None:
        _, reply = await connection.request("POST", part["path"], body)
        expect = part.get("expect")
        if expect and expect.encode() not in reply:
            raise HttpError(f"{part['path']}: reply lacks {expect!r}: {reply[:300]!r}")

    async def once() -> float:
        started = _now()
        for stage, stage_connections, stage_bodies in zip(stages, connections, bodies, strict=True):
            if len(stage) == 1:
                await call(stage_connections[0], stage[0], stage_bodies[0])
            else:
                await asyncio.gather(
                    *(
                        call(connection, part, body)
                        for connection, part, body in zip(
                            stage_connections, stage, stage_bodies, strict=True
                        )
                    )
                )
        return _now() - started

    for _ in range(job["warmup"]):
        await once()
    _emit({"mark": "start"})
    latencies = [await once() for _ in range(job["count"])]
    _emit({"mark": "end"})
    return {"latencies": latencies}


async def _stream(job: dict[str, Any]) -> dict[str, Any]:
    host, port, path, body = _parts(job)
    marker, ok_marker = job["marker"].encode(), job["ok_marker"].encode()
    connection = Connection(host, port)

    async def once() -> dict[str, float]:
        counter = _Counter(marker, ok_marker)
        started = _now()
        await connection.request("POST", path, body, on_data=counter.feed)
        ended = _now()
        if not counter.ok or not counter.count:
            raise HttpError(f"stream ended without {ok_marker!r} or any delta")
        return {
            "first": counter.first - started,
            "last": counter.last - started,
            "total": ended - started,
            "deltas": counter.count,
        }

    for _ in range(job["warmup"]):
        await once()
    _emit({"mark": "start"})
    runs = [await once() for _ in range(job["count"])]
    _emit({"mark": "end"})
    return {"runs": runs}


async def _throughput(job: dict[str, Any]) -> dict[str, Any]:
    host, port, path, body = _parts(job)
    marker, ok_marker = job["marker"].encode(), job["ok_marker"].encode()
    began = _now()
    window_start = began + job["warmup"]
    window_end = window_start + job["duration"]
    records: list[tuple[float, float, float, int]] = []
    errors: list[str] = []

    # several stepline processes behind one address would need a balancer:
    # the workers take the processes' ports in turn instead
    ports = job.get("ports") or [port]

    async def worker(index: int) -> None:
        connection = Connection(host, ports[index % len(ports)])
        try:
            while (started := _now()) < window_end:
                counter = _Counter(marker, ok_marker)
                try:
                    await connection.request("POST", path, body, on_data=counter.feed)
                except (HttpError, OSError) as exc:
                    errors.append(str(exc)[:300])
                    await asyncio.sleep(0.01)
                    continue
                if not counter.ok:
                    errors.append("stream ended without its terminal marker")
                    continue
                records.append((started, _now(), counter.first - started, counter.count))
        finally:
            await connection.close()

    async def marks() -> None:
        await asyncio.sleep(max(0.0, window_start - _now()))
        _emit({"mark": "start"})
        await asyncio.sleep(max(0.0, window_end - _now()))
        _emit({"mark": "end"})

    await asyncio.gather(marks(), *(worker(index) for index in range(job["concurrency"])))
    inside = [record for record in records if window_start <= record[1] <= window_end]
    return {
        "duration": job["duration"],
        "completed": len(inside),
        "latencies": [end - start for start, end, _, _ in inside],
        "first_delta": [first for _, _, first, _ in inside],
        "deltas": sum(count for _, _, _, count in inside),
        "errors": len(errors),
        "error_sample": errors[:3],
    }


async def _hold(job: dict[str, Any]) -> dict[str, Any]:
    host, port, path, body = _parts(job)
    marker, ok_marker = job["marker"].encode(), job["ok_marker"].encode()
    wanted = job["streams"]
    opened = 0
    all_open = asyncio.Event()
    errors: list[str] = []

    def one_open() -> None:
        nonlocal opened
        opened += 1
        if opened == wanted:
            all_open.set()

    async def holder() -> None:
        connection = Connection(host, port)
        counter = _Counter(marker, ok_marker, on_first=one_open)
        try:
            await connection.request("POST", path, body, on_data=counter.feed)
        except (HttpError, OSError) as exc:
            errors.append(str(exc)[:300])
        finally:
            await connection.close()

    started = _now()
    tasks = [asyncio.create_task(holder()) for _ in range(wanted)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_open.wait(), job["open_timeout"])
    took = _now() - started
    _emit({"mark": "ready", "open": opened, "seconds": took, "errors": len(errors)})
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"open": opened, "seconds_to_open": took, "errors": errors[:3]}


_JOBS = {
    "sequence": _sequence,
    "stream": _stream,
    "throughput": _throughput,
    "hold": _hold,
}


def main() -> None:
    job = orjson.loads(sys.stdin.readline())
    result = asyncio.run(_JOBS[job["kind"]](job))
    _emit({"result": result})


if __name__ == "__main__":
    main()
