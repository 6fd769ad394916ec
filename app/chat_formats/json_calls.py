"""Calls written as JSON objects {"name": ..., "arguments" (or "parameters"): {...}}, alone or in a list."""

from __future__ import annotations

import json
from collections.abc import Collection

from app.chat_formats.calls import Call


def arguments_text(arguments: object) -> str:
    """Arguments as JSON text; text a model already wrote as a string stays as it was."""
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def json_calls(text: str, tool_names: Collection[str]) -> list[Call] | None:
    """The calls `text` holds, or None when it is not (only) calls to offered tools."""
    try:
        value = json.loads(text.strip())
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = [_call(item, tool_names) for item in items]
    return calls if calls and None not in calls else None  # type: ignore[return-value]


def _call(item: object, tool_names: Collection[str]) -> Call | None:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or item["name"] not in tool_names:
        return None
    return Call(item["name"], arguments_text(item.get("arguments", item.get("parameters", {}))))


def as_mapping(arguments: object) -> object:
    """Earlier calls' arguments as data (templates and rewrites write them out as JSON)."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments
