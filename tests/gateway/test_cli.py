"""The CLI's side of keys: ``keys create/list/revoke/hash``, and ``serve`` refusing to run
open on an address other than loopback."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stepline._cli import _is_loopback, _stored_key_count
from stepline._cli import app as cli
from stepline._server.auth import KeyRing, hash_token, list_stored_keys
from stepline.store._revisions import current_revision, head_revision
from stepline.store._sql import open_store

pytestmark = pytest.mark.timeout(30)


def _stored(database_url: str) -> dict[str, str]:
    async def read() -> dict[str, str]:
        store = await open_store(database_url, migrate=False)
        try:
            return {key.name: key.config.hash for key in await list_stored_keys(store.keys)}
        finally:
            await store.close()

    return asyncio.run(read())


def test_keys_create_prints_the_token_once_and_stores_its_hash(tmp_path: Path) -> None:
    runner = CliRunner()
    url = f"sqlite:///{tmp_path}/keys.db"
    created = runner.invoke(
        cli,
        [
            "keys", "create", "ci", "--database", url,
            "--model", "alpha", "--model", "team-*", "--tool", "weather",
            "--rps", "2", "--burst", "4", "--max-concurrent", "3",
        ],
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    (token,) = re.findall(r"^sk-stepline-\S+$", created.output, flags=re.M)
    assert _stored(url) == {"ci": hash_token(token)}

    async def authenticate() -> str | None:
        store = await open_store(url, migrate=False)
        try:
            ring = KeyRing({})
            await ring.attach(store.keys)
            caller = await ring.authenticate(f"Bearer {token}")
            assert caller.key is not None
            assert caller.key.config.models == ("alpha", "team-*")
            assert caller.key.config.rate is not None
            assert caller.key.config.rate.capacity == 4
            assert caller.key.config.max_concurrent == 3
            assert ring.tools_for(caller.key_id) == frozenset({"weather"})
            assert caller.key_id is not None and caller.key_id.startswith("key_")
            assert not caller.is_admin
            return caller.key.name
        finally:
            await store.close()

    assert asyncio.run(authenticate()) == "ci"

    listed = runner.invoke(cli, ["keys", "list", "--database", url], env={"COLUMNS": "200"})
    assert listed.exit_code == 0
    assert "ci" in listed.output and "team-*" in listed.output and "2/s, burst 4" in listed.output
    assert token not in listed.output
    assert hash_token(token)[7:] not in listed.output

    again = runner.invoke(cli, ["keys", "create", "ci", "--database", url])
    assert again.exit_code == 1
    assert "exists already" in again.output

    revoked = runner.invoke(cli, ["keys", "revoke", "ci", "--database", url])
    assert revoked.exit_code == 0
    assert _stored(url) == {}
    assert runner.invoke(cli, ["keys", "revoke", "ci", "--database", url]).exit_code == 1


def test_keys_create_migrates_the_database_and_may_make_an_admin_key(tmp_path: Path) -> None:
    runner = CliRunner()
    url = f"sqlite:///{tmp_path}/keys.db"
    created = runner.invoke(cli, ["keys", "create", "ops", "--admin", "--database", url])
    assert created.exit_code == 0, created.output
    (token,) = re.findall(r"^sk-stepline-\S+$", created.output, flags=re.M)
    assert asyncio.run(current_revision(url)) == head_revision()

    async def is_admin() -> bool:
        store = await open_store(url, migrate=False)
        try:
            ring = KeyRing({})
            await ring.attach(store.keys)
            return (await ring.authenticate(f"Bearer {token}")).is_admin
        finally:
            await store.close()

    assert asyncio.run(is_admin())
    listed = runner.invoke(cli, ["keys", "list", "--database", url], env={"COLUMNS": "200"})
    assert listed.exit_code == 0
    assert "admin" in listed.output


def test_serve_counts_the_keys_of_a_database_before_it_migrates_it(tmp_path: Path) -> None:
    """A database of an older stepline, its keys table without ids: its keys count, so
    ``serve`` does not take it for a server without keys."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE stepline_api_keys (name VARCHAR PRIMARY KEY, hash VARCHAR NOT NULL "
            "UNIQUE, models TEXT, tools TEXT, rate TEXT, max_concurrent INTEGER, "
            "created_at FLOAT NOT NULL)"
        )
        connection.execute(
            "INSERT INTO stepline_api_keys (name, hash, created_at) VALUES ('ci', 'sha256:x', 0)"
        )
    assert asyncio.run(_stored_key_count(f"sqlite:///{path}")) == 1
    assert asyncio.run(_stored_key_count(f"sqlite:///{tmp_path}/empty.db")) == 0


