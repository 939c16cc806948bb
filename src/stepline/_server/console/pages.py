"""The console's pages as HTML, from what the store returned: pure functions, no I/O.

Each function takes the data of one page (a :class:`ResponsePage`, a
:class:`ResponseTree`, a record) and returns the page's HTML; the routes do
the reading and the access checks. Every value from the store goes through
:func:`~stepline._server.console.html.render`, which escapes it.

Invariants:

* A step is drawn inside the step whose id is its ``scope`` (a sub-agent's
  steps inside the tool call that ran it), in sequence order, and carries its
  stored id as ``data-step-id``.
* Payloads are shown as stored, pretty-printed and cut at
  :data:`PAYLOAD_LIMIT` characters (the cut says how much is left out).
* Times are UTC; a step's timing is relative to its response's creation.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from stepline._server.console.html import Html, join, render, template
from stepline._steps import Step, StepKind
from stepline.store._base import ResponseRecord
from stepline.store._listing_values import ResponsePage, ResponseSummary, ResponseTree

__all__ = [
    "HOURS_CHOICES",
    "PAYLOAD_LIMIT",
    "STATUSES",
    "Filters",
    "Frame",
    "layout",
    "list_page",
    "live_page",
    "login_page",
    "message_page",
    "tree_page",
]

#: every status a response can have, in the order the filter offers them
STATUSES = ("queued", "in_progress", "completed", "incomplete", "failed", "cancelled")
#: the "created in the last ..." choices of the list, in hours (0: any time)
HOURS_CHOICES = (1, 6, 24, 72, 168, 0)
#: the longest payload shown, in characters
PAYLOAD_LIMIT = 100_000
_PREVIEW_LIMIT = 120

#: a key id -> the name shown for it
KeyNamer = Callable[[str | None], str]


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "—"
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _seconds(seconds: float | None) -> str:
    if seconds is None or seconds < 0 or math.isnan(seconds):
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def _count(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _status_class(status: str) -> str:
    return status if status in STATUSES else "other"


def _status(status: str) -> Html:
    return render(
        '<span class="status s-{cls}">{status}</span>', cls=_status_class(status), status=status
    )


def _pretty(value: Any) -> str:
    """A payload as indented JSON (a JSON string inside is shown parsed), cut when long."""
    if isinstance(value, str):
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return _cut(value)
    try:
        text = orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    except TypeError:
        text = repr(value)
    return _cut(text)


def _cut(text: str) -> str:
    if len(text) <= PAYLOAD_LIMIT:
        return text
    return f"{text[:PAYLOAD_LIMIT]}\n… [{len(text) - PAYLOAD_LIMIT:,} more characters]"


def _one_line(text: str, limit: int = _PREVIEW_LIMIT) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# -- the frame --------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Frame:
    """What every page's frame shows: who is signed in, and how."""

    who: str
    #: signed in with a cookie (offer to sign out); False: open on loopback
    signed_in: bool


def _nav(current: str) -> Html:
    links = [("responses", "/console", "Responses"), ("usage", "/console/usage", "Usage")]
    return join(
        render(
            '<a href="{href}"{current}>{label}</a>',
            href=href,
            label=label,
            current=Html(' aria-current="page"' if name == current else ""),
        )
        for name, href, label in links
    )


def layout(
    title: str, content: Html, *, page: str, frame: Frame | None, asset_version: str
) -> Html:
    """The whole document around ``content``; ``frame`` None on the sign-in pages."""
    if frame is None:
        nav = who = Html("")
    else:
        nav = _nav(page)
        sign_out = Html(
            '<form method="post" action="/console/logout" class="logout">'
            '<button type="submit">Sign out</button></form>'
            if frame.signed_in
            else ""
        )
        who = render('<span class="muted">{who}</span>{sign_out}', who=frame.who, sign_out=sign_out)
    return render(
        template("layout"),
        title=title,
        page=page,
        nav=nav,
        who=who,
        content=content,
        asset_version=asset_version,
    )


def login_page(*, next_path: str, message: str | None, kind: str = "error") -> Html:
    notice = (
        render('<p class="notice {kind}" id="message">{text}</p>', kind=kind, text=message)
        if message
        else Html("")
    )
    return render(template("login"), next=next_path, message=notice)


