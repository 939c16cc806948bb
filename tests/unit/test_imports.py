"""What a server imports before it needs it: heavy SDKs only once they are used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_the_server_imports_the_mcp_sdk_and_alembic_only_when_used() -> None:
    """The MCP SDK once an MCP server is configured or requested; Alembic once a
    database needs migrating (a server at the head reads its revision itself)."""
    probe = (
        "import sys, stepline._server.app, stepline._cli, stepline._server.preflight\n"
        "from stepline.store._revisions import head_revision; head_revision()\n"
        "heavy = ('mcp', 'mcp_types', 'httpx2', 'alembic', 'mako')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_a_server_migrates_its_database_in_a_child_and_never_imports_alembic() -> None:
    """A fresh database is migrated by a child ``stepline migrate``; at the head, no
    child runs (the revision is read with one query)."""
    probe = (
        "import asyncio, sys, tempfile\n"
        "from stepline._server.preflight import migrate_in_child\n"
        "from stepline.store._revisions import current_revision, head_revision\n"
        "with tempfile.TemporaryDirectory() as where:\n"
        "    url = f'sqlite:///{where}/s.db'\n"
        "    asyncio.run(migrate_in_child(url))\n"
        "    print(asyncio.run(current_revision(url)) == head_revision())\n"
        "    def refuse(*args, **kwargs): raise AssertionError('a child ran')\n"
        "    asyncio.create_subprocess_exec = refuse\n"
        "    asyncio.run(migrate_in_child(url))\n"
        "print(sorted(m for m in ('alembic', 'mako') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["True", "[]"]


def test_a_sqlite_server_imports_neither_asyncpg_nor_cryptography_until_used() -> None:
    """asyncpg only for PostgreSQL; cryptography at the first seal or open of a
    token, not when the sealer is made from its keys at start."""
    probe = (
        "import asyncio, sys, tempfile, stepline._server.app, stepline._cli\n"
        "from stepline._protocol.sealing import Sealer\n"
        "from stepline.store._sql import open_store\n"
        "async def main():\n"
        "    with tempfile.TemporaryDirectory() as where:\n"
        "        store = await open_store(f'sqlite:///{where}/s.db')\n"
        "        await store.read_events('resp_x', after=-1, limit=1)\n"
        "        await store.close()\n"
        "asyncio.run(main())\n"
        "sealer = Sealer.ephemeral()\n"
        "print(sorted(m for m in ('asyncpg', 'cryptography') if m in sys.modules))\n"
        "assert sealer.open(sealer.seal('x')) == 'x'\n"
        "print('cryptography' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["[]", "True"]


def test_a_sqlite_server_loads_no_console_library_demo_or_postgresql_dialect() -> None:
    """``stepline serve`` on SQLite: no rich or pygments (the CLI's tables, httpx's
    command-line client), no agent library or scripted model (``--demo`` only), no
    PostgreSQL dialect of SQLAlchemy."""
    probe = (
        "import sys, stepline._cli, stepline._server.app, stepline._server.serve\n"
        "import stepline.store._listing, stepline.store._usage\n"
        "heavy = ('rich', 'pygments', 'stepline.agent', 'stepline.scripted',\n"
        "         'sqlalchemy.dialects.postgresql')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_a_server_that_only_serves_responses_never_imports_sqlalchemy(tmp_path: Path) -> None:
    """``stepline serve`` on SQLite, asked for responses plain and streamed, read back
    whole and as events, its probes and models, a key created while it runs (the
    key ring's reload): the drivers serve it all, and
    SQLAlchemy loads only with the first read of a cold path (usage), which works."""
    url = f"sqlite:///{tmp_path}/s.db"
    stepline = [sys.executable, "-m", "stepline"]
    subprocess.run([*stepline, "migrate", "--database", url], check=True, timeout=60)
    created = subprocess.run(
        [*stepline, "keys", "create", "operator", "--admin", "--database", url],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    token = created.stdout.splitlines()[-1]
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_serving_probe.py")), url, token],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    [report] = [
        json.loads(line.removeprefix("probe: "))
        for line in done.stdout.splitlines()
        if line.startswith("probe: ")
    ]
    assert report == {
        "readyz": 200,
        "models": 200,
        "plain": "completed",
        "streamed": True,
        "read": "completed",
        "events": True,
        "late_key": 200,
        "serving": [],
        "usage": 200,
        "cold": True,
    }
