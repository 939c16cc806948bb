"""Configuration errors stop ``stepline serve`` before it listens, in one line.

Each case runs the real command in a subprocess, as an operator would, and checks
its exit code, that stderr is exactly one line naming the problem, that nothing
was printed as started, and that the traceback shows only with ``--debug``. The
commands that read the database say which one and what to run, and never create
it. Every subprocess is bounded by a timeout; a server that starts is waited for
through the line it prints once it listens.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from stepline._config import Settings
from stepline._server.app import create_app
from stepline._server.auth import hash_token
from stepline._server.serve import bind_socket, serve
from stepline.errors import ConfigError
from tests._backends import database_url
from tests.gateway.conftest import GatewayFactory

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
#: the README's config example, as a newcomer copies it
README_CONFIG = re.findall(r"^```toml\n(.*?)^```", README, flags=re.S | re.M)[0]
RUN_TIMEOUT = 60


def _environment(**extra: str) -> dict[str, str]:
    """This process's environment without stepline's own variables, plus ``extra``."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("STEPLINE_")}
    env.update({"COLUMNS": "80", **extra})
    return env


def _start(*args: str, cwd: Path, env: dict[str, str] | None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stepline", *args],
        cwd=cwd,
        env=env or _environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    try:
        stdout, stderr = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def stepline(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return _finish(_start(*args, cwd=cwd, env=env))


def _one_error_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def assert_fails_in_one_line(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, names: tuple[str, ...]
) -> str:
    """Run ``stepline serve ARGS`` twice: plain, one line naming every one of ``names``
    and nothing on stdout; with ``--debug``, the same line after a traceback."""
    # side by side: each run is mostly the interpreter importing stepline
    runs = [_start("serve", *args, cwd=tmp_path, env=env)]
    runs.append(_start("serve", *args, "--debug", cwd=tmp_path, env=env))
    plain, debug = (_finish(process) for process in runs)
    line = _one_error_line(plain)
    for name in names:
        assert name in line, line
    assert plain.stdout == ""  # nothing started, nothing listened
    assert debug.returncode == plain.returncode
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.splitlines()[-1] == line
    return line


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "stepline.toml"
    path.write_text(text)
    return str(path)


UPSTREAM = '[upstreams.local]\nbase_url = "http://127.0.0.1:9/v1"\n'


# -- the environment -----------------------------------------------------------


def test_the_readme_config_without_its_variables_does_not_start(tmp_path: Path) -> None:
    config = _config(tmp_path, README_CONFIG)
    database = f"sqlite:///{tmp_path / 's.db'}"
    line = assert_fails_in_one_line(
        tmp_path,
        "--config", config, "--database", database,
        names=(
            "VLLM_API_KEY (upstreams.vllm.api_key_env)",
            "WEATHER_TOKEN (tools.weather.headers.Authorization)",
        ),
    )  # fmt: skip
    assert line.startswith("error: environment variables not set:")
    # found before the database was touched
    assert not (tmp_path / "s.db").exists()


def test_an_unset_tool_header_variable_does_not_start(tmp_path: Path) -> None:
    config = _config(tmp_path, README_CONFIG)
    env = _environment(VLLM_API_KEY="sk-set")
    line = assert_fails_in_one_line(
        tmp_path,
        "--config", config, "--database", f"sqlite:///{tmp_path / 's.db'}",
        env=env,
        names=("WEATHER_TOKEN", "tools.weather.headers.Authorization"),
    )  # fmt: skip
    assert "VLLM_API_KEY" not in line


def test_an_unset_api_key_env_does_not_start(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        UPSTREAM + 'api_key_env = "STEPLINE_TEST_NEVER_SET"\n[default_model]\nupstream = "local"\n',
    )
    line = assert_fails_in_one_line(
        tmp_path,
        "--config", config, "--database", f"sqlite:///{tmp_path / 's.db'}",
        names=("STEPLINE_TEST_NEVER_SET", "upstreams.local.api_key_env"),
    )  # fmt: skip
    assert line == (
        "error: environment variable STEPLINE_TEST_NEVER_SET is not set "
        "(named by upstreams.local.api_key_env)"
    )


# -- the config ----------------------------------------------------------------


def test_an_unknown_tool_reference_is_one_line(tmp_path: Path) -> None:
    config = _config(
        tmp_path, UPSTREAM + '[[models]]\nname = "m"\nupstream = "local"\ntools = ["nope"]\n'
    )
    assert_fails_in_one_line(
        tmp_path,
        "--config",
        config,
        names=("invalid config", "model 'm' names unknown tool 'nope'"),
    )


def test_several_invalid_fields_are_one_line_each_named(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        UPSTREAM + 'max_retries = -1\nsecret_field = "sk-do-not-echo"\n'
        '[default_model]\nupstream = "local"\n',
    )
    line = assert_fails_in_one_line(
        tmp_path,
        "--config", config,
        names=("upstreams.local.max_retries", "upstreams.local.secret_field"),
    )  # fmt: skip
    assert "sk-do-not-echo" not in line
    assert "errors.pydantic.dev" not in line


@pytest.mark.parametrize(
    ("where", "names"),
    [
        ("environment", ("STEPLINE_SEALING_KEYS (key 2)", "32 bytes")),
        ("config", ("protocol.sealing_keys[1]", "32 bytes")),
    ],
)
def test_a_bad_sealing_key_does_not_start(
    tmp_path: Path, where: str, names: tuple[str, ...]
) -> None:
    good, bad = "ab" * 32, "not-a-key-sk-secretish"
    env = _environment()
    text = UPSTREAM + '[default_model]\nupstream = "local"\n'
    if where == "environment":
        env["STEPLINE_SEALING_KEYS"] = f"{good},{bad}"
    else:
        text += f'[protocol]\nsealing_keys = ["{good}", "{bad}"]\n'
    config = _config(tmp_path, text)
    line = assert_fails_in_one_line(
        tmp_path,
        "--config", config, "--database", f"sqlite:///{tmp_path / 's.db'}",
        env=env,
        names=names,
    )  # fmt: skip
    assert bad not in line and good not in line  # a key is never shown, good or bad
    assert not (tmp_path / "s.db").exists()


# -- the database ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("mysql://root@127.0.0.1/x", ("unsupported database URL 'mysql://root@127.0.0.1/x'",)),
        (
            "postgresql://postgres@127.0.0.1:1/x",
            ("cannot open the database postgresql://postgres@127.0.0.1:1/x", "Connect"),
        ),
        (
            "postgresql://postgres:hunter2@127.0.0.1:1/x",
            ("postgresql://postgres:***@127.0.0.1:1/x",),
        ),
    ],
    ids=["bad-url", "unreachable-postgres", "password-hidden"],
)
def test_a_database_that_cannot_be_used_does_not_start(
    tmp_path: Path, url: str, names: tuple[str, ...]
) -> None:
    line = assert_fails_in_one_line(
        tmp_path, "--upstream", "http://127.0.0.1:9/v1", "--database", url, names=names
    )
    assert "hunter2" not in line


