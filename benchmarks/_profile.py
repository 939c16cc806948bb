"""Sample stepline with py-spy during a scenario, and sum its collapsed stacks.

``py-spy record --format raw`` writes one line per distinct stack,
``thread (TID): NAME;outer;...;inner COUNT``, each frame ``function (file:line)``. Self time is
the count of samples whose innermost frame is the function; inclusive time
counts a function once per stack it appears in. Idle samples (the event loop
waiting in ``select``) are left out by py-spy itself, so the shares are of
the time the process was busy.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

__all__ = ["Profiler", "py_spy_path", "summarize"]

_LINE = re.compile(r":\d+\)$")


def py_spy_path() -> str | None:
    """py-spy next to this interpreter, or on PATH."""
    import sys

    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class Profiler:
    """``py-spy record`` attached to one process until :meth:`stop`."""

    def __init__(self, executable: str, pid: int, output: Path, *, rate: int = 250) -> None:
        self.output = output
        self._log = output.with_suffix(".log").open("wb")
        self._popen = subprocess.Popen(
            [
                executable,
                "record",
                "--pid",
                str(pid),
                "--format",
                "raw",
                "--rate",
                str(rate),
                "--nonblocking",
                "--threads",
                "-o",
                str(output),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> Path | None:
        """Stop sampling and write the stacks; None when py-spy produced nothing."""
        if self._popen.poll() is None:
            self._popen.send_signal(signal.SIGINT)
            try:
                self._popen.wait(15)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
        self._log.close()
        return self.output if self.output.exists() else None


def _frame(raw: str) -> tuple[str, str]:
    """``name (path/to/file.py:12)`` -> (``name (to/file.py)``, the full path)."""
    frame = _LINE.sub(")", raw.strip())
    name, _, where = frame.partition(" (")
    path = where.rstrip(")")
    short = "/".join(path.split("/")[-2:])
    return (f"{name} ({short})" if where else name), path


def _stacks(path: Path) -> list[tuple[str, list[tuple[str, str]], int]]:
    """(thread name, frames outermost first, samples) per distinct stack."""
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = "?"
        if frames[0].startswith("thread ("):
            thread = frames.pop(0).partition(": ")[2] or "?"
        if frames:
            stacks.append((thread, [_frame(frame) for frame in frames], int(count)))
    return stacks


#: frames every sample of the server passes through; they say nothing
_ENTRY_POINTS = ("stepline/__main__.py", "stepline/_cli.py", "stepline/_server/serve.py")


def _package(where: str) -> str:
    """The distribution a frame's file belongs to: ``sqlalchemy/engine/base.py`` ->
    ``sqlalchemy``; a top-level file (``selectors.py``) is the standard library."""
    head, slash, _ = where.partition("/")
    return head if slash else "python (stdlib)"


def _in_focus(where: str, focus: str) -> bool:
    inside = where.startswith(focus) or f"/{focus}" in where
    return inside and not where.endswith(_ENTRY_POINTS)


def summarize(path: Path, *, top: int = 15, focus: str = "stepline/") -> str:
    """Busy samples per thread; for the main thread the top functions by self time
    and the top ``focus`` functions by inclusive time; for the others, self time."""
    stacks = _stacks(path)
    total = sum(count for _, _, count in stacks)
    if not total:
        return f"{path.name}: no samples"
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    others: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    for thread, frames, count in stacks:
        threads[thread] += count
        packages[_package(frames[-1][1])] += count
        if thread not in ("MainThread", "?"):
            others[f"[{thread}] {frames[-1][0]}"] += count
            continue
        own[frames[-1][0]] += count
        for name in {name for name, where in frames if _in_focus(where, focus)}:
            inclusive[name] += count

    def share(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    split = ", ".join(f"{name} {share(n).strip()}" for name, n in threads.most_common())
    lines = [f"{path.name}: {total} busy samples ({split})", "  self time by package, all threads:"]
    lines += [f"    {share(n)}  {name}" for name, n in packages.most_common(8)]
    lines.append("  main thread, self time:")
    lines += [f"    {share(n)}  {name}" for name, n in own.most_common(top)]
    lines.append(f"  main thread, inclusive time of {focus.strip('/')} functions:")
    lines += [f"    {share(n)}  {name}" for name, n in inclusive.most_common(top)]
    if others:
        lines.append("  other threads, self time:")
        lines += [f"    {share(n)}  {name}" for name, n in others.most_common(5)]
    return "\n".join(lines)
