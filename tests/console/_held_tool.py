"""A tool for ``stepline serve --tools``: ``checkpoint`` answers once the test lets it.

It posts its note to ``STEPLINE_TEST_HOLD_URL``, the ``block`` tool of a
:class:`tests.durability.conftest.ToolServer` in the test process, which
answers only once the test sets its ``release``: a demo response that calls
it keeps running for as long as the test needs, with no clock involved.
"""

from __future__ import annotations

import os

import httpx

from stepline.agent import tool

__all__ = ["TOOLS", "checkpoint"]

#: the environment variable naming the URL a call waits on
HOLD_URL = "STEPLINE_TEST_HOLD_URL"


@tool
async def checkpoint(note: str) -> str:
    """Wait at the checkpoint until it opens.

    Args:
        note: What to say at the checkpoint.
    """
    async with httpx.AsyncClient(timeout=120) as http:
        reply = await http.post(os.environ[HOLD_URL], json={"x": note})
    reply.raise_for_status()
    return f"checkpoint passed: {reply.text}"


TOOLS = [checkpoint]