def test_a_missing_sqlite_directory_does_not_start(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    assert_fails_in_one_line(
        tmp_path,
        "--upstream", "http://127.0.0.1:9/v1", "--database", f"sqlite:///{missing}/s.db",
        names=(f"cannot create the database sqlite:///{missing}/s.db", "does not exist"),
    )  # fmt: skip
    assert not (tmp_path / "no").exists()


# -- the port ------------------------------------------------------------------


def test_a_port_in_use_does_not_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_fails_in_one_line(
            tmp_path,
            "--upstream", "http://127.0.0.1:9/v1", "--port", str(port),
            "--database", f"sqlite:///{tmp_path / 's.db'}",
            names=(f"port {port} on 127.0.0.1 is in use",),
        )  # fmt: skip
    # the port is checked before the database is migrated
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("port", ["70000", "-1"])
def test_a_port_out_of_range_does_not_start(tmp_path: Path, port: str) -> None:
    assert_fails_in_one_line(
        tmp_path,
        "--upstream", "http://127.0.0.1:9/v1", "--port", port,
        names=(f"port {port} is out of range",),
    )  # fmt: skip


# -- a server that starts ---------------------------------------------------------


@contextmanager
def running(*args: str, cwd: Path, env: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    """``stepline serve ARGS`` until the block ends; yields its URL once it listens and
    the lines it printed by then."""
    process = subprocess.Popen(
        [sys.executable, "-m", "stepline", "serve", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put("")  # the process ended

    threading.Thread(target=read, daemon=True).start()
    try:
        first = lines.get(timeout=RUN_TIMEOUT)
        found = re.search(r"on (http://([\d.]+):(\d+))/v1", first)
        assert found, f"stepline serve printed {first!r}"
        # the line comes once the port accepts: a connection at once, no retry, succeeds
        socket.create_connection((found.group(2), int(found.group(3))), timeout=5).close()
        yield found.group(1), [first, lines.get(timeout=RUN_TIMEOUT)]
    finally:
        process.terminate()
        code = process.wait(timeout=RUN_TIMEOUT)
        assert process.stdout is not None
        process.stdout.close()
    assert code == 0


def test_the_readme_config_with_its_variables_starts(tmp_path: Path) -> None:
    config = _config(tmp_path, README_CONFIG)
    env = _environment(VLLM_API_KEY="sk-vllm", WEATHER_TOKEN="weather-token")
    database = f"sqlite:///{tmp_path / 's.db'}"
    args = ("--config", config, "--database", database, "--port", "0")
    with running(*args, cwd=tmp_path, env=env) as (url, printed):
        assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    assert printed[1].startswith("no API keys: open to anyone")


def test_the_demo_on_a_free_port_answers_on_the_port_it_prints(tmp_path: Path) -> None:
    with running("--demo", "--port", "0", cwd=tmp_path, env=_environment()) as (url, _):
        reply = httpx.post(
            f"{url}/v1/responses", json={"model": "demo", "input": "weather in Paris?"}, timeout=30
        )
        assert reply.json()["status"] == "completed"


def test_a_database_from_a_newer_stepline_stops_serve_in_one_line(tmp_path: Path) -> None:
    """The migration runs in a child ``stepline migrate``: its error is serve's one line."""
    assert stepline("migrate", "--database", "sqlite:///s.db", cwd=tmp_path).returncode == 0
    with sqlite3.connect(tmp_path / "s.db") as connection:
        connection.execute("UPDATE stepline_alembic_version SET version_num = '9999_future'")
    connection.close()
    assert_fails_in_one_line(
        tmp_path,
        "--upstream", "http://127.0.0.1:9/v1", "--database", "sqlite:///s.db", "--port", "0",
        names=(
            f"cannot migrate the database sqlite:///s.db ({tmp_path / 's.db'})",
            "'9999_future'",
        ),
    )  # fmt: skip


# -- the commands that read the database ---------------------------------------------


NO_DATABASE = "no database at sqlite:///stepline.db ({path}): run `stepline migrate`"


@pytest.mark.parametrize(
    "command",
    [
        ("responses", "list"),
        ("responses", "show", "resp_x"),
        ("keys", "list"),
        ("keys", "revoke", "x"),
    ],
    ids=lambda command: " ".join(command),
)
def test_reading_commands_name_the_missing_database_and_create_none(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    result = stepline(*command, cwd=tmp_path)
    line = _one_error_line(result)
    assert NO_DATABASE.format(path=tmp_path / "stepline.db") in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "command", [("responses", "list"), ("keys", "list")], ids=lambda command: " ".join(command)
)
def test_reading_commands_name_a_database_without_schema(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    sqlite3.connect(tmp_path / "other.db").close()  # an SQLite file, but not stepline's
    result = stepline(*command, "--database", "sqlite:///other.db", cwd=tmp_path)
    line = _one_error_line(result)
    assert f"the database sqlite:///other.db ({tmp_path / 'other.db'}) has no schema yet" in line
    assert "run `stepline migrate` (or `stepline serve`) first" in line


@pytest.mark.postgres
async def test_reading_an_empty_postgres_database_names_it(tmp_path: Path) -> None:
    async with database_url("postgres", tmp_path) as url:
        result = stepline("responses", "list", "--database", url, cwd=tmp_path)
    line = _one_error_line(result)
    assert "has no schema yet" in line
    assert url.rsplit("/", 1)[1] in line


def test_reading_an_unreachable_postgres_is_one_line(tmp_path: Path) -> None:
    url = "postgresql://postgres@127.0.0.1:1/x"
    line = _one_error_line(stepline("responses", "list", "--database", url, cwd=tmp_path))
    assert f"cannot open the database {url}" in line


def test_keys_list_shows_the_config_keys_without_a_database(tmp_path: Path) -> None:
    config = _config(tmp_path, f'{UPSTREAM}[keys.ops]\nhash = "{hash_token("t")}"\n')
    result = stepline("keys", "list", "--config", config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ops" in result.stdout and "config" in result.stdout
    assert result.stderr.startswith("no stored keys listed: no database at sqlite:///stepline.db")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["stepline.toml"]


def test_a_migrated_database_reads_empty(tmp_path: Path) -> None:
    assert stepline("migrate", cwd=tmp_path).returncode == 0
    for command in (("responses", "list"), ("keys", "list")):
        result = stepline(*command, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""


# -- what the reading commands show --------------------------------------------------


def _cli_env(path: Path, columns: int) -> dict[str, str]:
    return _environment(STEPLINE_DATABASE_URL=f"sqlite:///{path}", COLUMNS=str(columns))


async def test_responses_list_prints_every_id_whole_on_a_narrow_terminal(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    gw = await gateway_factory()
    gw.script("hello", [{"content": "hi"}], repeat_last=True)
    first = (await gw.http.post("/v1/responses", json={"model": "hello", "input": "a"})).json()
    body: dict[str, Any] = {"model": "hello", "input": "b", "previous_response_id": first["id"]}
    second = (await gw.http.post("/v1/responses", json=body)).json()
    result = stepline("responses", "list", cwd=tmp_path, env=_cli_env(gw.database_path, 40))
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if second["id"] in line]
    # the newest first, its previous id whole on the same row
    assert len(rows) == 1 and first["id"] in rows[0], result.stdout
    assert re.search(rf"{first['id']}\s", result.stdout)
    assert "…" not in result.stdout


async def test_responses_show_says_why_a_step_and_a_response_failed(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    dead_port = _free_port()

    def add_a_dead_upstream(settings: dict[str, Any]) -> None:
        settings["upstreams"]["dead"] = {"base_url": f"http://127.0.0.1:{dead_port}/v1"}
        settings["upstreams"]["dead"]["max_retries"] = 0
        settings["models"].append({"name": "dead", "upstream": "dead"})

    gw = await gateway_factory(change=add_a_dead_upstream)
    gw.script(
        "tooluser",
        [{"tool_calls": [{"name": "fail_auth", "arguments": {}}]}, {"content": "done"}],
    )
    used_tool = (
        await gw.http.post("/v1/responses", json={"model": "tooluser", "input": "x"})
    ).json()
    failed = (await gw.http.post("/v1/responses", json={"model": "dead", "input": "x"})).json()
    assert (used_tool["status"], failed["status"]) == ("completed", "failed")

    env = _cli_env(gw.database_path, 200)
    shown = stepline("responses", "show", used_tool["id"], cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    (tool_line,) = [line for line in shown.stdout.splitlines() if "tool_call fail_auth" in line]
    assert "failed" in tool_line and "500" in tool_line, shown.stdout

    shown = stepline("responses", "show", failed["id"], cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    message = failed["error"]["message"]
    head, model_line = shown.stdout.splitlines()[:2]
    assert "failed" in head and message in head, shown.stdout
    assert "model_call failed" in model_line and message in model_line, shown.stdout


# -- the same checks in-process ----------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {
                "tools": {
                    "t": {
                        "type": "http",
                        "url": "http://t/",
                        "headers": {"A": "env:STEPLINE_TEST_NEVER_SET"},
                    }
                }
            },
            r"^environment variable STEPLINE_TEST_NEVER_SET is not set "
            r"\(named by tools\.t\.headers\.A\)$",
        ),
        ({"protocol": {"sealing_keys": ["short"]}}, r"^protocol\.sealing_keys\[0\]: .*32 bytes"),
        ({"database_url": "mysql://x/y"}, r"^unsupported database URL 'mysql://x/y'"),
    ],
    ids=["unset-header", "sealing-key", "database-url"],
)
def test_create_app_refuses_what_serve_refuses(change: dict[str, Any], message: str) -> None:
    # an app built by a library user is held to the same checks, before it runs
    data: dict[str, Any] = {"upstreams": {"u": {"base_url": "http://u/v1"}}, **change}
    with pytest.raises(ConfigError, match=message):
        create_app(Settings.model_validate(data))


def test_serve_calls_on_listening_once_the_port_accepts() -> None:
    sock = bind_socket("127.0.0.1", 0)
    address = sock.getsockname()
    # bound, not listening: a connection is refused, the port is held all the same
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=5)
    accepted: list[str] = []

    def on_listening() -> None:
        socket.create_connection(address, timeout=5).close()
        accepted.append("yes")
        signal.raise_signal(signal.SIGTERM)  # the server's own handler drains and stops it

    with sock:
        serve(FastAPI(), sock=sock, grace=0, on_listening=on_listening)
    assert accepted == ["yes"]


def test_a_port_taken_between_bind_and_listen_is_named() -> None:
    # two servers that bind one port before either listens both succeed (SO_REUSEADDR):
    # the second finds out when it listens
    with bind_socket("127.0.0.1", 0) as first:
        port = first.getsockname()[1]
        with bind_socket("127.0.0.1", port) as second:
            first.listen()
            with pytest.raises(ConfigError, match=f"^port {port} on 127.0.0.1 is in use"):
                serve(FastAPI(), sock=second, grace=0)
