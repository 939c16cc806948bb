"""What a server imports before it needs it: heavy SDKs only once they are used."""

from __future__ import annotations

import subprocess
import sys


def test_the_server_imports_the_mcp_sdk_and_alembic_only_when_used() -> None:
    """The MCP SDK once an MCP server is configured or requested; Alembic once a
    database needs migrating (a server at the head reads its revision itself)."""
    probe = (
        "import sys, stepline.server.app, stepline.cli, stepline.server.preflight\n"
        "from stepline.store.revisions import head_revision; head_revision()\n"
        "heavy = ('mcp', 'mcp_types', 'httpx2', 'alembic', 'mako')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
