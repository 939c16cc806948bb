"""The output items of tools the server runs: ``mcp_call``, and the hosted tools it plays.

A server tool's call shows as an ``mcp_call`` item, unless the tool plays a
hosted tool of the Responses API (``protocol.hosted_tools`` maps, say,
``web_search`` to a search tool of the config): then it shows as that tool's
own item (``web_search_call``, ``file_search_call``, ``code_interpreter_call``,
``image_generation_call``) with its own progress events, and what the tool
returned fills the item's result fields where the request's ``include`` asks
for them. Either way the model sees the tool's output as the call's result.

Item ids are derived from the model's call id, so a resumed run finds the
item it showed before.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from stepline._steps import Step, StepState

__all__ = [
    "HOSTED_ITEMS",
    "hosted_call_item",
    "is_hosted_item",
    "is_server_item",
    "mcp_call_id",
    "mcp_item_state",
    "server_item_events",
    "server_item_state",
    "with_arguments",
]


def mcp_call_id(call_id: str, step_id: str) -> str:
    """The output item id of a server-run tool call: unique (model call ids repeat
    across responses, ``call_0_0``) and derived, so it survives a restart."""
    return f"mcp_{_digest(step_id, call_id)}"


def _digest(step_id: str, call_id: str) -> str:
    return hashlib.blake2b(f"{step_id}\0{call_id}".encode(), digest_size=16).hexdigest()


_MCP_STATUS = {
    StepState.PENDING: "calling",
    StepState.PROCESSING: "calling",
    StepState.COMPLETED: "completed",
    StepState.FAILED: "failed",
    StepState.CANCELLED: "incomplete",
}


def mcp_item_state(item: dict[str, Any], step: Step | None) -> dict[str, Any]:
    """The mcp_call ``item`` with the output, error and status of its tool step."""
    if step is None:
        return item
    filled = dict(item)
    filled["status"] = _MCP_STATUS[step.state]
    if step.state is StepState.COMPLETED and step.response is not None:
        filled["output"] = step.response.get("output")
        filled["error"] = None
    elif step.state in (StepState.FAILED, StepState.CANCELLED):
        error = step.error or {"message": f"tool call {step.state.value}"}
        filled["output"] = None
        filled["error"] = _mcp_error(error)
    return filled


def _mcp_error(error: dict[str, Any]) -> dict[str, Any]:
    status = error.get("status")
    if isinstance(status, int):
        return {"type": "http_error", "code": status, "message": str(error.get("message", ""))}
    return {
        "type": "mcp_tool_execution_error",
        "content": [{"type": "text", "text": str(error.get("message", ""))}],
    }


#: per hosted tool: its item type, id prefix, and the event that says it is working
HOSTED_ITEMS: dict[str, tuple[str, str, str]] = {
    "web_search": ("web_search_call", "ws", "searching"),
    "web_search_preview": ("web_search_call", "ws", "searching"),
    "file_search": ("file_search_call", "fs", "searching"),
    "code_interpreter": ("code_interpreter_call", "ci", "interpreting"),
    "image_generation": ("image_generation_call", "ig", "generating"),
}

_ITEM_TYPES = frozenset(item_type for item_type, _, _ in HOSTED_ITEMS.values())

#: the ``include`` values that show a web search's sources (its results are its sources)
_SOURCES = frozenset({"web_search_call.action.sources", "web_search_call.results"})


def _arguments(text: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(text) if text else {}
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def hosted_call_item(hosted: str, *, call_id: str, step_id: str, arguments: str) -> dict[str, Any]:
    """The item of a call of the server tool that plays ``hosted``, while it runs."""
    item_type, prefix, _ = HOSTED_ITEMS[hosted]
    item = {
        "id": f"{prefix}_{_digest(step_id, call_id)}",
        "type": item_type,
        "status": "in_progress",
    }
    return with_arguments(item, arguments)


def with_arguments(item: dict[str, Any], arguments: str) -> dict[str, Any]:
    """A hosted call's item with what its (complete) arguments say."""
    args = _arguments(arguments)
    item = dict(item)
    item_type = item["type"]
    if item_type == "web_search_call":
        item["action"] = {"type": "search", "query": str(args.get("query", ""))}
    elif item_type == "file_search_call":
        queries = args.get("queries") or [args.get("query", "")]
        item["queries"] = [str(query) for query in queries]
        item["results"] = None
    elif item_type == "code_interpreter_call":
        item["code"] = str(args.get("code", ""))
        item["container_id"] = "stepline"
        item["outputs"] = None
    else:
        item["result"] = None
    return item


def _listed(output: str, *keys: str) -> list[Any]:
    """Entries of a tool output that is a JSON list, or an object holding one under ``keys``."""
    try:
        parsed = orjson.loads(output)
    except orjson.JSONDecodeError:
        return []
    if isinstance(parsed, dict):
        parsed = next((parsed[key] for key in keys if isinstance(parsed.get(key), list)), [])
    return parsed if isinstance(parsed, list) else []


def _hosted_state(item: dict[str, Any], step: Step, include: frozenset[str]) -> dict[str, Any]:
    filled = dict(item)
    if step.state is not StepState.COMPLETED:
        filled["status"] = "failed" if step.state.terminal else "in_progress"
        return filled
    filled["status"] = "completed"
    output = str((step.response or {}).get("output", ""))
    kind = item["type"]
    if kind == "web_search_call" and include & _SOURCES:
        sources = [
            {"type": "url", "url": str(entry["url"])}
            for entry in _listed(output, "sources", "results")
            if isinstance(entry, dict) and entry.get("url")
        ]
        filled["action"] = {**item["action"], "sources": sources}
    elif kind == "file_search_call" and "file_search_call.results" in include:
        filled["results"] = [
            {
                "file_id": str(entry.get("file_id", "")),
                "filename": str(entry.get("filename", "")),
                "score": entry.get("score"),
                "text": str(entry.get("text", "")),
                "attributes": entry.get("attributes") or {},
            }
            for entry in _listed(output, "results")
            if isinstance(entry, dict)
        ]
    elif kind == "code_interpreter_call" and "code_interpreter_call.outputs" in include:
        filled["outputs"] = [{"type": "logs", "logs": output}]
    elif kind == "image_generation_call":
        filled["result"] = output
    return filled


def server_item_state(
    item: dict[str, Any], step: Step | None, include: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """A server tool call's item with the outcome of its tool step."""
    if step is None:
        return item
    if item["type"] in _ITEM_TYPES:
        return _hosted_state(item, step, include)
    return mcp_item_state(item, step)


def server_item_events(item: dict[str, Any], phase: str) -> list[str]:
    """The progress events of a server tool's item: ``started``, ``completed`` or ``failed``."""
    kind = item["type"]
    if kind == "mcp_call":
        return (
            ["response.mcp_call.in_progress"]
            if phase == "started"
            else [f"response.mcp_call.{phase}"]
        )
    working = next(w for t, _, w in HOSTED_ITEMS.values() if t == kind)
    if phase == "started":
        return [f"response.{kind}.in_progress", f"response.{kind}.{working}"]
    return [f"response.{kind}.completed"] if phase == "completed" else []


def is_server_item(item: dict[str, Any]) -> bool:
    return item["type"] == "mcp_call" or item["type"] in _ITEM_TYPES


def is_hosted_item(kind: str) -> bool:
    return kind in _ITEM_TYPES
