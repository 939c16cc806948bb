"""Scenario 0, ``floor``: what the HTTP server and an upstream client cost by themselves.

Bare servers (:mod:`benchmarks._floor_server`) answer ``POST /v1/responses``
with one streamed call to the scripted model and nothing else: one through
httpx, one through stepline's own upstream client. Against the direct call in
the same run, their overhead is the least any server on this stack can add to
a model call, before it parses, validates, stores or routes anything: the
floor under the per-step targets of scenarios 1 and 2.

Two more add the two durable writes a plain call needs (the response and its
step before the call; the events and the ends after it) on the raw drivers,
on SQLite and on PostgreSQL: the floor of a durable server on this machine,
its disk included, under the targets of scenario 1 on each database.
"""

from __future__ import annotations

import orjson

from benchmarks._report import Row, percentile
from benchmarks._services import (
    PYTHON,
    create_postgres_database,
    drop_postgres_database,
    free_port,
)
from benchmarks._stack import HOST, Options, Results, Stack, log, run_sequence

__all__ = ["floor"]

#: each bare server: its name, its upstream client, what it stores in, and its row's label
_SERVERS = (
    ("httpx", "httpx", None, "httpx"),
    ("stepline", "stepline", None, "stepline's upstream client"),
    ("sqlite", "stepline", "sqlite", "stepline's upstream client + 2 SQLite writes"),
    ("postgresql", "stepline", "postgresql", "stepline's upstream client + 2 PostgreSQL writes"),
)

#: the Chat Completions body of scenario 1, as stepline sends it
_BODY = {
    "model": "bench-single",
    "messages": [{"role": "user", "content": "What is the answer?"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}


def floor(options: Options, results: Results) -> None:
    count, warmup = (200, 20) if options.quick else (1000, 50)
    postgres = create_postgres_database(options.postgres) if options.postgres is not None else None
    try:
        _measure(options, results, count, warmup, postgres)
    finally:
        if postgres is not None and options.postgres is not None:
            drop_postgres_database(options.postgres, postgres)


def _measure(
    options: Options, results: Results, count: int, warmup: int, postgres: str | None
) -> None:
    with Stack("floor", options, database=None) as stack:
        assert stack.upstream.url is not None
        servers = {}
        labels = {}
        for name, client, store, label in _SERVERS:
            if store is None:
                where = None
            elif store == "sqlite":
                where = f"sqlite:{stack.dir / 'floor.db'}"
            elif postgres is None:
                continue  # no PostgreSQL server to measure on
            else:
                where = postgres
            port = free_port()
            argv = [
                PYTHON,
                "-m",
                "benchmarks._floor_server",
                "--host",
                HOST,
                "--port",
                str(port),
                "--upstream",
                stack.upstream.url,
                "--body",
                orjson.dumps(_BODY).decode(),
                "--client",
                client,
                *(["--store", where] if where is not None else []),
            ]
            servers[name] = stack._start(f"floor, {name}", argv, port)
            labels[name] = label
        for server in servers.values():
            server.wait_ready()
        log(f"floor: {count} requests through each bare server, then direct")
        latencies = {}
        for client, server in servers.items():
            stack.stepline = server  # what the load part addresses and the CPU table watches
            part = stack.stepline_part({"model": "bench-single", "input": "hi"}, "completed")
            latencies[client] = run_sequence(
                [[part]],
                count=count,
                warmup=warmup,
                stack=stack,
                run=f"floor, {client}",
                results=results,
            )
        stack.stepline = None
        direct = run_sequence(
            [[stack.upstream_part(_BODY, "[DONE]")]],
            count=count,
            warmup=warmup,
            stack=stack,
            run="floor, direct",
            results=results,
        )
    for client, label in labels.items():
        for q in (50, 99):
            results.rows.append(
                Row(
                    scenario=f"0. floor: uvicorn + {label}",
                    figure=f"latency p{q}",
                    unit="ms",
                    stepline=percentile(latencies[client], q) * 1000,
                    direct=percentile(direct, q) * 1000,
                )
            )
