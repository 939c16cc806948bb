"""The payloads of the event notifications between processes (PostgreSQL NOTIFY)."""

from __future__ import annotations

from stepline.store.hot import notify_payloads
from stepline.store.notify import EventNotifier, PgListener


def test_many_responses_go_in_few_payloads_under_postgresqls_limit() -> None:
    ids = [f"resp_{index:032x}" for index in range(1000)]

    payloads = notify_payloads(ids)

    assert len(payloads) == 5  # 1000 ids of 37 characters, 7900 bytes a payload at most
    assert all(len(payload.encode()) < 8000 for payload in payloads)
    assert [i for payload in payloads for i in payload.split(",")] == ids
    assert notify_payloads(["resp_a"]) == ["resp_a"]
    assert notify_payloads([]) == []


def test_a_payload_wakes_the_watch_of_every_response_it_names() -> None:
    notifier = EventNotifier()
    listener = PgListener("postgresql://unused", notifier)
    watches = {name: notifier.watch(name) for name in ("resp_a", "resp_b", "resp_c")}

    listener._deliver(None, 0, "stepline_events", "resp_a,resp_c")

    assert {name: watch._woken.is_set() for name, watch in watches.items()} == {
        "resp_a": True,
        "resp_b": False,
        "resp_c": True,
    }
