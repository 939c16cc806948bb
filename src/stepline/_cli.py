"""The ``stepline`` command: serve, migrate, mock-upstream, manage API keys, and
inspect stored responses.

Every option has an environment variable (``STEPLINE_*``); a flag beats the
variable, which beats the config file.

``serve`` without any API key runs open only on a loopback address; another
address needs a key or an explicit ``--insecure``. ``keys create`` prints a
new token once and stores only its hash.

Every error a person can fix (config, environment, database, port) ends the
command with one line on stderr and a non-zero exit: 2 for a problem of the
config, the environment or the database, 1 for a missing object. ``serve``
finds them all before it listens, and before its first log line. ``--debug``
(or ``STEPLINE_DEBUG=1``) prints the traceback too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import ipaddress
import sys
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar, cast

import click
import typer

from stepline._config import DEFAULT_DATABASE_URL, KeyConfig, RateConfig, Settings, load_settings
from stepline._protocol.assemble import sum_usage
from stepline._server.logs import configure_logging
from stepline._steps import StepKind, StepState
from stepline.errors import ConfigError, StepLineError, StoreError

# httpx (which the server uses) imports its own command-line client on import whenever
# click, rich and pygments are installed, as they are beside this CLI: some 6 MB that
# no stepline process runs. A module marked absent (None in sys.modules) is skipped, as
# httpx skips it when they are not installed.
sys.modules.setdefault("httpx._main", cast(ModuleType, None))

# The database and server machinery (SQLAlchemy, Alembic, FastAPI) is imported by the
# commands that use it, after the checks that need none of it: a config error, or
# `stepline --help`, answers in a fraction of the time. rich too, which only the
# commands that print tables and trees need: a server that has started prints two
# lines, and carries no console library for them.
if TYPE_CHECKING:
    from fastapi import FastAPI
    from rich.console import Console
    from rich.table import Table
    from rich.tree import Tree

    from stepline._server.auth import StoredKey
    from stepline._steps import Step
    from stepline._tools.registry import ServerTool
    from stepline.store._base import ResponseRecord
    from stepline.store._keys import KeyStore
    from stepline.store._retention_values import PurgeCounts, RetentionPolicy

__all__ = ["app", "main"]

app = typer.Typer(
    help="stepline: an Open Responses server that runs the agent loop.",
    no_args_is_help=True,
    add_completion=False,
)
responses_app = typer.Typer(help="Inspect stored responses.", no_args_is_help=True)
app.add_typer(responses_app, name="responses")
keys_app = typer.Typer(help="Manage the API keys stored in the database.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@functools.cache
def _console() -> Console:
    from rich.console import Console

    return Console()


@functools.cache
def _stderr_console() -> Console:
    """Errors: one line each, never wrapped to the terminal's width, never read as markup."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True, highlight=False)


def escape(text: str) -> str:
    """``text`` shown as it is, not read as rich markup."""
    from rich.markup import escape

    return escape(text)


_T = TypeVar("_T")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", envvar="STEPLINE_CONFIG", help="TOML config file.")
]
DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--database",
        envvar="STEPLINE_DATABASE_URL",
        help=f"sqlite:///path or postgresql://user@host/db [default: {DEFAULT_DATABASE_URL}]",
    ),
]
DebugOption = Annotated[
    bool,
    typer.Option("--debug", envvar="STEPLINE_DEBUG", help="On an error, print its traceback too."),
]


def _fail(message: str, code: int = 2) -> NoReturn:
    """End the command with ``message`` as one line on stderr."""
    from rich.text import Text

    _stderr_console().print(Text.assemble(("error: ", "red"), " ".join(message.split())))
    raise typer.Exit(code)


@contextmanager
def _one_line_errors(debug: bool) -> Iterator[None]:
    """Turn an error raised inside into one line and an exit; with ``debug``, its
    traceback first. An error of stepline's says what to fix (exit 2); any other is
    named (exit 1)."""
    try:
        yield
    except (click.exceptions.Exit, click.ClickException):
        raise
    except StepLineError as exc:
        if debug:
            traceback.print_exc()
        _fail(str(exc))
    except Exception as exc:
        if debug:
            traceback.print_exc()
        hint = "" if debug else " (--debug shows where)"
        _fail(f"unexpected {type(exc).__name__}: {exc}{hint}", 1)


def _settings(
    config: Path | None,
    database: str | None,
    upstream: str | None = None,
    upstream_api_key: str | None = None,
) -> Settings:
    overrides: dict[str, Any] = {"database_url": database}
    if upstream is not None:
        overrides["upstreams"] = {"default": {"base_url": upstream, "api_key": upstream_api_key}}
        overrides["default_model"] = {"upstream": "default"}
    return load_settings(config, overrides=overrides)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _stored_key_count(database_url: str) -> int:
    """Keys in the database, before it is migrated; 0 when it has none (or no keys
    table yet)."""
    from stepline.store._sql import open_store

    store = await open_store(database_url, migrate=False, pool_size=1)
    try:
        return await store.keys.count_keys()
    except StoreError:
        return 0  # no keys table yet
    finally:
        await store.close()


_INSECURE = "no API keys and --insecure: open to anyone who can reach it"


def _say(line: str, *, alarm: bool = False) -> None:
    """One line on stdout, flushed; red on a terminal when it is an alarm."""
    if alarm and sys.stdout.isatty():
        line = f"\x1b[31m{line}\x1b[0m"
    print(line, flush=True)


def _access(settings: Settings, host: str, insecure: bool, stored: int) -> tuple[bool, str]:
    """Whether requests without a key are let in, and the start-up line saying so;
    a ConfigError when the server would be open on an address other than loopback."""
    loopback = _is_loopback(host)
    if settings.keys or stored:
        return loopback or insecure, (
            f"API keys required ({len(settings.keys)} in the config, {stored} stored)"
        )
    if loopback:
        return True, "no API keys: open to anyone who can reach this loopback address"
    if insecure:
        return True, _INSECURE
    raise ConfigError(
        f"no API keys, and {host} is not a loopback address: create a key "
        "(`stepline keys create NAME`, or [keys.NAME] in the config), bind 127.0.0.1, "
        "or pass --insecure"
    )


def _load_tools(specs: list[str]) -> list[ServerTool]:
    """The ``--tools`` modules' tools; whatever their import raises becomes a ConfigError."""
    tools: list[ServerTool] = []
    if not specs:
        return tools
    from stepline._server.python_tools import load_python_tools

    for spec in specs:
        try:
            tools.extend(load_python_tools([spec]))
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"cannot load tools from {spec}: {type(exc).__name__}: {exc}"
            ) from exc
    return tools


def _url_host(host: str) -> str:
    """``host`` as it goes in a URL: a wildcard address becomes loopback, IPv6 is bracketed."""
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str, typer.Option(envvar="STEPLINE_HOST")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(envvar="STEPLINE_PORT", help="0 picks a free port (printed).")
    ] = 8000,
    database: DatabaseOption = None,
    upstream: Annotated[
        str | None,
        typer.Option(
            envvar="STEPLINE_UPSTREAM_URL",
            help="One Chat Completions upstream for every model, e.g. http://127.0.0.1:8001/v1",
        ),
    ] = None,
    upstream_api_key: Annotated[
        str | None, typer.Option(envvar="STEPLINE_UPSTREAM_API_KEY", show_default=False)
    ] = None,
    demo: Annotated[
        bool,
        typer.Option(
            "--demo",
            envvar="STEPLINE_DEMO",
            help="Serve the scripted demo model and demo tools; no config needed.",
        ),
    ] = False,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            envvar="STEPLINE_INSECURE",
            help="Serve without API keys on an address other than loopback.",
        ),
    ] = False,
    log_format: Annotated[
        str,
        typer.Option(envvar="STEPLINE_LOG_FORMAT", help="json (one object per line) or text."),
    ] = "json",
    tools: Annotated[
        list[str] | None,
        typer.Option(
            "--tools",
            envvar="STEPLINE_TOOLS",
            help="A module (package.module or path/to/file.py) whose @tool functions become "
            "server tools for every model (repeatable).",
        ),
    ] = None,
    debug: DebugOption = False,
) -> None:
    """Run the stepline server."""
    # Everything that can be wrong is checked before the port listens and before the
    # first log line, so that the error is the only line on stderr.
    with _one_line_errors(debug):
        if log_format not in ("json", "text"):
            raise ConfigError(f"--log-format is json or text, not {log_format!r}")
        python_tools = _load_tools(tools or [])
        settings = None if demo else _settings(config, database, upstream, upstream_api_key)
        if settings is not None and not settings.upstreams:
            raise ConfigError("no upstream: pass --upstream URL, --config FILE or --demo")
        from stepline._server.serve import bind_socket
        from stepline._server.serve import serve as serve_until_signal

        sock = bind_socket(host, port)
    try:
        port = sock.getsockname()[1]
        with _one_line_errors(debug):
            if settings is None:
                from stepline._server.demo import demo_settings

                settings = demo_settings(
                    f"http://{_url_host(host)}:{port}",
                    database_url=database or DEFAULT_DATABASE_URL,
                )
            application, access = _prepare_app(
                settings, host, insecure, demo, python_tools, log_format=log_format
            )
        shown = f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"
        ready = (
            f"stepline demo on {shown} (any model name works)" if demo else f"stepline on {shown}"
        )

        def listening() -> None:
            # printed once the port accepts connections: a script may wait for this line
            _say(ready)
            _say(access, alarm=access == _INSECURE)

        with _one_line_errors(debug):
            serve_until_signal(application, sock=sock, on_listening=listening)
    finally:
        sock.close()


def _prepare_app(
    settings: Settings,
    host: str,
    insecure: bool,
    demo: bool,
    python_tools: list[ServerTool],
    *,
    log_format: str,
) -> tuple[FastAPI, str]:
    """The app to serve, and the line saying who may use it; the environment, the
    sealing keys and the database are checked first (each a ConfigError), and the
    database is migrated."""
    settings.check_environment()
    from stepline._server.preflight import check_creatable, migrate_in_child, probe_database

    exists = asyncio.run(probe_database(settings.database_url))
    check_creatable(settings.database_url)
    stored = asyncio.run(_stored_key_count(settings.database_url)) if exists else 0
    open_access, access = _access(settings, host, insecure, stored)
    from stepline._server.app import create_app, sealing_keys

    sealing_keys(settings)
    # logs start here, every check passed: from the migration on, the server speaks
    # through its log (libraries imported above log their set-up before this, unseen)
    configure_logging(log_format="json" if log_format == "json" else "text")
    asyncio.run(migrate_in_child(settings.database_url))
    mounts = None
    if demo:  # the scripted model the demo serves is loaded for it only
        from stepline._server.demo import demo_mounts

        mounts = demo_mounts()
    application = create_app(
        settings,
        migrate=False,
        mounts=mounts,
        allow_anonymous=open_access,
        python_tools=python_tools,
    )
    return application, access


@app.command()
def migrate(
    config: ConfigOption = None, database: DatabaseOption = None, debug: DebugOption = False
) -> None:
    """Create or upgrade the database schema."""
    from stepline._server.preflight import (
        check_creatable,
        database_label,
        migrate_database,
        probe_database,
    )

    with _one_line_errors(debug):
        settings = _settings(config, database)
        asyncio.run(probe_database(settings.database_url))
        check_creatable(settings.database_url)
        asyncio.run(migrate_database(settings.database_url))
        label = database_label(settings.database_url)
    _console().print(f"database at {escape(label)} is up to date")


@app.command("mock-upstream")
def mock_upstream(
    host: Annotated[str, typer.Option(envvar="STEPLINE_MOCK_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="STEPLINE_MOCK_PORT")] = 8001,
    script: Annotated[
        list[str] | None,
        typer.Option(help="NAME=FILE: serve the JSON script FILE as model NAME (repeatable)."),
    ] = None,
    token_delay: Annotated[float, typer.Option(help="Seconds between demo tokens.")] = 0.015,
) -> None:
    """Serve the scripted Chat Completions model alone."""
    import uvicorn

    from stepline.scripted import Script, ScriptedModel, create_scripted_app

    scripts: dict[str, Script] = {}
    for spec in script or ():
        name, sep, path = spec.partition("=")
        if not sep:
            _fail(f"--script takes NAME=FILE, got {spec!r}")
        scripts[name] = Script.from_json(Path(path).read_bytes())
    model = ScriptedModel(scripts, demo_token_delay=token_delay)
    _console().print(f"scripted model on http://{host}:{port}/v1")
    uvicorn.run(create_scripted_app(model), host=host, port=port, log_level="warning")


async def _store_new_key(database_url: str, name: str, key: KeyConfig) -> bool:
    """Store ``key``, creating the database or migrating it first (as `stepline migrate`
    does: the keys table is the schema's); False when the name is taken."""
    from stepline._server.auth import store_key
    from stepline._server.preflight import check_creatable, migrate_database, probe_database

    await probe_database(database_url)
    check_creatable(database_url)
    await migrate_database(database_url)
    return await _on_stored_keys(database_url, lambda keys: store_key(keys, name, key))


async def _on_stored_keys(database_url: str, work: Callable[[KeyStore], Awaitable[_T]]) -> _T:
    """``work`` on the stored keys of an existing, migrated database, never creating a
    database (a ConfigError says which database and what to run)."""
    from stepline._server.preflight import check_schema
    from stepline.store._sql import open_store

    await check_schema(database_url)
    store = await open_store(database_url, migrate=False, pool_size=1)
    try:
        return await work(store.keys)
    finally:
        await store.close()


@keys_app.command("create")
def create_key(
    name: str,
    config: ConfigOption = None,
    database: DatabaseOption = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="A model (or a pattern like 'llama-*') it may use; repeat."),
    ] = None,
    tool: Annotated[
        list[str] | None, typer.Option("--tool", help="A server tool it may use; repeat.")
    ] = None,
    no_tools: Annotated[bool, typer.Option("--no-tools", help="No server tools at all.")] = False,
    rps: Annotated[
        float | None, typer.Option("--rps", min=0.001, help="Requests per second.")
    ] = None,
    burst: Annotated[int | None, typer.Option(min=1, help="Requests at once.")] = None,
    max_concurrent: Annotated[
        int | None, typer.Option(min=1, help="Requests running at once.")
    ] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="An operator's key: usage, the console, every key's.")
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Create an API key: its token is printed once; only its hash is stored."""
    from stepline._server.auth import hash_token, new_token

    with _one_line_errors(debug):
        settings = _settings(config, database)
    if name in settings.keys:
        _fail(f"the config already has a key named {name!r}", 1)
    tools = () if no_tools else (tuple(tool) if tool else None)
    unknown = [item for item in tools or () if item not in settings.tools]
    if config is not None and unknown:
        _fail(f"unknown server tool(s): {', '.join(unknown)}")
    if burst is not None and rps is None:
        _fail("--burst needs --rps")
    token = new_token()
    key = KeyConfig(
        hash=hash_token(token),
        models=tuple(model) if model else None,
        tools=tools,
        rate=None if rps is None else RateConfig(requests_per_second=rps, burst=burst),
        max_concurrent=max_concurrent,
        admin=admin,
    )

    with _one_line_errors(debug):
        created = asyncio.run(_store_new_key(settings.database_url, name, key))
    if not created:
        _fail(f"a key named {name!r} exists already", 1)
    _console().print(f"created API key {name!r}; this is the only time its token is shown:")
    # the token alone on stdout, so that a script can capture it
    sys.stdout.write(token + "\n")
    sys.stdout.flush()


def _limits_text(key: KeyConfig) -> tuple[str, str, str]:
    models = "all" if key.models is None else ", ".join(key.models) or "none"
    tools = "all" if key.tools is None else ", ".join(key.tools) or "none"
    limits = []
    if key.rate is not None:
        limits.append(f"{key.rate.requests_per_second:g}/s, burst {key.rate.capacity:g}")
    if key.max_concurrent is not None:
        limits.append(f"{key.max_concurrent} at once")
    if key.admin:
        limits.append("admin")
    return models, tools, "; ".join(limits) or "-"


def _print_table(table: Table) -> None:
    """Print ``table`` at least as wide as its unwrappable columns need: an id is never
    cut to fit the terminal (a too-narrow one wraps the line instead)."""
    from rich.console import Console
    from rich.measure import Measurement

    console = _console()
    unbounded = console.options.update_width(1_000_000)
    needed = Measurement.get(console, unbounded, table).maximum
    # a console prints no wider than it is, whatever its print is asked: use a wider one
    Console(width=max(console.width, needed)).print(table, crop=False)


@keys_app.command("list")
def list_keys(
    config: ConfigOption = None, database: DatabaseOption = None, debug: DebugOption = False
) -> None:
    """The API keys of the config and of the database (never their tokens)."""
    from rich.table import Table
    from rich.text import Text

    from stepline._server.auth import list_stored_keys

    with _one_line_errors(debug):
        settings = _settings(config, database)
        try:
            stored: list[StoredKey] = asyncio.run(
                _on_stored_keys(settings.database_url, list_stored_keys)
            )
        except ConfigError as exc:
            if not settings.keys:
                raise
            # the config's keys are keys all the same, database or not: list them
            _stderr_console().print(Text(f"no stored keys listed: {exc}"))
            stored = []
    table = Table("name", "source", "created", "models", "tools", "limits")
    for name, key in settings.keys.items():
        table.add_row(escape(name), "config", "-", *map(escape, _limits_text(key)))
    for row in stored:
        table.add_row(
            escape(row.name),
            "database",
            _when(row.created_at),
            *map(escape, _limits_text(row.config)),
        )
    _print_table(table)


@keys_app.command("revoke")
def revoke_key(
    name: str,
    config: ConfigOption = None,
    database: DatabaseOption = None,
    debug: DebugOption = False,
) -> None:
    """Delete a stored API key; running servers stop accepting it within seconds."""
    from stepline._server.auth import delete_stored_key

    with _one_line_errors(debug):
        settings = _settings(config, database)

        async def work(keys: KeyStore) -> bool:
            return await delete_stored_key(keys, name)

        revoked = asyncio.run(_on_stored_keys(settings.database_url, work))
    if not revoked:
        hint = " (it is in the config: remove it there)" if name in settings.keys else ""
        _fail(f"no stored key named {name!r}{hint}", 1)
    _console().print(f"revoked API key {escape(repr(name))}")


@keys_app.command("hash")
def hash_key() -> None:
    """Read a token on stdin; print the hash to put in the config as [keys.NAME] hash."""
    from stepline._server.auth import hash_token

    token = sys.stdin.readline().strip()
    if not token:
        _fail("no token on stdin")
    sys.stdout.write(hash_token(token) + "\n")


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


async def _read(
    database_url: str, response_id: str | None, limit: int
) -> tuple[list[ResponseRecord], list[Step]]:
    from stepline._server.preflight import check_schema
    from stepline.store._sql import open_store

    await check_schema(database_url)
    store = await open_store(database_url, migrate=False, pool_size=1)
    try:
        if response_id is None:
            return await store.list_responses(limit=limit), []
        record = await store.get_response(response_id)
        if record is None:
            return [], []
        return [record], await store.load_steps(response_id)
    finally:
        await store.close()


@responses_app.command("list")
def list_responses(
    config: ConfigOption = None,
    database: DatabaseOption = None,
    limit: Annotated[int, typer.Option(min=1)] = 20,
    debug: DebugOption = False,
) -> None:
    """The most recent stored responses."""
    from rich.table import Table

    with _one_line_errors(debug):
        settings = _settings(config, database)
        records, _ = asyncio.run(_read(settings.database_url, None, limit))
    table = Table()
    # ids are what a reader copies into `responses show`: never folded or cut
    table.add_column("id", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("model")
    table.add_column("previous", no_wrap=True)
    for record in records:
        table.add_row(
            record.id,
            _when(record.created_at),
            record.status,
            escape(record.model),
            record.previous_response_id or "",
        )
    _print_table(table)


def _error_text(error: dict[str, Any] | None) -> str:
    """`` — message (code)`` of a stored error, or nothing."""
    if not error:
        return ""
    message = " ".join(str(error.get("message") or "").split()) or "no message"
    code = f" ({error['code']})" if error.get("code") else ""
    return f" — {escape(message)}{escape(code)}"


def _step_label(step: Step) -> str:
    took = (
        f"{(step.finished_at - step.started_at) * 1000:.0f} ms"
        if step.finished_at is not None and step.started_at is not None
        else "-"
    )
    attempts = f", attempt {step.attempt}" if step.attempt > 1 else ""
    state = f"[bold]{step.state.value}[/bold]"
    if step.state is StepState.FAILED:
        state = f"[bold red]{step.state.value}[/bold red]"
    # why a step failed is the first thing a reader wants from this tree
    detail = _error_text(step.error)
    if step.kind is not StepKind.TOOL_CALL:
        usage = (step.response or {}).get("usage") or {}
        tokens = f"{usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out"
        return f"#{step.sequence} {step.kind.value} {state} {took}, {tokens}{attempts}{detail}"
    return (
        f"#{step.sequence} tool_call {escape(step.tool_name)} ({escape(step.call_id or '')}) "
        f"{state} {took}{attempts}{detail}"
    )


def _add_steps(tree: Tree, steps: list[Step], scope: str | None) -> None:
    for step in steps:
        if step.scope == scope:
            _add_steps(tree.add(_step_label(step)), steps, step.id)


@responses_app.command("show")
def show_response(
    response_id: str,
    config: ConfigOption = None,
    database: DatabaseOption = None,
    debug: DebugOption = False,
) -> None:
    """A response as a tree of its steps (sub-agents nested), with states, timings and
    tokens, and why it or a step failed."""
    from rich.tree import Tree

    with _one_line_errors(debug):
        settings = _settings(config, database)
        records, steps = asyncio.run(_read(settings.database_url, response_id, 1))
    if not records:
        from stepline._server.preflight import database_label

        _fail(f"no response {response_id} in {database_label(settings.database_url)}", 1)
    record = records[0]
    usage = sum_usage(steps)
    tree = Tree(
        f"[bold]{record.id}[/bold] {record.status} model={escape(record.model)} "
        f"created={_when(record.created_at)} tokens={usage['input_tokens']} in / "
        f"{usage['output_tokens']} out{_error_text((record.result or {}).get('error'))}"
    )
    _add_steps(tree, steps, None)
    _console().print(tree)


async def _usage_document(
    settings: Settings,
    *,
    start: str | None,
    end: str | None,
    key: str | None,
    model: str | None,
    group_by: str | None,
) -> dict[str, Any]:
    from stepline._server.auth import KeyRing
    from stepline._server.preflight import check_schema
    from stepline._server.usage import usage_report
    from stepline.store._sql import open_store

    await check_schema(settings.database_url)
    store = await open_store(settings.database_url, migrate=False, pool_size=1)
    try:
        keys = KeyRing(settings.keys)
        await keys.attach(store.keys)  # the stored keys name their rows too
        return await usage_report(
            store, keys, start=start, end=end, key=key, model=model, group_by=group_by
        )
    finally:
        await store.close()


def _latency(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


@app.command()
def usage(
    config: ConfigOption = None,
    database: DatabaseOption = None,
    start: Annotated[
        str | None, typer.Option(help="From this UTC date (YYYY-MM-DD) or unix time.")
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(help="Until this unix time, or through this UTC date [default: now]."),
    ] = None,
    key: Annotated[str | None, typer.Option(help="Only this API key (its name or id).")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    group_by: Annotated[
        str, typer.Option(help="Comma-separated: day, key, model; empty for one total.")
    ] = "day,key,model",
    as_json: Annotated[
        bool, typer.Option("--json", help="The JSON of GET /v1/usage instead of a table.")
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Requests, errors, tokens and latency per day, key and model (the last 30 days by
    default), read from the database."""
    from rich.table import Table

    with _one_line_errors(debug):
        settings = _settings(config, database)
        document = asyncio.run(
            _usage_document(settings, start=start, end=end, key=key, model=model, group_by=group_by)
        )
    if as_json:
        import orjson

        sys.stdout.write(orjson.dumps(document).decode() + "\n")
        return
    groups = document["group_by"]
    table = Table()
    for name in groups:
        table.add_column(name, no_wrap=True)
    for name in ("requests", "errors", "input tokens", "output tokens", "p50", "p95"):
        table.add_column(name, justify="right", no_wrap=True)
    for row in document["data"]:
        shown = {"day": row.get("day"), "key": row.get("key") or row.get("key_id")}
        shown["model"] = row.get("model")
        table.add_row(
            *(escape(str(shown[name] or "-")) for name in groups),
            str(row["requests"]),
            str(row["errors"]),
            str(row["input_tokens"]),
            str(row["output_tokens"]),
            _latency(row["latency_ms"]["p50"]),
            _latency(row["latency_ms"]["p95"]),
        )
    _print_table(table)


