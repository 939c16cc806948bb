"""``stepline serve --tools``: a Python @tool function runs as a server tool, end to end."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from stepline.scripted import Script, ScriptedModel, create_scripted_app, serve_app
from tests.e2e.test_readme import ROOT, _free_port


@pytest.mark.timeout(90)
async def test_serve_loads_python_tools_and_a_response_calls_one(tmp_path: Path) -> None:
    model = ScriptedModel(demo_token_delay=0)
    model.register(
        "py",
        Script.from_dict(
            {
                "turns": [
                    {
                        "tool_calls": [
                            {"name": "add", "arguments": {"a": 40, "b": 2}},
                            {
                                "name": "convert_temperature",
                                "arguments": {"value": 100, "to": "fahrenheit"},
                            },
                        ]
                    },
                    {"content": "Done."},
                ]
            }
        ),
    )
    async with serve_app(create_scripted_app(model)) as upstream:
        port = _free_port()
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "stepline", "serve", "--port", str(port)],
            *["--upstream", f"{upstream}/v1", "--database", f"sqlite:///{tmp_path}/py.db"],
            *["--tools", str(ROOT / "examples" / "python_tools.py")],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ),
        )
        try:
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                for _ in range(300):  # the process gives no other signal that it listens
                    try:
                        if (await client.get("/v1/models")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert process.returncode is None, "stepline serve --tools exited"
                    await asyncio.sleep(0.1)
                reply = await client.post("/v1/responses", json={"model": "py", "input": "go"})
                # a client function named like a server tool is refused, whichever way the
                # server got that tool (a route's config or --tools)
                clash = await client.post(
                    "/v1/responses",
                    json={
                        "model": "py",
                        "input": "go",
                        "tools": [{"type": "function", "name": "add", "parameters": {}}],
                    },
                )
        finally:
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)

    response = reply.json()
    assert response["status"] == "completed", response
    calls = [
        (item["name"], item["output"]) for item in response["output"] if item["type"] == "mcp_call"
    ]
    assert calls == [("add", "42"), ("convert_temperature", '{"value":212.0,"scale":"fahrenheit"}')]
    offered = [tool["function"]["name"] for tool in model.requests("py")[0]["tools"]]
    assert offered == ["add", "word_count", "convert_temperature", "describe_number"]
    assert clash.status_code == 400
    assert clash.json()["error"]["param"] == "tools[0].name"
