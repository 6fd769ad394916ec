"""The Responses API's routes: create, and, for a stored response, retrieve (or replay its stream), list
its input items, delete, cancel.

A response is stored (`store`, the default) under its id for the API key that made it: the Response in
its latest state and its input items (app/api/response_records.py). A streamed or background response
runs through a relay (app/api/response_runs.py, app/api/stream_hub.py): it goes on when its client
leaves (a background one to its end; a streamed one for TOKENWIRE_STREAM_UNATTENDED), its events are
kept in the store (`store: true`), so `GET /v1/responses/{id}?stream=true&starting_after=N` replays the
events after N through the last, on any replica sharing the store, and a cancel reaches it wherever it runs.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Literal

from fastapi import APIRouter, Query, Request

from app.api.errors import NotFound, ResponseStateConflict
from app.api.model_leases import hold_until
from app.api.openapi import GENERATION_RESPONSES, STORED_RESPONSE_RESPONSES
from app.api.ownership import owner_of
from app.api.response_records import ResponseRecords, StoredResponse
from app.api.response_runs import ResponseRun
from app.api.responses_framing import TERMINAL, ResponsesFramer
from app.api.routes import accept, run_chat
from app.api.schemas import ResponsesRequest
from app.api.sse import collect
from app.api.stream_routes import encoded, sse_response, streams_of
from app.engine.errors import InvalidRequest

router = APIRouter()

PATH = "/v1/responses/{response_id}"
CANCEL_WAIT_S = 5.0  # a cancel answers with the response once it stopped, waiting at most this long


def records_of(request: Request) -> ResponseRecords:
    return ResponseRecords(request.app.state.store)


async def stored(request: Request, response_id: str) -> StoredResponse:
    record = await records_of(request).load(response_id, owner_of(request))
    if record is None:
        raise NotFound(f"No response found with id {response_id!r}: it was never stored, was deleted or "
                       "expired, or belongs to another API key.")
    return record


@router.post("/v1/responses", responses=GENERATION_RESPONSES)
async def create_response(body: ResponsesRequest, request: Request):
    earlier = await records_of(request).conversation_before(body.previous_response_id, owner_of(request))
    engine, share = await accept(body, request)
    items = body.input_items()
    chat, events = await run_chat(body.to_chat([*earlier, *items]), request, engine, share, "resp_", body.input,
                                  id_=f"resp_{uuid.uuid4().hex}")
    framer = ResponsesFramer(chat, body.echoed_fields())
    record = StoredResponse(framer.response("queued" if body.background else "in_progress"), items, earlier,
                            streamed=body.stream or body.background) if body.store else None
    if body.stream or body.background:
        return await run_relayed(request, body, framer, events, record)
    response = framer.final_of(await collect(events, request.is_disconnected))
    if record is not None:
        record.response = response
        await records_of(request).save(record, owner_of(request))
    return response


async def run_relayed(request: Request, body: ResponsesRequest, framer: ResponsesFramer, events,
                      record: StoredResponse | None):
    """Start the generation in a relay that outlives this request; answer its stream, or (background
    without stream) the queued Response at once."""
    owner = owner_of(request)
    if record is not None:
        await records_of(request).save(record, owner)
    run = ResponseRun(framer, events, body.background, record, records_of(request), owner)
    run.relay = relay = streams_of(request).open(framer.id, owner, run.frames(), run.ending,
                                                 attended=not body.background, persist=body.store)
    request.state.generation = relay.generated  # counted, and drained, until the generation ends
    hold_until(request, relay.generated)
    if body.stream:
        return sse_response(request, encoded(relay.follow()))
    assert record is not None  # a background response is stored (validated)
    return record.response


@router.get(PATH, responses=STORED_RESPONSE_RESPONSES)
async def retrieve_response(response_id: str, request: Request, stream: bool = False,
                            starting_after: int | None = Query(None, ge=-1)):
    record = await stored(request, response_id)
    if not stream:
        return record.response
    if not record.streamed:
        raise ResponseStateConflict(f"response {response_id!r} was neither streamed nor run in the background: "
                                    "it has no events to stream")
    frames = await streams_of(request).follow(response_id, owner_of(request),
                                              -1 if starting_after is None else starting_after)
    if frames is None:
        raise ResponseStateConflict(f"the events of response {response_id!r} are no longer kept "
                                    "(TOKENWIRE_STREAM_RETENTION after the last)")
    return sse_response(request, encoded(frames))


@router.delete(PATH, responses=STORED_RESPONSE_RESPONSES)
async def delete_response(response_id: str, request: Request):
    await stored(request, response_id)  # another key's, or none: 404
    # Cancelled first: the delete drops its events, by which another replica would find it still running.
    await streams_of(request).cancel(response_id, owner_of(request))
    if not await records_of(request).delete(response_id, owner_of(request)):
        await stored(request, response_id)  # deleted meanwhile: 404
    return {"id": response_id, "object": "response", "deleted": True}


@router.post(PATH + "/cancel", responses=STORED_RESPONSE_RESPONSES)
async def cancel_response(response_id: str, request: Request):
    record = await stored(request, response_id)
    if not record.background:
        raise ResponseStateConflict("Only responses created with background: true can be cancelled.")
    if record.response["status"] not in TERMINAL:
        await streams_of(request).cancel(response_id, owner_of(request))
        record = await settled(request, record)
    return record.response


async def settled(request: Request, record: StoredResponse) -> StoredResponse:
    """The record once its generation stopped (wherever it ran), or as it is after CANCEL_WAIT_S."""
    deadline = time.monotonic() + CANCEL_WAIT_S
    while record.response["status"] not in TERMINAL and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        record = await records_of(request).load(record.id, owner_of(request)) or record
    return record


@router.get(PATH + "/input_items", responses=STORED_RESPONSE_RESPONSES)
async def list_input_items(response_id: str, request: Request, order: Literal["asc", "desc"] = "desc",
                           after: str | None = None, limit: int = Query(20, ge=1, le=100)):
    items = (await stored(request, response_id)).input_items
    items = items[::-1] if order == "desc" else items
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequest(f"no input item {after!r} in response {response_id!r}", param="after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}
