"""API keys: authentication, isolation of each key's responses, model and tool limits."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from stepline._config import KeyConfig
from stepline._server.auth import (
    KeyRing,
    delete_stored_key,
    hash_token,
    list_stored_keys,
    new_token,
    store_key,
)
from stepline.errors import RequestError, StoreError
from stepline.store._base import ResponseRecord
from stepline.store._sql import open_store
from tests._backends import backend_params, store_backend
from tests.gateway.conftest import Gateway, GatewayFactory, read_sse

pytestmark = pytest.mark.timeout(30)


def _unauthorized(reply: Any) -> None:
    assert reply.status_code == 401
    assert reply.headers["x-request-id"]
    error = reply.json()["error"]
    assert error["code"] == "invalid_api_key"
    assert error["type"] == "invalid_request_error"
    assert error["param"] is None
    assert set(error) == {"message", "type", "param", "code"}


async def test_every_v1_route_needs_a_key_when_keys_exist(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(keys={"alice": {}})
    requests = [
        ("POST", "/v1/responses"),
        ("GET", "/v1/responses/resp_x"),
        ("DELETE", "/v1/responses/resp_x"),
        ("POST", "/v1/responses/resp_x/cancel"),
        ("GET", "/v1/responses/resp_x/input_items"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/no-such-route"),
    ]
    for method, path in requests:
        _unauthorized(await gw.http.request(method, path, json={"model": "m", "input": "hi"}))
        wrong = {"Authorization": f"Bearer {new_token()}"}
        _unauthorized(await gw.http.request(method, path, headers=wrong))
        basic = {"Authorization": "Basic dXNlcjpwYXNz"}
        _unauthorized(await gw.http.request(method, path, headers=basic))
    # the operator's routes are not behind keys
    assert (await gw.http.get("/healthz")).status_code == 200

    with pytest.raises(openai.AuthenticationError):
        await gw.client(None).responses.create(model="beta", input="hi")
    response = await gw.client("alice").responses.create(model="beta", input="hi")
    assert response.status == "completed"


async def test_a_response_is_invisible_to_every_other_key(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(keys={"alice": {}, "bob": {}})
    alice, bob = gw.auth("alice"), gw.auth("bob")
    created = await gw.http.post(
        "/v1/responses", headers=alice, json={"model": "beta", "input": "hi", "background": True}
    )
    response_id = created.json()["id"]

    refused = [
        await gw.http.get(f"/v1/responses/{response_id}", headers=bob),
        await gw.http.get(f"/v1/responses/{response_id}?stream=true", headers=bob),
        await gw.http.get(f"/v1/responses/{response_id}/input_items", headers=bob),
        await gw.http.post(f"/v1/responses/{response_id}/cancel", headers=bob),
        await gw.http.delete(f"/v1/responses/{response_id}", headers=bob),
        await gw.http.post(
            "/v1/responses",
            headers=bob,
            json={"model": "beta", "input": "more", "previous_response_id": response_id},
        ),
    ]
    for reply in refused:
        assert reply.status_code == 404, reply.text
        assert response_id in reply.json()["error"]["message"]

    # the owner still has it all, and bob's attempts changed nothing
    async with gw.http.stream(
        "GET", f"/v1/responses/{response_id}?stream=true", headers=alice
    ) as stream:
        events = await read_sse(stream)
    assert events[-1]["type"] == "response.completed"
    assert (await gw.http.get(f"/v1/responses/{response_id}", headers=alice)).json()[
        "status"
    ] == "completed"
    items = await gw.http.get(f"/v1/responses/{response_id}/input_items", headers=alice)
    assert items.json()["data"][0]["content"][0]["text"] == "hi"
    follow_up = await gw.http.post(
        "/v1/responses",
        headers=alice,
        json={"model": "beta", "input": "more", "previous_response_id": response_id},
    )
    assert follow_up.status_code == 200, follow_up.text
    deleted = await gw.http.delete(f"/v1/responses/{response_id}", headers=alice)
    assert deleted.json()["deleted"] is True


async def test_cancel_is_refused_to_another_key_while_the_response_runs(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(keys={"alice": {}, "bob": {}})
    gw.script("hanger", [{"tool_calls": [{"name": "hang", "arguments": {}}]}, {"content": "ok"}])
    created = await gw.http.post(
        "/v1/responses",
        headers=gw.auth("alice"),
        json={"model": "hanger", "input": "go", "background": True},
    )
    response_id = created.json()["id"]
    await gw.tools.entered.wait()
    refused = await gw.http.post(f"/v1/responses/{response_id}/cancel", headers=gw.auth("bob"))
    assert refused.status_code == 404
    cancelled = await gw.http.post(f"/v1/responses/{response_id}/cancel", headers=gw.auth("alice"))
    assert cancelled.json()["status"] == "cancelled"


async def test_a_key_limited_to_some_models_is_refused_the_others(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(keys={"narrow": {"models": ["alpha", "team-*"]}, "wide": {}})
    narrow = gw.client("narrow")
    assert (await narrow.responses.create(model="alpha", input="hi")).status == "completed"
    assert (await narrow.responses.create(model="team-x", input="hi")).status == "completed"
    with pytest.raises(openai.PermissionDeniedError) as refused:
        await narrow.responses.create(model="beta", input="hi")
    assert refused.value.body == {
        "message": "This API key may not use the model 'beta'.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_allowed",
    }
    chat = await gw.http.post(
        "/v1/chat/completions",
        headers=gw.auth("narrow"),
        json={"model": "beta", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert chat.status_code == 403

    listed = await narrow.models.list()
    assert [model.id for model in listed.data] == ["alpha"]
    everything = await gw.client("wide").models.list()
    assert [model.id for model in everything.data] == ["alpha", "beta"]


async def test_a_key_is_never_offered_a_tool_it_may_not_use(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(keys={"weather_only": {"tools": ["weather"]}, "all": {}})
    gw.script("lister", [{"content": "nothing to do"}])

    async def offered(key: str) -> list[str]:
        await gw.client(key).responses.create(model="lister", input="hi")
        tools = gw.model.requests("lister")[-1].get("tools") or []
        return sorted(tool["function"]["name"] for tool in tools)

    assert await offered("weather_only") == ["weather"]
    assert await offered("all") == sorted(
        ["weather", "stock", "echo_auth", "fail_auth", "long", "hang"]
    )

    # asking for a server tool by name is refused, a permitted one is fine
    with pytest.raises(openai.PermissionDeniedError, match="server tool 'stock'"):
        await gw.client("weather_only").responses.create(
            model="lister",
            input="hi",
            tool_choice={
                "type": "allowed_tools",
                "mode": "auto",
                "tools": [{"type": "function", "name": "stock"}],
            },
        )
    allowed = await gw.client("weather_only").responses.create(
        model="lister",
        input="hi",
        tool_choice={
            "type": "allowed_tools",
            "mode": "auto",
            "tools": [{"type": "function", "name": "weather"}],
        },
    )
    assert allowed.status == "completed"

    # a model that calls the forbidden tool anyway gets an error, and no call is made
    gw.script(
        "sneaky",
        [{"tool_calls": [{"name": "stock", "arguments": {}}]}, {"content": "done"}],
    )
    response = await gw.client("weather_only").responses.create(model="sneaky", input="go")
    assert gw.tools.calls["stock"] == 0
    call = response.output[0]
    assert call.type == "mcp_call"
    assert "does not exist" in str(call.error)


async def test_without_keys_the_server_is_open_only_when_allowed(
    gateway_factory: GatewayFactory,
) -> None:
    open_gw = await gateway_factory()
    response = await open_gw.client(None).responses.create(model="beta", input="hi")
    assert response.status == "completed"
    # a response made without a key has no owner key
    reply = await open_gw.http.get(f"/v1/responses/{response.id}")
    assert reply.status_code == 200

    closed = await gateway_factory(allow_anonymous=False)
    _unauthorized(await closed.http.post("/v1/responses", json={"model": "b", "input": "x"}))
    assert (
        "stepline keys create" in (await closed.http.get("/v1/models")).json()["error"]["message"]
    )


@pytest.mark.parametrize("kind", backend_params())
async def test_stored_keys_are_read_from_the_store(kind: str, tmp_path: Path) -> None:
    """A key created in the store works once the ring re-reads it, a revoked one stops."""
    now = [0.0]
    async with store_backend(kind, tmp_path) as store:
        keys = store.keys
        ring = KeyRing({}, allow_anonymous=True, clock=lambda: now[0])
        await ring.attach(keys)
        assert not ring.enabled
        assert (await ring.authenticate(None)).key is None  # open: no keys yet

        token, other = new_token(), new_token()
        assert await store_key(keys, "ci", KeyConfig(hash=hash_token(token), tools=()))
        assert await store_key(keys, "ops", KeyConfig(hash=hash_token(other), admin=True))
        assert not await store_key(keys, "ci", KeyConfig(hash=hash_token(new_token())))
        # an unknown token makes the ring look again, at most once a second
        now[0] += 1.0
        caller = await ring.authenticate(f"Bearer {token}")
        assert caller.key is not None and caller.key.name == "ci"
        ci_id = caller.key_id
        assert ci_id is not None
        ops = await ring.authenticate(f"Bearer {other}")
        assert ops.is_admin and not caller.is_admin
        assert ring.tools_for(ci_id) == frozenset()
        assert ring.tools_for(ops.key_id) is None
        assert ring.tools_for(None) is None
        assert ring.tools_for("gone") == frozenset()
        assert ring.tools_for("ops") == frozenset()  # a name is not an id
        with pytest.raises(RequestError, match="Missing API key"):
            await ring.authenticate(None)

        assert await delete_stored_key(keys, "ci")
        assert (await ring.authenticate(f"Bearer {token}")).key_id == ci_id  # until re-read
        now[0] += 5.0
        with pytest.raises(RequestError, match="Incorrect API key") as refused:
            await ring.authenticate(f"Bearer {token}")
        assert refused.value.status_code == 401
        assert (await ring.authenticate(f"bearer {other}")).key_id == ops.key_id
        assert ring.tools_for(ci_id) == frozenset()  # revoked: no tools for its responses


async def test_keys_that_cannot_be_read_stop_the_start_but_not_a_running_ring(
    tmp_path: Path,
) -> None:
    """A server that could not read its stored keys must not start as if it had none;
    once running, a failed re-read keeps the keys it knows."""
    store = await open_store(f"sqlite:///{tmp_path}/keys.db")
    try:
        token = new_token()
        assert await store_key(store.keys, "ci", KeyConfig(hash=hash_token(token)))
        now = [0.0]
        ring = KeyRing({}, allow_anonymous=True, clock=lambda: now[0])
        await ring.attach(store.keys)
        async with store.engine.begin() as connection:
            await connection.exec_driver_sql("DROP TABLE stepline_api_keys")
        now[0] += 10.0
        assert (await ring.authenticate(f"Bearer {token}")).key is not None
        with pytest.raises(StoreError):
            await KeyRing({}, allow_anonymous=True).attach(store.keys)
    finally:
        await store.close()


def test_tokens_are_random_and_kept_as_hashes() -> None:
    first, second = new_token(), new_token()
    assert first != second
    assert first.startswith("sk-stepline-") and len(first) > 50
    digest = hash_token(first)
    assert digest.startswith("sha256:") and len(digest) == 7 + 64
    assert first not in digest


async def _create_key(gw: Gateway, name: str) -> str:
    """A key created as ``stepline keys create`` does, known to the server at once."""
    token = new_token()
    store = await open_store(f"sqlite:///{gw.database_path}", migrate=False)
    try:
        assert await store_key(store.keys, name, KeyConfig(hash=hash_token(token)))
    finally:
        await store.close()
    await gw.app.state.gateway.keys.reload()
    return token


async def _revoke_key(gw: Gateway, name: str) -> None:
    store = await open_store(f"sqlite:///{gw.database_path}", migrate=False)
    try:
        assert await delete_stored_key(store.keys, name)
    finally:
        await store.close()
    await gw.app.state.gateway.keys.reload()


async def test_a_name_used_again_is_a_new_key_that_owns_nothing(
    gateway_factory: GatewayFactory,
) -> None:
    gw = await gateway_factory(keys={"admin": {}})
    old = {"Authorization": f"Bearer {await _create_key(gw, 'ci')}"}
    created = await gw.http.post(
        "/v1/responses", headers=old, json={"model": "beta", "input": "hi"}
    )
    assert created.status_code == 200, created.text
    response_id = created.json()["id"]
    item_id = created.json()["output"][0]["id"]

    await _revoke_key(gw, "ci")
    new = {"Authorization": f"Bearer {await _create_key(gw, 'ci')}"}
    assert (await gw.http.get(f"/v1/responses/{response_id}", headers=old)).status_code == 401
    refused = [
        await gw.http.get(f"/v1/responses/{response_id}", headers=new),
        await gw.http.get(f"/v1/responses/{response_id}?stream=true", headers=new),
        await gw.http.get(f"/v1/responses/{response_id}/input_items", headers=new),
        await gw.http.delete(f"/v1/responses/{response_id}", headers=new),
        await gw.http.post(
            "/v1/responses",
            headers=new,
            json={"model": "beta", "input": "more", "previous_response_id": response_id},
        ),
    ]
    for reply in refused:
        assert reply.status_code == 404, reply.text
    by_reference = await gw.http.post(
        "/v1/responses",
        headers=new,
        json={"model": "beta", "input": [{"type": "item_reference", "id": item_id}]},
    )
    assert by_reference.status_code == 400, by_reference.text
    assert item_id in by_reference.json()["error"]["message"]

    # the new key's own responses are its own
    mine = await gw.http.post("/v1/responses", headers=new, json={"model": "beta", "input": "hi"})
    assert (await gw.http.get(f"/v1/responses/{mine.json()['id']}", headers=new)).status_code == 200


async def test_a_config_key_still_reads_what_it_stored_under_its_name(
    gateway_factory: GatewayFactory,
) -> None:
    """Responses from before key ids carry the key's name: they stay readable."""
    gw = await gateway_factory(keys={"alice": {}, "bob": {}})
    created = await gw.http.post(
        "/v1/responses", headers=gw.auth("alice"), json={"model": "beta", "input": "hi"}
    )
    response_id = created.json()["id"]
    with sqlite3.connect(gw.database_path) as connection:
        connection.execute("UPDATE responses SET key_id = 'alice' WHERE id = ?", (response_id,))
    for path in (f"/v1/responses/{response_id}", f"/v1/responses/{response_id}/input_items"):
        assert (await gw.http.get(path, headers=gw.auth("alice"))).status_code == 200
        assert (await gw.http.get(path, headers=gw.auth("bob"))).status_code == 404


