"""Raw SSE over httpx: read a whole stream as bytes and check its framing and UTF-8 strictly."""

from __future__ import annotations

import json

import httpx


def post_stream(http: httpx.Client, path: str, body: dict) -> tuple[httpx.Response, list[dict]]:
    """POST with stream=True; return the response and its JSON events (the trailing [DONE] checked)."""
    with http.stream("POST", path, json={**body, "stream": True}) as response:
        raw = response.read()
    assert response.status_code == 200, raw[:500]
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    events = parse_events(raw)
    return response, events


def deltas(events: list[dict]) -> list[str]:
    """The text of each content chunk, for either endpoint (usage-only chunks skipped)."""
    out = []
    for event in events:
        if not event["choices"]:
            continue
        choice = event["choices"][0]
        out.append(choice["text"] if "text" in choice else choice["delta"].get("content", ""))
    return out


def finish_reason(events: list[dict]) -> str | None:
    reasons = [e["choices"][0]["finish_reason"] for e in events if e["choices"]]
    assert all(r is None for r in reasons[:-1]), reasons
    return reasons[-1]


def parse_events(raw: bytes) -> list[dict]:
    """A whole SSE body: strict UTF-8, an `id: n` line (0, 1, 2...) and one `data:` line per event (`:`
    comments allowed), exactly one final [DONE], no error event; the JSON events before [DONE]."""
    text = raw.decode("utf-8", errors="strict")
    assert text.endswith("\n\n"), text[-80:]
    payloads = []
    for block in text.split("\n\n")[:-1]:
        lines = block.split("\n")
        if all(line.startswith(":") for line in lines):  # keep-alive comment
            continue
        assert len(lines) == 2 and lines[0] == f"id: {len(payloads)}" and lines[1].startswith("data: "), \
            f"bad SSE event: {block!r}"
        payloads.append(lines[1].removeprefix("data: "))
    assert payloads and payloads[-1] == "[DONE]" and payloads.count("[DONE]") == 1, payloads[-3:]
    events = [json.loads(p) for p in payloads[:-1]]
    assert events and not any("error" in e for e in events), events
    return events