async def _collect_garbage(
    database_url: str, policy: RetentionPolicy, *, dry_run: bool
) -> PurgeCounts:
    import time

    from stepline._server.preflight import check_schema
    from stepline.store._retention import expired_counts, purge
    from stepline.store._sql import open_store

    await check_schema(database_url)
    store = await open_store(database_url, migrate=False, pool_size=1)
    try:
        now = time.time()
        if dry_run:
            return await expired_counts(store, policy, now=now)
        deleted = await purge(store, policy, now=now)
        left = await expired_counts(store, policy, now=now)
        return dataclasses.replace(deleted, kept=left.kept)
    finally:
        await store.close()


@app.command()
def gc(
    config: ConfigOption = None,
    database: DatabaseOption = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Delete the responses past their retention once, as a running server does on its
    interval (--dry-run counts them)."""
    from stepline._server.retention import retention_policy

    with _one_line_errors(debug):
        settings = _settings(config, database)
        policy = retention_policy(settings)
        if not policy.enabled:
            _console().print(
                "retention is off (set retention in the config, or per key): nothing to delete"
            )
            return
        counts = asyncio.run(_collect_garbage(settings.database_url, policy, dry_run=dry_run))
    verb = "would delete" if dry_run else "deleted"
    _console().print(
        f"{verb} {counts.responses} responses ({counts.steps} steps, {counts.events} events, "
        f"{counts.items} items); kept {counts.kept} past their age that newer responses continue"
    )


def main() -> None:
    app()
