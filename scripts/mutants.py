"""Targeted mutants of the engine, the store and the event log, run against their tests.

Each mutant is one plausible bug — a dropped guard, a flipped comparison, an
off-by-one, a skipped fence, a wait for durability removed, a wrong state —
written as an exact snippet of a module under ``src/stepline/_engine/`` or
``src/stepline/store/`` and its replacement, with the tests that must catch it.

The mutants are applied to a private copy of the tree (``src/``, ``tests/``,
``examples/`` and the project files, copied to a temporary directory when the
run starts), never to the checkout: pytest runs in the copy with ``PYTHONPATH``
naming the copy's ``src`` first, so the server processes the tests start
import the mutated code too (a probe checks that before any mutant runs).
Mutants run one after the other, each with ``-x``.

A mutant that no test kills is a failure unless it carries a ``reason``
(e.g. equivalent: no behaviour can tell it apart). The exit status is 0 when
every mutant was killed or has a reason, 1 otherwise, 2 when the run could not
start (the unmutated tests fail, or a snippet is no longer in its module).

Usage: ``.venv/bin/python scripts/mutants.py [--only NAME ...] [--list]
[--no-baseline]``. It takes minutes, so it is not part of ``./scripts/test``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: what the copy holds: what the tests read besides the package itself
COPIED = ("src", "tests", "examples", "docs", "pyproject.toml", "README.md")
IGNORED = shutil.ignore_patterns("__pycache__", "node_modules", "*.db", "*.db-*", ".hypothesis")
POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

STORE = ("tests/store",)
TRANSITION = ("tests/unit/test_transition.py",)
LIBRARY = ("tests/library",)
EVENT_LOG = "tests/unit/test_event_log.py"


@dataclass(frozen=True, kw_only=True)
class Mutant:
    """One bug: ``old`` (found exactly once in ``module``) becomes ``new``."""

    name: str
    #: under ``src/stepline/``
    module: str
    old: str
    new: str
    #: the test paths (relative to the repository) that must fail with it
    tests: tuple[str, ...]
    #: why it may survive; None: it must be killed
    reason: str | None = None


MUTANTS: tuple[Mutant, ...] = (
    # -- engine/event_log.py ------------------------------------------------
    Mutant(
        name="log-follow-shows-undurable",
        module="_engine/event_log.py",
        old="            if position <= self.durable:\n"
        "                return self.rows[position - self.start : self.durable - self.start + 1]",
        new="            if position <= self.appended:\n"
        "                return self.rows[position - self.start : self.appended - self.start + 1]",
        tests=(EVENT_LOG, "tests/e2e/test_store_down.py"),
    ),
    Mutant(
        name="log-wait-durable-off-by-one",
        module="_engine/event_log.py",
        old="while self.durable < self.appended:",
        new="while self.durable < self.appended - 1:",
        tests=(EVENT_LOG, "tests/durability/test_kill_points.py"),
    ),
    Mutant(
        name="writer-retries-any-failure",
        module="_engine/event_log.py",
        old="            except StoreError:\n",
        new="            except Exception:\n",
        tests=(EVENT_LOG,),
    ),
    Mutant(
        name="writer-fenced-end-succeeds",
        module="_engine/event_log.py",
        old="                unit.done.set_exception(_lease_lost(unit.log.response_id))",
        new="                unit.done.set_result(result)",
        tests=(EVENT_LOG, "tests/scaleout/test_postgres_processes.py"),
    ),
    Mutant(
        name="writer-fenced-log-goes-on",
        module="_engine/event_log.py",
        old="                log.fail(_lease_lost(log.response_id))",
        new="                pass",
        tests=(EVENT_LOG, "tests/scaleout/test_postgres_processes.py"),
    ),
    # -- engine/loop.py, engine/tool_call.py ---------------------------------
    Mutant(
        name="loop-fail-fast-on-success",
        module="_engine/tool_call.py",
        old="if fail_fast and done is not None and done.state is StepState.FAILED:",
        new="if fail_fast and done is not None and done.state is StepState.COMPLETED:",
        tests=(*LIBRARY, "tests/e2e/test_responses.py"),
    ),
    Mutant(
        name="loop-tool-concurrency-plus-one",
        module="_engine/tool_call.py",
        old="asyncio.Semaphore(loop.engine.limits.tool_concurrency)",
        new="asyncio.Semaphore(loop.engine.limits.tool_concurrency + 1)",
        tests=(*LIBRARY, "tests/e2e/test_responses.py"),
    ),
    Mutant(
        name="view-resend-done-after-crash",
        module="_protocol/response_stream.py",
        old="        done_sent = any(event_type(row.data) == _ITEM_DONE for row in sent)",
        new="        done_sent = False",
        tests=("tests/durability/test_kill_points.py", "tests/durability/test_crash_recovery.py"),
        reason=(
            "equivalent while a step's end commits with its events: a step whose done event"
            " is durable is terminal, so it never runs again and done_sent is always False"
        ),
    ),
    Mutant(
        name="view-resend-started-after-crash",
        module="_protocol/response_stream.py",
        old="if events is not None and index is not None and not sent:",
        new="if events is not None and index is not None:",
        tests=("tests/durability/test_kill_points.py", "tests/durability/test_crash_recovery.py"),
    ),
    Mutant(
        name="loop-no-drain",
        module="_engine/loop.py",
        old="                raise LoopDrained(self.response_id)",
        new="                pass",
        tests=("tests/durability/test_shutdown.py",),
    ),
    Mutant(
        name="loop-stops-before-any-step",
        module="_engine/loop.py",
        old="if not self.stops or not any(s.state.terminal for s in self.recorded.values()):",
        new="if not self.stops:",
        tests=LIBRARY,
    ),
    Mutant(
        name="loop-tool-calls-past-the-limit-recorded-started",
        module="_engine/loop.py",
        old="runs_at_once = calls <= self.engine.limits.tool_concurrency and calls in (",
        new="runs_at_once = calls in (",
        tests=("tests/e2e/test_store_writes.py",),
    ),
    Mutant(
        name="tool-call-run-past-its-lease-unguarded",
        module="_engine/tool_call.py",
        old="and loop.engine.clock() - (step.started_at or 0) > lease:",
        new="and False:",
        tests=("tests/e2e/test_store_writes.py",),
    ),
    Mutant(
        name="tool-call-end-shown-before-it-is-stored",
        module="_engine/tool_call.py",
        old="    loop.log.hold()\n    loop.sink.emit(ToolCallFinishing(step=ended))",
        new="    loop.sink.emit(ToolCallFinishing(step=ended))",
        tests=("tests/e2e/test_store_writes.py", "tests/durability/test_kill_points.py"),
        reason=(
            "equivalent while nothing awaits between a step's finishing events and its"
            " end's commit: the writer takes both in one batch; the hold keeps them together"
            " whatever comes to run in between"
        ),
    ),
    Mutant(
        name="model-call-end-shown-before-it-is-stored",
        module="_engine/model_call.py",
        old="    loop.log.hold()\n    loop.sink.emit(ModelCallFinishing(step=step, turn=turn))",
        new="    loop.sink.emit(ModelCallFinishing(step=step, turn=turn))",
        tests=("tests/e2e/test_store_writes.py", "tests/durability/test_kill_points.py"),
        reason=(
            "equivalent while nothing awaits between a step's finishing events and its"
            " end's commit: the writer takes both in one batch; the hold keeps them together"
            " whatever comes to run in between"
        ),
    ),
    Mutant(
        name="stream-items-not-stored-with-the-step",
        module="_engine/loop.py",
        old="response = None if result is None else {**result.payload(), **shown}",
        new="response = None if result is None else result.payload()",
        tests=(*LIBRARY, "tests/e2e/test_responses.py"),
    ),
    Mutant(
        name="sinks-deltas-to-the-first-taker-only",
        module="_engine/sinks.py",
        old="        if len(taken) > 1:",
        new="        if False:",
        tests=("tests/unit/test_sinks.py",),
    ),
    Mutant(
        name="view-compaction-announced-twice",
        module="_protocol/response_stream.py",
        old="        if events is None or event.shown_before:",
        new="        if events is None:",
        tests=("tests/durability/test_compaction_recovery.py",),
    ),
    Mutant(
        name="loop-max-depth-off-by-one",
        module="_engine/tool_call.py",
        old="if loop.depth + 1 > limits.max_depth:",
        new="if loop.depth + 1 >= limits.max_depth:",
        tests=LIBRARY,
    ),
    Mutant(
        name="loop-lost-finish-not-reread",
        module="_engine/loop.py",
        old="        if step is None:\n"
        "            # the guarded finish found the step no longer processing: re-read the truth\n"
        "            chain = await self.engine.store.load_chain(self.response_id,"
        " scope=self.scope)\n"
        "            self.recorded = {s.id: s for s in chain}",
        new="        if step is None:\n            pass",
        tests=(*LIBRARY, "tests/e2e/test_responses.py"),
        reason=(
            "a finish finds its step no longer processing only when another process cancels"
            " the response between its two writes (steps, then the end, which clears the"
            " lease): either way the loop stops at its next write and the response ends"
            " cancelled, so no client can tell"
        ),
    ),
    # -- engine/transition.py -----------------------------------------------
    Mutant(
        name="transition-passes-over-fan-out",
        module="_engine/transition.py",
        old="    if unfinished:\n        return RunSteps(steps=unfinished)",
        new="    if unfinished and not chain[-1].state.terminal:\n"
        "        return RunSteps(steps=unfinished)",
        tests=TRANSITION,
    ),
    Mutant(
        name="transition-max-tool-calls-off-by-one",
        module="_engine/transition.py",
        old="run_so_far + len(missing) > policy.max_tool_calls",
        new="run_so_far + len(missing) >= policy.max_tool_calls",
        tests=TRANSITION,
    ),
    Mutant(
        name="transition-max-iterations-off-by-one",
        module="_engine/transition.py",
        old="if len(model_calls) >= policy.max_iterations:",
        new="if len(model_calls) > policy.max_iterations:",
        tests=TRANSITION,
    ),
    Mutant(
        name="transition-cancelled-siblings-named",
        module="_engine/transition.py",
        old="errors = [step for step in failed if step.state is StepState.FAILED] or failed",
        new="errors = failed",
        tests=TRANSITION,
    ),
    Mutant(
        name="transition-approved-calls-run-twice",
        module="_engine/transition.py",
        old="approved = [call for call in policy.approved_calls if call.call_id not in recorded]",
        new="approved = list(policy.approved_calls)",
        tests=TRANSITION,
    ),
    # -- run/response.py ----------------------------------------------------
    Mutant(
        name="response-terminal-event-not-found",
        module="_run/response.py",
        old="store.read_events(response_id, after=last_seq - 1, limit=1)",
        new="store.read_events(response_id, after=last_seq, limit=1)",
        tests=("tests/durability/test_kill_points.py", "tests/durability/test_crash_recovery.py"),
        reason=(
            "equivalent while the terminal event commits with the response's end: a response"
            " whose terminal event is stored is terminal, so it is never resumed to look"
        ),
    ),
    Mutant(
        name="response-created-resent-on-resume",
        module="_run/response.py",
        old="if run_log.sends and run_log.first_seq == 0:",
        new="if run_log.sends:",
        tests=("tests/durability/test_kill_points.py",),
    ),
    Mutant(
        name="response-store-false-kept",
        module="_run/response.py",
        old="    if not request.store:\n        await engine.store.delete_response(record.id)",
        new="    if not request.store:\n        pass",
        tests=(*LIBRARY, "tests/e2e/test_responses.py"),
    ),
    Mutant(
        name="response-failed-joins-conversation",
        module="_run/response.py",
        old='_JOINS_CONVERSATION = frozenset({"completed", "incomplete"})',
        new='_JOINS_CONVERSATION = frozenset({"completed", "incomplete", "failed"})',
        tests=("tests/library/test_conversation.py", "tests/e2e/test_conversations.py"),
    ),
    # -- run/conversation.py ------------------------------------------------
    Mutant(
        name="conversation-stale-cache-trusted",
        module="_run/conversation.py",
        old="        return found if await store.stored_ids(found.records) == set(found.records)"
        " else None",
        new="        return found",
        tests=("tests/unit/test_history_cache.py", "tests/library/test_conversation.py"),
    ),
    # -- store/hot.py -------------------------------------------------------
    Mutant(
        name="hot-finish-step-unguarded",
        module="store/_hot.py",
        old=" WHERE id = $1 AND state = '{StepState.PROCESSING.value}' RETURNING",
        new=" WHERE id = $1 RETURNING",
        tests=STORE,
    ),
    Mutant(
        name="hot-finish-response-unguarded",
        module="store/_hot.py",
        old='f" lease_expires_at = NULL WHERE id = $1 AND {_NOT_TERMINAL} RETURNING id",',
        new='" lease_expires_at = NULL WHERE id = $1 RETURNING id",',
        tests=STORE,
    ),
    Mutant(
        name="hot-append-unfenced",
        module="store/_hot.py",
        old="fenced = frozenset(touched) - {row[0] for row in held}",
        new="fenced = frozenset()",
        tests=STORE,
    ),
    Mutant(
        name="hot-claim-live-leases",
        module="store/_hot.py",
        old="(lease_expires_at IS NULL OR lease_expires_at < $2)",
        new="(lease_expires_at IS NULL OR lease_expires_at > $2)",
        tests=STORE,
    ),
    Mutant(
        name="hot-record-steps-no-row-lock",
        module="store/_hot.py",
        old='"SELECT id FROM responses WHERE id = $1" + _for(driver, "UPDATE"), response_id',
        new='"SELECT id FROM responses WHERE id = $1", response_id',
        tests=STORE,
    ),
    Mutant(
        name="hot-duplicate-event-fails",
        module="store/_hot.py",
        old='"INSERT INTO events (response_id, seq, step_id, data) VALUES ($1, $2, $3, $4)"\n'
        '        " ON CONFLICT (response_id, seq) DO NOTHING",',
        new='"INSERT INTO events (response_id, seq, step_id, data) VALUES ($1, $2, $3, $4)",',
        tests=STORE,
    ),
    Mutant(
        name="hot-conversation-positions-shifted",
        module="store/_hot.py",
        old="start = int(reserved[0][0]) - len(items)",
        new="start = int(reserved[0][0]) - len(items) + 1",
        tests=STORE,
    ),
    Mutant(
        name="hot-renew-terminal-lease",
        module="store/_hot.py",
        old=" WHERE owner = $1 AND id {driver.in_list('$2')} AND {_NOT_TERMINAL}\"",
        new=" WHERE owner = $1 AND id {driver.in_list('$2')}\"",
        tests=STORE,
    ),
    Mutant(
        name="hot-read-events-inclusive",
        module="store/_hot.py",
        old="WHERE response_id = $1 AND seq > $2",
        new="WHERE response_id = $1 AND seq >= $2",
        tests=STORE,
    ),
    # -- store/drivers.py ---------------------------------------------------
    Mutant(
        name="sqlite-tx-no-rollback",
        module="store/_drivers.py",
        old="            except BaseException:\n"
        "                self._db.rollback()\n                raise",
        new="            except BaseException:\n                raise",
        tests=STORE,
    ),
    # -- store/sql.py -------------------------------------------------------
    Mutant(
        name="sql-write-abandoned-on-cancel",
        module="store/_sql.py",
        old="            return await asyncio.shield(task)\n",
        new="            return await task\n",
        tests=STORE,
    ),
    Mutant(
        name="sql-followers-not-notified",
        module="store/_sql.py",
        old="        if written:\n            self._notifier.notify(written)",
        new="        if written:\n            pass",
        tests=(*STORE, "tests/durability/test_streams_and_background.py"),
    ),
    # -- store/memory.py ----------------------------------------------------
    Mutant(
        name="memory-finish-step-unguarded",
        module="store/_memory.py",
        old="if step is None or step.state is not StepState.PROCESSING:",
        new="if step is None:",
        tests=STORE,
    ),
    Mutant(
        name="memory-append-unfenced",
        module="store/_memory.py",
        old="if (record := self._responses.get(response_id)) is None or record.owner != owner",
        new="if (record := self._responses.get(response_id)) is None",
        tests=STORE,
    ),
    Mutant(
        name="memory-duplicate-event-kept",
        module="store/_memory.py",
        old="if index < len(self.seqs) and self.seqs[index] == row.seq:",
        new="if False:",
        tests=STORE,
    ),
)


@dataclass(frozen=True, kw_only=True)
class Result:
    mutant: Mutant
    killed: bool
    seconds: float
    #: the last lines pytest printed (the failing test, for a killed mutant)
    tail: str


def copy_tree(into: Path) -> None:
    for name in COPIED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=IGNORED)
        elif source.exists():
            shutil.copy2(source, into / name)


def environment(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(copy / "src"), str(copy), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env.setdefault("STEPLINE_TEST_POSTGRES_URL", POSTGRES_URL)
    env.setdefault("STEPLINE_REQUIRE_POSTGRES", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def probe(copy: Path, env: dict[str, str]) -> None:
    """Check that the copy's package is the one imported (not the checkout's)."""
    found = subprocess.run(
        [sys.executable, "-c", "import stepline; print(stepline.__file__)"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"the copy is not what gets imported: stepline is {found}")


def _first_failure(tail: str) -> str | None:
    """The test pytest's summary names as failed first (``FAILED path::test``)."""
    for line in tail.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0]
    return None


