"""``python -m benchmarks``: run the scenarios and print the results table.

Options: ``--quick`` (shorter runs), ``--only NAME[,NAME]`` (single, loop,
stream, throughput, memory, litellm, websocket, tracing), ``--postgres URL`` (the server
to make a fresh database on for the PostgreSQL throughput runs; ``--no-postgres`` skips
them), ``--store memory`` (stepline on its in-memory store: a diagnostic of
the store's share, not durable), ``--profile DIR`` (py-spy stepline during
the single, loop, stream and throughput scenarios), ``--json FILE`` (the raw
results; default ``benchmarks/results/latest.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import orjson

from benchmarks._report import cpu_table, results_table
from benchmarks._scenarios import SCENARIOS, run_scenario
from benchmarks._services import postgres_reachable, raise_fd_limit
from benchmarks._stack import ROOT, Options, Results

_DEFAULT_POSTGRES = os.environ.get(
    "STEPLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def _machine() -> dict[str, Any]:
    model = "unknown"
    memory = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Benchmark stepline against its upstream."
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs (about a minute)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only these scenarios (repeat or comma-separate): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--postgres",
        default=_DEFAULT_POSTGRES,
        metavar="URL",
        help="PostgreSQL server for the throughput runs (a fresh database is made and dropped)",
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL runs")
    parser.add_argument(
        "--store",
        choices=("sql", "memory"),
        default="sql",
        help="sql: stepline as shipped (default); memory: its in-memory store, not durable "
        "(a diagnostic: how much of the overhead is the store)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy stepline into DIR (single, loop, stream, throughput)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "latest.json",
        metavar="FILE",
        help="where to write the raw results",
    )
    args = parser.parse_args(argv)
    chosen = [name for spec in args.only or [] for name in spec.split(",") if name]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    args.scenarios = [name for name in SCENARIOS if not chosen or name in chosen]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "-m", "benchmarks", *(sys.argv[1:] if argv is None else argv)])
    started = time.monotonic()
    open_files = raise_fd_limit()
    postgres: str | None = None if args.no_postgres or args.store == "memory" else args.postgres
    results = Results()
    if postgres is not None and {"throughput", "single"} & set(args.scenarios):
        problem = postgres_reachable(postgres)
        if problem is not None:
            results.notes.append(f"PostgreSQL runs skipped: {postgres} unreachable ({problem})")
            postgres = None
    machine = _machine()
    print(
        f"# {command}\n# {machine['date']}; {machine['nproc']} × {machine['cpu']}, "
        f"{machine['memory']}; Python {machine['python']}; open files {open_files}",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="stepline-bench-") as work:
        options = Options(
            quick=args.quick,
            postgres=postgres,
            work_dir=Path(work),
            profile_dir=args.profile,
            store=args.store,
        )
        failed: list[str] = []
        for name in args.scenarios:
            begun = time.monotonic()
            try:
                run_scenario(name, options, results)
            except Exception as exc:
                # report what the other scenarios measured; the exit status says it failed
                traceback.print_exc()
                failed.append(name)
                results.notes.append(f"scenario {name} failed: {str(exc).splitlines()[0]}")
            print(f"  {name}: {time.monotonic() - begun:.1f}s", file=sys.stderr, flush=True)
    elapsed = time.monotonic() - started
    if args.store == "memory":
        # stepline ran on its in-memory store: say so on every row
        results.rows = [
            dataclasses.replace(
                row,
                scenario=row.scenario.replace("SQLite", "in-memory store")
                if "SQLite" in row.scenario
                else f"{row.scenario}, in-memory store",
            )
            for row in results.rows
        ]
        results.notes.insert(0, "stepline ran on its in-memory store: nothing was durable")
    if args.store == "sql":
        print("stepline ran as shipped: every step and every event stored before a client sees it")
        print()
    print(results_table(results.rows))
    print()
    print("CPU during each measured window (% of one core):")
    print()
    print(cpu_table(results.cpu))
    for note in results.notes:
        print(f"\nnote: {note}")
    for profile in results.profiles:
        print()
        print(profile)
    print(f"\nwhole run: {elapsed:.0f}s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(
        orjson.dumps(
            {
                "command": command,
                "machine": machine,
                "seconds": elapsed,
                "rows": [row.to_json() for row in results.rows],
                "cpu": [
                    {"run": row.run, "seconds": row.seconds, "percent": row.percent}
                    for row in results.cpu
                ],
                "notes": results.notes,
                "profiles": results.profiles,
                "raw": results.raw,
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
