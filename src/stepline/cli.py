"""The ``stepline`` command: serve, migrate, mock-upstream, and inspect stored responses.

Every option has an environment variable (``STEPLINE_*``); a flag beats the
variable, which beats the config file.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from stepline.config import DEFAULT_DATABASE_URL, Settings, load_settings
from stepline.engine.steps import Step, StepKind
from stepline.errors import ConfigError
from stepline.protocol.assemble import sum_usage
from stepline.store.base import ResponseRecord
from stepline.store.sql import migrate as migrate_database
from stepline.store.sql import open_store

__all__ = ["app", "main"]

app = typer.Typer(
    help="stepline: an Open Responses server that runs the agent loop.",
    no_args_is_help=True,
    add_completion=False,
)
responses_app = typer.Typer(help="Inspect stored responses.", no_args_is_help=True)
app.add_typer(responses_app, name="responses")

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
) -> None:
    """Run the stepline server."""
    from stepline.server.app import create_app
    from stepline.server.demo import demo_mounts, demo_settings
    from stepline.server.serve import serve as serve_until_signal

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if demo:
        loopback = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        settings = demo_settings(
            f"http://{loopback}:{port}", database_url=database or DEFAULT_DATABASE_URL
        )
        application = create_app(settings, mounts=demo_mounts())
        console.print(f"stepline demo on http://{host}:{port}/v1 (any model name works)")
    else:
        settings = _settings(config, database, upstream, upstream_api_key)
        if not settings.upstreams:
            console.print(
                "[red]error:[/red] no upstream: pass --upstream URL, --config FILE or --demo"
            )
            raise typer.Exit(2)
        application = create_app(settings)
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
