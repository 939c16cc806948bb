"""A database that is down gives a clear 503 in the error envelope, never a hang or a 500."""

from __future__ import annotations

from typing import Any

import httpx

from stepline._config import Settings
from stepline._server.app import create_app
from stepline._steps import Step
from stepline.errors import StoreError
from stepline.scripted import serve_app
from stepline.store._memory import MemoryStore


class UnreachableStore(MemoryStore):
    """A store whose database stopped answering after start-up."""

    async def create_response(self, *args: Any, **kwargs: Any) -> list[Step]:
        raise StoreError("connection refused")

    async def get_response(self, *args: Any, **kwargs: Any) -> None:
        raise StoreError("connection refused")


async def test_requests_fail_with_503_while_the_database_is_down() -> None:
    settings = Settings.model_validate(
        {
            "upstreams": {"u": {"base_url": "http://127.0.0.1:9/v1"}},
            "default_model": {"upstream": "u"},
        }
    )
    async with (
        serve_app(create_app(settings, store=UnreachableStore())) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        created = await client.post("/v1/responses", json={"model": "m", "input": "hi"})
        # a stream answers once its response is stored: a 503 too, not a broken stream
        streamed = await client.post(
            "/v1/responses", json={"model": "m", "input": "hi", "stream": True}
        )
        fetched = await client.get("/v1/responses/resp_1")

    for reply in (created, streamed, fetched):
        assert reply.status_code == 503
        assert reply.headers["retry-after"] == "1"
        assert reply.json() == {
            "error": {
                "message": "The server's database is unavailable; retry the request shortly.",
                "type": "server_error",
                "param": None,
                "code": "store_unavailable",
            }
        }
