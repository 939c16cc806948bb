"""The payloads of the event notifications between processes (PostgreSQL NOTIFY), as a
listener reads them (``tests/store/test_event_notifications.py`` checks what writers send)."""

from __future__ import annotations

from stepline.store._notify import EventNotifier, PgListener


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