def message_page(
    heading: str, text: str, *, kind: str = "error", action: Html | None = None
) -> Html:
    return render(
        template("message"), heading=heading, text=text, kind=kind, action=action or Html("")
    )


# -- the list ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Filters:
    """The list's filters as the operator typed them (empty: no filter)."""

    hours: int = 24
    status: str = ""
    model: str = ""
    key: str = ""
    limit: int = 50

    def query_string(self, **changes: str) -> str:
        values = {
            "hours": str(self.hours),
            "status": self.status,
            "model": self.model,
            "key": self.key,
            "limit": str(self.limit),
            **changes,
        }
        return urlencode({name: value for name, value in values.items() if value})


def _options(choices: Iterable[tuple[str, str]], selected: str) -> Html:
    return join(
        render(
            '<option value="{value}"{selected}>{label}</option>',
            value=value,
            label=label,
            selected=Html(" selected" if value == selected else ""),
        )
        for value, label in choices
    )


def _hours_label(hours: int) -> str:
    if hours == 0:
        return "any time"
    if hours % 24 == 0:
        days = hours // 24
        return f"last {days} day{'s' if days > 1 else ''}"
    return f"last {hours} hour{'s' if hours > 1 else ''}"


def _datalist(values: Iterable[str]) -> Html:
    return join(render('<option value="{value}">', value=value) for value in sorted(set(values)))


def _duration_of(summary: ResponseSummary, now: float) -> str:
    if summary.terminal:
        ended = summary.ended_at
        return _seconds(None if ended is None else ended - summary.created_at)
    return f"running {_seconds(now - summary.created_at)}"


def _row(summary: ResponseSummary, key_name: KeyNamer, filters: Filters, now: float) -> Html:
    live = (
        Html("")
        if summary.terminal
        else render(
            ' <a class="live-link" href="/console/responses/{id}/live">live</a>', id=summary.id
        )
    )
    error = Html("")
    if summary.error_code or summary.error_message:
        error = render(
            '<span class="error-code" title="{message}">{code}</span>',
            code=summary.error_code or "error",
            message=summary.error_message or "",
        )
    name = key_name(summary.key_id)
    return render(
        '<tr data-response-id="{id}" data-status="{status_text}">'
        '<td class="when" title="{created_exact}">{created}</td>'
        '<td class="id"><a href="/console/responses/{id}">{id}</a>{live}</td>'
        "<td>{status}</td>"
        '<td><a class="filter-link" href="/console?{model_query}">{model}</a></td>'
        '<td><a class="filter-link" href="/console?{key_query}">{key}</a></td>'
        '<td class="num">{duration}</td>'
        '<td class="num">{input_tokens}</td><td class="num">{output_tokens}</td>'
        '<td class="num">{steps}</td>'
        "<td>{error}</td></tr>",
        id=summary.id,
        status_text=summary.status,
        created=_when(summary.created_at),
        created_exact=f"{summary.created_at:.3f}",
        live=live,
        status=_status(summary.status),
        model=summary.model,
        model_query=filters.query_string(model=summary.model),
        key=name,
        key_query=filters.query_string(key=name),
        duration=_duration_of(summary, now),
        input_tokens=_count(summary.input_tokens),
        output_tokens=_count(summary.output_tokens),
        steps=summary.step_count,
        error=error,
    )


def list_page(
    page: ResponsePage,
    *,
    filters: Filters,
    key_name: KeyNamer,
    known_models: Sequence[str],
    known_keys: Sequence[str],
    first_page: bool,
    now: float,
) -> Html:
    rows = join(_row(summary, key_name, filters, now) for summary in page.summaries)
    pager: list[Html] = []
    if not first_page:
        pager.append(
            render(
                '<a href="/console?{query}" id="newest">« newest</a>', query=filters.query_string()
            )
        )
    if page.next is not None:
        pager.append(
            render(
                '<a href="/console?{query}" id="older" rel="next">older »</a>',
                query=filters.query_string(before=page.next.encode()),
            )
        )
    empty = (
        Html('<p class="muted empty" id="empty">No response matches these filters.</p>')
        if not page.summaries
        else Html("")
    )
    seen_models = [summary.model for summary in page.summaries]
    seen_keys = [key_name(summary.key_id) for summary in page.summaries]
    return render(
        template("list"),
        hours_options=_options(
            ((str(h), _hours_label(h)) for h in HOURS_CHOICES), str(filters.hours)
        ),
        status_options=_options((("", "any"), *((s, s) for s in STATUSES)), filters.status),
        model=filters.model,
        key=filters.key,
        limit=filters.limit,
        model_options=_datalist([*known_models, *seen_models]),
        key_options=_datalist([*known_keys, *seen_keys]),
        rows=rows,
        empty=empty,
        pager=join(pager),
    )


