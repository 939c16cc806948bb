"""Conversations in the store, proved on every backend (memory, SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
from typing import Any

from stepline.store import ResponseRecord, StepStore
from stepline.store._base import ConversationItem, ConversationRecord, ResponseEnd


def conversation(conversation_id: str = "conv_1", **fields: Any) -> ConversationRecord:
    values: dict[str, Any] = {"created_at": 1_700_000_000.5, "metadata": {"topic": "demo"}}
    values.update(fields)
    return ConversationRecord(id=conversation_id, **values)


def message(item_id: str, text: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "user",
        "status": "completed",
        "content": [{"type": "input_text", "text": text}],
    }


def texts(items: list[ConversationItem]) -> list[str]:
    return [item.data["content"][0]["text"] for item in items]


def positions(items: list[ConversationItem]) -> list[int]:
    return [item.position for item in items]


async def a_response(store: StepStore, response_id: str) -> None:
    await store.create_response(
        ResponseRecord(
            id=response_id,
            created_at=1_700_000_001.0,
            status="in_progress",
            model="scripted",
            body={"input": []},
        )
    )


def response_end(response_id: str, conversation_id: str, *words: str) -> ResponseEnd:
    return ResponseEnd(
        response_id=response_id,
        status="completed",
        result={"id": response_id, "status": "completed"},
        completed_at=1_700_000_002.0,
        conversation_id=conversation_id,
        conversation_items=[message(f"msg_{response_id}_{word}", word) for word in words],
    )


async def test_a_conversation_round_trips_with_its_first_items(store: StepStore) -> None:
    created = await store.create_conversation(
        conversation(key_id="key_a"), [message("msg_a", "one"), message("msg_b", "two")]
    )

    assert created == [
        ConversationItem(position=0, id="msg_a", data=message("msg_a", "one")),
        ConversationItem(position=1, id="msg_b", data=message("msg_b", "two")),
    ]
    assert await store.get_conversation("conv_1") == conversation(key_id="key_a", next_position=2)
    assert await store.list_conversation_items("conv_1") == created
    assert await store.get_conversation_item("conv_1", "msg_b") == created[1]
    assert await store.get_conversation("conv_other") is None
    assert await store.get_conversation_item("conv_1", "msg_other") is None
    assert await store.get_conversation_item("conv_other", "msg_a") is None


async def test_stored_items_do_not_change_with_the_caller_s_dicts(store: StepStore) -> None:
    item = message("msg_a", "one")
    await store.create_conversation(conversation(), [item])
    item["content"][0]["text"] = "changed"

    [stored] = await store.list_conversation_items("conv_1")
    stored.data["content"][0]["text"] = "changed too"

    assert texts(await store.list_conversation_items("conv_1")) == ["one"]


async def test_update_replaces_the_metadata(store: StepStore) -> None:
    await store.create_conversation(conversation())

    updated = await store.update_conversation("conv_1", metadata={"other": "x"})

    assert updated == conversation(metadata={"other": "x"})
    assert await store.get_conversation("conv_1") == updated
    assert await store.update_conversation("conv_other", metadata={}) is None


async def test_items_list_between_positions_in_either_order(store: StepStore) -> None:
    await store.create_conversation(conversation(), [message(f"msg_{n}", str(n)) for n in range(6)])

    def listed(**bounds: Any) -> Any:
        return store.list_conversation_items("conv_1", **bounds)

    assert texts(await listed()) == ["0", "1", "2", "3", "4", "5"]
    assert texts(await listed(descending=True)) == ["5", "4", "3", "2", "1", "0"]
    assert texts(await listed(after=1, limit=2)) == ["2", "3"]
    assert texts(await listed(before=4, descending=True, limit=3)) == ["3", "2", "1"]
    assert texts(await listed(after=1, before=4)) == ["2", "3"]
    assert texts(await listed(after=5)) == []


async def test_appends_go_at_the_end_and_positions_are_never_reused(store: StepStore) -> None:
    await store.create_conversation(conversation(), [message("msg_a", "a"), message("msg_b", "b")])

    assert await store.delete_conversation_item("conv_1", "msg_b")
    assert not await store.delete_conversation_item("conv_1", "msg_b")
    appended = await store.append_conversation_items("conv_1", [message("msg_c", "c")])

    assert appended == [ConversationItem(position=2, id="msg_c", data=message("msg_c", "c"))]
    listed = await store.list_conversation_items("conv_1")
    assert (texts(listed), positions(listed)) == (["a", "c"], [0, 2])
    assert await store.append_conversation_items("conv_1", []) == []
    assert await store.append_conversation_items("conv_other", [message("msg_d", "d")]) is None


async def test_an_id_the_conversation_holds_is_replaced_by_a_fresh_one(store: StepStore) -> None:
    await store.create_conversation(conversation(), [message("msg_a", "a")])
    nameless = {key: value for key, value in message("", "none").items() if key != "id"}

    appended = await store.append_conversation_items(
        "conv_1",
        [message("msg_a", "again"), message("msg_b", "b"), message("msg_b", "b2"), nameless],
    )

    assert appended is not None
    ids = [item.id for item in appended]
    assert ids[1] == "msg_b"
    assert ids[0].startswith("msg_") and ids[2].startswith("msg_") and ids[3].startswith("item_")
    assert len({"msg_a", *ids}) == 5
    assert [item.data["id"] for item in appended] == ids
    assert await store.list_conversation_items("conv_1") == [
        ConversationItem(position=0, id="msg_a", data=message("msg_a", "a")),
        *appended,
    ]
    assert (await store.get_conversation_item("conv_1", ids[0])) == appended[0]


async def test_deleting_a_conversation_deletes_its_items(store: StepStore) -> None:
    await store.create_conversation(conversation(), [message("msg_a", "a")])
    await store.create_conversation(conversation("conv_2"), [message("msg_a", "kept")])

    assert await store.delete_conversation("conv_1")
    assert not await store.delete_conversation("conv_1")

    assert await store.get_conversation("conv_1") is None
    assert await store.list_conversation_items("conv_1") == []
    assert texts(await store.list_conversation_items("conv_2")) == ["kept"]
    # a new conversation under the old id starts empty
    await store.create_conversation(conversation())
    assert await store.list_conversation_items("conv_1") == []


async def test_a_response_s_end_appends_its_items_once(store: StepStore) -> None:
    await store.create_conversation(conversation(), [message("msg_first", "first")])
    await a_response(store, "resp_1")

    await store.append_events([], ends=[response_end("resp_1", "conv_1", "question", "answer")])
    # the same end again (a resumed run): the response is terminal, nothing joins twice
    await store.append_events([], ends=[response_end("resp_1", "conv_1", "question", "answer")])

    record = await store.get_response("resp_1")
    assert record is not None and record.status == "completed"
    listed = await store.list_conversation_items("conv_1")
    assert (texts(listed), positions(listed)) == (["first", "question", "answer"], [0, 1, 2])


async def test_a_response_whose_conversation_is_gone_still_ends(store: StepStore) -> None:
    await a_response(store, "resp_1")

    await store.append_events([], ends=[response_end("resp_1", "conv_gone", "question")])

    record = await store.get_response("resp_1")
    assert record is not None and record.status == "completed"
    assert await store.get_conversation("conv_gone") is None


async def test_racing_appends_each_take_one_contiguous_run(store: StepStore) -> None:
    await store.create_conversation(conversation())
    for index in range(4):
        await a_response(store, f"resp_{index}")
    words = [f"w{n}" for n in range(5)]

    await asyncio.gather(
        *(
            store.append_conversation_items(
                "conv_1", [message(f"msg_{writer}_{word}", f"{writer}:{word}") for word in words]
            )
            for writer in range(4)
        ),
        *(
            store.append_events([], ends=[response_end(f"resp_{index}", "conv_1", *words)])
            for index in range(4)
        ),
    )

    listed = await store.list_conversation_items("conv_1")
    assert positions(listed) == list(range(40))
    runs = [listed[start : start + 5] for start in range(0, 40, 5)]
    owners = [{item.id.rsplit("_", 1)[0] for item in run} for run in runs]
    assert all(len(owner) == 1 for owner in owners), owners
    assert len({owner.pop() for owner in owners}) == 8
    assert all([item.id.rsplit("_", 1)[1] for item in run] == words for run in runs)
    record = await store.get_conversation("conv_1")
    assert record is not None and record.next_position == 40
