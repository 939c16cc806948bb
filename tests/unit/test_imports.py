"""What a server imports before it needs it: heavy SDKs only once they are used."""

from __future__ import annotations

import subprocess
import sys


def test_the_server_imports_the_mcp_sdk_only_when_an_mcp_server_is_used() -> None:
    probe = (
        "import sys, stepline.server.app, stepline.cli\n"
        "print(sorted(m for m in ('mcp', 'mcp_types', 'httpx2') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
