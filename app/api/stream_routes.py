"""Resumable streams of /v1/chat/completions and /v1/completions.

Every event of such a stream carries `id: n` (its position, 0 first; the usage chunk and `[DONE]`
too), and the 200 answer the header `X-Stream-Resume: /v1/streams/<id>`. `GET` that path with
`Last-Event-ID: n` answers the events after n, with the same ids and data, through `[DONE]`: whether the
first connection is still open, dropped, or the generation ended (for STREAM_RETENTION after its last
event), on any replica that shares the store. `POST /v1/streams/<id>/cancel` stops the generation.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse

from app.api.errors import NotFound, StreamCancelled, describe
from app.api.model_leases import hold_until
from app.api.ownership import owner_of
from app.api.sse import DONE, data_frame, json_data
from app.api.stream_hub import NO_EVENTS_YET, StreamHub

router = APIRouter()

RESUME_HEADER = "X-Stream-Resume"
STREAM_PREFIX = "strm_"
STREAMS_PATH = "/v1/streams/"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # proxies pass tokens through as they come

# Why a generation stopped early -> what its stream's last error event says.
CANCEL_MESSAGES = {"cancelled": "the generation was cancelled",
                   "unattended": "the generation was cancelled: no client read its stream",
                   "shutdown": "the server shut down before this generation finished",
                   "error": "the generation failed"}


class TokenStreamResponse(EventSourceResponse):
    """sse-starlette's response, minus a cancel scope around every send when no send timeout is set
    (anyio's `move_on_after(None)` still builds one: a sizable share of the event loop's work per
    streamed token)."""

    async def _send_with_timeout(self, send, message) -> None:
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)


def sse_response(request: Request, sse_events, headers: dict | None = None) -> EventSourceResponse:
    # `: ping` comments keep proxies and clients from timing out during a long queue or prefill.
    return TokenStreamResponse(sse_events, sep="\n", ping=request.app.state.sse_keepalive_s,
                               headers={**STREAM_HEADERS, **(headers or {})})


def _ours(stream_id: str) -> bool:
    """A chat or completion stream's id (a stored response's stream has routes of its own, with its rules)."""
    return stream_id.startswith(STREAM_PREFIX)


def streams_of(request: Request) -> StreamHub:
    return request.app.state.streams


def ended_by_cancel(reason: str) -> list[str]:
    """A cancelled chat or completion stream's last events: an error naming why, then [DONE]."""
    _, body = describe(StreamCancelled(CANCEL_MESSAGES.get(reason, CANCEL_MESSAGES["cancelled"])))
    return [data_frame(json_data(body)), data_frame(DONE)]


def resumable_response(request: Request, frames: AsyncIterator[str]) -> EventSourceResponse:
    """Run the stream through a relay (it goes on if the connection drops) and answer its events."""
    key = f"{STREAM_PREFIX}{uuid.uuid4().hex}"
    relay = streams_of(request).open(key, owner_of(request), frames, ended_by_cancel)
    request.state.generation = relay.generated  # the request is counted, and the drain waits, until it ends
    hold_until(request, relay.generated)  # and its model stays loaded until then
    return sse_response(request, encoded(relay.follow()), {RESUME_HEADER: STREAMS_PATH + key})


async def encoded(frames: AsyncIterator[str]) -> AsyncIterator[bytes]:
    async for frame in frames:  # sse-starlette passes bytes through as they are
        yield frame.encode()


@router.get(STREAMS_PATH + "{stream_id}", include_in_schema=False)
async def resume_stream(stream_id: str, request: Request, last_event_id: str | None = Header(None)):
    text = (last_event_id or "").strip()
    after = int(text) if text.isascii() and text.isdigit() else NO_EVENTS_YET  # a malformed id: from the start
    frames = await streams_of(request).follow(stream_id, owner_of(request), after) if _ours(stream_id) else None
    if frames is None:
        raise NotFound(f"no stream {stream_id!r}: it never existed, was forgotten, or belongs to another key")
    return sse_response(request, encoded(frames))


@router.post(STREAMS_PATH + "{stream_id}/cancel", include_in_schema=False)
async def cancel_stream(stream_id: str, request: Request):
    if not _ours(stream_id) or not await streams_of(request).cancel(stream_id, owner_of(request)):
        raise NotFound(f"no stream {stream_id!r}: it never existed, was forgotten, or belongs to another key")
    return {"id": stream_id, "object": "stream", "cancelled": True}
