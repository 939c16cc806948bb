"""The ``stepline`` command: serve, migrate, mock-upstream, manage API keys, and
inspect stored responses.

Every option has an environment variable (``STEPLINE_*``); a flag beats the
variable, which beats the config file.

``serve`` without any API key runs open only on a loopback address; another
address needs a key or an explicit ``--insecure``. ``keys create`` prints a
new token once and stores only its hash.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
import uvicorn
from rich.console import Console
from rich.table import Table
from rich.tree import Tree
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from stepline.config import DEFAULT_DATABASE_URL, KeyConfig, RateConfig, Settings, load_settings
from stepline.engine.steps import Step, StepKind
from stepline.errors import ConfigError
from stepline.protocol.assemble import sum_usage
from stepline.server.auth import (
    StoredKey,
    delete_stored_key,
    ensure_key_table,
    hash_token,
    list_stored_keys,
    new_token,
    store_key,
)
from stepline.server.logs import configure_logging
from stepline.store.base import ResponseRecord
from stepline.store.sql import create_store_engine, open_store
from stepline.store.sql import migrate as migrate_database

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

console = Console()

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
    try:
        return load_settings(config, overrides=overrides)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _stored_key_count(database_url: str) -> int:
    """Keys in the database; 0 when it has none (or no keys table yet)."""
    engine = create_store_engine(database_url, pool_size=1)
    try:
        return len(await list_stored_keys(engine))
    except (SQLAlchemyError, OSError):
        return 0  # no keys table yet, or no database yet: the server says which
    finally:
        await engine.dispose()


def _access(settings: Settings, host: str, insecure: bool) -> tuple[bool, str]:
    """Whether requests without a key are let in, and the start-up line saying so;
    exits when the server would be open on an address other than loopback."""
    stored = asyncio.run(_stored_key_count(settings.database_url))
    loopback = _is_loopback(host)
    if settings.keys or stored:
        return loopback or insecure, (
            f"API keys required ({len(settings.keys)} in the config, {stored} stored)"
        )
    if loopback:
        return True, "no API keys: open to anyone who can reach this loopback address"
    if insecure:
        return True, "[red]no API keys and --insecure: open to anyone who can reach it[/red]"
    console.print(
        f"[red]error:[/red] no API keys, and {host} is not a loopback address: create a key "
        "(`stepline keys create NAME`, or [keys.NAME] in the config), bind 127.0.0.1, "
        "or pass --insecure"
    )
    raise typer.Exit(2)


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str, typer.Option(envvar="STEPLINE_HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="STEPLINE_PORT")] = 8000,
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
) -> None:
    """Run the stepline server."""
    from stepline.server.app import create_app
    from stepline.server.demo import demo_mounts, demo_settings
    from stepline.server.python_tools import load_python_tools
    from stepline.server.serve import serve as serve_until_signal

    if log_format not in ("json", "text"):
        console.print(f"[red]error:[/red] --log-format is json or text, not {log_format!r}")
        raise typer.Exit(2)
    style: Literal["json", "text"] = "json" if log_format == "json" else "text"
    configure_logging(log_format=style)
    try:
        python_tools = load_python_tools(tools or [])
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if demo:
        loopback = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        settings = demo_settings(
            f"http://{loopback}:{port}", database_url=database or DEFAULT_DATABASE_URL
        )
        open_access, access = _access(settings, host, insecure)
        application = create_app(
            settings,
            mounts=demo_mounts(),
            allow_anonymous=open_access,
            python_tools=python_tools,
        )
        console.print(f"stepline demo on http://{host}:{port}/v1 (any model name works)")
    else:
        settings = _settings(config, database, upstream, upstream_api_key)
        if not settings.upstreams:
            console.print(
                "[red]error:[/red] no upstream: pass --upstream URL, --config FILE or --demo"
            )
            raise typer.Exit(2)
        open_access, access = _access(settings, host, insecure)
        application = create_app(settings, allow_anonymous=open_access, python_tools=python_tools)
        console.print(f"stepline on http://{host}:{port}/v1")
    console.print(access)
    serve_until_signal(application, host=host, port=port)


@app.command()
def migrate(config: ConfigOption = None, database: DatabaseOption = None) -> None:
    """Create or upgrade the database schema."""
    settings = _settings(config, database)
    asyncio.run(migrate_database(settings.database_url))
    console.print(f"database at {settings.database_url} is up to date")


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
    from stepline.scripted import Script, ScriptedModel, create_scripted_app

    scripts: dict[str, Script] = {}
    for spec in script or ():
        name, sep, path = spec.partition("=")
        if not sep:
            console.print(f"[red]error:[/red] --script takes NAME=FILE, got {spec!r}")
            raise typer.Exit(2)
        scripts[name] = Script.from_json(Path(path).read_bytes())
    model = ScriptedModel(scripts, demo_token_delay=token_delay)
    console.print(f"scripted model on http://{host}:{port}/v1")
    uvicorn.run(create_scripted_app(model), host=host, port=port, log_level="warning")


async def _with_keys_table(database_url: str, work: Any) -> Any:
    engine = create_store_engine(database_url, pool_size=1)
    try:
        await ensure_key_table(engine)
        return await work(engine)
    finally:
        await engine.dispose()


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
) -> None:
    """Create an API key: its token is printed once; only its hash is stored."""
    settings = _settings(config, database)
    if name in settings.keys:
        console.print(f"[red]error:[/red] the config already has a key named {name!r}")
        raise typer.Exit(1)
    tools = () if no_tools else (tuple(tool) if tool else None)
    unknown = [item for item in tools or () if item not in settings.tools]
    if config is not None and unknown:
        console.print(f"[red]error:[/red] unknown server tool(s): {', '.join(unknown)}")
        raise typer.Exit(2)
    if burst is not None and rps is None:
        console.print("[red]error:[/red] --burst needs --rps")
        raise typer.Exit(2)
    token = new_token()
    key = KeyConfig(
        hash=hash_token(token),
        models=tuple(model) if model else None,
        tools=tools,
        rate=None if rps is None else RateConfig(requests_per_second=rps, burst=burst),
        max_concurrent=max_concurrent,
    )

    async def work(engine: AsyncEngine) -> bool:
        return await store_key(engine, name, key)

    if not asyncio.run(_with_keys_table(settings.database_url, work)):
        console.print(f"[red]error:[/red] a key named {name!r} exists already")
        raise typer.Exit(1)
    console.print(f"created API key {name!r}; this is the only time its token is shown:")
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
    return models, tools, "; ".join(limits) or "-"


@keys_app.command("list")
def list_keys(config: ConfigOption = None, database: DatabaseOption = None) -> None:
    """The API keys of the config and of the database (never their tokens)."""
    settings = _settings(config, database)

    async def work(engine: AsyncEngine) -> list[StoredKey]:
        return await list_stored_keys(engine)

    stored: list[StoredKey] = asyncio.run(_with_keys_table(settings.database_url, work))
    table = Table("name", "source", "created", "models", "tools", "limits")
    for name, key in settings.keys.items():
        table.add_row(name, "config", "-", *_limits_text(key))
    for row in stored:
        table.add_row(row.name, "database", _when(row.created_at), *_limits_text(row.config))
    console.print(table)


@keys_app.command("revoke")
def revoke_key(name: str, config: ConfigOption = None, database: DatabaseOption = None) -> None:
    """Delete a stored API key; running servers stop accepting it within seconds."""
    settings = _settings(config, database)

    async def work(engine: AsyncEngine) -> bool:
        return await delete_stored_key(engine, name)

    if not asyncio.run(_with_keys_table(settings.database_url, work)):
        hint = " (it is in the config: remove it there)" if name in settings.keys else ""
        console.print(f"[red]error:[/red] no stored key named {name!r}{hint}")
        raise typer.Exit(1)
    console.print(f"revoked API key {name!r}")


@keys_app.command("hash")
def hash_key() -> None:
    """Read a token on stdin; print the hash to put in the config as [keys.NAME] hash."""
    token = sys.stdin.readline().strip()
    if not token:
        console.print("[red]error:[/red] no token on stdin")
        raise typer.Exit(2)
    sys.stdout.write(hash_token(token) + "\n")


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


async def _read(
    database_url: str, response_id: str | None, limit: int
) -> tuple[list[ResponseRecord], list[Step]]:
    store = await open_store(database_url, migrate=False)
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
) -> None:
    """The most recent stored responses."""
    settings = _settings(config, database)
    records, _ = asyncio.run(_read(settings.database_url, None, limit))
    table = Table("id", "created", "status", "model", "previous")
    for record in records:
        table.add_row(
            record.id,
            _when(record.created_at),
            record.status,
            record.model,
            record.previous_response_id or "",
        )
    console.print(table)


def _step_label(step: Step) -> str:
    took = (
        f"{(step.finished_at - step.started_at) * 1000:.0f} ms"
        if step.finished_at is not None and step.started_at is not None
        else "-"
    )
    attempts = f", attempt {step.attempt}" if step.attempt > 1 else ""
    if step.kind is StepKind.MODEL_CALL:
        usage = (step.response or {}).get("usage") or {}
        tokens = f"{usage.get('input_tokens', 0)} in / {usage.get('output_tokens', 0)} out"
        state = f"[bold]{step.state.value}[/bold]"
        return f"#{step.sequence} model_call {state} {took}, {tokens}{attempts}"
    error = (step.error or {}).get("message")
    detail = f" — {error}" if error else ""
    return (
        f"#{step.sequence} tool_call {step.tool_name} ({step.call_id}) "
        f"[bold]{step.state.value}[/bold] {took}{attempts}{detail}"
    )


def _add_steps(tree: Tree, steps: list[Step], scope: str | None) -> None:
    for step in steps:
        if step.scope == scope:
            _add_steps(tree.add(_step_label(step)), steps, step.id)


@responses_app.command("show")
def show_response(
    response_id: str, config: ConfigOption = None, database: DatabaseOption = None
) -> None:
    """A response as a tree of its steps (sub-agents nested), with states, timings and tokens."""
    settings = _settings(config, database)
    records, steps = asyncio.run(_read(settings.database_url, response_id, 1))
    if not records:
        console.print(f"[red]error:[/red] no response {response_id}")
        raise typer.Exit(1)
    record = records[0]
    usage = sum_usage(steps)
    tree = Tree(
        f"[bold]{record.id}[/bold] {record.status} model={record.model} "
        f"created={_when(record.created_at)} tokens={usage['input_tokens']} in / "
        f"{usage['output_tokens']} out"
    )
    _add_steps(tree, steps, None)
    console.print(tree)


def main() -> None:
    app()
