"""Request builders and SSE/error-shape checks shared by the in-process API tests."""

from __future__ import annotations

import json

from tests.api.fake_engine import MODEL_NAME


def completion_body(**overrides) -> dict:
    return {"model": MODEL_NAME, "prompt": "Say hi", "max_tokens": 16, **overrides}


def chat_body(**overrides) -> dict:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 16,
            **overrides}


def parse_sse(raw: str) -> list[str]:
    """Split a whole SSE body into event data payloads, checking the exact framing on the way.

    Every event must be an `id: n` line (n counting from 0, no gap) and one `data: ...` line, followed
    by a blank line (keep-alive comments, which start with ':', are allowed and skipped).
    """
    assert raw.endswith("\n\n"), f"the stream must end with a blank line: {raw[-40:]!r}"
    assert "\r" not in raw, "this server frames with \\n only"
    payloads = []
    for block in raw.split("\n\n")[:-1]:
        lines = block.split("\n")
        if all(line.startswith(":") for line in lines):
            continue
        assert len(lines) == 2 and lines[0] == f"id: {len(payloads)}" and lines[1].startswith("data: "), \
            f"bad SSE event: {block!r}"
        payloads.append(lines[1][len("data: "):])
    return payloads


def named_sse_json(raw: str) -> list[tuple[str, dict]]:
    """(event name, JSON data) of each `event: ...` + `data: ...` event (the Responses API's framing);
    the name must equal the data's `type`, and an `id: n` line before them its `sequence_number`."""
    assert raw.endswith("\n\n") and "\r" not in raw
    events = []
    for block in raw.split("\n\n")[:-1]:
        lines = [line for line in block.split("\n") if not line.startswith(":")]
        if not lines:
            continue
        if lines[0].startswith("id: "):
            position = int(lines.pop(0)[len("id: "):])
            assert json.loads(lines[1][len("data: "):])["sequence_number"] == position, block
        assert len(lines) == 2 and lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        name, body = lines[0][len("event: "):], json.loads(lines[1][len("data: "):])
        assert body["type"] == name
        events.append((name, body))
    return events


def sse_json(raw: str) -> list[dict]:
    """The JSON events of a stream, after checking it ends with exactly one `[DONE]`."""
    payloads = parse_sse(raw)
    assert payloads and payloads[-1] == "[DONE]", f"the stream must end with [DONE]: {payloads[-3:]}"
    assert payloads.count("[DONE]") == 1
    return [json.loads(p) for p in payloads[:-1]]


def assert_error_shape(body: dict) -> dict:
    """Exactly OpenAI's error object, nothing more; returns the inner `error`."""
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert error["param"] is None or isinstance(error["param"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    return error


def assert_anthropic_error(body: dict, type_: str) -> str:
    """Exactly Anthropic's error object with this type; returns its message."""
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == type_, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["message"]