def test_migrate_adopts_the_keys_an_older_stepline_stored(tmp_path: Path) -> None:
    """A database that has only the keys table an older ``keys create`` made: the
    reading commands ask for ``stepline migrate``, which keeps the keys."""
    path = tmp_path / "old.db"
    token = "sk-stepline-old"
    with sqlite3.connect(path) as connection:
        connection.execute(
            "CREATE TABLE stepline_api_keys (name VARCHAR PRIMARY KEY, hash VARCHAR NOT NULL "
            "UNIQUE, models TEXT, tools TEXT, rate TEXT, max_concurrent INTEGER, "
            "created_at FLOAT NOT NULL, id VARCHAR)"
        )
        connection.execute(
            "INSERT INTO stepline_api_keys (name, hash, tools, created_at, id) "
            "VALUES ('old', ?, '[\"weather\"]', 0, 'key_old')",
            (hash_token(token),),
        )
    url = f"sqlite:///{path}"
    runner = CliRunner()
    refused = runner.invoke(cli, ["keys", "list", "--database", url])
    assert refused.exit_code == 2
    assert "has no schema yet: run `stepline migrate`" in refused.output
    migrated = runner.invoke(cli, ["migrate", "--database", url])
    assert migrated.exit_code == 0, migrated.output
    assert _stored(url) == {"old": hash_token(token)}
    listed = runner.invoke(cli, ["keys", "list", "--database", url], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and "old" in listed.output and "weather" in listed.output


def test_keys_create_checks_tools_against_the_config(tmp_path: Path) -> None:
    config = tmp_path / "stepline.toml"
    config.write_text(
        '[upstreams.u]\nbase_url = "http://u/v1"\n'
        '[tools.weather]\ntype = "http"\nurl = "http://t/weather"\n'
        f'[keys.ops]\nhash = "{hash_token("x")}"\n'
    )
    url = f"sqlite:///{tmp_path}/keys.db"
    runner = CliRunner()
    base = ["keys", "create", "--config", str(config), "--database", url]
    unknown = runner.invoke(cli, [*base[:2], "new", *base[2:], "--tool", "nope"])
    assert unknown.exit_code == 2
    assert "unknown server tool" in unknown.output
    shadowing = runner.invoke(cli, [*base[:2], "ops", *base[2:]])
    assert shadowing.exit_code == 1
    listed = runner.invoke(cli, ["keys", "list", "--config", str(config), "--database", url])
    assert "ops" in listed.output and "config" in listed.output


def test_keys_hash_prints_the_config_form() -> None:
    result = CliRunner().invoke(cli, ["keys", "hash"], input="sk-my-token\n")
    assert result.exit_code == 0
    assert result.output.strip() == hash_token("sk-my-token")


def test_serve_without_keys_refuses_an_address_other_than_loopback(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli,
        [
            "serve",
            "--host",
            "0.0.0.0",
            "--upstream",
            "http://127.0.0.1:9/v1",
            "--database",
            f"sqlite:///{tmp_path}/s.db",
        ],
    )
    assert result.exit_code == 2
    assert "--insecure" in result.output
    assert "not a loopback address" in result.output


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("example.com", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert _is_loopback(host) is loopback