def pytest(copy: Path, env: dict[str, str], tests: Sequence[str]) -> tuple[bool, str]:
    """Run ``tests`` in the copy; whether they passed, and the last lines printed."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, check=False)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, "\n".join(lines[-5:])


def run_mutant(copy: Path, env: dict[str, str], mutant: Mutant) -> Result:
    path = copy / "src" / "stepline" / mutant.module
    pristine = path.read_text()
    path.write_text(pristine.replace(mutant.old, mutant.new, 1))
    started = time.monotonic()
    try:
        passed, tail = pytest(copy, env, mutant.tests)
    finally:
        path.write_text(pristine)
    return Result(mutant=mutant, killed=not passed, seconds=time.monotonic() - started, tail=tail)


def stale(copy: Path, mutants: Sequence[Mutant]) -> list[str]:
    """Mutants whose snippet is not exactly once in its module (the code moved on)."""
    found: list[str] = []
    for mutant in mutants:
        text = (copy / "src" / "stepline" / mutant.module).read_text()
        if text.count(mutant.old) != 1:
            found.append(f"{mutant.name}: found {text.count(mutant.old)} times in {mutant.module}")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="run the mutant NAME")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip running the tests unmutated first"
    )
    args = parser.parse_args(argv)
    names = {mutant.name for mutant in MUTANTS}
    if unknown := set(args.only) - names:
        parser.error(f"no such mutant: {', '.join(sorted(unknown))}")
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for mutant in chosen:
            print(f"{mutant.name:40} {mutant.module:24} {' '.join(mutant.tests)}")
        return 0
    with tempfile.TemporaryDirectory(prefix="stepline-mutants-") as tmp:
        copy = Path(tmp)
        copy_tree(copy)
        env = environment(copy)
        probe(copy, env)
        if problems := stale(copy, chosen):
            print("snippets no longer in their modules:\n  " + "\n  ".join(problems))
            return 2
        if not args.no_baseline:
            tests = sorted({path for mutant in chosen for path in mutant.tests})
            passed, tail = pytest(copy, env, tests)
            if not passed:
                print(f"the unmutated tests fail, so no mutant can be judged:\n{tail}")
                return 2
        results: list[Result] = []
        for mutant in chosen:
            result = run_mutant(copy, env, mutant)
            results.append(result)
            verdict = "killed" if result.killed else "SURVIVED"
            print(f"{verdict:8} {result.seconds:6.1f}s  {mutant.name}", flush=True)
            if result.killed and (failed := _first_failure(result.tail)):
                print(f"         by {failed}")
            if not result.killed and mutant.reason:
                print(f"         reason: {mutant.reason}")
    unexplained = [r.mutant.name for r in results if not r.killed and not r.mutant.reason]
    killed = sum(r.killed for r in results)
    print(f"{killed} of {len(results)} killed; {len(unexplained)} survived without a reason")
    for name in unexplained:
        print(f"  {name}")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