def test_a_config_key_id_follows_its_hash() -> None:
    token = new_token()
    first = KeyRing({"ci": KeyConfig(hash=hash_token(token))}).by_name("ci")
    again = KeyRing({"renamed": KeyConfig(hash=hash_token(token))}).by_name("renamed")
    other = KeyRing({"ci": KeyConfig(hash=hash_token(new_token()))}).by_name("ci")
    assert first is not None and again is not None and other is not None
    assert first.id == again.id != other.id
    assert hash_token(token)[7:] not in first.id


async def test_responses_stored_before_key_ids_stay_with_their_keys(tmp_path: Path) -> None:
    """An older database: a keys table without ids, responses stored under key names."""
    database = tmp_path / "old.db"
    legacy_token, config_token = new_token(), new_token()
    with sqlite3.connect(database) as connection:
        connection.execute(
            "CREATE TABLE stepline_api_keys (name VARCHAR PRIMARY KEY, hash VARCHAR NOT NULL "
            "UNIQUE, models TEXT, tools TEXT, rate TEXT, max_concurrent INTEGER, "
            "created_at FLOAT NOT NULL)"
        )
        connection.execute(
            "INSERT INTO stepline_api_keys (name, hash, tools, created_at) VALUES (?, ?, ?, 0)",
            ("old", hash_token(legacy_token), '["weather"]'),
        )
    store = await open_store(f"sqlite:///{database}")
    now = time.time()
    for response_id, key_id in (("resp_old", "old"), ("resp_alice", "alice")):
        await store.create_response(
            ResponseRecord(
                id=response_id,
                created_at=now,
                status="in_progress",
                model="beta",
                body={"model": "beta", "input": []},
                key_id=key_id,
            )
        )
        await store.finish_response(
            response_id, status="completed", result={"id": response_id}, completed_at=now
        )

    ring = KeyRing({"alice": KeyConfig(hash=hash_token(config_token))})
    try:
        await ring.attach(store.keys)
        await ring.attach(store.keys)
        legacy = await ring.authenticate(f"Bearer {legacy_token}")
        alice = await ring.authenticate(f"Bearer {config_token}")
        assert legacy.owns("old") and not legacy.owns("alice")
        assert alice.owns("alice") and not alice.owns("old")
        assert ring.tools_for("old") == frozenset({"weather"})
        assert ring.tools_for("alice") is None
        for response_id, caller in (("resp_old", legacy), ("resp_alice", alice)):
            record = await store.get_response(response_id)
            assert record is not None and caller.owns(record.key_id)

        # the old key revoked and its name used again: the new key owns none of it
        assert await delete_stored_key(store.keys, "old")
        new_token_ = new_token()
        assert await store_key(store.keys, "old", KeyConfig(hash=hash_token(new_token_)))
        await ring.reload()
        reused = await ring.authenticate(f"Bearer {new_token_}")
        assert reused.key_id != "old" and not reused.owns("old")
        assert ring.tools_for("old") == frozenset()
        (row,) = await list_stored_keys(store.keys)
        assert row.id == reused.key_id
    finally:
        await store.close()


async def test_reading_the_stored_keys_takes_no_write_lock_on_sqlite(tmp_path: Path) -> None:
    """The key reload runs every few seconds: it must not queue behind (or block) a
    writer, as a BEGIN IMMEDIATE read would."""
    path = tmp_path / "keys.db"
    store = await open_store(f"sqlite:///{path}")
    try:
        writer = sqlite3.connect(path, isolation_level=None)
        try:
            writer.execute("BEGIN IMMEDIATE")  # another process mid-write
            assert await asyncio.wait_for(list_stored_keys(store.keys), timeout=5) == []
        finally:
            writer.execute("ROLLBACK")
            writer.close()
    finally:
        await store.close()