# -- one response as its step tree ----------------------------------------------------


def _fact(name: str, value: Html | str) -> Html:
    return render("<dt>{name}</dt><dd>{value}</dd>", name=name, value=value)


def _usage_of(step: Step) -> tuple[int, int] | None:
    """A model's tokens (a model call's, or any other step that reports usage)."""
    if step.kind is StepKind.TOOL_CALL or step.response is None:
        return None
    usage = step.response.get("usage")
    if not isinstance(usage, dict):
        return None
    return int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))


def _model_preview(step: Step) -> str:
    message = (step.response or {}).get("message") or {}
    calls = message.get("tool_calls") or []
    if calls:
        names = [
            str((call.get("function") or call.get("custom") or {}).get("name", "?"))
            for call in calls
        ]
        return "→ " + ", ".join(names)
    content = message.get("content")
    return _one_line(content) if isinstance(content, str) else ""


def _tool_preview(step: Step) -> str:
    arguments = str(step.request.get("arguments", ""))
    output = (step.response or {}).get("output")
    shown = _one_line(arguments, 48)
    if isinstance(output, str):
        shown += " → " + _one_line(output, 60)
    return shown


@dataclass(frozen=True, kw_only=True)
class _Clock:
    """A response's time axis: its creation, and the span the timeline bars cover."""

    start: float
    span: float

    def x(self, moment: float) -> float:
        return max(0.0, min(1000.0, (moment - self.start) / self.span * 1000))

    def offset(self, moment: float | None) -> str:
        return "—" if moment is None else f"+{_seconds(moment - self.start)}"


def _clock(summary: ResponseSummary, steps: Sequence[Step], now: float) -> _Clock:
    ends = [step.finished_at for step in steps if step.finished_at is not None]
    end = summary.ended_at if summary.terminal else now
    end = max([end or summary.created_at, *ends])
    return _Clock(start=summary.created_at, span=max(end - summary.created_at, 1e-3))


#: the deepest nesting drawn with its own indent (deeper levels share it)
_MAX_DEPTH = 4
#: the narrowest bar, in thousandths of the timeline: a 2 ms step stays visible
_MIN_BAR = 6.0


def _step_item(step: Step, children: Html, depth: int, clock: _Clock, now: float) -> Html:
    state = step.state.value
    began = step.started_at
    ended = (
        step.finished_at
        if step.finished_at is not None
        else (now if state == "processing" else None)
    )
    duration = None if began is None or ended is None else ended - began
    usage = _usage_of(step)
    tokens = "" if usage is None else f"{usage[0]:,} / {usage[1]:,}"
    if step.kind is StepKind.MODEL_CALL:
        kind_label = "model call"
        iteration = step.request.get("iteration")
        name = f"turn {iteration}" if iteration is not None else ""
        preview = _model_preview(step)
    elif step.kind is StepKind.TOOL_CALL:
        kind_label = "sub-agent" if children else "tool call"
        name = step.tool_name
        preview = _tool_preview(step)
    else:
        kind_label, name, preview = step.kind.value.replace("_", " "), "", ""
    run_x = clock.x(began) if began is not None else 0.0
    run_end = clock.x(ended) if ended is not None else run_x
    wait_x = clock.x(step.created_at)
    facts = join(
        [
            _fact("step id", render("<code>{id}</code>", id=step.id)),
            _fact("call id", step.call_id or "—"),
            _fact("scope", step.scope or "top level"),
            _fact("after", step.previous_step_id or "—"),
            _fact("recorded", clock.offset(step.created_at)),
            _fact("started", clock.offset(step.started_at)),
            _fact("finished", clock.offset(step.finished_at)),
            _fact("waited", _seconds(None if began is None else began - step.created_at)),
            _fact("attempts", str(step.attempt)),
        ]
    )
    error = (
        render(
            '<div class="notice error step-error"><pre>{error}</pre></div>',
            error=_pretty(step.error),
        )
        if step.error
        else Html("")
    )
    return render(
        template("step"),
        id=step.id,
        kind=step.kind.value,
        depth=min(depth, _MAX_DEPTH),
        kind_label=kind_label,
        sequence=step.sequence,
        name=name,
        preview=preview,
        state=state,
        state_class=state,
        attempts=f" ×{step.attempt}" if step.attempt > 1 else "",
        duration=_seconds(duration),
        tokens=tokens,
        bar_label=f"{state} {_seconds(duration)}",
        wait_x=f"{wait_x:.1f}",
        wait_w=f"{max(run_x - wait_x, 0.0):.1f}",
        run_x=f"{run_x:.1f}",
        run_w=f"{max(run_end - run_x, _MIN_BAR):.1f}",
        facts=facts,
        error=error,
        request=_pretty(step.request),
        result=_pretty(step.response) if step.response is not None else "—",
        children=children,
    )


