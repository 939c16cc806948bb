"""Numeric parameters are range-checked: out of range is a 400 that names the parameter,
never a 200 cut short when the database driver refuses the number, nor a 500."""

from __future__ import annotations

import pytest

from tests.gateway.conftest import GatewayFactory, read_sse

pytestmark = pytest.mark.timeout(30)

HUGE = "1" + "0" * 29  # 30 digits: past any integer column


async def test_an_event_sequence_out_of_range_is_a_400(gateway_factory: GatewayFactory) -> None:
    gw = await gateway_factory()
    created = await gw.http.post("/v1/responses", json={"model": "beta", "input": "hi"})
    response_id = created.json()["id"]
    path = f"/v1/responses/{response_id}"

    refused = [
        ("starting_after", {"stream": "true", "starting_after": HUGE}, {}),
        ("starting_after", {"stream": "true", "starting_after": str(2**31)}, {}),
        ("starting_after", {"stream": "true", "starting_after": str(2**63)}, {}),
        ("starting_after", {"stream": "true", "starting_after": "-2"}, {}),
        ("Last-Event-ID", {"stream": "true"}, {"Last-Event-ID": HUGE}),
        ("Last-Event-ID", {"stream": "true"}, {"Last-Event-ID": str(2**31)}),
        ("Last-Event-ID", {"stream": "true"}, {"Last-Event-ID": "-2"}),
        ("Last-Event-ID", {"stream": "true"}, {"Last-Event-ID": "1_0"}),
        ("Last-Event-ID", {"stream": "true"}, {"Last-Event-ID": "seven"}),
        ("limit", {"limit": HUGE}, {}),
        ("limit", {"limit": "0"}, {}),
    ]
    for param, query, headers in refused:
        target = f"{path}/input_items" if param == "limit" else path
        reply = await gw.http.get(target, params=query, headers=headers)
        assert reply.status_code == 400, (query, headers, reply.text)
        error = reply.json()["error"]
        assert error["param"] == param, error
        assert error["type"] == "invalid_request_error"

    # the largest sequence number is fine: nothing comes after it
    for query, headers in (
        ({"stream": "true", "starting_after": str(2**31 - 1)}, {}),
        ({"stream": "true"}, {"Last-Event-ID": str(2**31 - 1)}),
    ):
        async with gw.http.stream("GET", path, params=query, headers=headers) as stream:
            assert stream.status_code == 200
            assert await read_sse(stream) == []
    async with gw.http.stream(
        "GET", path, params={"stream": "true"}, headers={"Last-Event-ID": "-1"}
    ) as stream:
        events = await read_sse(stream)
    assert events[-1]["type"] == "response.completed"
    items = await gw.http.get(f"{path}/input_items", params={"limit": "100"})
    assert items.status_code == 200