def _steps_html(steps: Sequence[Step], clock: _Clock, now: float) -> Html:
    known = {step.id for step in steps}
    by_scope: dict[str | None, list[Step]] = {}
    for step in steps:
        # a step whose scope is not among them is drawn at the top, never hidden
        by_scope.setdefault(step.scope if step.scope in known else None, []).append(step)

    def level(scope_id: str | None, depth: int) -> Html:
        items = []
        for step in by_scope.get(scope_id, []):
            inner = level(step.id, depth + 1) if step.id in by_scope else Html("")
            children = (
                render(
                    '<ol class="tree sub" data-scope-of="{id}">{items}</ol>',
                    id=step.id,
                    items=inner,
                )
                if inner
                else Html("")
            )
            items.append(_step_item(step, children, depth, clock, now))
        return join(items)

    return level(None, 0)


def _summary_facts(summary: ResponseSummary, key_name: KeyNamer, now: float) -> Html:
    previous = (
        render(
            '<a href="/console/responses/{id}"><code>{id}</code></a>',
            id=summary.previous_response_id,
        )
        if summary.previous_response_id
        else "—"
    )
    tokens = (
        "—"
        if summary.input_tokens is None
        else f"{summary.input_tokens:,} in / {_count(summary.output_tokens)} out"
    )
    return join(
        [
            _fact("model", summary.model),
            _fact("key", key_name(summary.key_id)),
            _fact("created", _when(summary.created_at)),
            _fact("duration", _duration_of(summary, now)),
            _fact("tokens", tokens),
            _fact("background", "yes" if summary.background else "no"),
            _fact("stored", "yes" if summary.store else "no (store: false)"),
            _fact("previous", previous),
        ]
    )


def _error_box(summary: ResponseSummary) -> Html:
    if not (summary.error_code or summary.error_message):
        return Html("")
    return render(
        '<p class="notice error" id="response-error"><strong>{code}</strong> {message}</p>',
        code=summary.error_code or "error",
        message=summary.error_message or "",
    )


def tree_page(tree: ResponseTree, *, key_name: KeyNamer, now: float) -> Html:
    summary = tree.summary
    clock = _clock(summary, tree.steps, now)
    live_link = (
        render(
            '<a class="live-link" href="/console/responses/{id}/live" id="live-link">'
            "follow live</a>",
            id=summary.id,
        )
        if not summary.terminal
        else render(
            '<a href="/console/responses/{id}/live" id="live-link">replay events</a>', id=summary.id
        )
    )
    return render(
        template("tree"),
        id=summary.id,
        status=_status(summary.status),
        live_link=live_link,
        facts=_summary_facts(summary, key_name, now),
        error=_error_box(summary),
        body=_pretty(tree.body),
        step_count=f"{len(tree.steps)}",
        span=_seconds(clock.span),
        steps=_steps_html(tree.steps, clock, now),
        no_steps=Html('<p class="muted">No step recorded yet.</p>') if not tree.steps else Html(""),
    )


# -- one response followed live ------------------------------------------------------


def live_page(record: ResponseRecord, *, key_name: KeyNamer) -> Html:
    return render(
        template("live"),
        id=record.id,
        status=record.status,
        status_class=_status_class(record.status),
        model=record.model,
        key=key_name(record.key_id),
        created=_when(record.created_at),
    )
